//! The audit log: what a record holds, how the chain hashes it, how a walk over the chain finds
//! the first record that was altered, deleted or inserted, and how refused calls are rate-limited
//! per source.
//!
//! Each record carries the SHA-256 of its predecessor (`prev_hash`) and its own `hash`, computed
//! over every field but its position (`seq`) with `prev_hash` (the encoding is [`Record::digest`],
//! documented in docs/audit.md). The position is fixed by the links instead: a record that is
//! deleted, inserted or moved breaks the link of the record after it. The store writes a record
//! in the transaction of the change it describes (`store::audit`); retention prunes from the
//! start and keeps the last pruned record's position and hash as the checkpoint the walk starts
//! from.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
#[expect(clippy::disallowed_types, reason = "see RefusalBudget")]
use std::sync::Mutex;

use tokio::time::Instant;

use drover_proto::pb;
use sha2::{Digest as _, Sha256};

/// A SHA-256.
pub type Hash = [u8; 32];

/// The `prev_hash` of the first record ever written.
pub const GENESIS: Hash = [0; 32];

/// Outcome of a call that changed what it was asked to.
pub const OK: &str = "ok";
/// Outcome of a call that was accepted but found nothing to change (e.g. a module set to the
/// state it has, or a retried create answered from its first call).
pub const UNCHANGED: &str = "unchanged";

/// The actor of records the control plane writes itself (retention).
pub const SYSTEM_ACTOR: &str = "drover";
/// The RPC name of retention's records. Its target is the checkpoint it left, `audit/SEQ:HASH`.
pub const PRUNE_RPC: &str = "PruneAudit";

/// The target of the record retention writes when it moves the checkpoint to `checkpoint`.
pub fn prune_target(checkpoint: Anchor) -> String {
    format!("audit/{}:{}", checkpoint.seq, hex(&checkpoint.hash))
}

/// Which tenant a record concerns, as the call names it; the store resolves it to the tenant's
/// id in the transaction that writes the record, so a tenant-scoped identity reads its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantRef {
    Name(String),
    Key(String),
    Id(i64),
}

/// What a call knows of its record before the store writes it; the store adds the position, the
/// time, the policy version and the hashes.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub actor: String,
    pub role: String,
    pub actor_tenant: String,
    pub source: String,
    pub rpc: String,
    pub target: String,
    pub tenant: Option<TenantRef>,
    pub request: String,
    pub outcome: String,
    pub message: String,
    pub unrecorded: u64,
    /// The target a call that turns out to change nothing is recorded with, when not `target`
    /// (a retried create answered from its first call names no new thing).
    pub unchanged_target: Option<String>,
    /// The caller's address, and the budget its records of calls that changed nothing are
    /// counted against (so repeating a call that changes nothing cannot fill the disk either).
    pub source_ip: Option<IpAddr>,
    pub budget: Option<Arc<RefusalBudget>>,
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub time_unix_ms: i64,
    pub actor: String,
    pub role: String,
    pub actor_tenant: String,
    pub source: String,
    pub rpc: String,
    pub target: String,
    /// The tenant the record concerns, by id; `None` for config changes and refusals of callers
    /// not scoped to a tenant.
    pub tenant_id: Option<i64>,
    pub request: String,
    pub outcome: String,
    pub message: String,
    pub version: u64,
    pub unrecorded: u64,
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl Record {
    /// The record's hash: SHA-256 over `drover.audit.v1`, `prev_hash`, then every field but
    /// `seq` and `hash` in declaration order, integers as 8 bytes big-endian (`tenant_id`
    /// absent as 0) and strings as their UTF-8 length (8 bytes big-endian) and bytes.
    pub fn digest(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(b"drover.audit.v1");
        h.update(self.prev_hash);
        let int = |h: &mut Sha256, v: i64| h.update(v.to_be_bytes());
        let text = |h: &mut Sha256, s: &str| {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        int(&mut h, self.time_unix_ms);
        for s in [
            &self.actor,
            &self.role,
            &self.actor_tenant,
            &self.source,
            &self.rpc,
            &self.target,
        ] {
            text(&mut h, s);
        }
        int(&mut h, self.tenant_id.unwrap_or(0));
        for s in [&self.request, &self.outcome, &self.message] {
            text(&mut h, s);
        }
        h.update(self.version.to_be_bytes());
        h.update(self.unrecorded.to_be_bytes());
        h.finalize().into()
    }

    pub fn to_wire(&self) -> pb::AuditRecord {
        pb::AuditRecord {
            seq: self.seq,
            time_unix_ms: self.time_unix_ms,
            actor: self.actor.clone(),
            role: self.role.clone(),
            actor_tenant: self.actor_tenant.clone(),
            source: self.source.clone(),
            rpc: self.rpc.clone(),
            target: self.target.clone(),
            request: self.request.clone(),
            outcome: self.outcome.clone(),
            message: self.message.clone(),
            version: self.version,
            unrecorded: self.unrecorded,
            prev_hash: hex(&self.prev_hash),
            hash: hex(&self.hash),
        }
    }
}

/// A position in the chain and the hash of the record there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: Hash,
}

