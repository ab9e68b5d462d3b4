//! The first phase of a request: check that the body is JSON and read it whole, within a
//! size limit, a read timeout and the global budget of request-body bytes held in memory
//! ([`crate::budget`]).
//!
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::budget::{BodyBudget, BodyLimits, BodyPermit};
use crate::error::ProxyError;
use crate::formats::json::BodyError;

/// Whether the request says its body is JSON: `application/json` or `application/*+json`,
/// with any parameters. Browsers send other types (`text/plain`, forms) without asking the
/// server first, so refusing them keeps web pages from using the gateway through a
/// visitor's browser.
pub fn require_json(headers: &HeaderMap) -> Result<(), ProxyError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .is_some_and(|essence| {
            let (kind, subtype) = essence.split_at_checked(12).unwrap_or_default();
            kind.eq_ignore_ascii_case("application/")
                && (subtype.eq_ignore_ascii_case("json")
                    || subtype
                        .len()
                        .checked_sub(5)
                        .and_then(|at| subtype.get(at..))
                        .is_some_and(|suffix| suffix.eq_ignore_ascii_case("+json")))
        });
    if is_json {
        Ok(())
    } else {
        Err(ProxyError::UnsupportedMediaType)
    }
}

/// Reads the whole body: refused beyond `limits.max_bytes` (before reading, when the length
/// is declared), when it takes longer than `limits.read_timeout`, or when holding it would
/// take the buffered bodies over `budget`.
pub async fn read<'b>(
    headers: &HeaderMap,
    mut body: Body,
    limits: BodyLimits,
    budget: &'b BodyBudget,
) -> Result<(Bytes, BodyPermit<'b>), ProxyError> {
    let limit = limits.max_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ProxyError::TooLarge { limit });
    }
    let declared = declared.and_then(|len| usize::try_from(len).ok());
    let mut permit = budget.permit();
    if let Some(len) = declared {
        permit.reserve(len)?;
    }
    let deadline = Instant::now() + limits.read_timeout;
    // The common case is one frame: kept as is, without a copy.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ProxyError::BodyTimeout {
                    secs: limits.read_timeout.as_secs(),
                });
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(BodyError {
                    message: "could not read the request body".into(),
                    param: None,
                }
                .into());
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(ProxyError::TooLarge { limit });
        }
        permit.reserve(total)?;
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(head) => {
                joined.reserve(declared.unwrap_or(0).max(head.len() + data.len()));
                joined.extend_from_slice(&head);
                joined.extend_from_slice(&data);
            }
        }
    }
    let bytes = match first {
        Some(only) => only,
        None => joined.freeze(),
    };
    Ok((bytes, permit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::budget::{SMALL_BODY, budget_for, room_for};

    #[test]
    fn budget_for_is_the_smallest_budget_with_room_for_a_body() {
        for len in
            (0..64)
                .chain(SMALL_BODY - 8..SMALL_BODY + 64)
                .chain([32 << 20, (32 << 20) + 1, usize::MAX / 2])
        {
            let b = budget_for(len);
            assert!(room_for(b, len) >= len, "{len}: {b}");
            assert!(
                b == 0 || room_for(b - 1, len) < len,
                "{len}: {b} is not the smallest"
            );
        }
    }
    use http::HeaderValue;

    fn headers(content_type: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        h
    }

    #[test]
    fn only_json_bodies_are_accepted() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.api+json",
        ] {
            assert!(require_json(&headers(Some(ok))).is_ok(), "{ok}");
        }
        for refused in [
            None,
            Some("text/plain"),
            Some("text/plain; charset=utf-8"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("text/json"),
            Some("application/jsonx"),
            Some(""),
        ] {
            assert!(
                matches!(
                    require_json(&headers(refused)),
                    Err(ProxyError::UnsupportedMediaType)
                ),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn large_bodies_leave_the_last_eighth_to_small_ones() {
        let budget = BodyBudget::new(16 * SMALL_BODY);
        let mut large = budget.permit();
        large.reserve(14 * SMALL_BODY).unwrap();
        let mut larger = budget.permit();
        assert!(
            matches!(larger.reserve(SMALL_BODY + 1), Err(ProxyError::Overloaded)),
            "large bodies stop at seven eighths"
        );
        let mut small = budget.permit();
        small.reserve(SMALL_BODY).unwrap();
        small.reserve(2 * SMALL_BODY).unwrap_err();
        let mut other = budget.permit();
        other.reserve(SMALL_BODY).unwrap();
        assert_eq!(
            budget.buffered(),
            16 * SMALL_BODY,
            "small bodies may fill the budget"
        );
    }

    #[test]
    fn the_budget_is_shared_and_released() {
        let budget = BodyBudget::new(100);
        let mut a = budget.permit();
        a.reserve(60).unwrap();
        let mut b = budget.permit();
        assert!(matches!(b.reserve(41), Err(ProxyError::Overloaded)));
        assert_eq!(budget.buffered(), 60);
        b.reserve(40).unwrap();
        a.reserve(50).unwrap();
        assert_eq!(budget.buffered(), 100, "reserving less than held is a no-op");
        drop(a);
        assert_eq!(budget.buffered(), 40);
        drop(b);
        assert_eq!(budget.buffered(), 0);
    }

    const LIMITS: BodyLimits = BodyLimits {
        max_bytes: 1000,
        read_timeout: Duration::from_secs(5),
    };

    fn chunked(chunks: Vec<&'static [u8]>) -> Body {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn chunks_are_joined_and_counted_against_the_budget() {
        let budget = BodyBudget::new(1000);
        let (bytes, permit) = read(
            &headers(None),
            chunked(vec![b"ab", b"", b"cd", b"e"]),
            LIMITS,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(&bytes[..], b"abcde");
        assert_eq!(budget.buffered(), 5);
        drop(permit);
        assert_eq!(budget.buffered(), 0);
        let (bytes, _p) = read(&headers(None), Body::from("whole"), LIMITS, &budget)
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"whole");
    }

    #[tokio::test]
    async fn too_large_and_over_budget_are_refused() {
        let budget = BodyBudget::new(4);
        let err = read(&headers(None), chunked(vec![b"abc", b"de"]), LIMITS, &budget)
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Overloaded), "{err:?}");
        assert_eq!(budget.buffered(), 0, "a refused body releases what it reserved");
        let mut declared = headers(None);
        declared.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        let err = read(&declared, Body::from("abcde"), LIMITS, &budget)
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Overloaded), "{err:?}");
        declared.insert(CONTENT_LENGTH, HeaderValue::from_static("1001"));
        let err = read(&declared, Body::empty(), LIMITS, &budget).await.unwrap_err();
        assert!(matches!(err, ProxyError::TooLarge { limit: 1000 }), "{err:?}");
        let big = BodyBudget::new(10_000);
        let err = read(&headers(None), Body::from(vec![b'x'; 1001]), LIMITS, &big)
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::TooLarge { .. }), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let budget = BodyBudget::new(1000);
        use futures_util::StreamExt;
        let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{"))])
            .chain(futures_util::stream::pending());
        let err = read(&headers(None), Body::from_stream(stalled), LIMITS, &budget)
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::BodyTimeout { secs: 5 }), "{err:?}");
        assert_eq!(budget.buffered(), 0);
    }
}
