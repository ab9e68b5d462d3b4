//! How the data plane reaches its control plane, shared by the policy stream and the usage
//! reporter: the channel ([`Link`]: TCP and HTTP/2 keepalive, timeouts, TLS), the bearer
//! token on every call ([`Bearer`]), and reconnect backoff with jitter ([`Backoff`]). One
//! definition, so both notice a vanished control plane the same way.

use std::time::Duration;

use drover_proto::model::Secret;
use drover_proto::tls::{self, Trust};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::Endpoint;

use crate::config::Config;

/// Shortest wait before reconnecting (or resending).
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait before reconnecting (or resending).
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// TCP keepalive on the connection to the control plane.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Where the control plane is and how to reach it.
#[derive(Clone)]
pub struct Link {
    /// Control plane gRPC URL.
    pub url: String,
    /// Which certificates an `https://` control plane may present.
    pub trust: Trust,
    pub token: Option<Secret>,
    /// `None`: no limit. The transport timers are off only in tests that pause time, where a
    /// pending timer would fire while a call waits on the network.
    pub connect_timeout: Option<Duration>,
    /// HTTP/2 keepalive interval (and timeout), idle connections included.
    pub keepalive: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("invalid control plane URL: {0}")]
    Url(String),
    #[error("TLS to the control plane: {0}")]
    Tls(String),
}

impl Link {
    /// The control plane of `config`, with the production timers.
    pub fn new(config: &Config) -> Link {
        Link {
            url: config.control_plane.clone(),
            trust: config.control_plane_trust.clone(),
            token: config.token.clone(),
            connect_timeout: Some(Duration::from_secs(5)),
            keepalive: Some(Duration::from_secs(15)),
        }
    }

    /// The channel's endpoint; connect it, or connect lazily.
    pub fn endpoint(&self) -> Result<Endpoint, LinkError> {
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| LinkError::Url(e.to_string()))?
            .tcp_nodelay(true)
            .tcp_keepalive(Some(TCP_KEEPALIVE));
        if let Some(t) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(t);
        }
        if let Some(t) = self.keepalive {
            endpoint = endpoint
                .http2_keep_alive_interval(t)
                .keep_alive_timeout(t)
                .keep_alive_while_idle(true);
        }
        tls::client_endpoint(endpoint, &self.trust).map_err(|e| LinkError::Tls(causes(&e)))
    }

    /// The interceptor that sends this data plane's token.
    pub fn bearer(&self) -> Bearer {
        Bearer(
            self.token
                .as_ref()
                .and_then(|t| MetadataValue::try_from(format!("Bearer {}", t.expose())).ok()),
        )
    }
}

/// Adds `authorization: Bearer TOKEN` to every call to the control plane.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.clone());
        }
        Ok(req)
    }
}

/// Exponential backoff from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each wait jittered to half
/// to all of its step so that many data planes do not come back at once.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { step: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The next wait; each call doubles the step up to the maximum.
    pub fn next_wait(&mut self) -> Duration {
        let wait = jitter(self.step);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        wait
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }
}

/// Half to all of `d`.
fn jitter(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(2);
    Duration::from_millis(ms / 2 + rand::random::<u64>() % (ms / 2 + 1))
}

/// An error and its sources, `outer: inner`: a transport error alone only says "transport
/// error", its sources say why (refused, a certificate not trusted, ...).
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_bounds_and_resets() {
        let mut b = Backoff::default();
        let mut step = BACKOFF_MIN;
        for _ in 0..12 {
            let wait = b.next_wait();
            assert!(
                wait >= step / 2 && wait <= step,
                "{wait:?} for a step of {step:?}"
            );
            step = (step * 2).min(BACKOFF_MAX);
        }
        assert!(b.next_wait() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.next_wait() <= BACKOFF_MIN);
    }

    #[test]
    fn the_token_goes_on_every_call() {
        let link = Link {
            url: "http://127.0.0.1:1".into(),
            trust: Trust::WebPki,
            token: Some(Secret::new("dp-secret")),
            connect_timeout: None,
            keepalive: None,
        };
        let req = link.bearer().call(tonic::Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer dp-secret");
        assert!(link.endpoint().is_ok());
        let bad = Link {
            url: "not a url".into(),
            ..link
        };
        assert!(matches!(bad.endpoint(), Err(LinkError::Url(_))));
    }
}
