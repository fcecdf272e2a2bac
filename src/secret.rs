//! The Chatwoot API token, held so that it cannot leak by accident.
//!
//! Receives the token text (from `CHATWOOT_API_TOKEN` or `--token-file`); emits a header value
//! marked sensitive and a way to scrub the token out of text that came from elsewhere (a server
//! body quoted in an error). Invariant: no `Debug` path prints the token and there is no `Display`.

use std::fmt;

use reqwest::header::HeaderValue;

/// Why a token was refused before any request was sent.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the API token is empty: set CHATWOOT_API_TOKEN or pass --token-file PATH")]
    Empty,
    #[error(
        "the API token holds characters that cannot go in an HTTP header: copy it again from Profile settings"
    )]
    NotHeaderSafe,
}

/// A Chatwoot `api_access_token`. `Debug` prints `ApiToken(****)`.
#[derive(Clone)]
pub struct ApiToken {
    text: String,
    header: HeaderValue,
}

impl ApiToken {
    /// Accepts the token as read from the environment or a file; surrounding white space
    /// (a trailing newline in a token file) is not part of it.
    pub fn new(raw: &str) -> Result<Self, TokenError> {
        let text = raw.trim();
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        let mut header = HeaderValue::from_str(text).map_err(|_| TokenError::NotHeaderSafe)?;
        header.set_sensitive(true);
        Ok(Self {
            text: text.to_owned(),
            header,
        })
    }

    /// The value for the `api_access_token` header, marked sensitive so that HTTP-level
    /// logging never prints it.
    pub fn header_value(&self) -> HeaderValue {
        self.header.clone()
    }

    /// Returns `text` with every occurrence of the token replaced by `****`. Used on anything a
    /// server sent that ends up in an error message: a misbehaving proxy may echo headers back.
    pub fn scrub(&self, text: &str) -> String {
        text.replace(&self.text, "****")
    }

    /// Whether `candidate` is this token (the fake server's check).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.text.as_bytes() == candidate
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(****)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_token() {
        let token = ApiToken::new("s3cr3t-token\n").expect("valid token");
        assert_eq!(format!("{token:?}"), "ApiToken(****)");
        assert!(!format!("{:?}", token.header_value()).contains("s3cr3t"));
    }

    #[test]
    fn refuses_empty_and_unsafe_tokens() {
        assert!(matches!(ApiToken::new("  \n"), Err(TokenError::Empty)));
        assert!(matches!(
            ApiToken::new("a\u{1}b"),
            Err(TokenError::NotHeaderSafe)
        ));
    }

    #[test]
    fn scrub_removes_every_occurrence() {
        let token = ApiToken::new("abc123").expect("valid token");
        assert_eq!(token.scrub("x abc123 y abc123"), "x **** y ****");
    }
}
