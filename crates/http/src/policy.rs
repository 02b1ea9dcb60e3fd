//! The per-request policies of a proxied route, in their fixed order (after routing and the
//! route's allow/block lists):
//!
//! 1. CORS preflight (`http.cors`): answered here, 204 or 403; preflights carry no
//!    credentials, so they come before authentication;
//! 2. authentication (`security.basic_auth` or `security.jwt`): 401 with
//!    `WWW-Authenticate`, 403 for a valid token without the `required_claims`;
//! 3. request rate (`security.rate_limit`): 429 with `Retry-After`.
//!
//! Then the request is rewritten (path, headers), forwarded, and its response rewritten
//! (`Location`, CORS headers, header operations).

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use smartproxy_metrics::HttpPolicyReason;
use smartproxy_routing::{CompiledRoute, HttpOptions, JwtAuth};
use tokio::sync::Semaphore;

use crate::auth::{Credentials, Htpasswd, JwtKeys, RouteCredentials, Verified, alg_of};
use crate::cors::{CorsPolicy, CorsStep};

/// The compiled policies of one route (`None` in the route's state when it has none).
#[derive(Debug)]
pub(crate) struct Policies {
    pub(crate) cors: Option<CorsPolicy>,
    auth: Option<Auth>,
    /// The header a `rate_limit` is keyed by.
    rate_header: Option<HeaderName>,
}

#[derive(Debug)]
enum Auth {
    Basic(BasicPolicy),
    Jwt(Box<JwtPolicy>),
}

#[derive(Debug)]
struct BasicPolicy {
    challenge: HeaderValue,
    /// `None`: not loaded (every request is refused).
    store: Option<Arc<Htpasswd>>,
}

/// What a verified token leaves behind for later requests and for templates.
#[derive(Debug)]
pub(crate) struct TokenInfo {
    pub(crate) sub: Option<Box<str>>,
    exp: u64,
}

struct JwtPolicy {
    keys: Option<Arc<JwtKeys>>,
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
    required: Box<[(Box<str>, Box<str>)]>,
    realm: Box<str>,
    challenge: HeaderValue,
    /// Tokens verified before, under a keyed SHA-256 of the token.
    verified: Verified<Arc<TokenInfo>>,
}

impl std::fmt::Debug for JwtPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtPolicy")
            .field("keys", &self.keys.as_ref().map(|k| k.len()))
            .field("leeway", &self.leeway)
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

/// A request the policies let through, with what later steps need.
#[derive(Debug, Default)]
pub(crate) struct Passed {
    /// The verified token (`{jwt.sub}`).
    pub(crate) token: Option<Arc<TokenInfo>>,
    /// `Access-Control-Allow-Origin` of an allowed CORS request.
    pub(crate) cors: Option<HeaderValue>,
}

/// Why the policies answer a request themselves.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A CORS preflight, answered 204 with these headers.
    Preflight(HeaderMap),
    /// A refusal.
    Refused(Refusal),
}

/// A refusal (401, 403, 429) and its headers.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) reason: HttpPolicyReason,
    pub(crate) detail: &'static str,
    pub(crate) www_authenticate: Option<HeaderValue>,
    pub(crate) retry_after: Option<u64>,
    /// The CORS origin of the request, when allowed (browsers then see the refusal).
    pub(crate) cors: Option<HeaderValue>,
}

impl Refusal {
    fn new(reason: HttpPolicyReason, detail: &'static str) -> Self {
        Self { reason, detail, www_authenticate: None, retry_after: None, cors: None }
    }

    fn challenge(mut self, v: HeaderValue) -> Self {
        self.www_authenticate = Some(v);
        self
    }
}

fn quoted(realm: &str) -> String {
    // The realm was validated: printable ASCII without `"` or `\`.
    format!("realm=\"{realm}\"")
}

