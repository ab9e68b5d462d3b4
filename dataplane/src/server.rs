//! The HTTP listener: accepts connections up to a cap, serves HTTP/1.1 and HTTP/2 on each,
//! closes connections that are slow to send a request head or idle too long, and shuts down
//! gracefully (in-flight requests finish, idle connections close).
//!
//! With a certificate configured it serves HTTPS only (ALPN `h2` and `http/1.1`); the TLS
//! handshake counts against the time to send the first request head.
//!
//! What a caller can make the listener hold is bounded here: connections
//! ([`ListenerConfig::max_connections`], refused politely beyond it), the time to send a
//! request head ([`ListenerConfig::header_read_timeout`], counted from the first byte of the
//! head, or from the accept for a connection's first request) and the time a keep-alive
//! connection may sit idle ([`ListenerConfig::idle_timeout`]). Request bodies are bounded by
//! the request path (size, read timeout, buffered-bytes budget), not here.

use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::{Builder, UpgradeableConnection};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::clock::{duration_ms, now_ms};
use crate::config::ListenerConfig;
use crate::metrics::Metrics;

/// Refusals being written at once; beyond it a connection over the cap is closed unanswered.
const MAX_REFUSALS: usize = 64;
/// How long a refusal waits for the caller's request before closing.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// How long a connection closed for idleness may take to finish closing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The body of the answer to a connection over the cap.
const REFUSAL_BODY: &str = r#"{"error":{"message":"the gateway has too many open connections; retry shortly","type":"server_error","param":null,"code":"overloaded"}}"#;

/// The answer to a connection over the cap, its `content-length` counted from its body.
static REFUSAL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    )
    .into_bytes()
});

/// Connections the kernel may queue before they are accepted (it caps this at
/// `net.core.somaxconn`): a burst of callers waits in the queue instead of being dropped.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket, with a deeper accept queue than the default.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` until `shutdown`, then waits for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ListenerConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(config.http2_keepalive)
        .keep_alive_timeout(config.http2_keepalive)
        .max_concurrent_streams(config.http2_max_streams);
    let builder = Arc::new(builder);
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let config = Arc::new(config);
    let tracker = TaskTracker::new();
    loop {
        let (tcp, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or the connection was reset while queued:
                    // pause briefly instead of spinning.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let open = metrics.connections.open.fetch_add(1, Ordering::Relaxed);
        if open >= config.max_connections {
            metrics.connections.open.fetch_sub(1, Ordering::Relaxed);
            metrics.connections_refused.inc();
            // Over TLS a plain-text answer would be noise: the connection is just closed.
            if tls.is_none() {
                refuse(tcp, &metrics, &tracker);
            }
            continue;
        }
        metrics.connections_accepted.inc();
        let _ = tcp.set_nodelay(true);
        let watch = Arc::new(ConnWatch::new());
        let service = Tracked {
            router: app.clone(),
            watch: watch.clone(),
        };
        let (builder, config, metrics, shutdown, tls) = (
            builder.clone(),
            config.clone(),
            metrics.clone(),
            shutdown.clone(),
            tls.clone(),
        );
        tracker.spawn(async move {
            let _open = OpenGuard(metrics.clone());
            let socket = match tls {
                None => Either::Left(tcp),
                // The handshake counts against the time to send the first request head.
                Some(tls) => match tokio::time::timeout(config.header_read_timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => Either::Right(Box::new(stream)),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        metrics.connections_tls_failed.inc();
                        return;
                    }
                    Err(_) => {
                        metrics.connections_head_timeout.inc();
                        return;
                    }
                },
            };
            let io = TokioIo::new(WatchedIo {
                inner: socket,
                watch: watch.clone(),
            });
            let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
            drive(conn, &watch, &config, &metrics, &shutdown).await;
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Polls one connection to its end, closing it when its head is late or it idles too long,
/// and gracefully when the server shuts down.
async fn drive(
    conn: Connection<'_>,
    watch: &ConnWatch,
    config: &ListenerConfig,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let mut conn = pin!(conn);
    let check_every = config.header_read_timeout.min(config.idle_timeout);
    let mut closing: Option<u64> = None;
    let mut shutting_down = false;
    loop {
        let now = now_ms();
        let wake = match (closing, watch.deadline(config)) {
            (Some(until), _) => until,
            (None, Some(deadline)) => deadline,
            (None, None) => now.saturating_add(duration_ms(check_every)),
        };
        let sleep = tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now)));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            () = watch.changed.notified() => {}
            () = sleep => {
                let now = now_ms();
                if closing.is_some_and(|until| now >= until) {
                    return;
                }
                match watch.expired(config, now) {
                    Some(Expired::Head) => {
                        metrics.connections_head_timeout.inc();
                        return;
                    }
                    Some(Expired::Idle) => {
                        metrics.connections_idle_closed.inc();
                        conn.as_mut().graceful_shutdown();
                        closing = Some(now.saturating_add(duration_ms(CLOSE_GRACE)));
                    }
                    None => {}
                }
            }
        }
    }
}

