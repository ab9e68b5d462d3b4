//! Relays an upstream SSE stream to the caller, whole events at a time, through a
//! [`Transform`]: as is ([`Passthrough`]) or translated into the caller's format
//! ([`Translate`]).
//!
//! A stream that ends, breaks or stalls before its terminal event ends with an error event
//! in the caller's format, never a quiet success: `stream_incomplete` when it ended or broke,
//! `stream_timeout` when it was silent for the idle timeout, `event_too_large` when one event
//! grew past the limit. Dropping the relay (caller gone) drops the upstream body, which
//! closes the upstream connection; so does finishing the stream.
//!
//! Each poll does a bounded amount of work (`POLL_BUDGET_BYTES`, `POLL_BUDGET_FRAMES`) and
//! then yields, even while the upstream has more ready: the caller's connection task must
//! get to run to notice that the caller left, and then drop the relay.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::cache::CachedBody;
use crate::error::{stream_error, stream_error_event};
use crate::formats::ApiFormat;
use crate::formats::Family;
use crate::formats::ir::{Delta, StreamEvent, Usage};
use crate::formats::sse::{SseFramer, split_events};
use crate::formats::tap::{StreamKind, StreamTap};
use crate::formats::{StreamDecode, StreamEncode, anthropic, gemini, openai, structured};
use crate::metrics::Metrics;
use crate::proxy::complete::{Completion, Ending};

/// Longest stream kept for the response cache; a longer one is not cached.
const MAX_CAPTURE_BYTES: usize = 8 << 20;

/// What a relay does with the whole events it reads.
pub trait Transform: Send + Unpin + 'static {
    /// Whole upstream events in; what goes to the caller appended to `out`.
    fn push(&mut self, events: Bytes, out: &mut Vec<Bytes>);
    /// The upstream ended cleanly: append any final events. Returns whether the stream completed.
    fn end(&mut self, out: &mut Vec<Bytes>) -> bool;
    /// The stream failed: append an error event for the caller, unless it already completed.
    /// Returns whether an error event was added.
    fn fail(&mut self, message: &str, code: &str, out: &mut Vec<Bytes>) -> bool;
    /// The provider's token counts seen so far.
    fn usage(&self) -> Option<Usage>;
    /// Content characters relayed so far.
    fn content_chars(&self) -> usize;
}

/// Same format both ways: events go out as they came (less the usage-only chunk the caller
/// did not ask for); the tap reads usage and completion.
pub struct Passthrough {
    kind: StreamKind,
    tap: StreamTap,
    /// An error event was appended.
    failed: bool,
}

impl Passthrough {
    /// `strip_usage_chunk`: the gateway asked an OpenAI provider for the usage chunk that the caller did not.
    pub fn new(kind: StreamKind, strip_usage_chunk: bool) -> Self {
        Passthrough {
            kind,
            tap: StreamTap::new(kind, strip_usage_chunk),
            failed: false,
        }
    }
}

impl Transform for Passthrough {
    fn push(&mut self, events: Bytes, out: &mut Vec<Bytes>) {
        let events = self.tap.observe(events);
        if !events.is_empty() {
            out.push(events);
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.tap.usage()
    }

    fn content_chars(&self) -> usize {
        self.tap.content_chars()
    }

    fn end(&mut self, _out: &mut Vec<Bytes>) -> bool {
        self.tap.completed()
    }

    fn fail(&mut self, message: &str, code: &str, out: &mut Vec<Bytes>) -> bool {
        if self.failed || self.tap.completed() {
            return false;
        }
        self.failed = true;
        out.push(stream_error_event(
            self.kind,
            message,
            code,
            self.tap.next_sequence(),
        ));
        true
    }
}

/// The provider's stream decoded into canonical events and encoded in the caller's format.
pub struct Translate {
    decoder: Box<dyn StreamDecode>,
    encoder: Box<dyn StreamEncode>,
    buf: BytesMut,
    done: bool,
    content_chars: usize,
    /// The caller's structured output came as a tool call: turned back into text.
    unwrap: Option<structured::StreamUnwrap>,
}

impl Translate {
    pub fn new(provider: Family, caller: ApiFormat, include_usage: bool, output_tool: bool) -> Self {
        let encoder: Box<dyn StreamEncode> = match caller {
            ApiFormat::OpenAi => Box::new(openai::StreamEncoder::new(include_usage)),
            ApiFormat::Anthropic => Box::new(anthropic::StreamEncoder::new()),
        };
        Self::with_encoder(provider, encoder, output_tool)
    }

