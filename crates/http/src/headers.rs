//! Header work on the way through: hop-by-hop removal (RFC 9110 §7.6.1), forwarding headers
//! from the real client, `Via`, cookies of HTTP/2 clients joined for HTTP/1.1 targets.

use std::fmt::Write as _;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

use crate::ctx::ConnCtx;

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");
const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// Whether the field name `name`, as a parser read it (a token: no control characters), is
/// `lower` (lower-case letters, digits and `-`) in any case: eight bytes at a time, each byte
/// with bit 0x20 set, which lowers a letter and leaves a digit or `-` as it is; no other
/// token byte becomes one of those (only control characters would: 0x10-0x19, CR). The
/// names of every field of every head are compared so, several times each.
#[inline]
pub(crate) fn is_named(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    if name.len() != lower.len() {
        return false;
    }
    const LOW: u64 = u64::from_ne_bytes([0x20; 8]);
    let (mut a, mut b) = (name, lower);
    while let (Some((x, xs)), Some((y, ys))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if u64::from_ne_bytes(*x) | LOW != u64::from_ne_bytes(*y) {
            return false;
        }
        (a, b) = (xs, ys);
    }
    a.iter().zip(b).all(|(&x, &y)| x | 0x20 == y)
}

/// The name of a field as a parser read it: the names most requests and responses carry by
/// one comparison after the length, the rest by `HeaderName::from_bytes` (a table lookup,
/// and a copy for a name it does not know). Every field of every head read into a map is
/// named so.
pub(crate) fn field_name(name: &[u8]) -> Option<HeaderName> {
    let known = match name.len() {
        4 if is_named(name, b"host") => header::HOST,
        4 if is_named(name, b"date") => header::DATE,
        4 if is_named(name, b"etag") => header::ETAG,
        4 if is_named(name, b"vary") => header::VARY,
        6 if is_named(name, b"accept") => header::ACCEPT,
        6 if is_named(name, b"cookie") => header::COOKIE,
        6 if is_named(name, b"server") => header::SERVER,
        7 if is_named(name, b"referer") => header::REFERER,
        7 if is_named(name, b"expires") => header::EXPIRES,
        8 if is_named(name, b"location") => header::LOCATION,
        10 if is_named(name, b"user-agent") => header::USER_AGENT,
        10 if is_named(name, b"connection") => header::CONNECTION,
        10 if is_named(name, b"set-cookie") => header::SET_COOKIE,
        12 if is_named(name, b"content-type") => header::CONTENT_TYPE,
        13 if is_named(name, b"authorization") => header::AUTHORIZATION,
        13 if is_named(name, b"cache-control") => header::CACHE_CONTROL,
        13 if is_named(name, b"last-modified") => header::LAST_MODIFIED,
        13 if is_named(name, b"accept-ranges") => header::ACCEPT_RANGES,
        14 if is_named(name, b"content-length") => header::CONTENT_LENGTH,
        15 if is_named(name, b"accept-encoding") => header::ACCEPT_ENCODING,
        15 if is_named(name, b"accept-language") => header::ACCEPT_LANGUAGE,
        16 if is_named(name, b"content-encoding") => header::CONTENT_ENCODING,
        _ => return HeaderName::from_bytes(name).ok(),
    };
    Some(known)
}

