//! The budget of request-body bytes held in memory by every request together, and its rules.
//!
//! A body reserves its declared length before any of it is read (or its bytes as they
//! arrive, when no length is declared); a request that would take the total over the budget
//! is refused with a 503 and `retry-after`. The reservation is released when the request's
//! [`BodyPermit`] is dropped. The last eighth of the budget is kept for bodies of at most
//! [`SMALL_BODY`] bytes (most chat requests), so that a few huge uploads that stall cannot
//! shut every caller out until their read timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::ProxyError;

/// How request bodies are bounded.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body accepted (413 beyond it).
    pub max_bytes: usize,
    /// Longest time to receive a whole body (408 beyond it).
    pub read_timeout: Duration,
}

/// Bodies up to this size may use the whole budget; larger ones only seven eighths of it.
pub const SMALL_BODY: usize = 1 << 20;

/// The part of a budget of `max` bytes that a body of `len` bytes may fill: all of it for a
/// body of at most [`SMALL_BODY`] bytes, seven eighths for a larger one.
pub fn room_for(max: usize, len: usize) -> usize {
    if len > SMALL_BODY { max - max / 8 } else { max }
}

/// The smallest budget with room for a body of `len` bytes (see [`room_for`]).
pub fn budget_for(len: usize) -> usize {
    if len > SMALL_BODY {
        // `b - b / 8` grows by 7 every 8 steps of `b`: the first `b` where it reaches `len`.
        len.saturating_add((len - 1) / 7)
    } else {
        len
    }
}

/// Request-body bytes held in memory by every request together, and their bound.
#[derive(Debug)]
pub struct BodyBudget {
    held: AtomicUsize,
    max: usize,
}

impl BodyBudget {
    pub fn new(max: usize) -> Self {
        BodyBudget {
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// Bytes reserved now.
    pub fn buffered(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub(crate) fn permit(&self) -> BodyPermit<'_> {
        BodyPermit {
            budget: self,
            bytes: 0,
        }
    }
}

/// Bytes of the budget reserved by one request; released on drop.
#[derive(Debug)]
pub struct BodyPermit<'a> {
    budget: &'a BodyBudget,
    bytes: usize,
}

impl BodyPermit<'_> {
    /// Reserves `total` bytes in all (no-op if that many are reserved already).
    pub(crate) fn reserve(&mut self, total: usize) -> Result<(), ProxyError> {
        let more = total.saturating_sub(self.bytes);
        if more == 0 {
            return Ok(());
        }
        let max = room_for(self.budget.max, total);
        self.budget
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |held| {
                held.checked_add(more).filter(|&sum| sum <= max)
            })
            .map_err(|_| ProxyError::Overloaded)?;
        self.bytes = total;
        Ok(())
    }
}

impl Drop for BodyPermit<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}
