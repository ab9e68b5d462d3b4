//! The exact-match response cache: successful answers kept in memory, bounded in bytes,
//! each for its route's TTL, and served again as a whole body or as a stream.
//!
//! It owns the key ([`key`]: tenant, endpoint, alias and the normalized request), the store
//! ([`ResponseCache`], a `moka` cache weighed by body size with a per-entry TTL) and the
//! conversions between a stored body and the shape a caller asks for ([`CachedAnswer`]).
//! It does not decide what is cacheable (a route's TTL, `cache-control: no-cache`, the
//! status of an answer), set headers or meter hits: the request path does, around
//! [`ResponseCache::get`] and [`ResponseCache::insert`].
//!
//! Tenants are partitioned by the key: two tenants' keys never collide, so neither can see
//! the other's entries.

mod answer;
mod assemble;
mod key;

use std::sync::Arc;
use std::time::Duration;

use moka::Expiry;
use moka::sync::Cache;

pub use answer::{CachedAnswer, CachedBody};
pub use key::{CacheKey, key};

/// Bytes an entry is weighed at beyond its body and names: the key, the answer's fixed
/// fields, the `Arc`s and moka's own bookkeeping, rounded up.
const ENTRY_OVERHEAD: usize = 256;

/// What the cache holds per key: the answer and the TTL it was stored with.
#[derive(Clone)]
struct Stored {
    answer: Arc<CachedAnswer>,
    ttl: Duration,
}

impl Stored {
    fn weight(&self) -> u32 {
        let bytes = self
            .answer
            .body
            .len()
            .saturating_add(self.answer.provider.len())
            .saturating_add(self.answer.model.len())
            .saturating_add(ENTRY_OVERHEAD);
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// Each entry lives for the TTL it was inserted with; a replacement starts its own.
struct PerEntryTtl;

#[expect(
    clippy::disallowed_types,
    reason = "moka's Expiry passes std::time::Instant; the argument is not used"
)]
impl Expiry<CacheKey, Stored> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, value: &Stored, _: std::time::Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &Stored,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A bounded, concurrent map from [`CacheKey`] to answers. Cloning shares the same store.
#[derive(Clone)]
pub struct ResponseCache {
    inner: Cache<CacheKey, Stored>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("entries", &self.inner.entry_count())
            .field("weighted_bytes", &self.inner.weighted_size())
            .finish()
    }
}

impl ResponseCache {
    /// `max_bytes`: memory bound (weigh entries by body size + overhead). Past it, moka
    /// evicts the entries least likely to be used again; an entry heavier than the bound
    /// is never kept.
    pub fn new(max_bytes: u64) -> Self {
        ResponseCache {
            inner: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &CacheKey, stored: &Stored| stored.weight())
                .expire_after(PerEntryTtl)
                .build(),
        }
    }

    /// The live answer under `key`, if any.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<CachedAnswer>> {
        self.inner.get(key).map(|stored| stored.answer)
    }

    /// Stores with a per-entry TTL (moka's `Expiry`), replacing any entry under the key.
    /// A zero TTL removes the entry instead.
    pub fn insert(&self, key: CacheKey, answer: CachedAnswer, ttl: Duration) {
        if ttl.is_zero() {
            self.inner.invalidate(&key);
            return;
        }
        self.inner.insert(
            key,
            Stored {
                answer: Arc::new(answer),
                ttl,
            },
        );
    }

    /// Entries held, approximately: moka settles counts in the background, and expired
    /// entries (never returned by [`Self::get`]) are counted until its timer wheel, whose
    /// finest step is about a second, reaches them.
    #[cfg(test)]
    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }

    /// Bytes the entries are weighed at, approximately.
    #[cfg(test)]
    pub fn weighted_size(&self) -> u64 {
        self.inner.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::formats::ir::Usage;
    use crate::formats::{ApiFormat, Ingress};

    fn answer(text: &str) -> CachedAnswer {
        CachedAnswer {
            format: ApiFormat::OpenAi,
            body: CachedBody::Whole(Bytes::from(text.to_owned())),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            usage: Usage::default(),
            cost_nano_usd: None,
        }
    }

    fn key_of(tenant: &str, n: usize) -> CacheKey {
        let body = format!(r#"{{"messages":[{{"role":"user","content":"q{n}"}}]}}"#);
        key(tenant, Ingress::ChatCompletions, "a", body.as_bytes()).unwrap()
    }

    fn text(answer: &CachedAnswer) -> Bytes {
        answer.whole().unwrap()
    }

    #[test]
    fn stores_replaces_and_partitions_by_tenant() {
        let cache = ResponseCache::new(1 << 20);
        let (mine, theirs) = (key_of("t1", 0), key_of("t2", 0));
        assert!(cache.get(&mine).is_none());
        cache.insert(mine.clone(), answer("one"), Duration::from_secs(60));
        assert_eq!(text(&cache.get(&mine).unwrap()), "one");
        assert!(cache.get(&theirs).is_none());
        cache.insert(mine.clone(), answer("two"), Duration::from_secs(60));
        assert_eq!(text(&cache.get(&mine).unwrap()), "two");
        cache.inner.run_pending_tasks();
        assert_eq!(cache.entry_count(), 1);
        cache.insert(mine.clone(), answer("three"), Duration::ZERO);
        assert!(cache.get(&mine).is_none());
    }

    #[tokio::test]
    async fn entries_expire_after_their_ttl() {
        let cache = ResponseCache::new(1 << 20);
        let (short, long) = (key_of("t", 1), key_of("t", 2));
        cache.insert(short.clone(), answer("short"), Duration::from_millis(1));
        cache.insert(long.clone(), answer("long"), Duration::from_secs(60));
        // Replacing an entry gives it the new entry's TTL.
        cache.insert(key_of("t", 3), answer("was long"), Duration::from_secs(60));
        cache.insert(key_of("t", 3), answer("now short"), Duration::from_millis(1));
        tokio::time::sleep(Duration::from_millis(5)).await;
        cache.inner.run_pending_tasks();
        assert!(cache.get(&short).is_none());
        assert!(cache.get(&key_of("t", 3)).is_none());
        assert_eq!(text(&cache.get(&long).unwrap()), "long");
    }

    #[test]
    fn memory_bound_evicts() {
        let max = 20 * 1024;
        let cache = ResponseCache::new(max);
        let body = "x".repeat(1024);
        for n in 0..200 {
            cache.insert(key_of("t", n), answer(&body), Duration::from_secs(60));
        }
        cache.inner.run_pending_tasks();
        assert!(cache.weighted_size() <= max, "{}", cache.weighted_size());
        let per_entry = (1024 + ENTRY_OVERHEAD + "openai".len() + "gpt-4o".len()) as u64;
        assert!(cache.entry_count() <= max / per_entry, "{}", cache.entry_count());
        assert!(cache.entry_count() > 0);
        let held = (0..200).filter(|&n| cache.get(&key_of("t", n)).is_some()).count();
        assert_eq!(held as u64, cache.entry_count());

        // An answer bigger than the whole bound is never kept.
        let huge = key_of("t", 1000);
        cache.insert(
            huge.clone(),
            answer(&"y".repeat(64 * 1024)),
            Duration::from_secs(60),
        );
        cache.inner.run_pending_tasks();
        assert!(cache.get(&huge).is_none());
    }
}