impl Policies {
    /// The policies of `route` (with its `http` table), or `None` when it has none.
    pub(crate) fn compile(
        route: &CompiledRoute,
        http: &HttpOptions,
        creds: Option<&Credentials>,
    ) -> Option<Box<Self>> {
        let sec = route.config().security.as_ref();
        let loaded = creds.and_then(|c| c.get(route.name()));
        let auth = match (
            sec.and_then(|s| s.basic_auth.as_ref()),
            sec.and_then(|s| s.jwt.as_deref()),
        ) {
            (Some(b), _) => {
                let store = match loaded {
                    Some(RouteCredentials::Basic(h)) => Some(Arc::clone(h)),
                    _ => {
                        tracing::warn!(
                            route = route.name(),
                            "basic_auth: the htpasswd file was not loaded; every request is refused"
                        );
                        None
                    }
                };
                let challenge = format!("Basic {}, charset=\"UTF-8\"", quoted(&b.realm));
                Some(Auth::Basic(BasicPolicy {
                    challenge: HeaderValue::from_str(&challenge)
                        .unwrap_or(HeaderValue::from_static("Basic")),
                    store,
                }))
            }
            (None, Some(j)) => {
                let keys = match loaded {
                    Some(RouteCredentials::Jwt(k)) => Some(Arc::clone(k)),
                    _ => {
                        tracing::warn!(
                            route = route.name(),
                            "jwt: the keys were not loaded; every request is refused"
                        );
                        None
                    }
                };
                Some(Auth::Jwt(Box::new(JwtPolicy::new(j, keys))))
            }
            (None, None) => None,
        };
        let rate = route.limits().requests();
        let rate_header =
            rate.and_then(|r| r.header()).and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        let cors = http.cors.as_deref().map(CorsPolicy::compile);
        (auth.is_some() || rate.is_some() || cors.is_some())
            .then(|| Box::new(Self { cors, auth, rate_header }))
    }
}

impl JwtPolicy {
    fn new(j: &JwtAuth, keys: Option<Arc<JwtKeys>>) -> Self {
        let leeway = j.leeway().as_secs();
        let validations = j
            .algorithms
            .iter()
            .map(|a| {
                let alg = alg_of(*a);
                let mut v = Validation::new(alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                let mut required = vec!["exp"];
                if !j.issuer.is_empty() {
                    v.set_issuer(&j.issuer);
                    required.push("iss");
                }
                if !j.audience.is_empty() {
                    v.set_audience(&j.audience);
                    required.push("aud");
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        let challenge = format!("Bearer {}", quoted(&j.realm));
        Self {
            keys,
            validations,
            leeway,
            required: j
                .required_claims
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
            realm: j.realm.as_str().into(),
            challenge: HeaderValue::from_str(&challenge)
                .unwrap_or(HeaderValue::from_static("Bearer")),
            verified: Verified::new(),
        }
    }

    fn error(&self, error: &str, description: &str) -> HeaderValue {
        let v = format!(
            "Bearer {}, error=\"{error}\", error_description=\"{description}\"",
            quoted(&self.realm)
        );
        HeaderValue::from_str(&v).unwrap_or_else(|_| self.challenge.clone())
    }

    fn invalid(&self, description: &'static str) -> Refusal {
        Refusal::new(HttpPolicyReason::AuthInvalid, description)
            .challenge(self.error("invalid_token", description))
    }

    fn check(&self, headers: &HeaderMap) -> Result<Arc<TokenInfo>, Refusal> {
        let Some(token) = credentials(headers, "bearer") else {
            return Err(Refusal::new(HttpPolicyReason::AuthMissing, "no bearer token")
                .challenge(self.challenge.clone()));
        };
        let Some(keys) = &self.keys else {
            return Err(self.invalid("the route's keys are not loaded"));
        };
        let now = jsonwebtoken::get_current_timestamp();
        let digest = self.verified.digest(&[token]);
        if let Some(info) = self.verified.get(&digest) {
            return if info.exp.saturating_add(self.leeway) < now {
                Err(self.invalid("the token expired"))
            } else {
                Ok(info)
            };
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Err(self.invalid("malformed token"));
        };
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(self.invalid("algorithm not accepted"));
        };
        let mut last = self.invalid("no key for the token");
        let mut claims = None;
        for key in keys.candidates(header.alg, header.kid.as_deref()) {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, key, validation,
            ) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => {
                    let signature = matches!(e.kind(), ErrorKind::InvalidSignature);
                    last = self.invalid(describe(e.kind()));
                    if !signature {
                        break;
                    }
                }
            }
        }
        let Some(claims) = claims else { return Err(last) };
        for (name, want) in self.required.iter() {
            if !claim_has(claims.get(&**name), want) {
                return Err(Refusal::new(
                    HttpPolicyReason::AuthForbidden,
                    "a required claim is missing",
                )
                .challenge(self.error("insufficient_scope", "a required claim is missing")));
            }
        }
        let num = |k: &str| claims.get(k).and_then(serde_json::Value::as_u64);
        let info = Arc::new(TokenInfo {
            sub: claims.get("sub").and_then(serde_json::Value::as_str).map(Into::into),
            exp: num("exp").unwrap_or(0),
        });
        // A token that is not valid yet (`nbf`) was refused above; remembered, it stays
        // valid until `exp` (plus the leeway).
        self.verified.insert(digest, Arc::clone(&info));
        Ok(info)
    }
}

/// A fixed description of a token error (never the token's own text).
fn describe(k: &ErrorKind) -> &'static str {
    match k {
        ErrorKind::ExpiredSignature => "the token expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "a registered claim is missing",
        ErrorKind::InvalidClaimFormat(_) => "a registered claim is malformed",
        _ => "malformed token",
    }
}