    /// The provider's stream, encoded by `encoder` (e.g. a Responses stream, which echoes its
    /// request).
    pub fn with_encoder(provider: Family, encoder: Box<dyn StreamEncode>, output_tool: bool) -> Self {
        Translate {
            decoder: match provider {
                Family::OpenAi => Box::new(openai::StreamDecoder::new()),
                Family::Anthropic => Box::new(anthropic::StreamDecoder::new()),
                Family::Gemini => Box::new(gemini::StreamDecoder::new()),
            },
            encoder,
            buf: BytesMut::new(),
            done: false,
            content_chars: 0,
            unwrap: output_tool.then(structured::StreamUnwrap::default),
        }
    }

    fn emit(&mut self, events: Vec<StreamEvent>) {
        for event in events {
            if self.done {
                return;
            }
            let event = match &mut self.unwrap {
                Some(unwrap) => match unwrap.map(event) {
                    Some(event) => event,
                    None => continue,
                },
                None => event,
            };
            match &event {
                StreamEvent::Done | StreamEvent::Error(_) => self.done = true,
                StreamEvent::Delta { delta, .. } => {
                    self.content_chars += match delta {
                        Delta::Text(t) | Delta::Thinking(t) | Delta::ToolArguments(t) => t.len(),
                        Delta::Signature(_) => 0,
                    }
                }
                _ => {}
            }
            self.encoder.encode(&event, &mut self.buf);
        }
    }

    fn flush(&mut self, out: &mut Vec<Bytes>) {
        if !self.buf.is_empty() {
            out.push(self.buf.split().freeze());
        }
    }
}

impl Transform for Translate {
    fn push(&mut self, events: Bytes, out: &mut Vec<Bytes>) {
        for (_, event) in split_events(&events) {
            match self.decoder.decode(&event) {
                Ok(events) => self.emit(events),
                Err(e) => {
                    tracing::warn!(error = %e, "could not decode a provider stream event");
                    self.fail(
                        "the provider sent a stream event that could not be read",
                        "bad_upstream_event",
                        out,
                    );
                    break;
                }
            }
        }
        self.flush(out);
    }

    fn end(&mut self, out: &mut Vec<Bytes>) -> bool {
        let last = self.decoder.finish();
        self.emit(last);
        self.flush(out);
        self.done
    }

    fn fail(&mut self, message: &str, _code: &str, out: &mut Vec<Bytes>) -> bool {
        if self.done {
            return false;
        }
        self.emit(vec![StreamEvent::Error(stream_error(message))]);
        self.flush(out);
        true
    }

    fn usage(&self) -> Option<Usage> {
        self.decoder.usage()
    }