impl Anchor {
    /// Where an empty chain starts.
    #[cfg(test)]
    pub const START: Anchor = Anchor {
        seq: 0,
        hash: GENESIS,
    };

    pub fn to_wire(self) -> pb::AuditAnchor {
        pb::AuditAnchor {
            seq: self.seq,
            hash: hex(&self.hash),
        }
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A SHA-256 from 64 hex digits.
pub fn parse_hash(text: &str) -> Option<Hash> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    let mut out = [0; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// What a walk found wrong, at the first record where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub seq: u64,
    pub what: String,
}

/// Hashes of the latest records walked, to tell an inserted record from a deleted one.
const RECENT: usize = 64;

/// A walk over the chain in `seq` order, from a checkpoint.
#[derive(Debug)]
pub struct Walk {
    checkpoint: Anchor,
    head: Anchor,
    recent: VecDeque<Anchor>,
    records: u64,
    /// The anchor to check, and the hash the walk found at its position.
    anchor: Option<(Anchor, Option<Hash>)>,
    /// The target of the newest retention record walked.
    pruned_to: Option<String>,
}

impl Walk {
    pub fn new(checkpoint: Anchor, anchor: Option<Anchor>) -> Walk {
        let found = anchor.and_then(|a| (a.seq == checkpoint.seq).then_some(checkpoint.hash));
        Walk {
            checkpoint,
            head: checkpoint,
            recent: VecDeque::from([checkpoint]),
            records: 0,
            anchor: anchor.map(|a| (a, found)),
            pruned_to: None,
        }
    }

    /// Takes the next record; the first problem ends the walk.
    pub fn push(&mut self, r: &Record) -> Result<(), Problem> {
        let expected = self.head.seq + 1;
        if r.digest() != r.hash {
            return Err(Problem {
                seq: r.seq,
                what: format!(
                    "record #{} was altered: its content does not match its hash",
                    r.seq
                ),
            });
        }
        if r.prev_hash != self.head.hash {
            let follows = self.recent.iter().find(|a| a.hash == r.prev_hash).copied();
            let what = match follows {
                Some(earlier) if earlier.seq + 1 < expected => format!(
                    "record(s) #{}–#{} were inserted: #{} follows #{}",
                    earlier.seq + 1,
                    expected - 1,
                    r.seq,
                    earlier.seq
                ),
                _ if expected == self.checkpoint.seq + 1 => format!(
                    "record #{} does not follow the chain's start (#{}): records were deleted or \
                     inserted at the start",
                    r.seq, self.checkpoint.seq
                ),
                _ if r.seq > expected => format!("record(s) #{expected}–#{} are missing: deleted", r.seq - 1),
                _ => format!(
                    "record #{} does not follow #{}: a record was deleted, inserted or replaced \
                     here",
                    r.seq, self.head.seq
                ),
            };
            let seq = if r.seq > expected && follows.is_none() {
                expected
            } else {
                follows.map_or(r.seq, |e| (e.seq + 1).min(r.seq))
            };
            return Err(Problem { seq, what });
        }
        if r.seq != expected {
            return Err(Problem {
                seq: expected.min(r.seq),
                what: format!(
                    "record #{} follows #{}: records were renumbered",
                    r.seq, self.head.seq
                ),
            });
        }
        self.head = Anchor {
            seq: r.seq,
            hash: r.hash,
        };
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(self.head);
        self.records += 1;
        if r.rpc == PRUNE_RPC && r.actor == SYSTEM_ACTOR {
            self.pruned_to = Some(r.target.clone());
        }
        if let Some((a, found)) = &mut self.anchor
            && a.seq == r.seq
        {
            *found = Some(r.hash);
        }
        Ok(())
    }

    /// After the last record: whether the chain's start is where retention left it, and
    /// whether the chain still reaches the anchor, unchanged.
    pub fn finish(&self) -> Result<(), Problem> {
        // Retention moves the checkpoint and says so in a record of the chain; a checkpoint no
        // such record names was moved by hand.
        if self.checkpoint.seq > 0
            && self.pruned_to.as_deref() != Some(prune_target(self.checkpoint).as_str())
        {
            return Err(Problem {
                seq: self.checkpoint.seq,
                what: format!(
                    "the chain starts after #{} but no retention record names that checkpoint: \
                     records were deleted from the start",
                    self.checkpoint.seq
                ),
            });
        }
        let Some((anchor, found)) = self.anchor else {
            return Ok(());
        };
        if anchor.seq < self.checkpoint.seq {
            // Pruned by retention since: nothing left to compare.
            return Ok(());
        }
        match found {
            Some(hash) if hash == anchor.hash => Ok(()),
            Some(_) => Err(Problem {
                seq: anchor.seq,
                what: format!(
                    "record #{} is not the one the anchor names: the chain was rewritten up to it",
                    anchor.seq
                ),
            }),
            None => Err(Problem {
                seq: anchor.seq,
                what: format!(
                    "the chain ends at #{} but the anchor names #{}: records were cut from the end",
                    self.head.seq, anchor.seq
                ),
            }),
        }
    }

    pub fn head(&self) -> Anchor {
        self.head
    }

    pub fn records(&self) -> u64 {
        self.records
    }
}

/// Refusals one source may have recorded at once, and per second after that.
const SOURCE_BURST: f64 = 30.0;
const SOURCE_PER_SEC: f64 = 1.0;
/// The same for all sources together, so many sources cannot fill the disk either; callers
/// without a valid token and identities have one each, so that a flood of the first cannot
/// keep the refusals of the second out of the log.
const ALL_BURST: f64 = 300.0;
const ALL_PER_SEC: f64 = 10.0;
/// Sources tracked at once; past this, sources not tracked share one budget.
const MAX_SOURCES: usize = 4_096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    dropped: u64,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
            dropped: 0,
        }
    }

    fn refill(&mut self, burst: f64, per_sec: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(burst);
        self.at = now;
    }
}