/// Whether a claim carries `want`: equal to it, an array that contains it, or a
/// space-separated list (an OAuth `scope`) that lists it.
fn claim_has(v: Option<&serde_json::Value>, want: &str) -> bool {
    match v {
        Some(serde_json::Value::String(s)) => s == want || s.split(' ').any(|w| w == want),
        Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(want)),
        Some(serde_json::Value::Bool(b)) => want == if *b { "true" } else { "false" },
        Some(serde_json::Value::Number(n)) => n.to_string() == want,
        _ => false,
    }
}

/// The credentials of an `Authorization: <scheme> <credentials>` header (scheme compared
/// case-insensitively; `scheme` lower-case).
fn credentials<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a [u8]> {
    let v = headers.get(header::AUTHORIZATION)?.as_bytes();
    let n = scheme.len();
    if v.len() <= n || !v[..n].eq_ignore_ascii_case(scheme.as_bytes()) || v[n] != b' ' {
        return None;
    }
    let rest = v[n..].trim_ascii();
    (!rest.is_empty()).then_some(rest)
}

/// Bcrypt / sha-crypt checks in flight on blocking threads, at most one per CPU: a flood of
/// wrong passwords queues here instead of taking every core.
fn verify_permits() -> &'static Semaphore {
    static P: OnceLock<Semaphore> = OnceLock::new();
    P.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
    })
}

/// A Basic check the cache did not know: the slow hash, on a blocking thread.
struct SlowBasic {
    store: Arc<Htpasswd>,
    user: Vec<u8>,
    password: Vec<u8>,
    digest: [u8; 32],
}

impl SlowBasic {
    async fn run(self) -> bool {
        let Ok(_permit) = verify_permits().acquire().await else { return false };
        let Self { store, user, password, digest } = self;
        tokio::task::spawn_blocking(move || store.verify_slow(&user, &password, digest))
            .await
            .unwrap_or(false)
    }
}

enum BasicStep {
    Pass,
    Refuse(Refusal),
    Slow(SlowBasic),
}

/// Per connection: the last `Authorization` value that passed a `basic_auth` route, and the
/// password file it passed against. Clients send the same credentials with every request of
/// a kept-alive connection; the same bytes against the same file (a reload that re-reads the
/// file makes a new one) pass without the base64 decode, the keyed hash and the shared cache.
/// The bytes are compared in constant time.
#[derive(Debug, Default)]
pub(crate) struct BasicMemo(parking_lot::Mutex<Option<Remembered>>);

/// The password file a value passed against, and the value.
type Remembered = (std::sync::Weak<Htpasswd>, Box<[u8]>);

impl BasicMemo {
    fn knows(&self, store: &Arc<Htpasswd>, value: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.lock().as_ref().is_some_and(|(s, v)| {
            std::ptr::eq(s.as_ptr(), Arc::as_ptr(store)) && bool::from(v.as_ref().ct_eq(value))
        })
    }

    fn remember(&self, store: &Arc<Htpasswd>, value: &[u8]) {
        *self.0.lock() = Some((Arc::downgrade(store), value.into()));
    }
}

impl BasicPolicy {
    fn check(&self, headers: &HeaderMap, memo: &BasicMemo) -> BasicStep {
        if let (Some(store), Some(v)) = (&self.store, headers.get(header::AUTHORIZATION))
            && memo.knows(store, v.as_bytes())
        {
            return BasicStep::Pass;
        }
        let Some(b64) = credentials(headers, "basic") else {
            return BasicStep::Refuse(
                Refusal::new(HttpPolicyReason::AuthMissing, "no basic credentials")
                    .challenge(self.challenge.clone()),
            );
        };
        let invalid = || {
            BasicStep::Refuse(
                Refusal::new(HttpPolicyReason::AuthInvalid, "wrong user or password")
                    .challenge(self.challenge.clone()),
            )
        };
        let Some(store) = &self.store else { return invalid() };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return invalid();
        };
        let Some(colon) = raw.iter().position(|b| *b == b':').filter(|i| *i > 0) else {
            return invalid();
        };
        let (user, password) = (&raw[..colon], &raw[colon + 1..]);
        match store.known(user, password) {
            None => {
                if let Some(v) = headers.get(header::AUTHORIZATION) {
                    memo.remember(store, v.as_bytes());
                }
                BasicStep::Pass
            }
            Some(digest) => BasicStep::Slow(SlowBasic {
                store: Arc::clone(store),
                user: user.to_vec(),
                password: password.to_vec(),
                digest,
            }),
        }
    }
}

