//! Rate limits and spend caps of a tenant or key: what the admin API accepts, what a data plane
//! receives, and the UTC calendar periods a cap counts over.

use std::num::{NonZeroU32, NonZeroU64};

use super::usage::{MS_PER_DAY, UtcDay};
use super::{InvalidPolicy, MAX_USAGE_NANO_USD};
use crate::pb;

/// Largest requests or tokens per window a limit may name.
pub const MAX_RATE_LIMIT: u64 = 1_000_000_000_000;
/// Largest concurrency limit.
pub const MAX_CONCURRENCY_LIMIT: u32 = 1_000_000;
/// Largest cap, nano-USD (1M USD), the same bound as a usage record's cost.
pub const MAX_CAP_NANO_USD: i64 = MAX_USAGE_NANO_USD;

/// Rate limits of one tenant or key; `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub rpm: Option<NonZeroU64>,
    pub tpm: Option<NonZeroU64>,
    pub concurrency: Option<NonZeroU32>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.concurrency.is_none()
    }
}

/// Checks one rate limit as given on input: at least 1, at most [`MAX_RATE_LIMIT`].
pub fn validate_rate_limit(field: &str, value: u64) -> Result<NonZeroU64, InvalidPolicy> {
    match NonZeroU64::new(value) {
        Some(v) if value <= MAX_RATE_LIMIT => Ok(v),
        _ => Err(InvalidPolicy::new(
            field,
            format!("{value} is not a limit: it must be from 1 to {MAX_RATE_LIMIT}"),
        )),
    }
}

/// Checks a concurrency limit as given on input: at least 1, at most [`MAX_CONCURRENCY_LIMIT`].
pub fn validate_concurrency_limit(field: &str, value: u32) -> Result<NonZeroU32, InvalidPolicy> {
    match NonZeroU32::new(value) {
        Some(v) if value <= MAX_CONCURRENCY_LIMIT => Ok(v),
        _ => Err(InvalidPolicy::new(
            field,
            format!("{value} is not a limit: it must be from 1 to {MAX_CONCURRENCY_LIMIT}"),
        )),
    }
}

impl TryFrom<Option<&pb::Limits>> for Limits {
    type Error = InvalidPolicy;

    /// On the wire, 0 means no limit.
    fn try_from(l: Option<&pb::Limits>) -> Result<Self, InvalidPolicy> {
        let Some(l) = l else {
            return Ok(Limits::default());
        };
        let rate = |field, v: u64| (v != 0).then(|| validate_rate_limit(field, v)).transpose();
        Ok(Limits {
            rpm: rate("limits.rpm", l.rpm)?,
            tpm: rate("limits.tpm", l.tpm)?,
            concurrency: (l.concurrency != 0)
                .then(|| validate_concurrency_limit("limits.concurrency", l.concurrency))
                .transpose()?,
        })
    }
}

impl From<&Limits> for Option<pb::Limits> {
    fn from(l: &Limits) -> Self {
        (!l.is_empty()).then(|| pb::Limits {
            rpm: l.rpm.map_or(0, NonZeroU64::get),
            tpm: l.tpm.map_or(0, NonZeroU64::get),
            concurrency: l.concurrency.map_or(0, NonZeroU32::get),
        })
    }
}

/// The UTC calendar period a cap counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CapPeriod {
    Day,
    Month,
    Total,
}

impl CapPeriod {
    pub const ALL: [CapPeriod; 3] = [CapPeriod::Day, CapPeriod::Month, CapPeriod::Total];

    pub fn as_str(self) -> &'static str {
        match self {
            CapPeriod::Day => "day",
            CapPeriod::Month => "month",
            CapPeriod::Total => "total",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        CapPeriod::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The period containing `unix_ms`: its start and end, Unix milliseconds. A total cap's
    /// period starts at 0 and never ends (`None`).
    pub fn bounds(self, unix_ms: i64) -> (i64, Option<i64>) {
        match self {
            CapPeriod::Day => {
                let start = UtcDay::of_unix_ms(unix_ms).start_unix_ms();
                (start, Some(start + MS_PER_DAY))
            }
            CapPeriod::Month => {
                let (year, month, _) = UtcDay::of_unix_ms(unix_ms).ymd();
                let first = |y, m| UtcDay::from_ymd(y, m, 1).map_or(0, |d| d.start_unix_ms());
                let (ny, nm) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (first(year, month), Some(first(ny, nm)))
            }
            CapPeriod::Total => (0, None),
        }
    }

    /// The start of the period containing `unix_ms`.
    pub fn start(self, unix_ms: i64) -> i64 {
        self.bounds(unix_ms).0
    }
}

impl TryFrom<i32> for CapPeriod {
    type Error = InvalidPolicy;

