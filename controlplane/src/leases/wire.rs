//! The lease protocol on the wire: `pb::LeaseRequest` checked and turned into the book's
//! [`Message`], and the book's [`Answer`] turned into a `pb::LeaseResponse`.
//!
//! Pure (no I/O, no clock), so that the lease stream (`crate::lease_service`) and a simulation
//! without sockets (`tests/tests/lease_sim.rs`) go through the same checks. A stream is checked
//! message by message with a [`StreamCheck`]; anything that breaks the protocol is an
//! [`InvalidPolicy`] naming the field (`asks[3]/key/cap_period`), which the stream turns into
//! `INVALID_ARGUMENT`.
//!
//! Not here: the streams and the shared book (`crate::lease_service`), the accounting
//! ([`super::Book`]).

use drover_proto::limits::{MAX_LEASE_ASKS, MAX_LEASE_HOLDINGS};
use drover_proto::model::{
    CapPeriod, InvalidPolicy, MAX_CAP_NANO_USD, MAX_CONCURRENCY_LIMIT, MAX_RATE_LIMIT, validate_key_id,
    validate_model_name,
};
use drover_proto::pb;

use super::{Answer, Ask, Grant, Holding, LeaseKey, Message, Resource, Scope, Timing};

/// Most answers a data plane may have in flight: `seq - applied` beyond this is a data plane
/// that does not apply what it gets, and the book would remember its grants forever.
pub const MAX_UNAPPLIED_ANSWERS: u64 = 1_024;

/// An answer on the wire, with the protocol's timing.
pub fn response(answer: Answer, timing: &Timing) -> pb::LeaseResponse {
    pb::LeaseResponse {
        answers: answer.answers,
        ttl_ms: timing.ttl_ms,
        heartbeat_ms: timing.heartbeat_ms,
        window_ms: u64::try_from(timing.window_ms).unwrap_or(0),
        grants: answer.grants.into_iter().map(grant_to_wire).collect(),
    }
}

/// What one stream has said so far, to check the next message against.
#[derive(Debug, Default)]
pub struct StreamCheck {
    seq: u64,
    applied: u64,
}

impl StreamCheck {
    /// The first message: a hello, with the data plane's id.
    pub fn hello(&mut self, m: pb::LeaseRequest) -> Result<(String, Message), InvalidPolicy> {
        if !m.hello {
            return Err(InvalidPolicy::new(
                "hello",
                "the first message of a lease stream must be a hello",
            ));
        }
        validate_model_name("dataplane_id", &m.dataplane_id)?;
        if m.seq != 1 {
            return Err(InvalidPolicy::new(
                "seq",
                format!("{} in the hello; it must be 1", m.seq),
            ));
        }
        if m.applied != 0 {
            return Err(InvalidPolicy::new(
                "applied",
                format!("{} in the hello; it must be 0", m.applied),
            ));
        }
        self.seq = 1;
        let id = m.dataplane_id.clone();
        Ok((id, message_from_wire(m)?))
    }

    /// A message after the hello: its `seq` one more than the last, its `applied` an answer
    /// already sent and not behind the last one.
    pub fn next(&mut self, m: pb::LeaseRequest) -> Result<Message, InvalidPolicy> {
        if m.hello {
            return Err(InvalidPolicy::new(
                "hello",
                "only the first message of a stream is a hello; open a new stream instead",
            ));
        }
        if Some(m.seq) != self.seq.checked_add(1) {
            return Err(InvalidPolicy::new(
                "seq",
                format!("{} after {}; it must increase by one", m.seq, self.seq),
            ));
        }
        if m.applied < self.applied || m.applied >= m.seq {
            return Err(InvalidPolicy::new(
                "applied",
                format!(
                    "{} is not an answer received (answers so far: {}, last applied: {})",
                    m.applied, self.seq, self.applied
                ),
            ));
        }
        if m.seq - m.applied > MAX_UNAPPLIED_ANSWERS {
            return Err(InvalidPolicy::new(
                "applied",
                format!(
                    "{} is {} answers behind; at most {MAX_UNAPPLIED_ANSWERS} may be unapplied",
                    m.applied,
                    m.seq - m.applied
                ),
            ));
        }
        self.seq = m.seq;
        self.applied = m.applied;
        message_from_wire(m)
    }
}