/// Removes the hop-by-hop headers:/// Removes the hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `TE` (but `te: trailers` stays for an HTTP/2 target), `Transfer-Encoding`,
/// and `Upgrade` unless `keep_upgrade`. One pass over the (few) names first tells which are
/// there: most messages have none (no hash lookup at all), and a `Connection: close` costs
/// one removal, not six lookups.
///
/// Returns whether a `TE` field named `trailers` (read before anything is removed; found by
/// the same pass, so a request without `TE` costs no lookup for it).
pub(crate) fn remove_hop_by_hop(
    h: &mut HeaderMap,
    keep_upgrade: bool,
    keep_te_trailers: bool,
) -> bool {
    let (mut connection, mut keep_alive, mut proxy_connection) = (false, false, false);
    let (mut te, mut transfer_encoding, mut upgrade) = (false, false, false);
    for k in h.keys() {
        if k == header::CONNECTION {
            connection = true;
        } else if k == header::TE {
            te = true;
        } else if k == header::TRANSFER_ENCODING {
            transfer_encoding = true;
        } else if k == header::UPGRADE {
            upgrade = !keep_upgrade;
        } else if k == KEEP_ALIVE {
            keep_alive = true;
        } else if k == PROXY_CONNECTION {
            proxy_connection = true;
        }
    }
    let trailers = te
        && h.get_all(header::TE).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
        });
    if connection {
        // Names listed in Connection are hop-by-hop too. Collected first: the map is
        // borrowed. Rare (most clients send `keep-alive` or `close`), so a small Vec is fine.
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(header::CONNECTION) {
            let Ok(s) = v.to_str() else { continue };
            for token in s.split(',') {
                let t = token.trim();
                if t.is_empty()
                    || t.eq_ignore_ascii_case("close")
                    || t.eq_ignore_ascii_case("keep-alive")
                    || (keep_upgrade && t.eq_ignore_ascii_case("upgrade"))
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                    named.push(n);
                }
            }
        }
        for n in named {
            h.remove(n);
        }
        h.remove(header::CONNECTION);
    }
    if keep_alive {
        h.remove(&KEEP_ALIVE);
    }
    if proxy_connection {
        h.remove(&PROXY_CONNECTION);
    }
    if te {
        h.remove(header::TE);
        if keep_te_trailers && trailers {
            h.insert(header::TE, TRAILERS);
        }
    }
    if transfer_encoding {
        h.remove(header::TRANSFER_ENCODING);
    }
    if upgrade {
        h.remove(header::UPGRADE);
    }
    trailers
}

/// Whether a raw field name is one of the fixed hop-by-hop fields [`remove_hop_by_hop`]
/// removes from a response: the reference that the response head's scan (`h1.rs`, which
/// marks them as it reads the framing fields) is tested against; the test
/// `hop_by_hop_names_agree` keeps this list and the map's the same.
#[cfg(test)]
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    match name.len() {
        2 => name.eq_ignore_ascii_case(b"te"),
        7 => name.eq_ignore_ascii_case(b"upgrade"),
        10 => name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive"),
        16 => name.eq_ignore_ascii_case(b"proxy-connection"),
        17 => name.eq_ignore_ascii_case(b"transfer-encoding"),
        _ => false,
    }
}

/// What [`forwarded_headers`] puts into a request, for the HTTP/1.1 head encoder (`h1.rs`)
/// to write as it encodes the head instead: a request that goes out on a connection of this
/// task (no body, plain HTTP/1.1 target) then costs no map insertions for its three fields,
/// nor the drop of what they hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding<'a> {
    /// The peer is trusted: its `X-Forwarded-For` is appended to, its `-Proto` and `-Host`
    /// kept; otherwise all three are replaced.
    pub(crate) trusted: bool,
    /// The real client's address (`ConnCtx::xff`).
    pub(crate) client: &'a HeaderValue,
    pub(crate) tls: bool,
    /// The client's Host (`X-Forwarded-Host`; none: no such field).
    pub(crate) host: Option<&'a HeaderValue>,
}

impl<'a> Forwarding<'a> {
    pub(crate) fn new(ctx: &'a ConnCtx, host: Option<&'a HeaderValue>) -> Self {
        Self { trusted: ctx.peer_trusted, client: &ctx.xff, tls: ctx.is_tls(), host }
    }

