//! Why a piece of policy is invalid, and how error messages quote the input they refuse.

/// Why a piece of policy is invalid: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidPolicy {
    /// Path of the offending field, e.g. `route "gpt"/targets[1]/provider`.
    pub field: String,
    /// What is wrong, in words an operator can act on.
    pub reason: String,
}

impl InvalidPolicy {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(super) fn within(self, parent: &str) -> Self {
        Self {
            field: format!("{parent}/{}", self.field),
            reason: self.reason,
        }
    }
}

/// Characters of a value an error message quotes at most; the rest is summarised by its size.
pub const MAX_QUOTED_CHARS: usize = 64;

/// `value` quoted (Rust string escapes, as `{:?}` prints it) for an error message, cut after
/// [`MAX_QUOTED_CHARS`] characters so that huge input is never echoed back whole.
pub fn quoted(value: &str) -> String {
    let cut = head(value, MAX_QUOTED_CHARS);
    if cut.len() == value.len() {
        format!("{value:?}")
    } else {
        format!("{cut:?}... ({} bytes)", value.len())
    }
}

/// The first `max_chars` characters of `value`.
pub(super) fn head(value: &str, max_chars: usize) -> &str {
    value
        .char_indices()
        .nth(max_chars)
        .map_or(value, |(cut, _)| &value[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_cuts_huge_input() {
        assert_eq!(quoted("gpt"), "\"gpt\"");
        assert_eq!(quoted("a\nb"), "\"a\\nb\"");
        let exact = "x".repeat(MAX_QUOTED_CHARS);
        assert_eq!(quoted(&exact), format!("{exact:?}"));
        let huge = "é".repeat(100_000);
        let q = quoted(&huge);
        assert!(q.len() < 200, "{q}");
        assert!(q.ends_with("... (200000 bytes)"), "{q}");
    }
}
