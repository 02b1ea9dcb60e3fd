//! Credentials of the authenticating routes: htpasswd files (`security.basic_auth`) and JWT
//! keys (`security.jwt`), read when the configuration is loaded ([`Credentials::load`]), and
//! the checks that run per request, with a bounded cache of what was verified.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use smartproxy_routing::{RouteConfig, ValidationError};

/// Entries of a verification cache (per htpasswd file or JWT key set).
const CACHE_ENTRIES: usize = 4096;

/// The smallest HMAC secret accepted (RFC 7518 §3.2: at least the hash output size).
pub const MIN_HMAC_SECRET: usize = 32;

/// What was verified already, under a keyed SHA-256 of the secret (never the secret
/// itself): a Basic user and password, or a whole bearer token. Bounded; an arbitrary entry
/// makes room.
#[derive(Debug)]
pub(crate) struct Verified<V> {
    key: [u8; 32],
    map: Mutex<HashMap<[u8; 32], V>>,
}

impl<V: Clone> Verified<V> {
    pub(crate) fn new() -> Self {
        // Four independent draws of the process's random hash keys.
        let mut key = [0u8; 32];
        for (i, chunk) in key.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&RandomState::new().hash_one(i).to_le_bytes());
        }
        Self { key, map: Mutex::new(HashMap::new()) }
    }

    /// A digest of `parts` under this cache's key (each part length-prefixed).
    pub(crate) fn digest(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        h.finalize().into()
    }

    pub(crate) fn get(&self, d: &[u8; 32]) -> Option<V> {
        self.map.lock().get(d).cloned()
    }

    pub(crate) fn insert(&self, d: [u8; 32], v: V) {
        let mut m = self.map.lock();
        if m.len() >= CACHE_ENTRIES
            && let Some(k) = m.keys().next().copied()
        {
            m.remove(&k);
        }
        m.insert(d, v);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// A problem in an htpasswd file: its line (1-based) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
#[non_exhaustive]
pub struct HtpasswdError {
    /// The line.
    pub line: usize,
    /// What is wrong (never the hash itself).
    pub message: String,
}

#[derive(Debug, Clone)]
enum PwHash {
    Bcrypt(Box<str>),
    Sha256(Box<str>),
    Sha512(Box<str>),
}

impl PwHash {
    /// The full (slow) check.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Self::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Self::Sha256(h) => {
                std::str::from_utf8(password).is_ok_and(|p| sha_crypt::sha256_check(p, h).is_ok())
            }
            Self::Sha512(h) => {
                std::str::from_utf8(password).is_ok_and(|p| sha_crypt::sha512_check(p, h).is_ok())
            }
        }
    }
}

/// The users of an htpasswd file (`user:hash` lines; `#` comments and blank lines skipped)
/// with the hashes Apache's `htpasswd` writes: bcrypt (`-B`: `$2y$`, also `$2a$`/`$2b$`),
/// SHA-256-crypt (`-2`: `$5$`) and SHA-512-crypt (`-5`: `$6$`). MD5 (`$apr1$`, `-m`, the
/// old default), SHA-1 (`{SHA}`), `crypt(3)` and plain text are refused: they are too fast to
/// brute-force.
///
/// Checks compare in constant time (bcrypt and sha-crypt compare their outputs with `subtle`);
/// an unknown user is checked against another user's hash, so it takes as long as a wrong
/// password. A successful check is remembered (a keyed SHA-256 of user and password, at most
/// 4096) so that a client sending the same credentials on every request pays the slow hash
/// once.
#[derive(Debug)]
pub struct Htpasswd {
    users: HashMap<Box<str>, PwHash>,
    /// A hash of the file, checked for unknown users.
    decoy: PwHash,
    verified: Verified<()>,
}