    fn content_chars(&self) -> usize {
        self.content_chars
    }
}

/// The transform of a relayed stream: as is, or translated.
pub enum Relayed {
    Pass(Passthrough),
    Translate(Translate),
}

impl Transform for Relayed {
    fn push(&mut self, events: Bytes, out: &mut Vec<Bytes>) {
        match self {
            Relayed::Pass(t) => t.push(events, out),
            Relayed::Translate(t) => t.push(events, out),
        }
    }
    fn end(&mut self, out: &mut Vec<Bytes>) -> bool {
        match self {
            Relayed::Pass(t) => t.end(out),
            Relayed::Translate(t) => t.end(out),
        }
    }
    fn fail(&mut self, message: &str, code: &str, out: &mut Vec<Bytes>) -> bool {
        match self {
            Relayed::Pass(t) => t.fail(message, code, out),
            Relayed::Translate(t) => t.fail(message, code, out),
        }
    }
    fn usage(&self) -> Option<Usage> {
        match self {
            Relayed::Pass(t) => t.usage(),
            Relayed::Translate(t) => t.usage(),
        }
    }
    fn content_chars(&self) -> usize {
        match self {
            Relayed::Pass(t) => t.content_chars(),
            Relayed::Translate(t) => t.content_chars(),
        }
    }
}

/// Most scheduler yields spent gathering events that arrive back to back into one write.
const MAX_GATHER_YIELDS: u8 = 64;
/// Yields in a row that bring nothing new before what was gathered goes out.
const MAX_IDLE_YIELDS: u8 = 4;
/// Gathered bytes that go out without waiting for more.
const MAX_GATHER_BYTES: usize = 64 * 1024;
/// Upstream bytes read in one poll before yielding.
const POLL_BUDGET_BYTES: usize = 256 * 1024;
/// Upstream frames read in one poll before yielding.
const POLL_BUDGET_FRAMES: u32 = 64;

/// The relay body. `B` is the upstream body: hyper's `Incoming` in the proxy.
pub struct SseRelay<T: Transform, B = Incoming> {
    first: Option<Bytes>,
    /// Dropped (closing the upstream connection) once the stream is finished.
    upstream: Option<B>,
    framer: SseFramer,
    transform: T,
    /// Completed when the stream ends; dropped (completing as the caller gone) if the
    /// caller goes away first.
    completion: Option<Completion>,
    completed: bool,
    metered_chars: usize,
    /// The stream as relayed, kept when the completion stores it in the response cache.
    kept: Option<BytesMut>,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    /// Whole events read but not yet handed to the caller.
    out: Vec<Bytes>,
    yields: u8,
    idle_yields: u8,
    finished: bool,
    metrics: Arc<Metrics>,
}

impl<T: Transform, B> SseRelay<T, B> {
    /// `first` is the data already read from `upstream` (before the response was committed);
    /// `idle` the longest silence tolerated; `max_event` the largest event relayed.
    pub fn new(
        first: Bytes,
        upstream: B,
        transform: T,
        completion: Completion,
        idle: Duration,
        max_event: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        SseRelay {
            first: Some(first),
            upstream: Some(upstream),
            framer: SseFramer::new(max_event),
            transform,
            kept: completion.wants_answer().then(BytesMut::new),
            completion: Some(completion),
            completed: false,
            metered_chars: 0,
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
        self.upstream = None;
        if self.transform.fail(message, code, &mut self.out) {
            self.metrics.streams_incomplete.inc();
            tracing::warn!(code, "upstream stream ended before its terminal event");
        }
    }

    /// Frames upstream bytes and hands whole events to the transform.
    fn feed(&mut self, data: Bytes) {
        match self.framer.push(data) {
            Ok(None) => {}
            Ok(Some(events)) => self.transform.push(events, &mut self.out),
            Err(e) => {
                if let Some(events) = e.before {
                    self.transform.push(events, &mut self.out);
                }
                self.finish(
                    &format!(
                        "the provider sent a stream event larger than the limit of {} bytes",
                        e.limit
                    ),
                    "event_too_large",
                );
            }
        }
    }

    /// Hands the completion what the stream showed, and completes it once the stream is over.
    fn account(&mut self) {
        if let Some(kept) = self.kept.as_mut() {
            for piece in &self.out {
                kept.extend_from_slice(piece);
            }
            if kept.len() > MAX_CAPTURE_BYTES {
                self.kept = None;
            }
        }
        let Some(completion) = self.completion.as_mut() else {
            return;
        };
        let meter = completion.meter();
        if let Some(usage) = self.transform.usage() {
            meter.usage(usage);
        }
        meter.relayed_chars(self.transform.content_chars().saturating_sub(self.metered_chars));
        self.metered_chars = self.transform.content_chars();
        if !self.out.is_empty() {
            meter.first_byte();
        }
        if self.finished
            && let Some(completion) = self.completion.take()
        {
            if self.completed {
                let answer = self.kept.take().map(|b| CachedBody::Stream(b.freeze()));
                completion.complete(Ending::status(200), answer);
            } else {
                completion.complete(
                    Ending {
                        status: 502,
                        failed: true,
                    },
                    None,
                );
            }
        }
    }

    /// Everything gathered, as one frame.
    fn take_out(&mut self) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.account();
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

impl<T: Transform, B> Body for SseRelay<T, B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = Infallible;

    /// Reads whatever the upstream has ready, up to a budget per poll. The upstream
    /// connection task hands the body over one chunk at a time, so events that arrive back
    /// to back are gathered with scheduler yields into one frame: the caller gets one write
    /// instead of one per event. An event that arrives alone goes out after at most
    /// `MAX_IDLE_YIELDS` yields (a few microseconds).
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            this.feed(first);
        }
        let mut progressed = false;
        let mut read = 0usize;
        let mut frames = 0u32;
        while !this.finished {
            let Some(upstream) = this.upstream.as_mut() else {
                break;
            };
            if read >= POLL_BUDGET_BYTES || frames >= POLL_BUDGET_FRAMES {
                // Enough for one poll: let the caller's connection run (and notice a caller
                // that left) before reading on.
                if progressed {
                    this.idle_timer.as_mut().reset(Instant::now() + this.idle);
                }
                if this.out.is_empty() {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                break;
            }
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    frames += 1;
                    if let Ok(data) = frame.into_data() {
                        progressed = true;
                        read += data.len();
                        this.feed(data);
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    this.finish(
                        "the upstream connection broke before the stream completed",
                        "stream_incomplete",
                    );
                }
                Poll::Ready(None) => {
                    if this.transform.end(&mut this.out) {
                        this.finished = true;
                        this.upstream = None;
                        this.completed = true;
                    } else {
                        this.finish(
                            "the upstream stream ended before it completed",
                            "stream_incomplete",
                        );
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use crate::config::Config;
    use crate::state::AppState;

    /// An upstream that always has its next chunk ready: `chunk` up to `frames` times, then ends.
    struct AlwaysReady {
        chunk: Bytes,
        polled: Arc<AtomicUsize>,
        frames: usize,
    }

    impl Body for AlwaysReady {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let n = self.polled.fetch_add(1, Ordering::SeqCst);
            Poll::Ready((n < self.frames).then(|| Ok(Frame::data(self.chunk.clone()))))
        }
    }

    #[derive(Default)]
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn relay(
        chunk: &'static [u8],
        frames: usize,
        polled: Arc<AtomicUsize>,
    ) -> SseRelay<Passthrough, AlwaysReady> {
        let config = Config::new(
            "127.0.0.1:0".parse().unwrap(),
            "http://127.0.0.1:1",
            Arc::new(|_: &str| None),
        );
        let state = Arc::new(AppState::new(config));
        let upstream = AlwaysReady {
            chunk: Bytes::from_static(chunk),
            polled,
            frames,
        };
        SseRelay::new(
            Bytes::from_static(b"data: {\"a\":1}\n\n"),
            upstream,
            Passthrough::new(StreamKind::OpenAiChunks, false),
            Completion::new(crate::proxy::meter::Meter::new(
                state.usage.clone(),
                state.metrics.clone(),
                "/v1/chat/completions",
                "req-relay-test",
            )),
            Duration::from_secs(60),
            1 << 30,
            state.metrics.clone(),
        )
    }

    #[tokio::test]
    async fn an_endless_line_from_an_always_ready_upstream_yields_every_poll() {
        const FRAMES: usize = 10_000;
        let polled = Arc::new(AtomicUsize::new(0));
        // The first event, then a line that never ends.
        let mut relay = relay(&[b'x'; 1024], FRAMES, polled.clone());
        let wakes = Arc::new(CountWakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut sent = Vec::new();
        for round in 1..=3 {
            let before = polled.load(Ordering::SeqCst);
            match Pin::new(&mut relay).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => sent.push(frame.into_data().unwrap()),
                Poll::Pending => {}
                Poll::Ready(None) => panic!("the stream ended in round {round}"),
                Poll::Ready(Some(Err(e))) => match e {},
            }
            let read = polled.load(Ordering::SeqCst) - before;
            assert!(
                read <= POLL_BUDGET_FRAMES as usize,
                "round {round}: one poll read {read} frames of an upstream that is always ready"
            );
            assert!(read > 0, "round {round}: it reads on");
        }
        assert!(
            wakes.0.load(Ordering::SeqCst) >= 2,
            "a yielding poll asks to be polled again"
        );
        assert_eq!(sent, [Bytes::from_static(b"data: {\"a\":1}\n\n")]);
    }

    #[tokio::test]
    async fn events_from_an_always_ready_upstream_go_out_a_budget_at_a_time() {
        const FRAMES: usize = 10_000;
        let polled = Arc::new(AtomicUsize::new(0));
        let mut relay = relay(b"data: {\"b\":2}\n\n", FRAMES, polled.clone());
        let waker = Waker::from(Arc::new(CountWakes::default()));
        let mut cx = Context::from_waker(&waker);
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut relay).poll_frame(&mut cx) else {
            panic!("whole events go out");
        };
        let read = polled.load(Ordering::SeqCst);
        assert!(read <= POLL_BUDGET_FRAMES as usize, "one poll read {read} frames");
        let events = frame.into_data().unwrap();
        assert!(
            events.len() <= POLL_BUDGET_BYTES + 64,
            "{} bytes in one frame",
            events.len()
        );
    }
}
