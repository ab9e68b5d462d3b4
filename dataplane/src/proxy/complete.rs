//! The `complete` phase: runs exactly once however a request ends — answered, failed, or
//! its caller gone mid-stream (the model is pingora's `logging` phase). It finishes the
//! meter (one usage record per request), stores a complete answer in the response cache
//! (the one place that fills it), and settles what phase `admit` took: the token estimate
//! corrected, the spend reservation settled to the real cost, the concurrency slot released.
//!
//! The request path owns one [`Completion`] per request and lends it to the phases; a
//! stream's relay takes it over and completes it when the stream ends. Dropped without
//! completing (the caller went away, or a task was cancelled), it completes as
//! [`CLIENT_CLOSED`].

use std::time::Duration;

use crate::cache::{CacheKey, CachedAnswer, CachedBody, ResponseCache};
use crate::formats::ApiFormat;
use crate::proxy::admit::Admission;
use crate::proxy::meter::{CLIENT_CLOSED, Meter};

/// Where a complete answer is to be stored in the response cache.
pub struct Fill {
    pub cache: ResponseCache,
    pub key: CacheKey,
    pub ttl: Duration,
    pub format: ApiFormat,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// The status the caller got ([`CLIENT_CLOSED`] if it went away).
    pub status: u16,
    /// Failed although the status may say otherwise (a stream that broke after its 200).
    pub failed: bool,
}

impl Ending {
    pub fn status(status: u16) -> Self {
        Ending {
            status,
            failed: status >= 400,
        }
    }

    /// The caller went away before the end.
    pub const CALLER_GONE: Ending = Ending {
        status: CLIENT_CLOSED,
        failed: true,
    };
}

/// What a finished request leaves behind.
pub struct Completion {
    meter: Meter,
    fill: Option<Fill>,
    admission: Option<Admission>,
    done: bool,
}

impl Completion {
    pub fn new(meter: Meter) -> Self {
        Completion {
            meter,
            fill: None,
            admission: None,
            done: false,
        }
    }

    pub fn meter(&mut self) -> &mut Meter {
        &mut self.meter
    }

    pub fn meter_ref(&self) -> &Meter {
        &self.meter
    }

    /// What phase `admit` took, settled when the request completes.
    pub fn admitted(&mut self, admission: Admission) {
        self.admission = Some(admission);
    }

    /// Stores the answer in the response cache when the request completes with one.
    pub fn fill_cache(&mut self, fill: Fill) {
        self.fill = Some(fill);
    }

    /// Whether a complete answer would be stored: a stream then keeps what it relays.
    pub fn wants_answer(&self) -> bool {
        self.fill.is_some()
    }

    /// Ends the request. `answer`: the complete answer as the caller got it, if there is one.
    pub fn complete(mut self, ending: Ending, answer: Option<CachedBody>) {
        self.finish(ending, answer);
    }

    fn finish(&mut self, ending: Ending, answer: Option<CachedBody>) {
        if self.done {
            return;
        }
        self.done = true;
        if let (Some(fill), Some(body)) = (self.fill.take(), answer)
            && !ending.failed
        {
            let (provider, model) = self.meter.answered_by();
            fill.cache.insert(
                fill.key,
                CachedAnswer {
                    format: fill.format,
                    body,
                    provider: provider.to_owned(),
                    model: model.to_owned(),
                    usage: self.meter.provider_usage().unwrap_or_default(),
                    cost_nano_usd: self.meter.provider_cost(),
                },
                fill.ttl,
            );
        }
        if let Some(admission) = self.admission.take() {
            // The token estimate corrected to the provider's count, the reservation to the
            // real cost; the cost stays held against the caps until the ledger has it.
            let usage = self.meter.settled_usage();
            let tokens = usage.input_tokens.saturating_add(usage.output_tokens);
            let unacked = admission.settle(
                i64::try_from(tokens).unwrap_or(i64::MAX),
                self.meter.cost().unwrap_or(0),
            );
            if !unacked.is_empty() {
                self.meter.on_ack(Box::new(move || {
                    for (cell, cost) in unacked {
                        cell.acked(cost);
                    }
                }));
            }
        }
        self.meter.finish(ending.status, ending.failed);
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.finish(Ending::CALLER_GONE, None);
    }
}
