//! Relays an upstream SSE stream to the caller, whole events at a time.
//!
//! A stream that ends, breaks or stalls before its terminal `data: [DONE]` ends with an
//! error event, never a quiet success. Dropping the relay (caller gone) drops the upstream
//! body, which closes the upstream connection.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::admin::Metrics;
use crate::formats::sse::{SseFramer, openai_error_event};

/// Most scheduler yields spent gathering events that arrive back to back into one write.
const MAX_GATHER_YIELDS: u8 = 64;
/// Yields in a row that bring nothing new before what was gathered goes out.
const MAX_IDLE_YIELDS: u8 = 4;
/// Gathered bytes that go out without waiting for more.
const MAX_GATHER_BYTES: usize = 64 * 1024;

pub struct SseRelay {
    first: Option<Bytes>,
    upstream: Incoming,
    framer: SseFramer,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    /// Whole events read but not yet handed to the caller.
    out: Vec<Bytes>,
    yields: u8,
    idle_yields: u8,
    finished: bool,
    metrics: Arc<Metrics>,
}

impl SseRelay {
    /// `first` is the data already read from `upstream` (before the response was committed).
    pub fn new(first: Bytes, upstream: Incoming, idle: Duration, metrics: Arc<Metrics>) -> Self {
        SseRelay {
            first: Some(first),
            upstream,
            framer: SseFramer::default(),
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            out: Vec::new(),
            yields: 0,
            idle_yields: 0,
            finished: false,
            metrics,
        }
    }

    /// Ends the stream; unless it completed, with an error event after what was read.
    fn finish(&mut self, message: &str, code: &str) {
        self.finished = true;
        if !self.framer.is_done() {
            self.metrics.streams_incomplete.inc();
            tracing::warn!(code, "upstream stream ended before its terminal event");
            self.out.push(openai_error_event(message, code));
        }
    }

    /// Everything gathered, as one frame.
    fn take_out(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.yields = 0;
        self.idle_yields = 0;
        let data = match self.out.len() {
            0 => return Poll::Ready(None),
            1 => self.out.pop().unwrap_or_default(),
            _ => {
                let mut buf = BytesMut::with_capacity(self.out.iter().map(Bytes::len).sum());
                for piece in self.out.drain(..) {
                    buf.extend_from_slice(&piece);
                }
                buf.freeze()
            }
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl Body for SseRelay {
    type Data = Bytes;
    type Error = Infallible;

    /// Reads whatever the upstream has ready. The upstream connection task hands the body
    /// over one chunk at a time, so events that arrive back to back are gathered with
    /// scheduler yields into one frame: the caller gets one write instead of one per event.
    /// An event that arrives alone goes out after at most `MAX_IDLE_YIELDS` yields (a few
    /// microseconds).
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take()
            && let Some(events) = this.framer.push(first)
        {
            this.out.push(events);
        }
        let mut progressed = false;
        while !this.finished {
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        progressed = true;
                        if let Some(events) = this.framer.push(data) {
                            this.out.push(events);
                        }
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    this.finish(
                        "the upstream connection broke before the stream completed",
                        "stream_incomplete",
                    );
                }
                Poll::Ready(None) => {
                    this.finish(
                        "the upstream stream ended before it completed",
                        "stream_incomplete",
                    );
                }
                Poll::Pending => {
                    if progressed {
                        this.idle_timer.as_mut().reset(Instant::now() + this.idle);
                    }
                    if this.out.is_empty() {
                        if this.idle_timer.as_mut().poll(cx).is_ready() {
                            this.finish("the upstream stream stalled", "stream_timeout");
                            break;
                        }
                        return Poll::Pending;
                    }
                    let gathered: usize = this.out.iter().map(Bytes::len).sum();
                    if (progressed || this.idle_yields < MAX_IDLE_YIELDS)
                        && this.yields < MAX_GATHER_YIELDS
                        && gathered < MAX_GATHER_BYTES
                    {
                        this.idle_yields = if progressed { 0 } else { this.idle_yields + 1 };
                        this.yields += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        this.take_out()
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.out.is_empty() && self.first.is_none()
    }
}