impl Htpasswd {
    /// Parses the text of an htpasswd file. Every user needs a supported hash; an empty file
    /// (no user) is an error too.
    pub fn parse(text: &str) -> Result<Self, HtpasswdError> {
        let mut users = HashMap::new();
        let mut decoy = None;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let err = |message: String| HtpasswdError { line, message };
            let Some((user, hash)) = l.split_once(':') else {
                return Err(err("expected `user:hash`".into()));
            };
            if user.is_empty() {
                return Err(err("the user name is empty".into()));
            }
            let h = hash_of(hash.trim()).map_err(err)?;
            if users.contains_key(user) {
                return Err(err(format!("user `{user}` is listed twice")));
            }
            decoy.get_or_insert_with(|| h.clone());
            users.insert(user.into(), h);
        }
        let Some(decoy) = decoy else {
            return Err(HtpasswdError { line: 0, message: "no user in the file".into() });
        };
        Ok(Self { users, decoy, verified: Verified::new() })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there is no user (never, for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` and `password` were verified before (cheap: one keyed SHA-256 and a
    /// map lookup).
    pub(crate) fn known(&self, user: &[u8], password: &[u8]) -> Option<[u8; 32]> {
        let d = self.verified.digest(&[user, password]);
        match self.verified.get(&d) {
            Some(()) => None,
            None => Some(d),
        }
    }

    /// The full check (slow on purpose: bcrypt / sha-crypt rounds); a success is remembered
    /// under `digest` (from [`Htpasswd::known`]).
    pub(crate) fn verify_slow(&self, user: &[u8], password: &[u8], digest: [u8; 32]) -> bool {
        let ok = match std::str::from_utf8(user).ok().and_then(|u| self.users.get(u)) {
            Some(h) => h.verify(password),
            None => {
                // As long as a wrong password.
                let _ = self.decoy.verify(password);
                false
            }
        };
        if ok {
            self.verified.insert(digest, ());
        }
        ok
    }

    /// Checks `user` and `password` (the cache first). For tests and library users; the
    /// HTTP layer runs the slow path on a blocking thread.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        match self.known(user.as_bytes(), password.as_bytes()) {
            None => true,
            Some(d) => self.verify_slow(user.as_bytes(), password.as_bytes(), d),
        }
    }
}

fn hash_of(h: &str) -> Result<PwHash, String> {
    let weak = |what: &str| {
        Err(format!(
            "{what} is not accepted (too fast to brute-force); write the password with \
             `htpasswd -B` (bcrypt), `-5` (SHA-512-crypt) or `-2` (SHA-256-crypt)"
        ))
    };
    if let Some(rest) =
        h.strip_prefix("$2y$").or_else(|| h.strip_prefix("$2b$")).or_else(|| h.strip_prefix("$2a$"))
    {
        // cost (2 digits, 4..=31) `$` and 53 characters of salt and hash.
        let ok = rest.len() == 56
            && rest.as_bytes().get(2) == Some(&b'$')
            && rest[..2].parse::<u32>().is_ok_and(|c| (4..=31).contains(&c))
            && rest[3..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
        return if ok { Ok(PwHash::Bcrypt(h.into())) } else { Err("malformed bcrypt hash".into()) };
    }
    for (prefix, len) in [("$5$", 43), ("$6$", 86)] {
        let Some(rest) = h.strip_prefix(prefix) else { continue };
        let mut parts: Vec<&str> = rest.split('$').collect();
        if parts.first().is_some_and(|p| p.starts_with("rounds=")) {
            let rounds = parts.remove(0)["rounds=".len()..].parse::<u32>();
            if !rounds.is_ok_and(|r| (1000..=999_999_999).contains(&r)) {
                return Err(format!("malformed {prefix} hash: rounds must be 1000..=999999999"));
            }
        }
        let ok = parts.len() == 2
            && !parts[0].is_empty()
            && parts[0].len() <= 16
            && parts[1].len() == len
            && parts[1].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
        return match (ok, prefix) {
            (false, _) => Err(format!("malformed {prefix} (SHA-crypt) hash")),
            (true, "$5$") => Ok(PwHash::Sha256(h.into())),
            (true, _) => Ok(PwHash::Sha512(h.into())),
        };
    }
    if h.starts_with("$apr1$") {
        return weak("MD5 (`$apr1$`, htpasswd -m)");
    }
    if h.starts_with("{SHA}") {
        return weak("SHA-1 (`{SHA}`, htpasswd -s)");
    }
    if h.starts_with('$') {
        return Err("unknown hash scheme; expected bcrypt ($2y$), SHA-256-crypt ($5$) or \
                    SHA-512-crypt ($6$)"
            .into());
    }
    weak("crypt(3) or a plain-text password")
}

/// One key of a [`JwtKeys`] set.
#[derive(Clone)]
struct Key {
    kid: Option<Box<str>>,
    /// Algorithms this key may verify.
    algs: Vec<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("algs", &self.algs).finish()
    }
}

/// Keys that verify JWTs: the keys of a JSON Web Key Set (RSA, EC P-256/P-384, Ed25519 and
/// `oct` secrets; a key's `alg` and `use` are honoured), or one HMAC secret.
#[derive(Debug)]
pub struct JwtKeys {
    keys: Vec<Key>,
}

impl JwtKeys {
    /// The keys of a JWKS document (`{"keys": [...]}`). Keys for encryption (`"use":
    /// "enc"`) and of unsupported kinds (P-521) are skipped; a set with no usable key is an
    /// error.
    pub fn from_jwks(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("keys[{i}]"));
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                skipped.push(format!("{name}: use = enc"));
                continue;
            }
            let mut algs: Vec<Algorithm> = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => vec![
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ],
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => vec![Algorithm::ES256],
                    EllipticCurve::P384 => vec![Algorithm::ES384],
                    _ => {
                        skipped.push(format!("{name}: curve {:?} is not supported", p.curve));
                        continue;
                    }
                },
                AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
                AlgorithmParameters::OctetKey(_) => {
                    vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
                }
            };
            if let Some(a) = jwk.common.key_algorithm.and_then(key_alg) {
                algs.retain(|x| *x == a);
            }
            if algs.is_empty() {
                skipped.push(format!("{name}: its alg does not fit its key type"));
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {name}: {e}"))?;
            if let AlgorithmParameters::OctetKey(_) = &jwk.algorithm
                && key.try_get_hmac_secret().map_or(0, <[u8]>::len) < MIN_HMAC_SECRET
            {
                return Err(format!("key {name}: an HMAC secret needs {MIN_HMAC_SECRET} bytes"));
            }
            keys.push(Key { kid: jwk.common.key_id.as_deref().map(Into::into), algs, key });
        }
        if keys.is_empty() {
            let why =
                if skipped.is_empty() { "the set is empty".into() } else { skipped.join("; ") };
            return Err(format!("no usable signature key ({why})"));
        }
        Ok(Self { keys })
    }

    /// One HMAC secret (`secret_file`), for HS256/384/512: at least 32 bytes.
    pub fn from_secret(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_HMAC_SECRET {
            return Err(format!(
                "the secret has {} bytes; HMAC keys need at least {MIN_HMAC_SECRET} \
                 (e.g. `openssl rand -base64 48`)",
                secret.len()
            ));
        }
        Ok(Self {
            keys: vec![Key {
                kid: None,
                algs: vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                key: DecodingKey::from_secret(secret),
            }],
        })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no key (never, for a loaded set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether some key verifies `alg`.
    pub fn supports(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|k| k.algs.contains(&alg))
    }

    /// The keys that may verify a token of `alg` with key id `kid` (a token naming a key
    /// gets that key only).
    pub(crate) fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        self.keys
            .iter()
            .filter(move |k| {
                k.algs.contains(&alg) && kid.is_none_or(|id| k.kid.as_deref() == Some(id))
            })
            .map(|k| &k.key)
    }
}

