//! The gRPC listener's accept side: TCP connections in, connections ready for HTTP/2 out.
//!
//! [`Incoming`] is the stream tonic serves (`serve_with_incoming`). Each accepted connection
//! gets a deadline, `handshake_timeout` after it was accepted: by then it must have finished
//! its TLS handshake (when TLS is on) and sent the 24-byte HTTP/2 connection preface, or it
//! is closed. Without it a client that connects and sends nothing holds a socket and a task
//! forever, as hyper waits for the preface without a timer. TLS handshakes run on their own
//! tasks, at most [`MAX_PENDING_HANDSHAKES`] at a time, so a slow client never holds up
//! the others; beyond that bound the listener stops accepting until one finishes.
//!
//! What happens after the preface (HTTP/2 keepalive, stream limits, message sizes) is
//! configured on the tonic server in `app`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_util::either::Either;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// Most TLS handshakes in progress at once.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`: what an HTTP/2 client sends first.
const HTTP2_PREFACE_LEN: usize = 24;
/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accepted connections, TLS-terminated if configured, each under its handshake deadline.
pub struct Incoming {
    tcp: TcpIncoming,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    handshakes: JoinSet<io::Result<Conn>>,
    paused: Option<Pin<Box<Sleep>>>,
}

impl Incoming {
    /// `tls`: serve TLS only, with this config (it must offer ALPN `h2`).
    pub fn new(tcp: TcpIncoming, tls: Option<Arc<ServerConfig>>, handshake_timeout: Duration) -> Incoming {
        Incoming {
            tcp,
            tls: tls.map(TlsAcceptor::from),
            handshake_timeout,
            handshakes: JoinSet::new(),
            paused: None,
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Conn>>> {
        let this = self.get_mut();
        loop {
            while let Poll::Ready(Some(done)) = this.handshakes.poll_join_next(cx) {
                match done {
                    Ok(Ok(conn)) => return Poll::Ready(Some(Ok(conn))),
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(e) => tracing::debug!(error = %e, "TLS handshake task failed"),
                }
            }
            if let Some(pause) = &mut this.paused {
                ready!(pause.as_mut().poll(cx));
                this.paused = None;
            }
            if this.handshakes.len() >= MAX_PENDING_HANDSHAKES {
                // Woken when a handshake finishes (poll_join_next registered the waker).
                return Poll::Pending;
            }
            let tcp = match ready!(Pin::new(&mut this.tcp).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Ok(tcp)) => tcp,
                Some(Err(e)) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "accepting a connection failed");
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "accepting connections failed; pausing");
                    this.paused = Some(Box::pin(tokio::time::sleep(ACCEPT_ERROR_PAUSE)));
                    continue;
                }
            };
            let deadline = Instant::now() + this.handshake_timeout;
            let info = TcpConnectInfo {
                local_addr: tcp.local_addr().ok(),
                remote_addr: tcp.peer_addr().ok(),
            };
            let Some(acceptor) = &this.tls else {
                return Poll::Ready(Some(Ok(Conn::new(Either::Left(tcp), info, deadline))));
            };
            let acceptor = acceptor.clone();
            this.handshakes.spawn(async move {
                let tls = tokio::time::timeout_at(deadline, acceptor.accept(tcp))
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake within the deadline")
                    })??;
                Ok(Conn::new(Either::Right(Box::new(tls)), info, deadline))
            });
        }
    }
}

/// Errors about one connection that was aborted before it was accepted: accept the next.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    )
}

/// A connection's socket: plain TCP, or TLS over it.
type Io = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// One accepted connection. Until the HTTP/2 preface has been read, a read that would wait
/// past the deadline fails with `TimedOut`, which makes the server drop the connection.
pub struct Conn {
    io: Io,
    info: TcpConnectInfo,
    /// Preface bytes still expected; the deadline is gone once they are in.
    awaiting: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    fn new(io: Io, info: TcpConnectInfo, deadline: Instant) -> Conn {
        Conn {
            io,
            info,
            awaiting: HTTP2_PREFACE_LEN,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    fn poll_read_io(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.deadline.is_none() {
            return this.poll_read_io(cx, buf);
        }
        let before = buf.filled().len();
        match this.poll_read_io(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.awaiting = this.awaiting.saturating_sub(read);
                if this.awaiting == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