    fn try_from(v: i32) -> Result<Self, InvalidPolicy> {
        match pb::CapPeriod::try_from(v) {
            Ok(pb::CapPeriod::Day) => Ok(CapPeriod::Day),
            Ok(pb::CapPeriod::Month) => Ok(CapPeriod::Month),
            Ok(pb::CapPeriod::Total) => Ok(CapPeriod::Total),
            _ => Err(InvalidPolicy::new("period", "must be day, month or total")),
        }
    }
}

impl From<CapPeriod> for pb::CapPeriod {
    fn from(p: CapPeriod) -> Self {
        match p {
            CapPeriod::Day => pb::CapPeriod::Day,
            CapPeriod::Month => pb::CapPeriod::Month,
            CapPeriod::Total => pb::CapPeriod::Total,
        }
    }
}

/// A spend cap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cap {
    pub period: CapPeriod,
    /// Nano-USD, from 1 to [`MAX_CAP_NANO_USD`].
    pub limit_nano_usd: i64,
    /// In (0, 1): from this fraction on, responses carry a warning.
    pub soft_at: Option<f64>,
    /// A model without a price may be used (its cost counts as 0).
    pub allow_unpriced: bool,
}

/// Checks a cap's amount: from 1 to [`MAX_CAP_NANO_USD`] nano-USD.
pub fn validate_cap_amount(field: &str, nano_usd: i64) -> Result<(), InvalidPolicy> {
    if (1..=MAX_CAP_NANO_USD).contains(&nano_usd) {
        Ok(())
    } else {
        Err(InvalidPolicy::new(
            field,
            format!("{nano_usd} nano-USD is not a cap: it must be more than 0 and at most 1,000,000 USD"),
        ))
    }
}

/// Checks a soft-cap fraction: 0 means none, otherwise strictly between 0 and 1.
pub fn validate_soft_at(field: &str, soft_at: f64) -> Result<Option<f64>, InvalidPolicy> {
    if soft_at == 0.0 {
        Ok(None)
    } else if soft_at > 0.0 && soft_at < 1.0 {
        Ok(Some(soft_at))
    } else {
        Err(InvalidPolicy::new(
            field,
            format!("{soft_at} is not a fraction between 0 and 1 (both excluded)"),
        ))
    }
}

impl TryFrom<&pb::Cap> for Cap {
    type Error = InvalidPolicy;

    fn try_from(c: &pb::Cap) -> Result<Self, InvalidPolicy> {
        let period = CapPeriod::try_from(c.period).map_err(|e| e.within("cap"))?;
        validate_cap_amount("cap.limit_nano_usd", c.limit_nano_usd)?;
        Ok(Cap {
            period,
            limit_nano_usd: c.limit_nano_usd,
            soft_at: validate_soft_at("cap.soft_at", c.soft_at)?,
            allow_unpriced: c.allow_unpriced,
        })
    }
}

impl From<&Cap> for pb::Cap {
    fn from(c: &Cap) -> Self {
        pb::Cap {
            period: pb::CapPeriod::from(c.period).into(),
            limit_nano_usd: c.limit_nano_usd,
            soft_at: c.soft_at.unwrap_or(0.0),
            allow_unpriced: c.allow_unpriced,
        }
    }
}

/// Checks a list of caps from the wire: each valid, at most one per period.
pub fn caps_from_wire(caps: &[pb::Cap]) -> Result<Vec<Cap>, InvalidPolicy> {
    let mut out: Vec<Cap> = Vec::with_capacity(caps.len());
    for c in caps {
        let cap = Cap::try_from(c)?;
        if out.iter().any(|o| o.period == cap.period) {
            return Err(InvalidPolicy::new(
                "caps",
                format!("two caps for the period {}", cap.period.as_str()),
            ));
        }
        out.push(cap);
    }
    Ok(out)
}

/// What a data plane does with requests that need a lease when the control plane is away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnCpLoss {
    #[default]
    Open,
    Closed,
}