/// The asks and holdings of a message, checked (not its `seq` and `applied`: [`StreamCheck`]).
pub fn message_from_wire(m: pb::LeaseRequest) -> Result<Message, InvalidPolicy> {
    if m.asks.len() > MAX_LEASE_ASKS {
        return Err(InvalidPolicy::new(
            "asks",
            format!("{} in one message; at most {MAX_LEASE_ASKS}", m.asks.len()),
        ));
    }
    if m.holdings.len() > MAX_LEASE_HOLDINGS {
        return Err(InvalidPolicy::new(
            "holdings",
            format!(
                "{} in one message; at most {MAX_LEASE_HOLDINGS}",
                m.holdings.len()
            ),
        ));
    }
    let asks = m
        .asks
        .iter()
        .enumerate()
        .map(|(i, a)| ask_from_wire(a).map_err(|e| within(&format!("asks[{i}]"), e)))
        .collect::<Result<_, _>>()?;
    let holdings = m
        .holdings
        .iter()
        .enumerate()
        .map(|(i, h)| holding_from_wire(h).map_err(|e| within(&format!("holdings[{i}]"), e)))
        .collect::<Result<_, _>>()?;
    Ok(Message {
        seq: m.seq,
        applied: m.applied,
        asks,
        holdings,
    })
}

/// `e` of a field inside `parent`, as `parent/field`.
fn within(parent: &str, e: InvalidPolicy) -> InvalidPolicy {
    InvalidPolicy::new(format!("{parent}/{}", e.field), e.reason)
}

fn ask_from_wire(a: &pb::LeaseAsk) -> Result<Ask, InvalidPolicy> {
    let key = key_from_wire(a.key.as_ref(), true)?;
    let max = max_units(key.resource);
    units("want", a.want, max)?;
    units("need", a.need, max)?;
    Ok(Ask {
        key,
        want: a.want,
        need: a.need,
    })
}

fn holding_from_wire(h: &pb::LeaseHolding) -> Result<Holding, InvalidPolicy> {
    let key = key_from_wire(h.key.as_ref(), false)?;
    units("held", h.held, max_units(key.resource))?;
    if !key.resource.is_rate() && h.spent != 0 {
        return Err(InvalidPolicy::new(
            "spent",
            format!("must be 0 for {}", key.resource.as_str()),
        ));
    }
    if h.spent < 0 || h.spent > h.held {
        return Err(InvalidPolicy::new(
            "spent",
            format!("{} is not from 0 to held ({})", h.spent, h.held),
        ));
    }
    Ok(Holding {
        key,
        held: h.held,
        spent: h.spent,
    })
}

/// Checks a number of units: from 0 to the most any limit of the kind can be.
fn units(field: &str, v: i64, max: i64) -> Result<(), InvalidPolicy> {
    if (0..=max).contains(&v) {
        Ok(())
    } else {
        Err(InvalidPolicy::new(field, format!("{v} is not from 0 to {max}")))
    }
}

/// The largest limit of a resource.
fn max_units(resource: Resource) -> i64 {
    match resource {
        Resource::Requests | Resource::Tokens => i64::try_from(MAX_RATE_LIMIT).unwrap_or(i64::MAX),
        Resource::Concurrency => i64::from(MAX_CONCURRENCY_LIMIT),
        Resource::Spend(_) => MAX_CAP_NANO_USD,
    }
}

/// A lease key: exactly one scope, a resource, a cap period for spend (only), a period that
/// is not negative (0 for concurrency; in a holding of requests or tokens, a window).
fn key_from_wire(k: Option<&pb::LeaseKey>, in_ask: bool) -> Result<LeaseKey, InvalidPolicy> {
    let k = k.ok_or_else(|| InvalidPolicy::new("key", "is required"))?;
    let within = |e: InvalidPolicy| within("key", e);
    let scope = match (k.tenant_id, k.key_id.as_str()) {
        (0, "") => Err(InvalidPolicy::new(
            "tenant_id",
            "a lease names a tenant_id or a key_id",
        )),
        (id, "") => Ok(Scope::Tenant(id)),
        (0, key_id) => validate_key_id("key_id", key_id).map(|()| Scope::Key(key_id.to_owned())),
        (_, _) => Err(InvalidPolicy::new(
            "key_id",
            "a lease names a tenant_id or a key_id, not both",
        )),
    }
    .map_err(within)?;
    let resource = match pb::LeaseResource::try_from(k.resource) {
        Ok(pb::LeaseResource::Requests) => Resource::Requests,
        Ok(pb::LeaseResource::Tokens) => Resource::Tokens,
        Ok(pb::LeaseResource::Concurrency) => Resource::Concurrency,
        Ok(pb::LeaseResource::Spend) => {
            let period = CapPeriod::try_from(k.cap_period)
                .map_err(|_| {
                    InvalidPolicy::new("cap_period", "spend needs its cap's period: day, month or total")
                })
                .map_err(within)?;
            Resource::Spend(period)
        }
        Ok(pb::LeaseResource::Unspecified) | Err(_) => {
            return Err(within(InvalidPolicy::new(
                "resource",
                "must be requests, tokens, concurrency or spend",
            )));
        }
    };
    if !matches!(resource, Resource::Spend(_)) && k.cap_period != 0 {
        return Err(within(InvalidPolicy::new(
            "cap_period",
            "only a spend lease has one",
        )));
    }
    let period_error = match resource {
        _ if k.period < 0 => Some("must not be negative"),
        Resource::Concurrency if k.period != 0 => Some("must be 0 for concurrency"),
        Resource::Requests | Resource::Tokens if !in_ask && k.period == 0 => {
            Some("a holding names its window (Unix milliseconds / window_ms)")
        }
        _ => None,
    };
    if let Some(reason) = period_error {
        return Err(within(InvalidPolicy::new(
            "period",
            format!("{}: {reason}", k.period),
        )));
    }
    Ok(LeaseKey {
        scope,
        resource,
        period: k.period,
    })
}