fn key_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The loaded credentials of one route.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RouteCredentials {
    /// `security.basic_auth`: the users of its htpasswd file.
    Basic(Arc<Htpasswd>),
    /// `security.jwt`: the keys of its `jwks_file` or `secret_file`.
    Jwt(Arc<JwtKeys>),
}

/// The credentials of every authenticating route, by route name: what
/// [`HttpConfig::with_credentials`](crate::HttpConfig::with_credentials) hands the layer.
/// Read them when the configuration is loaded ([`Credentials::load`]) and again on every
/// reload: requests never touch the files. A route with `basic_auth` or `jwt` whose
/// credentials are missing here refuses every request (401) and logs why once.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    routes: HashMap<Box<str>, RouteCredentials>,
}

impl Credentials {
    /// No credentials.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the credentials of route `name`.
    pub fn insert(&mut self, name: &str, c: RouteCredentials) {
        self.routes.insert(name.into(), c);
    }

    /// The credentials of route `name`.
    pub fn get(&self, name: &str) -> Option<&RouteCredentials> {
        self.routes.get(name)
    }

    /// Reads the files of every route's `security.basic_auth` (`htpasswd`) and
    /// `security.jwt` (`jwks_file` or `secret_file`). Every problem comes back with the key
    /// path of the file's key (`routes[2].security.basic_auth.htpasswd`), the file and, for
    /// htpasswd files, the line. Relative paths are relative to the working directory.
    pub fn load(routes: &[RouteConfig]) -> Result<Self, Vec<ValidationError>> {
        let mut out = Self::new();
        let mut errors = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let Some(sec) = &r.security else { continue };
            let name = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
            if let Some(b) = &sec.basic_auth {
                let key = format!("routes[{i}].security.basic_auth.htpasswd");
                if b.htpasswd.as_os_str().is_empty() {
                    continue; // the route validation reports it
                }
                match read_text(&b.htpasswd).and_then(|t| {
                    Htpasswd::parse(&t).map_err(|e| {
                        if e.line == 0 {
                            format!("`{}`: {}", b.htpasswd.display(), e.message)
                        } else {
                            format!("`{}` line {}: {}", b.htpasswd.display(), e.line, e.message)
                        }
                    })
                }) {
                    Ok(h) => out.insert(&name, RouteCredentials::Basic(Arc::new(h))),
                    Err(m) => errors.push(ValidationError::new(key, m)),
                }
            }
            if let Some(j) = &sec.jwt {
                let (key, loaded) = match (&j.jwks_file, &j.secret_file) {
                    (Some(p), None) if !p.as_os_str().is_empty() => (
                        format!("routes[{i}].security.jwt.jwks_file"),
                        std::fs::read(p)
                            .map_err(|e| format!("cannot read `{}`: {e}", p.display()))
                            .and_then(|b| {
                                JwtKeys::from_jwks(&b)
                                    .map_err(|m| format!("`{}`: {m}", p.display()))
                            }),
                    ),
                    (None, Some(p)) if !p.as_os_str().is_empty() => (
                        format!("routes[{i}].security.jwt.secret_file"),
                        std::fs::read(p)
                            .map_err(|e| format!("cannot read `{}`: {e}", p.display()))
                            .and_then(|mut b| {
                                while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                                    b.pop();
                                }
                                JwtKeys::from_secret(&b)
                                    .map_err(|m| format!("`{}`: {m}", p.display()))
                            }),
                    ),
                    _ => continue, // the route validation reports it
                };
                match loaded {
                    Ok(k) => {
                        let missing: Vec<&str> = j
                            .algorithms
                            .iter()
                            .filter(|a| !k.supports(alg_of(**a)))
                            .map(|a| a.as_str())
                            .collect();
                        if missing.is_empty() {
                            out.insert(&name, RouteCredentials::Jwt(Arc::new(k)));
                        } else {
                            errors.push(ValidationError::new(
                                key,
                                format!("no key for {} in the file", missing.join(", ")),
                            ));
                        }
                    }
                    Err(m) => errors.push(ValidationError::new(key, m)),
                }
            }
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }
}