    /// Whether a field of the request's map is replaced by this (left out by the encoder).
    pub(crate) fn replaces(&self, name: &HeaderName) -> bool {
        // Untrusted: all three are replaced. Trusted: `-For` is rewritten (appended to)
        // and the other two are kept. Custom names: a length check first.
        match name.as_str().len() {
            15 => name == X_FORWARDED_FOR,
            16 | 17 => !self.trusted && (name == X_FORWARDED_HOST || name == X_FORWARDED_PROTO),
            _ => false,
        }
    }

    /// Writes the fields as `name: value\r\n` lines; `h`: the request's map (read only when
    /// the peer is trusted), whose fields [`Self::replaces`] were left out.
    pub(crate) fn write(&self, h: &HeaderMap, out: &mut BytesMut) {
        out.extend_from_slice(b"x-forwarded-for: ");
        if self.trusted {
            for prev in &h.get_all(&X_FORWARDED_FOR) {
                out.extend_from_slice(prev.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(self.client.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !(self.trusted && h.contains_key(&X_FORWARDED_PROTO)) {
            out.extend_from_slice(if self.tls {
                b"x-forwarded-proto: https\r\n"
            } else {
                b"x-forwarded-proto: http\r\n"
            });
        }
        if let Some(host) = self.host
            && !(self.trusted && h.contains_key(&X_FORWARDED_HOST))
        {
            out.extend_from_slice(b"x-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// `X-Forwarded-For/-Proto/-Host` from the real client: appended to (For) or kept
/// (Proto, Host) when the peer is trusted, replaced otherwise.
pub(crate) fn forwarded_headers(h: &mut HeaderMap, f: Forwarding<'_>) {
    let trusted = f.trusted;
    // Room for the three at once: a client's map is sized for its own fields, and growing
    // it field by field rebuilds it more than once.
    h.reserve(3);
    // `trusted` first: an untrusted peer's fields are replaced without a lookup.
    if trusted && h.contains_key(&X_FORWARDED_FOR) {
        let mut v = BytesMut::with_capacity(64);
        for (i, prev) in h.get_all(&X_FORWARDED_FOR).iter().enumerate() {
            if i > 0 {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(prev.as_bytes());
        }
        v.extend_from_slice(b", ");
        v.extend_from_slice(f.client.as_bytes());
        // Built from valid values and an address.
        if let Ok(v) = HeaderValue::from_maybe_shared(v.freeze()) {
            h.insert(&X_FORWARDED_FOR, v);
        }
    } else {
        h.insert(&X_FORWARDED_FOR, f.client.clone());
    }
    if !(trusted && h.contains_key(&X_FORWARDED_PROTO)) {
        h.insert(&X_FORWARDED_PROTO, if f.tls { HTTPS } else { HTTP });
    }
    if !(trusted && h.contains_key(&X_FORWARDED_HOST)) {
        match f.host {
            Some(v) => {
                h.insert(&X_FORWARDED_HOST, v.clone());
            }
            None => {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// RFC 7239 `Forwarded: for=...;host=...;proto=...`, appended to when the peer is trusted,
/// replaced otherwise.
pub(crate) fn forwarded(h: &mut HeaderMap, ctx: &ConnCtx, host: Option<&HeaderValue>) {
    let mut v = BytesMut::with_capacity(96);
    if ctx.peer_trusted {
        for prev in h.get_all(header::FORWARDED) {
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
        }
    }
    match ctx.client.ip() {
        std::net::IpAddr::V4(v4) => {
            let _ = write!(Writer(&mut v), "for={v4}");
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(Writer(&mut v), "for=\"[{v6}]\"");
        }
    }
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        v.extend_from_slice(b";host=");
        if host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
            v.extend_from_slice(host.as_bytes());
        } else {
            // quoted-string: host with a port or an IPv6 literal.
            v.extend_from_slice(b"\"");
            for b in host.bytes() {
                if b == b'"' || b == b'\\' {
                    v.extend_from_slice(b"\\");
                }
                v.extend_from_slice(&[b]);
            }
            v.extend_from_slice(b"\"");
        }
    }
    v.extend_from_slice(if ctx.is_tls() { b";proto=https" } else { b";proto=http" });
    if let Ok(v) = HeaderValue::from_maybe_shared(v.freeze()) {
        h.insert(header::FORWARDED, v);
    }
}

/// Appends `ours` (e.g. `1.1 smartproxy`) to `Via`.
pub(crate) fn append_via(h: &mut HeaderMap, ours: &HeaderValue) {
    match h.get(header::VIA) {
        None => {
            h.insert(header::VIA, ours.clone());
        }
        Some(prev) => {
            let mut v = BytesMut::with_capacity(prev.len() + 2 + ours.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(ours.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(v.freeze()) {
                h.insert(header::VIA, v);
            }
        }
    }
}

/// HTTP/2 clients may split `Cookie` into several fields; HTTP/1.1 wants one, joined by `; `
/// (RFC 9113 §8.2.3).
pub(crate) fn join_cookies(h: &mut HeaderMap) {
    let mut all = h.get_all(header::COOKIE).iter();
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let mut v = BytesMut::new();
    for (i, c) in h.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            v.extend_from_slice(b"; ");
        }
        v.extend_from_slice(c.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(v.freeze()) {
        h.insert(header::COOKIE, v);
    }
}

/// The `Via` protocol token of a request version.
pub(crate) fn via_index(v: Version) -> usize {
    match v {
        Version::HTTP_10 | Version::HTTP_09 => 0,
        Version::HTTP_2 => 2,
        Version::HTTP_3 => 3,
        _ => 1,
    }
}

/// `fmt::Write` into a `BytesMut`.
struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `Via` values per protocol version (1.0, 1.1, 2, 3) for a pseudonym.
pub(crate) fn via_values(pseudonym: &str) -> Option<[HeaderValue; 4]> {
    let v = |p: &str| HeaderValue::from_str(&format!("{p} {pseudonym}")).ok();
    Some([v("1.0")?, v("1.1")?, v("2")?, v("3")?])
}

/// Whether `req` asks for a WebSocket: HTTP/1.1 `GET` with `Upgrade: websocket` and
/// `Connection: upgrade`, or an RFC 8441 extended CONNECT with `:protocol = websocket`.
pub(crate) fn is_websocket(method: &Method, h: &HeaderMap, ext: &http::Extensions) -> bool {
    if method == Method::CONNECT {
        return ext
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
    }
    method == Method::GET
        && h.get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("websocket")))
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::WARNING),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("?")),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<String> {
        let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, upgrade"),
            ("connection", "close"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip, trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false, false);
        assert_eq!(names(&h), ["x-kept"]);
        let mut h = map(&[("connection", "upgrade"), ("upgrade", "websocket"), ("te", "trailers")]);
        remove_hop_by_hop(&mut h, true, true);
        assert_eq!(names(&h), ["te", "upgrade"]);
        assert_eq!(h.get("te").map(HeaderValue::as_bytes), Some(&b"trailers"[..]));
        // Only what is there goes: a client's `Connection: close`, or nothing at all.
        let mut h = map(&[("connection", "close"), ("x-a", "1"), ("upgrade", "h2c")]);
        remove_hop_by_hop(&mut h, true, false);
        assert_eq!(names(&h), ["upgrade", "x-a"]);
        let mut h = map(&[("x-a", "1")]);
        remove_hop_by_hop(&mut h, false, false);
        assert_eq!(names(&h), ["x-a"]);
    }

    #[test]
    fn common_field_names_are_the_standard_ones() {
        for name in [
            "host",
            "HOST",
            "hosts",
            "Date",
            "etag",
            "Vary",
            "Accept",
            "cookie",
            "Server",
            "Referer",
            "expires",
            "Location",
            "User-Agent",
            "connection",
            "Set-Cookie",
            "Content-Type",
            "Authorization",
            "Cache-Control",
            "last-modified",
            "Accept-Ranges",
            "Content-Length",
            "Accept-Encoding",
            "accept-language",
            "content-encoding",
            "x-custom",
            "dates",
            "keep-alive",
            "accept-charset",
            "If-None-Match",
            "Strict-Transport-Security",
        ] {
            let n = name.as_bytes();
            assert_eq!(field_name(n), HeaderName::from_bytes(n).ok(), "{name}");
        }
        assert_eq!(field_name(b"bad name"), None);
        assert_eq!(field_name(b""), None);
    }

    /// `is_named` agrees with `eq_ignore_ascii_case` on every pair of names that a parser
    /// lets through (tokens), in every case, short and long.
    #[test]
    fn is_named_agrees_with_eq_ignore_ascii_case() {
        let lowers = [
            "te",
            "date",
            "host",
            "etag",
            "upgrade",
            "location",
            "connection",
            "keep-alive",
            "content-length",
            "content-type",
            "proxy-connection",
            "transfer-encoding",
            "x-forwarded-for",
            "a1-b2",
            "",
        ];
        let tokens: Vec<u8> =
            (0x21u8..0x7f).filter(|b| !b"\"(),/:;<=>?@[\\]{}".contains(b)).collect();
        let mut random = crate::testing::xorshift(0x1234_5678_9abc_def1);
        let mut next = move |n: usize| random(n as u64) as usize;
        for lower in lowers {
            let upper = lower.to_ascii_uppercase();
            assert!(is_named(lower.as_bytes(), lower.as_bytes()));
            assert!(is_named(upper.as_bytes(), lower.as_bytes()));
            for _ in 0..2_000 {
                // A variant of the name: some bytes changed to any token byte, some case flipped.
                let mut name = lower.as_bytes().to_vec();
                for b in &mut name {
                    match next(4) {
                        0 => *b = tokens[next(tokens.len())],
                        1 => *b = b.to_ascii_uppercase(),
                        _ => {}
                    }
                }
                if next(8) == 0 {
                    name.push(tokens[next(tokens.len())]);
                }
                assert_eq!(
                    is_named(&name, lower.as_bytes()),
                    name.eq_ignore_ascii_case(lower.as_bytes()),
                    "{:?} {lower}",
                    String::from_utf8_lossy(&name)
                );
            }
        }
    }

    #[test]
    fn hop_by_hop_names_agree() {
        for name in [
            "connection",
            "Keep-Alive",
            "proxy-connection",
            "te",
            "Transfer-Encoding",
            "upgrade",
            "trailer",
            "content-length",
            "x-forwarded-for",
            "server",
        ] {
            let mut h = map(&[(name, "x")]);
            remove_hop_by_hop(&mut h, false, false);
            assert_eq!(h.is_empty(), is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn cookies_and_via() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h.get("cookie").map(HeaderValue::as_bytes), Some(&b"a=1; b=2"[..]));
        let vias = via_values("edge").unwrap_or_else(|| panic!("via"));
        let mut h = map(&[("via", "1.1 front")]);
        append_via(&mut h, &vias[via_index(Version::HTTP_2)]);
        assert_eq!(h.get("via").map(HeaderValue::as_bytes), Some(&b"1.1 front, 2 edge"[..]));
        assert!(via_values("bad\nname").is_none());
    }

    #[test]
    fn websocket_detection() {
        let ext = http::Extensions::new();
        let h = map(&[("upgrade", "websocket"), ("connection", "keep-alive, Upgrade")]);
        assert!(is_websocket(&Method::GET, &h, &ext));
        assert!(!is_websocket(&Method::POST, &h, &ext));
        let h = map(&[("upgrade", "h2c"), ("connection", "upgrade")]);
        assert!(!is_websocket(&Method::GET, &h, &ext));
        let mut ext = http::Extensions::new();
        ext.insert(hyper::ext::Protocol::from_static("websocket"));
        assert!(is_websocket(&Method::CONNECT, &HeaderMap::new(), &ext));
    }
}
