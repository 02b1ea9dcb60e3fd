//! Per-request policies of HTTP routes: `security.basic_auth`, `security.jwt`,
//! `security.rate_limit` and `action.http.cors`. The model only (serde); the HTTP layer
//! (`smartproxy-http`) reads the files they name when the configuration is loaded and runs
//! them per request.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

fn default_realm() -> String {
    "smartproxy".to_owned()
}

/// Accepts `"x"` as well as `["x", "y"]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// `security.basic_auth = { realm = "ops", htpasswd = "users.htpasswd" }`: HTTP Basic
/// authentication against an Apache htpasswd file (bcrypt `$2y$`/`$2b$`/`$2a$`, SHA-256-crypt
/// `$5$`, SHA-512-crypt `$6$`). The file is read when the configuration is loaded and again
/// on every reload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BasicAuth {
    /// The realm of the `WWW-Authenticate` challenge (default `"smartproxy"`).
    #[serde(default = "default_realm")]
    pub realm: String,
    /// The htpasswd file (`user:hash` lines, `#` comments).
    pub htpasswd: PathBuf,
}

impl BasicAuth {
    /// Basic authentication against `htpasswd` in the default realm.
    pub fn new(htpasswd: impl Into<PathBuf>) -> Self {
        Self { realm: default_realm(), htpasswd: htpasswd.into() }
    }
}

/// A JWS algorithm accepted by `security.jwt` (never `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (a shared secret).
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// Whether the algorithm uses a shared secret (HMAC).
    pub const fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }

    /// The name as written (`"RS256"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// `security.jwt`: a bearer token (`Authorization: Bearer <JWT>`) signed with one of
/// `algorithms` by a key of `jwks_file` (RSA, EC, OKP or `oct` keys of a JSON Web Key Set)
/// or by the secret in `secret_file` (HMAC), with `exp` required, `nbf`, `iss` and `aud`
/// checked.
///
/// ```toml
/// security = { jwt = { algorithms = ["RS256"], jwks_file = "jwks.json",
///                      issuer = "https://id.example", audience = "api" } }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtAuth {
    /// Algorithms accepted in the token header (at least one; `none` does not exist here).
    pub algorithms: Vec<JwtAlgorithm>,
    /// A JSON Web Key Set file (`{"keys": [...]}`); a token's `kid` picks the key when the
    /// set names its keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// A file holding the HMAC secret (its bytes, a trailing newline removed), for `HS*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Accepted `iss` values (one or a list; none: not checked).
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub issuer: Vec<String>,
    /// Accepted `aud` values (one or a list; none: a token with an `aud` claim is refused).
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf` (default 60 s).
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub leeway: Option<Duration>,
    /// Claims the token must carry, by name: the claim equals the value, is an array that
    /// contains it, or is a space-separated string (an OAuth `scope`) that lists it. A valid
    /// token without them gets a 403.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_claims: BTreeMap<String, String>,
    /// The realm of the `WWW-Authenticate: Bearer` challenge (default `"smartproxy"`).
    #[serde(default = "default_realm")]
    pub realm: String,
}

impl JwtAuth {
    /// Default clock skew on `exp` / `nbf`.
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

    /// Tokens of `algorithms` verified with the keys of `jwks_file`.
    pub fn with_jwks(algorithms: Vec<JwtAlgorithm>, jwks_file: impl Into<PathBuf>) -> Self {
        Self {
            algorithms,
            jwks_file: Some(jwks_file.into()),
            secret_file: None,
            issuer: Vec::new(),
            audience: Vec::new(),
            leeway: None,
            required_claims: BTreeMap::new(),
            realm: default_realm(),
        }
    }

    /// The clock skew in force.
    pub fn leeway(&self) -> Duration {
        self.leeway.unwrap_or(Self::DEFAULT_LEEWAY)
    }
}

/// `security.rate_limit = { requests = 100, window = "1m", key = "ip" }`: requests per
/// window and key on an HTTP route (GCRA: a burst of `requests`, then one every
/// `window / requests`); the next one gets a 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RequestRateLimit {
    /// Requests per window (at least 1).
    pub requests: u32,
    /// The window (default `"1m"`).
    #[serde(default = "default_window", with = "crate::duration")]
    pub window: Duration,
    /// What a budget belongs to: `"ip"` (default: the real client address) or
    /// `"header:NAME"` (the value of a request header, e.g. an API key; requests without the
    /// header are counted by client address).
    #[serde(default)]
    pub key: RateLimitKey,
}

fn default_window() -> Duration {
    Duration::from_secs(60)
}

impl RequestRateLimit {
    /// `requests` per `window`, keyed by client address.
    pub fn per_ip(requests: u32, window: Duration) -> Self {
        Self { requests, window, key: RateLimitKey::Ip }
    }
}

/// The key of a [`RequestRateLimit`]: `"ip"` or `"header:NAME"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum RateLimitKey {
    /// The real client address (after a PROXY header).
    #[default]
    Ip,
    /// A request header's value (the name as written; matched case-insensitively).
    Header(String),
}

