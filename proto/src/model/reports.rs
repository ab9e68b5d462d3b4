//! What a data plane reports it cannot use of the serving snapshot: providers and route targets.

use super::{MAX_NAME_LEN, MAX_PROVIDER_NAME_LEN, MAX_REQUEST_MODEL_LEN};
use crate::pb;

/// Most unavailable providers a data plane's report is kept with (the rest are dropped).
pub const MAX_UNAVAILABLE_REPORTED: usize = 256;
/// Longest reason kept for an unavailable provider, bytes.
pub const MAX_UNAVAILABLE_REASON_LEN: usize = 512;

/// A provider of the serving snapshot that a data plane cannot send requests to, and why (for
/// operators; never the credential itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnavailableProvider {
    pub provider: String,
    pub reason: String,
}

impl UnavailableProvider {
    /// A data plane's report from the wire, bounded: at most [`MAX_UNAVAILABLE_REPORTED`]
    /// entries, names cut to [`MAX_PROVIDER_NAME_LEN`] and reasons to
    /// [`MAX_UNAVAILABLE_REASON_LEN`] bytes, control characters replaced by spaces.
    pub fn from_wire(list: &[pb::UnavailableProvider]) -> Vec<Self> {
        list.iter()
            .take(MAX_UNAVAILABLE_REPORTED)
            .map(|u| UnavailableProvider {
                provider: printable_prefix(&u.provider, MAX_PROVIDER_NAME_LEN),
                reason: printable_prefix(&u.reason, MAX_UNAVAILABLE_REASON_LEN),
            })
            .collect()
    }
}

impl From<&UnavailableProvider> for pb::UnavailableProvider {
    fn from(u: &UnavailableProvider) -> Self {
        pb::UnavailableProvider {
            provider: u.provider.clone(),
            reason: u.reason.clone(),
        }
    }
}

/// A route target of the serving snapshot that a data plane can never send requests to, and
/// why: its model cannot go to its provider's kind (see [`validate_target_model`]), as a store
/// written by an older version may hold. The admin API refuses such targets; a data plane
/// given one reports it instead of rejecting the whole snapshot.
///
/// [`validate_target_model`]: super::validate_target_model
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableTarget {
    /// The route's alias.
    pub route: String,
    /// `provider/model`.
    pub target: String,
    pub reason: String,
}

impl UnusableTarget {
    /// A data plane's report from the wire, bounded like [`UnavailableProvider::from_wire`]:
    /// at most [`MAX_UNAVAILABLE_REPORTED`] entries, routes cut to [`MAX_NAME_LEN`], targets to
    /// [`MAX_REQUEST_MODEL_LEN`] and reasons to [`MAX_UNAVAILABLE_REASON_LEN`] bytes.
    pub fn from_wire(list: &[pb::UnusableTarget]) -> Vec<Self> {
        list.iter()
            .take(MAX_UNAVAILABLE_REPORTED)
            .map(|u| UnusableTarget {
                route: printable_prefix(&u.route, MAX_NAME_LEN),
                target: printable_prefix(&u.target, MAX_REQUEST_MODEL_LEN),
                reason: printable_prefix(&u.reason, MAX_UNAVAILABLE_REASON_LEN),
            })
            .collect()
    }
}

impl From<&UnusableTarget> for pb::UnusableTarget {
    fn from(u: &UnusableTarget) -> Self {
        pb::UnusableTarget {
            route: u.route.clone(),
            target: u.target.clone(),
            reason: u.reason.clone(),
        }
    }
}

/// At most `max_bytes` of `s`, cut on a character boundary, control characters as spaces.
fn printable_prefix(s: &str, max_bytes: usize) -> String {
    let mut end = s.len().min(max_bytes);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_target_reports_are_bounded() {
        let long = pb::UnusableTarget {
            route: "r".repeat(10_000),
            target: format!("p/{}", "m\n".repeat(10_000)),
            reason: "é".repeat(10_000),
        };
        let list = UnusableTarget::from_wire(&vec![long; MAX_UNAVAILABLE_REPORTED + 1]);
        assert_eq!(list.len(), MAX_UNAVAILABLE_REPORTED);
        assert_eq!(list[0].route.len(), MAX_NAME_LEN);
        assert_eq!(list[0].target.len(), MAX_REQUEST_MODEL_LEN);
        assert!(!list[0].target.contains('\n'));
        assert!(list[0].reason.len() <= MAX_UNAVAILABLE_REASON_LEN);
        assert_eq!(pb::UnusableTarget::from(&list[0]).target, list[0].target);
    }

    #[test]
    fn unavailable_provider_reports_are_bounded() {
        let long = pb::UnavailableProvider {
            provider: "p".repeat(1000),
            reason: format!("{}\n{}", "r".repeat(100), "é".repeat(1000)),
        };
        let list = UnavailableProvider::from_wire(&vec![long; MAX_UNAVAILABLE_REPORTED + 10]);
        assert_eq!(list.len(), MAX_UNAVAILABLE_REPORTED);
        assert_eq!(list[0].provider.len(), MAX_PROVIDER_NAME_LEN);
        assert!(list[0].reason.len() <= MAX_UNAVAILABLE_REASON_LEN);
        assert!(!list[0].reason.contains('\n'));
        let back = pb::UnavailableProvider::from(&list[0]);
        assert_eq!(back.reason, list[0].reason);
    }
}