fn read_text(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("cannot read `{}`: {e}", p.display()))
}

/// The `jsonwebtoken` algorithm of a configured one.
pub(crate) fn alg_of(a: smartproxy_routing::JwtAlgorithm) -> Algorithm {
    use smartproxy_routing::JwtAlgorithm as J;
    match a {
        J::HS256 => Algorithm::HS256,
        J::HS384 => Algorithm::HS384,
        J::HS512 => Algorithm::HS512,
        J::RS256 => Algorithm::RS256,
        J::RS384 => Algorithm::RS384,
        J::RS512 => Algorithm::RS512,
        J::PS256 => Algorithm::PS256,
        J::PS384 => Algorithm::PS384,
        J::PS512 => Algorithm::PS512,
        J::ES256 => Algorithm::ES256,
        J::ES384 => Algorithm::ES384,
        // `JwtAlgorithm` is non-exhaustive; EdDSA is the last one today.
        _ => Algorithm::EdDSA,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a bcrypt hash (cost 4); not a real one.
    const BCRYPT: &str = "$2y$04$K8g2mGzYwM0d1O8k1m3dYe7n7h4o6c5V3gP2cY2nQf9e1xW2sZ4y6";

    #[test]
    fn parse_errors_name_the_line() {
        let e = Htpasswd::parse("# users\n\nalice:$apr1$abc$def\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("MD5"), "{e}");
        let e = Htpasswd::parse("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=").unwrap_err();
        assert!(e.message.contains("SHA-1"), "{e}");
        let e = Htpasswd::parse("carol:secret").unwrap_err();
        assert!(e.message.contains("plain-text"), "{e}");
        let e = Htpasswd::parse("dave").unwrap_err();
        assert_eq!(e.message, "expected `user:hash`");
        let e = Htpasswd::parse(":$2y$").unwrap_err();
        assert_eq!(e.message, "the user name is empty");
        let e = Htpasswd::parse("eve:$2y$04$short").unwrap_err();
        assert_eq!(e.message, "malformed bcrypt hash");
        let e = Htpasswd::parse("f:$6$rounds=10$salt$x").unwrap_err();
        assert!(e.message.contains("rounds"), "{e}");
        let e = Htpasswd::parse("g:$1$abc$def").unwrap_err();
        assert!(e.message.contains("unknown hash"), "{e}");
        let e = Htpasswd::parse("# nothing\n").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (0, "no user in the file"));
        let twice = format!("a:{BCRYPT}\na:{BCRYPT}\n");
        assert_eq!(Htpasswd::parse(&twice).unwrap_err().line, 2);
    }

    #[test]
    fn known_hashes_verify_and_are_cached() {
        let b = bcrypt::hash_with_salt("secret", 4, *b"0123456789abcdef").unwrap();
        let s5 = sha_crypt::sha256_simple(
            "secret",
            &sha_crypt::Sha256Params::new(5000).unwrap_or_else(|_| unreachable!()),
        )
        .unwrap();
        let s6 = sha_crypt::sha512_simple(
            "pässword",
            &sha_crypt::Sha512Params::new(5000).unwrap_or_else(|_| unreachable!()),
        )
        .unwrap();
        let text = format!(
            "alice:{}\r\nbob:{s5}\ncarol:{s6}\n",
            b.format_for_version(bcrypt::Version::TwoY)
        );
        let h = Htpasswd::parse(&text).unwrap();
        assert_eq!(h.len(), 3);
        assert!(h.verify("alice", "secret"));
        assert!(!h.verify("alice", "Secret"));
        assert!(h.verify("bob", "secret"));
        assert!(h.verify("carol", "pässword"));
        assert!(!h.verify("carol", "password"));
        assert!(!h.verify("mallory", "secret"));
        assert_eq!(h.verified.len(), 3, "only successes are remembered");
        // Cached now: no slow path.
        assert!(h.known(b"alice", b"secret").is_none());
        assert!(h.known(b"alice", b"secret2").is_some());
    }

    #[test]
    fn hmac_secrets_are_long_enough() {
        assert!(JwtKeys::from_secret(b"short").unwrap_err().contains("at least 32"));
        let k = JwtKeys::from_secret(&[7u8; 32]).unwrap();
        assert!(k.supports(Algorithm::HS256) && !k.supports(Algorithm::RS256));
        assert!(JwtKeys::from_jwks(b"{\"keys\": []}").unwrap_err().contains("no usable"));
        assert!(JwtKeys::from_jwks(b"nope").unwrap_err().contains("not a JWKS"));
    }
}