impl OnCpLoss {
    pub fn as_str(self) -> &'static str {
        match self {
            OnCpLoss::Open => "open",
            OnCpLoss::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(OnCpLoss::Open),
            "closed" => Some(OnCpLoss::Closed),
            _ => None,
        }
    }

    /// From the admin API's enum: `None` for unspecified.
    pub fn from_wire(v: i32) -> Result<Option<Self>, InvalidPolicy> {
        match pb::OnCpLoss::try_from(v) {
            Ok(pb::OnCpLoss::Unspecified) => Ok(None),
            Ok(pb::OnCpLoss::Open) => Ok(Some(OnCpLoss::Open)),
            Ok(pb::OnCpLoss::Closed) => Ok(Some(OnCpLoss::Closed)),
            Err(_) => Err(InvalidPolicy::new("on_cp_loss", "must be open or closed")),
        }
    }
}

impl From<OnCpLoss> for pb::OnCpLoss {
    fn from(o: OnCpLoss) -> Self {
        match o {
            OnCpLoss::Open => pb::OnCpLoss::Open,
            OnCpLoss::Closed => pb::OnCpLoss::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_on_the_wire_and_round_trip() {
        let wire = pb::Limits {
            rpm: 10,
            tpm: 0,
            concurrency: 3,
        };
        let l = Limits::try_from(Some(&wire)).unwrap();
        assert_eq!(l.rpm.map(NonZeroU64::get), Some(10));
        assert_eq!(l.tpm, None);
        assert_eq!(Option::<pb::Limits>::from(&l), Some(wire));
        assert_eq!(Option::<pb::Limits>::from(&Limits::default()), None);
        assert!(Limits::try_from(None).unwrap().is_empty());
        let too_many = pb::Limits {
            rpm: MAX_RATE_LIMIT + 1,
            ..Default::default()
        };
        assert_eq!(Limits::try_from(Some(&too_many)).unwrap_err().field, "limits.rpm");
        assert!(validate_rate_limit("rpm", 0).is_err());
        assert!(validate_concurrency_limit("concurrency", 0).is_err());
        assert!(validate_concurrency_limit("concurrency", MAX_CONCURRENCY_LIMIT + 1).is_err());
    }

    #[test]
    fn caps_are_checked() {
        let wire = pb::Cap {
            period: pb::CapPeriod::Month.into(),
            limit_nano_usd: 5_000_000_000,
            soft_at: 0.8,
            allow_unpriced: false,
        };
        let cap = Cap::try_from(&wire).unwrap();
        assert_eq!(cap.soft_at, Some(0.8));
        assert_eq!(pb::Cap::from(&cap), wire);
        for soft in [1.0, -0.1, 1.5, f64::NAN] {
            let w = pb::Cap {
                soft_at: soft,
                ..wire
            };
            assert_eq!(Cap::try_from(&w).unwrap_err().field, "cap.soft_at", "{soft}");
        }
        for amount in [0, -1, MAX_CAP_NANO_USD + 1] {
            let w = pb::Cap {
                limit_nano_usd: amount,
                ..wire
            };
            assert!(Cap::try_from(&w).is_err(), "{amount}");
        }
        let w = pb::Cap { period: 0, ..wire };
        assert!(Cap::try_from(&w).is_err());
        assert!(caps_from_wire(&[wire, wire]).is_err());
        let day = pb::Cap {
            period: pb::CapPeriod::Day.into(),
            ..wire
        };
        assert_eq!(caps_from_wire(&[wire, day]).unwrap().len(), 2);
    }

    #[test]
    fn periods_are_utc_calendar_periods() {
        let at = |y, m, d| UtcDay::from_ymd(y, m, d).unwrap().start_unix_ms();
        let t = at(2026, 12, 31) + 23 * 3_600_000 + 59 * 60_000;
        assert_eq!(CapPeriod::Day.bounds(t), (at(2026, 12, 31), Some(at(2027, 1, 1))));
        assert_eq!(
            CapPeriod::Month.bounds(t),
            (at(2026, 12, 1), Some(at(2027, 1, 1)))
        );
        assert_eq!(
            CapPeriod::Month.bounds(at(2028, 2, 29)),
            (at(2028, 2, 1), Some(at(2028, 3, 1)))
        );
        assert_eq!(CapPeriod::Total.bounds(t), (0, None));
        assert_eq!(CapPeriod::parse("month"), Some(CapPeriod::Month));
        assert_eq!(CapPeriod::parse("week"), None);
        assert_eq!(OnCpLoss::parse("closed"), Some(OnCpLoss::Closed));
        assert_eq!(OnCpLoss::from_wire(0).unwrap(), None);
        assert!(OnCpLoss::from_wire(7).is_err());
    }
}