/// How many refused calls are recorded: a token bucket per source address and one for all.
#[derive(Debug, Default)]
pub struct RefusalBudget {
    #[expect(
        clippy::disallowed_types,
        reason = "refused admin calls only, never the request path; held for a map update"
    )]
    inner: Mutex<Budgets>,
}

#[derive(Debug, Default)]
struct Budgets {
    sources: HashMap<(Option<IpAddr>, String), Bucket>,
    /// Shared by the sources not tracked while `sources` is full.
    overflow: Option<Bucket>,
    /// All callers without a valid token, and all identities.
    anonymous: Option<Bucket>,
    identified: Option<Bucket>,
}

impl RefusalBudget {
    /// Whether a refusal of `actor` (empty: no valid token) from `source` is recorded now; if
    /// so, with how many refusals of the same were left out since its last record. Each
    /// identity has a budget per source, so one caller's flood does not hide another's.
    pub fn admit(&self, source: Option<IpAddr>, actor: &str, now: Instant) -> Option<u64> {
        let key = (source, actor.to_owned());
        let mut b = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Budgets {
            sources,
            overflow,
            anonymous,
            identified,
        } = &mut *b;
        let tracked = sources.contains_key(&key);
        if !tracked && sources.len() >= MAX_SOURCES {
            // Forget sources whose budget is whole again (with what they had left out: a
            // source quiet for half a minute starts over).
            sources.retain(|_, bucket| {
                bucket.refill(SOURCE_BURST, SOURCE_PER_SEC, now);
                bucket.tokens < SOURCE_BURST
            });
        }
        let mine = if tracked || sources.len() < MAX_SOURCES {
            sources
                .entry(key)
                .or_insert_with(|| Bucket::full(SOURCE_BURST, now))
        } else {
            overflow.get_or_insert_with(|| Bucket::full(SOURCE_BURST, now))
        };
        mine.refill(SOURCE_BURST, SOURCE_PER_SEC, now);
        let all = if actor.is_empty() { anonymous } else { identified };
        let all = all.get_or_insert_with(|| Bucket::full(ALL_BURST, now));
        all.refill(ALL_BURST, ALL_PER_SEC, now);
        if mine.tokens < 1.0 || all.tokens < 1.0 {
            mine.dropped += 1;
            return None;
        }
        mine.tokens -= 1.0;
        all.tokens -= 1.0;
        Some(std::mem::take(&mut mine.dropped))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn chain(n: u64) -> Vec<Record> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut r = Record {
                    seq,
                    time_unix_ms: 1_700_000_000_000 + seq as i64,
                    actor: "root".into(),
                    role: "admin".into(),
                    actor_tenant: String::new(),
                    source: "127.0.0.1:1".into(),
                    rpc: "CreateKey".into(),
                    target: format!("key/k{seq}"),
                    tenant_id: Some(1),
                    request: "{}".into(),
                    outcome: OK.into(),
                    message: String::new(),
                    version: seq + 1,
                    unrecorded: 0,
                    prev_hash: prev,
                    hash: GENESIS,
                };
                r.hash = r.digest();
                prev = r.hash;
                r
            })
            .collect()
    }

    fn walk(records: &[Record], anchor: Option<Anchor>) -> Result<Anchor, Problem> {
        let mut w = Walk::new(Anchor::START, anchor);
        for r in records {
            w.push(r)?;
        }
        w.finish()?;
        Ok(w.head())
    }

    #[test]
    fn an_intact_chain_walks_to_its_head_and_its_anchor() {
        let c = chain(10);
        let head = walk(&c, None).unwrap();
        assert_eq!(head.seq, 10);
        assert_eq!(head.hash, c[9].hash);
        walk(&c, Some(head)).unwrap();
        walk(
            &c,
            Some(Anchor {
                seq: 4,
                hash: c[3].hash,
            }),
        )
        .unwrap();
        assert_eq!(walk(&[], None).unwrap(), Anchor::START);
    }

    #[test]
    fn every_field_but_the_position_is_in_the_hash() {
        let base = chain(1).remove(0);
        let changes: [fn(&mut Record); 15] = [
            |r| r.time_unix_ms += 1,
            |r| r.actor.push('x'),
            |r| r.role.push('x'),
            |r| r.actor_tenant.push('x'),
            |r| r.source.push('x'),
            |r| r.rpc.push('x'),
            |r| r.target.push('x'),
            |r| r.tenant_id = None,
            |r| r.request.push('x'),
            |r| r.outcome.push('x'),
            |r| r.message.push('x'),
            |r| r.version += 1,
            |r| r.unrecorded += 1,
            |r| r.prev_hash[0] ^= 1,
            // Moving bytes from one field to the next changes the hash too.
            |r| {
                r.actor = "roo".into();
                r.role = "tadmin".into();
            },
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut r = base.clone();
            change(&mut r);
            assert_ne!(r.digest(), base.hash, "change {i}");
        }
        let mut moved = base.clone();
        moved.seq = 7;
        assert_eq!(moved.digest(), base.hash);
    }

    #[test]
    fn altered_deleted_inserted_and_cut_records_are_named() {
        let c = chain(10);
        let mut altered = c.clone();
        altered[4].actor = "mallory".into();
        let p = walk(&altered, None).unwrap_err();
        assert_eq!(p.seq, 5);
        assert!(p.what.contains("#5 was altered"), "{}", p.what);

        // Altered with its hash recomputed: the next record no longer follows it.
        let mut rehashed = c.clone();
        rehashed[4].actor = "mallory".into();
        rehashed[4].hash = rehashed[4].digest();
        let p = walk(&rehashed, None).unwrap_err();
        assert_eq!(p.seq, 6, "{p:?}");

        let mut deleted = c.clone();
        deleted.remove(4);
        let p = walk(&deleted, None).unwrap_err();
        assert_eq!(p.seq, 5);
        assert!(p.what.contains("#5–#5 are missing"), "{}", p.what);

        // Inserted after #4 with a correct hash, and the rest renumbered.
        let mut inserted = c.clone();
        let mut forged = c[4].clone();
        forged.actor = "mallory".into();
        forged.prev_hash = c[3].hash;
        forged.hash = forged.digest();
        inserted.insert(4, forged);
        for (i, r) in inserted.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        let p = walk(&inserted, None).unwrap_err();
        assert_eq!(p.seq, 5, "{p:?}");
        assert!(p.what.contains("#5–#5 were inserted"), "{}", p.what);

        // Appended with a made-up link.
        let mut appended = c.clone();
        let mut extra = c[9].clone();
        extra.seq = 11;
        extra.prev_hash = [7; 32];
        extra.hash = extra.digest();
        appended.push(extra);
        assert_eq!(walk(&appended, None).unwrap_err().seq, 11);

        // The first record deleted.
        let p = walk(&c[1..], None).unwrap_err();
        assert_eq!(p.seq, 1, "{p:?}");

        // Cut from the end: only an anchor tells.
        let anchor = walk(&c, None).unwrap();
        walk(&c[..8], None).unwrap();
        let p = walk(&c[..8], Some(anchor)).unwrap_err();
        assert_eq!(p.seq, 10);
        assert!(p.what.contains("cut from the end"), "{}", p.what);
        // An anchor of another chain.
        let p = walk(
            &c,
            Some(Anchor {
                seq: 10,
                hash: [1; 32],
            }),
        )
        .unwrap_err();
        assert!(p.what.contains("rewritten"), "{}", p.what);

        // Renumbered only.
        let mut renumbered = c.clone();
        for r in &mut renumbered[5..] {
            r.seq += 1;
        }
        let p = walk(&renumbered, None).unwrap_err();
        assert_eq!(p.seq, 6, "{p:?}");
    }

    #[test]
    fn a_walk_from_a_checkpoint_starts_there() {
        let mut c = chain(10);
        let checkpoint = Anchor {
            seq: 4,
            hash: c[3].hash,
        };
        // Without the retention record that names it, the checkpoint was moved by hand.
        let mut w = Walk::new(checkpoint, None);
        for r in &c[4..] {
            w.push(r).unwrap();
        }
        let p = w.finish().unwrap_err();
        assert!(p.what.contains("deleted from the start"), "{}", p.what);
        let mut prune = c[9].clone();
        (prune.seq, prune.actor, prune.rpc) = (11, SYSTEM_ACTOR.into(), PRUNE_RPC.into());
        prune.target = prune_target(checkpoint);
        prune.prev_hash = c[9].hash;
        prune.hash = prune.digest();
        c.push(prune);
        let mut w = Walk::new(
            checkpoint,
            Some(Anchor {
                seq: 2,
                hash: c[1].hash,
            }),
        );
        for r in &c[4..] {
            w.push(r).unwrap();
        }
        w.finish().unwrap();
        assert_eq!((w.records(), w.head().seq), (7, 11));
        let mut w = Walk::new(checkpoint, None);
        let p = w.push(&c[5]).unwrap_err();
        assert!(p.what.contains("start"), "{}", p.what);
        // Another checkpoint than the one the chain starts from.
        let mut w = Walk::new(
            Anchor {
                seq: 4,
                hash: [9; 32],
            },
            None,
        );
        assert!(w.push(&c[4]).is_err());
    }

    #[test]
    fn hashes_print_and_parse_as_hex() {
        let h: Hash = std::array::from_fn(|i| i as u8 * 7);
        let text = hex(&h);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_hash(&text), Some(h));
        assert_eq!(parse_hash(&text.to_uppercase()), Some(h));
        assert_eq!(parse_hash(&text[2..]), None);
        assert_eq!(parse_hash(&format!("zz{}", &text[2..])), None);
    }

    #[test]
    fn refusals_are_recorded_up_to_a_budget_per_source_and_overall() {
        let budget = RefusalBudget::default();
        let t0 = Instant::now();
        let a = Some("10.0.0.1".parse().unwrap());
        let b = Some("10.0.0.2".parse().unwrap());
        for _ in 0..SOURCE_BURST as usize {
            assert_eq!(budget.admit(a, "", t0), Some(0));
        }
        assert_eq!(budget.admit(a, "", t0), None);
        assert_eq!(budget.admit(a, "", t0), None);
        // Another source has its own budget, and so has another identity.
        assert_eq!(budget.admit(b, "", t0), Some(0));
        assert_eq!(budget.admit(a, "vera", t0), Some(0));
        // A second later one more is recorded, with the two left out.
        assert_eq!(budget.admit(a, "", t0 + Duration::from_secs(1)), Some(2));
        // Many sources share the overall budget.
        let mut recorded = 0;
        for i in 0..2_000u32 {
            let ip = Some(IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i)));
            recorded += usize::from(budget.admit(ip, "", t0 + Duration::from_secs(1)).is_some());
        }
        assert!(recorded as f64 <= ALL_BURST + ALL_PER_SEC, "{recorded}");
        // That flood of callers without a token leaves identities their own overall budget.
        let c = Some("10.0.0.3".parse().unwrap());
        assert_eq!(budget.admit(c, "vera", t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(budget.admit(c, "", t0 + Duration::from_secs(1)), None);
        // Sources tracked stay bounded.
        for i in 0..10_000u32 {
            let ip = Some(IpAddr::from(std::net::Ipv4Addr::from(0x0c00_0000 + i)));
            budget.admit(ip, "", t0 + Duration::from_secs(2));
        }
        assert!(budget.inner.lock().unwrap().sources.len() <= MAX_SOURCES);
    }
}
