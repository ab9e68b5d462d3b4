//! Pagination of the admin API's lists: keyset pages (`WHERE sort_key > after ORDER BY
//! sort_key LIMIT size + 1`), so a page costs the same wherever it is, and opaque tokens that
//! are only valid for the filters they were made with.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use drover_proto::model::InvalidPolicy;

/// Rows per page when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Most rows per page.
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// Longest page token accepted, bytes.
const MAX_TOKEN_LEN: usize = 1_024;

/// One page request: how many rows, after which sort key.
#[derive(Debug, Clone)]
pub struct Page {
    size: u32,
    /// The sort key of the last row of the previous page.
    pub after: Option<String>,
    /// What the token is bound to: the list and its filters.
    scope: String,
}

/// The token for the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken(String);

impl PageToken {
    pub fn into_wire(self) -> String {
        self.0
    }
}

impl Page {
    /// Reads `page_size` and `page_token` as a list with filters `scope` (e.g.
    /// `keys tenant=acme state=1`) received them.
    pub fn from_wire(page_size: u32, token: &str, scope: String) -> Result<Page, InvalidPolicy> {
        if page_size > MAX_PAGE_SIZE {
            return Err(InvalidPolicy::new(
                "page_size",
                format!("{page_size} is more than {MAX_PAGE_SIZE}"),
            ));
        }
        let size = if page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            page_size
        };
        let after = if token.is_empty() {
            None
        } else {
            Some(decode(token, &scope)?)
        };
        Ok(Page { size, after, scope })
    }

    /// Rows to fetch: one more than a page, to know whether another page follows.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.size) + 1
    }

    /// Cuts the fetched rows to a page, and makes the next page's token when there are more.
    pub fn cut<T>(&self, mut rows: Vec<T>, sort_key: impl Fn(&T) -> String) -> (Vec<T>, Option<PageToken>) {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        if rows.len() <= size {
            return (rows, None);
        }
        rows.truncate(size);
        let next = rows
            .last()
            .map(|last| PageToken(encode(&sort_key(last), &self.scope)));
        (rows, next)
    }
}

fn encode(after: &str, scope: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{scope}\n{after}"))
}

fn decode(token: &str, scope: &str) -> Result<String, InvalidPolicy> {
    let invalid = || InvalidPolicy::new("page_token", "is not a token this list returned");
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (made_for, after) = text.split_once('\n').ok_or_else(invalid)?;
    if made_for != scope {
        return Err(InvalidPolicy::new(
            "page_token",
            "was made for other filters; repeat the first call's filters",
        ));
    }
    Ok(after.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cut_and_tokens_bind_to_their_filters() {
        let page = Page::from_wire(2, "", "tenants".into()).unwrap();
        let (rows, next) = page.cut(vec!["a", "b", "c"], |s| (*s).to_owned());
        assert_eq!(rows, ["a", "b"]);
        let token = next.unwrap().into_wire();
        let second = Page::from_wire(2, &token, "tenants".into()).unwrap();
        assert_eq!(second.after.as_deref(), Some("b"));
        let (rows, next) = second.cut(vec!["c"], |s| (*s).to_owned());
        assert_eq!((rows, next), (vec!["c"], None));

        assert_eq!(
            Page::from_wire(2, &token, "tenants state=2".into())
                .unwrap_err()
                .field,
            "page_token"
        );
        assert!(Page::from_wire(2, "%%%", "tenants".into()).is_err());
        assert!(Page::from_wire(2, &"A".repeat(2_000), "tenants".into()).is_err());
        assert_eq!(
            Page::from_wire(1_001, "", "t".into()).unwrap_err().field,
            "page_size"
        );
        assert_eq!(Page::from_wire(0, "", "t".into()).unwrap().fetch_limit(), 101);
    }
}
