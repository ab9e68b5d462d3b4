//! The state every request shares: the policy (swapped whole), what outlives a swap (target
//! health, the retry budget, the response cache, the body budget, the lease cells), the HTTP client, the
//! counters and the usage sink.

use std::sync::Arc;

use crate::budget::BodyBudget;
use crate::cache::ResponseCache;
use crate::config::Config;
use crate::health::{HealthRegistry, RetryBudget};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::policy::PolicyStore;
use crate::providers::{HttpClient, http_client};
use crate::usage::Usage;

/// State shared by every request. The policy inside is swapped whole; the rest lives as long as the process.
pub struct AppState {
    pub config: Config,
    pub policy: Arc<PolicyStore>,
    pub health: Arc<HealthRegistry>,
    pub budget: RetryBudget,
    pub client: HttpClient,
    pub metrics: Arc<Metrics>,
    /// Where requests hand their usage records.
    pub usage: Arc<Usage>,
    /// Answers of routes with a cache TTL.
    pub cache: ResponseCache,
    /// Request-body bytes held in memory by requests in flight.
    pub bodies: BodyBudget,
    /// Rate-limit and spend-cap leases, shared with the lease client.
    pub limiter: Arc<Limiter>,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        let metrics = Arc::new(Metrics::default());
        AppState {
            usage: Arc::new(Usage::new(config.usage.clone(), metrics.clone())),
            budget: RetryBudget::new(config.proxy.retry_ratio, config.proxy.retry_min_per_sec),
            client: http_client(config.proxy.connect_timeout),
            cache: ResponseCache::new(config.cache_max_bytes),
            bodies: BodyBudget::new(config.max_buffered_body_bytes),
            limiter: Arc::new(Limiter::new(config.proxy.lease_wait, metrics.clone())),
            config,
            policy: Arc::default(),
            health: Arc::default(),
            metrics,
        }
    }
}