/// Runs the policies of a request of `route` in their order (module docs).
pub(crate) async fn run<B>(
    client: std::net::IpAddr,
    route: &CompiledRoute,
    pol: &Policies,
    req: &Request<B>,
    memo: &BasicMemo,
) -> Result<Passed, Stop> {
    let mut passed = Passed::default();
    if let Some(c) = &pol.cors {
        match c.step(req) {
            CorsStep::None => {}
            CorsStep::Allowed(v) => passed.cors = Some(v),
            CorsStep::Preflight(h) => return Err(Stop::Preflight(h)),
            CorsStep::Refused(why) => {
                return Err(Stop::Refused(Refusal::new(HttpPolicyReason::CorsRefused, why)));
            }
        }
    }
    let with_cors = |mut r: Refusal, cors: &Option<HeaderValue>| {
        r.cors.clone_from(cors);
        Stop::Refused(r)
    };
    match &pol.auth {
        None => {}
        Some(Auth::Basic(b)) => match b.check(req.headers(), memo) {
            BasicStep::Pass => {}
            BasicStep::Refuse(r) => return Err(with_cors(r, &passed.cors)),
            BasicStep::Slow(job) => {
                // Boxed: rare (once per user and password), and its state would make every
                // request's future larger.
                if !Box::pin(job.run()).await {
                    let r = Refusal::new(HttpPolicyReason::AuthInvalid, "wrong user or password")
                        .challenge(b.challenge.clone());
                    return Err(with_cors(r, &passed.cors));
                }
            }
        },
        Some(Auth::Jwt(j)) => match j.check(req.headers()) {
            Ok(info) => passed.token = Some(info),
            Err(r) => return Err(with_cors(r, &passed.cors)),
        },
    }
    if let Some(limit) = route.limits().requests() {
        let value =
            pol.rate_header.as_ref().and_then(|h| req.headers().get(h)).map(HeaderValue::as_bytes);
        if let Err(e) = limit.check(client, value) {
            let mut r = Refusal::new(HttpPolicyReason::RateLimited, "rate limit exceeded");
            // Whole seconds, rounded up: never an invitation to come back too early.
            r.retry_after =
                Some(e.retry_after.as_secs() + u64::from(e.retry_after.subsec_nanos() > 0));
            return Err(with_cors(r, &passed.cors));
        }
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-connection memo passes only the same bytes against the same password file.
    #[test]
    fn basic_memo_needs_the_same_value_and_file() {
        let file = || {
            Arc::new(
                Htpasswd::parse(
                    "alice:$2y$04$abcdefghijklmnopqrstuu5vJ1m1TeL/ma1yYqwM8tYqAq5IOQ5CS\n",
                )
                .unwrap(),
            )
        };
        let (a, b) = (file(), file());
        let memo = BasicMemo::default();
        assert!(!memo.knows(&a, b"Basic YWxpY2U6czNjcmV0"), "empty");
        memo.remember(&a, b"Basic YWxpY2U6czNjcmV0");
        assert!(memo.knows(&a, b"Basic YWxpY2U6czNjcmV0"));
        assert!(!memo.knows(&a, b"Basic YWxpY2U6czNjcmV1"), "other bytes");
        assert!(!memo.knows(&a, b"Basic YWxpY2U6czNjcmV0 "), "other length");
        assert!(!memo.knows(&b, b"Basic YWxpY2U6czNjcmV0"), "another file (a reload)");
        drop(a);
        let c = file();
        assert!(!memo.knows(&c, b"Basic YWxpY2U6czNjcmV0"), "a file made after the old one went");
    }

    #[test]
    fn authorization_schemes() {
        let mut h = HeaderMap::new();
        assert_eq!(credentials(&h, "basic"), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("BASIC  YTpi "));
        assert_eq!(credentials(&h, "basic"), Some(&b"YTpi"[..]));
        assert_eq!(credentials(&h, "bearer"), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic"));
        assert_eq!(credentials(&h, "basic"), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basicx YTpi"));
        assert_eq!(credentials(&h, "basic"), None);
    }

    #[test]
    fn claims() {
        use serde_json::json;
        assert!(claim_has(Some(&json!("read write")), "write"));
        assert!(claim_has(Some(&json!("admin")), "admin"));
        assert!(!claim_has(Some(&json!("readonly")), "read"));
        assert!(claim_has(Some(&json!(["a", "b"])), "b"));
        assert!(claim_has(Some(&json!(true)), "true"));
        assert!(claim_has(Some(&json!(42)), "42"));
        assert!(!claim_has(None, "x"));
        assert!(!claim_has(Some(&json!({"a": 1})), "a"));
    }
}
