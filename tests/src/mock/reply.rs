//! The deterministic answer the mock gives, whatever the wire format: the reply text, its token counts, how it
//! is cut into stream chunks, and embedding vectors. Same input, same output, so tests can assert exact values.

/// How many characters of the prompt the default reply echoes.
const ECHO_CHARS: usize = 64;

/// The reply to `prompt`: `fixed` if the test set one, else `"mock reply to: <prompt>"` with the prompt cut to
/// 64 characters. Whitespace is collapsed to single spaces, so the text splits into words losslessly.
pub(crate) fn text(prompt: &str, fixed: Option<&str>) -> String {
    let raw = match fixed {
        Some(fixed) => fixed.to_owned(),
        None => format!(
            "mock reply to: {}",
            prompt.chars().take(ECHO_CHARS).collect::<String>()
        ),
    };
    raw.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts `text` to at most `max_words` words. Returns the text and whether it was cut (finish reason "length").
pub(crate) fn limit(text: String, max_words: Option<u64>) -> (String, bool) {
    let Some(max) = max_words else {
        return (text, false);
    };
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if text.split(' ').count() <= max {
        return (text, false);
    }
    (text.split(' ').take(max).collect::<Vec<_>>().join(" "), true)
}

/// Tokens the mock charges for `chars` characters of input: one per four characters, rounded up.
pub(crate) fn tokens_for_chars(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX)
}

/// Tokens the mock charges for a reply: one per word.
pub(crate) fn tokens_for_reply(text: &str) -> u64 {
    u64::try_from(text.split_whitespace().count()).unwrap_or(u64::MAX)
}

/// Cuts `text` into `n` pieces whose concatenation is `text`: whole words when there are at least `n` words
/// (a piece after the first starts with its space), else runs of characters. Fewer pieces only when `text` has
/// fewer than `n` characters; none when it is empty.
pub(crate) fn pieces(text: &str, n: usize) -> Vec<String> {
    if text.is_empty() || n == 0 {
        return Vec::new();
    }
    let words: Vec<&str> = text.split(' ').collect();
    if words.len() >= n {
        let len = words.len();
        return (0..n)
            .map(|k| {
                let (from, to) = (k * len / n, (k + 1) * len / n);
                let piece = words[from..to].join(" ");
                if from == 0 { piece } else { format!(" {piece}") }
            })
            .collect();
    }
    let chars: Vec<char> = text.chars().collect();
    let len = chars.len();
    let n = n.min(len);
    (0..n)
        .map(|k| chars[k * len / n..(k + 1) * len / n].iter().collect())
        .collect()
}

/// A unit-length vector of `dims` floats derived from `input` (FNV-1a per component): equal inputs give equal
/// vectors, different inputs almost surely different ones.
pub(crate) fn embedding(input: &str, dims: usize) -> Vec<f32> {
    let raw: Vec<f64> = (0..dims)
        .map(|i| {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in (i as u64).to_le_bytes().iter().chain(input.as_bytes()) {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
            (hash % 2001) as f64 / 1000.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    raw.iter()
        .map(|v| if norm > 0.0 { (v / norm) as f32 } else { 0.0 })
        .collect()
}

/// Seconds since the Unix epoch, for `created` fields.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate_to_the_text() {
        let cases = [
            ("mock reply to: hello there my friend", 5, 5),
            ("mock reply to: hi", 5, 5),
            ("abc", 5, 3),
            ("one two", 1, 1),
            ("", 5, 0),
        ];
        for (text, n, expected) in cases {
            let got = pieces(text, n);
            assert_eq!(got.len(), expected, "{text:?} into {n}");
            assert_eq!(got.concat(), text, "{text:?} into {n}");
        }
    }

    #[test]
    fn word_pieces_keep_whole_words() {
        assert_eq!(pieces("a b c d e f", 3), ["a b", " c d", " e f"]);
    }

    #[test]
    fn reply_echoes_and_collapses_whitespace() {
        assert_eq!(text("hello\n  world", None), "mock reply to: hello world");
        assert_eq!(text("ignored", Some("fixed  answer")), "fixed answer");
        let long = "x".repeat(500);
        assert_eq!(text(&long, None).len(), "mock reply to: ".len() + 64);
    }

    #[test]
    fn limit_cuts_words() {
        assert_eq!(limit("a b c".into(), Some(2)), ("a b".into(), true));
        assert_eq!(limit("a b c".into(), Some(3)), ("a b c".into(), false));
        assert_eq!(limit("a b c".into(), None), ("a b c".into(), false));
    }

    #[test]
    fn token_counts() {
        assert_eq!(tokens_for_chars(0), 0);
        assert_eq!(tokens_for_chars(1), 1);
        assert_eq!(tokens_for_chars(8), 2);
        assert_eq!(tokens_for_chars(9), 3);
        assert_eq!(tokens_for_reply("mock reply to: hi"), 4);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hello", 8);
        assert_eq!(a, embedding("hello", 8));
        assert_ne!(a, embedding("hello!", 8));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
}