fn key_to_wire(key: &LeaseKey) -> pb::LeaseKey {
    let (tenant_id, key_id) = match &key.scope {
        Scope::Tenant(id) => (*id, String::new()),
        Scope::Key(id) => (0, id.clone()),
    };
    let (resource, cap_period) = match key.resource {
        Resource::Requests => (pb::LeaseResource::Requests, 0),
        Resource::Tokens => (pb::LeaseResource::Tokens, 0),
        Resource::Concurrency => (pb::LeaseResource::Concurrency, 0),
        Resource::Spend(p) => (pb::LeaseResource::Spend, pb::CapPeriod::from(p) as i32),
    };
    pb::LeaseKey {
        tenant_id,
        key_id,
        resource: resource as i32,
        cap_period,
        period: key.period,
    }
}

fn grant_to_wire(g: Grant) -> pb::LeaseGrant {
    pb::LeaseGrant {
        key: Some(key_to_wire(&g.key)),
        amount: g.amount,
        period_end_unix_ms: g.period_end_unix_ms,
        limit: g.limit,
        remaining: g.remaining,
        retry_after_ms: g.retry_after_ms,
        spent: g.spent,
        unlimited: g.unlimited,
        unavailable: g.unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "key_0123456789abcdef";

    fn wire_key(resource: pb::LeaseResource, period: i64) -> pb::LeaseKey {
        pb::LeaseKey {
            tenant_id: 0,
            key_id: KEY.into(),
            resource: resource as i32,
            cap_period: 0,
            period,
        }
    }

    fn hello() -> pb::LeaseRequest {
        pb::LeaseRequest {
            dataplane_id: "dp-1".into(),
            hello: true,
            seq: 1,
            applied: 0,
            asks: vec![],
            holdings: vec![],
        }
    }

    fn next(seq: u64, applied: u64) -> pb::LeaseRequest {
        pb::LeaseRequest {
            dataplane_id: String::new(),
            hello: false,
            seq,
            applied,
            asks: vec![],
            holdings: vec![],
        }
    }

    fn field_of(r: Result<impl std::fmt::Debug, InvalidPolicy>) -> String {
        r.unwrap_err().field
    }

    #[test]
    fn a_stream_opens_with_a_hello_and_counts_its_messages() {
        let mut check = StreamCheck::default();
        assert_eq!(field_of(check.hello(next(1, 0))), "hello");
        let mut no_id = hello();
        no_id.dataplane_id.clear();
        assert_eq!(field_of(StreamCheck::default().hello(no_id)), "dataplane_id");
        let mut seq = hello();
        seq.seq = 2;
        assert_eq!(field_of(StreamCheck::default().hello(seq)), "seq");
        let mut applied = hello();
        applied.applied = 1;
        assert_eq!(field_of(StreamCheck::default().hello(applied)), "applied");

        let (id, message) = check.hello(hello()).unwrap();
        assert_eq!((id.as_str(), message.seq), ("dp-1", 1));
        assert_eq!(field_of(check.next(next(3, 1))), "seq", "a gap");
        assert_eq!(field_of(check.next(next(2, 2))), "applied", "not answered yet");
        assert_eq!(field_of(check.next(hello())), "hello", "a second hello");
        assert_eq!(check.next(next(2, 1)).unwrap().applied, 1);
        assert_eq!(field_of(check.next(next(3, 0))), "applied", "going back");
        assert_eq!(field_of(check.next(next(2, 1))), "seq", "a repeat");
        assert_eq!(check.next(next(3, 2)).unwrap().seq, 3);
    }

    #[test]
    fn an_answer_may_stay_unapplied_only_so_long() {
        let mut check = StreamCheck::default();
        check.hello(hello()).unwrap();
        for seq in 2..=MAX_UNAPPLIED_ANSWERS + 1 {
            check.next(next(seq, 1)).unwrap();
        }
        let e = check.next(next(MAX_UNAPPLIED_ANSWERS + 2, 1)).unwrap_err();
        assert!(e.reason.contains("answers behind"), "{e}");
    }

    #[test]
    fn lease_keys_name_exactly_one_scope_a_resource_and_a_fitting_period() {
        let ok = |k: pb::LeaseKey, in_ask| key_from_wire(Some(&k), in_ask);
        let requests = wire_key(pb::LeaseResource::Requests, 0);
        assert_eq!(ok(requests.clone(), true).unwrap().scope, Scope::Key(KEY.into()));
        assert_eq!(
            field_of(ok(requests.clone(), false)),
            "key/period",
            "a holding names its window"
        );
        let tenant = pb::LeaseKey {
            tenant_id: 9,
            key_id: String::new(),
            ..requests.clone()
        };
        assert_eq!(ok(tenant.clone(), true).unwrap().scope, Scope::Tenant(9));
        let both = pb::LeaseKey {
            key_id: KEY.into(),
            ..tenant.clone()
        };
        assert_eq!(field_of(ok(both, true)), "key/key_id");
        let none = pb::LeaseKey {
            tenant_id: 0,
            ..tenant
        };
        assert_eq!(field_of(ok(none, true)), "key/tenant_id");
        let bad_id = pb::LeaseKey {
            key_id: "nope".into(),
            ..requests.clone()
        };
        assert_eq!(field_of(ok(bad_id, true)), "key/key_id");
        assert_eq!(field_of(key_from_wire(None, true)), "key");
        for resource in [0, 9] {
            let k = pb::LeaseKey {
                resource,
                ..requests.clone()
            };
            assert_eq!(field_of(ok(k, true)), "key/resource");
        }
        let spend = wire_key(pb::LeaseResource::Spend, 0);
        assert_eq!(field_of(ok(spend.clone(), true)), "key/cap_period");
        let day = pb::LeaseKey {
            cap_period: pb::CapPeriod::Day as i32,
            ..spend
        };
        assert_eq!(
            ok(day.clone(), true).unwrap().resource,
            Resource::Spend(CapPeriod::Day)
        );
        let cap_on_requests = pb::LeaseKey {
            cap_period: pb::CapPeriod::Day as i32,
            ..requests.clone()
        };
        assert_eq!(field_of(ok(cap_on_requests, true)), "key/cap_period");
        let slots = wire_key(pb::LeaseResource::Concurrency, 5);
        assert_eq!(field_of(ok(slots, false)), "key/period");
        let negative = wire_key(pb::LeaseResource::Tokens, -1);
        assert_eq!(field_of(ok(negative, true)), "key/period");
        assert_eq!(key_to_wire(&ok(day.clone(), false).unwrap()), day);
    }

    #[test]
    fn asks_and_holdings_are_bounded_and_located() {
        let mut m = next(2, 1);
        m.asks = vec![
            pb::LeaseAsk {
                key: Some(wire_key(pb::LeaseResource::Requests, 0)),
                want: 10,
                need: 1,
            },
            pb::LeaseAsk {
                key: Some(wire_key(pb::LeaseResource::Requests, 0)),
                want: -1,
                need: 0,
            },
        ];
        let e = message_from_wire(m.clone()).unwrap_err();
        assert_eq!(e.field, "asks[1]/want");
        m.asks.pop();
        m.holdings = vec![pb::LeaseHolding {
            key: Some(wire_key(pb::LeaseResource::Requests, 100)),
            held: 5,
            spent: 6,
        }];
        assert_eq!(
            message_from_wire(m.clone()).unwrap_err().field,
            "holdings[0]/spent"
        );
        m.holdings[0].spent = 5;
        assert_eq!(message_from_wire(m.clone()).unwrap().holdings[0].held, 5);
        m.holdings[0].key = Some(wire_key(pb::LeaseResource::Concurrency, 0));
        assert_eq!(
            message_from_wire(m.clone()).unwrap_err().field,
            "holdings[0]/spent"
        );
        m.holdings[0].spent = 0;
        m.holdings[0].held = i64::from(MAX_CONCURRENCY_LIMIT) + 1;
        assert_eq!(
            message_from_wire(m.clone()).unwrap_err().field,
            "holdings[0]/held"
        );

        let mut many = next(2, 1);
        many.asks = vec![pb::LeaseAsk::default(); MAX_LEASE_ASKS + 1];
        assert_eq!(message_from_wire(many).unwrap_err().field, "asks");
        let mut many = next(2, 1);
        many.holdings = vec![pb::LeaseHolding::default(); MAX_LEASE_HOLDINGS + 1];
        assert_eq!(message_from_wire(many).unwrap_err().field, "holdings");
    }
}
