//! Reading the ClientHello for SNI routing (passthrough), with smartproxy-tls-hello.

use smartproxy_routing::TlsVersion;
use smartproxy_tls_hello::{Peek, PeekOptions, TlsVersion as WireVersion, peek};

/// What the buffered bytes say about a ClientHello.
#[derive(Debug)]
pub(crate) enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// Not a (valid) ClientHello: routed without SNI.
    Other,
    /// A complete ClientHello.
    Complete { sni: Option<String>, version: Option<TlsVersion> },
}

/// Looks for a ClientHello at the start of `buf`.
pub(crate) fn client_hello(buf: &[u8]) -> Hello {
    match peek(buf, &PeekOptions::default()) {
        Ok(Peek::Complete(hello)) => Hello::Complete {
            sni: hello.server_name().map(str::to_ascii_lowercase),
            version: match hello.max_version() {
                Some(WireVersion::Tls13) => Some(TlsVersion::Tls13),
                Some(WireVersion::Tls12) => Some(TlsVersion::Tls12),
                _ => None,
            },
        },
        Ok(Peek::Incomplete { .. }) => Hello::Incomplete,
        Ok(_) => Hello::Other,
        Err(e) => {
            tracing::debug!(error = %e, "not a valid ClientHello; routing without SNI");
            Hello::Other
        }
    }
}