/// Half the process's soft open-file limit (the other half is for upstream connections and
/// files), when it can be read: the most connections the listener can hold without starving
/// the rest of the process of file descriptors.
pub fn fd_bound_connections() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    let soft: usize = soft.parse().ok()?;
    Some((soft / 2).max(1))
}

/// One served connection.
type Connection<'a> =
    UpgradeableConnection<'a, TokioIo<WatchedIo>, TowerToHyperService<Tracked>, TokioExecutor>;

/// Counts a connection as open until dropped.
struct OpenGuard(Arc<Metrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers a connection over the cap with a 503 and closes it, without holding it long.
fn refuse(mut tcp: TcpStream, metrics: &Arc<Metrics>, tracker: &TaskTracker) {
    let refusing = &metrics.connections.refusing;
    if refusing.fetch_add(1, Ordering::Relaxed) >= MAX_REFUSALS {
        refusing.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let metrics = metrics.clone();
    tracker.spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            tcp.write_all(&REFUSAL).await?;
            tcp.shutdown().await?;
            // Read what the caller sent before closing, so that closing does not reset the
            // connection before the caller read the answer.
            let mut sink = [0u8; 4096];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
        metrics.connections.refusing.fetch_sub(1, Ordering::Relaxed);
    });
}

/// What the watchdog of one connection knows about it.
#[derive(Debug)]
struct ConnWatch {
    /// Requests being served (from the head read to the response's last byte).
    in_flight: AtomicU32,
    /// When the connection last became idle (its accept, or the end of its last response).
    idle_since: AtomicU64,
    /// When bytes of a new request head started arriving while idle; 0: none.
    head_started: AtomicU64,
    /// Whether a request was served on it already.
    served: AtomicBool,
    /// Whether it speaks HTTP/2 (where bytes while idle are pings and settings, not a head).
    http2: AtomicBool,
    /// Signalled when the deadline moves later than the watchdog may be sleeping for.
    changed: Notify,
}

enum Expired {
    /// A request head (or a first request) was not received in time.
    Head,
    /// Idle longer than the keep-alive timeout.
    Idle,
}

impl ConnWatch {
    fn new() -> Self {
        ConnWatch {
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(now_ms()),
            head_started: AtomicU64::new(0),
            served: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// When the connection must be closed unless something happens; `None` while a request
    /// is in flight.
    fn deadline(&self, config: &ListenerConfig) -> Option<u64> {
        self.due(config).map(|(at, _)| at)
    }

    fn due(&self, config: &ListenerConfig) -> Option<(u64, Expired)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head_started.load(Ordering::Acquire);
        if head != 0 && !self.http2.load(Ordering::Relaxed) {
            return Some((
                head.saturating_add(duration_ms(config.header_read_timeout)),
                Expired::Head,
            ));
        }
        let idle = self.idle_since.load(Ordering::Acquire);
        if self.served.load(Ordering::Relaxed) {
            Some((
                idle.saturating_add(duration_ms(config.idle_timeout)),
                Expired::Idle,
            ))
        } else {
            Some((
                idle.saturating_add(duration_ms(config.header_read_timeout)),
                Expired::Head,
            ))
        }
    }

    fn expired(&self, config: &ListenerConfig, now: u64) -> Option<Expired> {
        self.due(config).and_then(|(at, why)| (now >= at).then_some(why))
    }

    /// Bytes arrived.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.head_started.load(Ordering::Relaxed) == 0 {
            self.head_started.store(now_ms(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    fn begin(&self, version: Version) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.store(true, Ordering::Relaxed);
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(now_ms(), Ordering::Release);
            self.head_started.store(0, Ordering::Release);
            self.changed.notify_one();
        }
    }
}

/// A caller's connection: plain TCP, or TLS over it.
type Socket = Either<TcpStream, Box<tokio_rustls::server::TlsStream<TcpStream>>>;

/// The connection's socket, telling its watchdog when bytes arrive.
struct WatchedIo {
    inner: Socket,
    watch: Arc<ConnWatch>,
}

impl AsyncRead for WatchedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.watch.on_read();
        }
        polled
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The router, counting each request as in flight until its response's last byte.
#[derive(Clone)]
struct Tracked {
    router: Router,
    watch: Arc<ConnWatch>,
}

impl Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        self.watch.begin(req.version());
        let guard = InFlight(self.watch.clone());
        let call = self.router.call(req.map(Body::new));
        Box::pin(async move {
            let resp = call.await?;
            Ok(resp.map(|body| Body::new(TrackedBody { body, _guard: guard })))
        })
    }
}

/// Ends a request's in-flight span when dropped.
struct InFlight(Arc<ConnWatch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that keeps its request in flight until it is dropped.
struct TrackedBody {
    body: Body,
    _guard: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
