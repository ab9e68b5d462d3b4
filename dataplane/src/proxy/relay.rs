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

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::admin::Metrics;
use crate::formats::sse::{SseFramer, openai_error_event};

pub struct SseRelay {
    first: Option<Bytes>,
    upstream: Incoming,
    framer: SseFramer,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
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
            finished: false,
            metrics,
        }
    }

    fn fail(&mut self, message: &str, code: &str) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.finished = true;
        if self.framer.is_done() {
            return Poll::Ready(None);
        }
        self.metrics.streams_incomplete.inc();
        tracing::warn!(code, "upstream stream ended before its terminal event");
        Poll::Ready(Some(Ok(Frame::data(openai_error_event(message, code)))))
    }
}

impl Body for SseRelay {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(first) = this.first.take() {
                if let Some(events) = this.framer.push(first) {
                    return Poll::Ready(Some(Ok(Frame::data(events))));
                }
                continue;
            }
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.idle_timer.as_mut().reset(Instant::now() + this.idle);
                        if let Some(events) = this.framer.push(data) {
                            return Poll::Ready(Some(Ok(Frame::data(events))));
                        }
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    return this.fail(
                        "the upstream connection broke before the stream completed",
                        "stream_incomplete",
                    );
                }
                Poll::Ready(None) => {
                    if this.framer.is_done() {
                        this.finished = true;
                        return Poll::Ready(None);
                    }
                    return this.fail(
                        "the upstream stream ended before it completed",
                        "stream_incomplete",
                    );
                }
                Poll::Pending => {
                    if this.idle_timer.as_mut().poll(cx).is_ready() {
                        return this.fail("the upstream stream stalled", "stream_timeout");
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}
