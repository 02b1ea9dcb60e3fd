//! The admin token: `Authorization: Bearer TOKEN`, or HTTP Basic with TOKEN as the password
//! (browsers prompt for Basic credentials and then send them with every request of the page,
//! the event stream included).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use crate::AdminState;

/// A non-blank token.
#[derive(Clone)]
pub(crate) struct Token(Arc<[u8]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub(crate) fn new(t: &str) -> Option<Self> {
        let t = t.trim();
        (!t.is_empty()).then(|| Self(t.as_bytes().into()))
    }

    /// Constant-time comparison (the time does not depend on where the bytes differ).
    fn matches(&self, given: &[u8]) -> bool {
        let want = &*self.0;
        let mut diff = u8::from(want.len() != given.len());
        for (i, w) in want.iter().enumerate() {
            diff |= w ^ given.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// The credential of an `Authorization` header: a bearer token, or a Basic password.
fn credential(value: &HeaderValue) -> Option<Vec<u8>> {
    let v = value.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        return decoded.get(colon + 1..).map(<[u8]>::to_vec);
    }
    None
}

/// Lets the request through when no token is set or it carries the token; `401` otherwise.
pub(crate) async fn require(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(token) = &st.token else { return next.run(req).await };
    let ok = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(credential)
        .any(|c| token.matches(&c));
    if ok {
        return next.run(req).await;
    }
    let given = req.headers().contains_key(header::AUTHORIZATION);
    tracing::debug!(path = %req.uri().path(), given, "admin API: missing or wrong token");
    let mut rsp = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "401 unauthorized: this admin API needs its token (Authorization: Bearer TOKEN)\n",
    )
        .into_response();
    let h = rsp.headers_mut();
    h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"smartproxy\""));
    // Browsers only prompt for Basic: the token is the password, any user name.
    h.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"smartproxy admin\", charset=\"UTF-8\""),
    );
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_credentials() {
        let t = Token::new(" abc123 ").unwrap();
        let b = |s: &str| credential(&HeaderValue::from_str(s).unwrap());
        assert!(t.matches(&b("Bearer abc123").unwrap()));
        assert!(t.matches(&b("bearer   abc123 ").unwrap()));
        assert!(!t.matches(&b("Bearer abc12").unwrap()));
        assert!(!t.matches(&b("Bearer abc1234").unwrap()));
        // "admin:abc123" and ":abc123"
        assert!(t.matches(&b("Basic YWRtaW46YWJjMTIz").unwrap()));
        assert!(t.matches(&b("Basic OmFiYzEyMw==").unwrap()));
        assert!(b("Basic !!!").is_none());
        assert!(b("Digest x").is_none());
        assert!(Token::new("  ").is_none());
    }
}