impl<'de> Deserialize<'de> for RateLimitKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RateLimitKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"ip\" or \"header:NAME\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RateLimitKey, E> {
                match s.split_once(':') {
                    None if s == "ip" => Ok(RateLimitKey::Ip),
                    Some(("header", name)) => Ok(RateLimitKey::Header(name.trim().to_owned())),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for RateLimitKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Ip => s.serialize_str("ip"),
            Self::Header(h) => s.serialize_str(&format!("header:{h}")),
        }
    }
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].map(str::to_owned).to_vec()
}

/// `action.http.cors`: cross-origin requests from browsers. Preflights (`OPTIONS` with
/// `Origin` and `Access-Control-Request-Method`) are answered by the proxy (204, or 403 for
/// an origin, method or header that is not allowed); other requests from an allowed origin
/// get `Access-Control-Allow-Origin` (and the other response headers) added.
///
/// ```toml
/// http = { cors = { allowed_origins = ["https://app.example", "https://*.example.org"],
///                   allowed_headers = ["Authorization", "Content-Type"],
///                   allow_credentials = true, max_age = "10m" } }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Cors {
    /// `"https://app.example"` (scheme, host and port as the browser sends them),
    /// `"https://*.example.org"` (any subdomain), or `"*"` (any origin; not with credentials).
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for (default `GET HEAD POST PUT PATCH DELETE`).
    #[serde(default = "default_cors_methods")]
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for besides the CORS-safelisted ones (default
    /// none); `["*"]` allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_headers: Vec<String>,
    /// Response headers the page may read (`Access-Control-Expose-Headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_headers: Vec<String>,
    /// `Access-Control-Allow-Credentials: true` (cookies, `Authorization`); default false.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`).
    #[serde(default, with = "crate::duration::option", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

impl Cors {
    /// CORS for these origins, every other key at its default.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(origins: I) -> Self {
        Self {
            allowed_origins: origins.into_iter().map(Into::into).collect(),
            allowed_methods: default_cors_methods(),
            allowed_headers: Vec::new(),
            exposed_headers: Vec::new(),
            allow_credentials: false,
            max_age: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read() {
        #[derive(Deserialize)]
        struct S {
            basic_auth: BasicAuth,
            jwt: JwtAuth,
            rate_limit: RequestRateLimit,
            cors: Cors,
        }
        let s: S = toml::from_str(
            r#"
basic_auth = { htpasswd = "users.htpasswd" }
jwt = { algorithms = ["RS256", "ES256"], jwks_file = "jwks.json", issuer = "https://id.example", audience = ["api", "web"], leeway = "5s", required_claims = { scope = "read" } }
rate_limit = { requests = 100, key = "header:X-Api-Key" }
cors = { allowed_origins = ["*"] }
"#,
        )
        .unwrap();
        assert_eq!(s.basic_auth.realm, "smartproxy");
        assert_eq!(s.jwt.algorithms, [JwtAlgorithm::RS256, JwtAlgorithm::ES256]);
        assert_eq!(s.jwt.issuer, ["https://id.example"]);
        assert_eq!(s.jwt.audience, ["api", "web"]);
        assert_eq!(s.jwt.leeway(), Duration::from_secs(5));
        assert_eq!(s.rate_limit.window, Duration::from_secs(60));
        assert_eq!(s.rate_limit.key, RateLimitKey::Header("X-Api-Key".into()));
        assert_eq!(s.cors.allowed_methods.len(), 6);
        assert!(!s.cors.allow_credentials);
        for bad in [r#"key = "cookie:x""#, r#"key = "IP""#, r#"key = "ip:x""#] {
            let doc = format!("requests = 1\n{bad}");
            assert!(toml::from_str::<RequestRateLimit>(&doc).is_err(), "{bad}");
        }
        let err = toml::from_str::<JwtAuth>(r#"algorithms = ["none"]"#).unwrap_err();
        assert!(err.to_string().contains("none"), "{err}");
        let j = serde_json::to_string(&RateLimitKey::Header("X-Key".into())).unwrap();
        assert_eq!(j, "\"header:X-Key\"");
    }
}
