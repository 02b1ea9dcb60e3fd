//! Reading the ClientHello for SNI routing (passthrough).

use smartproxy_routing::TlsVersion;

/// What the buffered bytes say about a ClientHello.
#[derive(Debug)]
pub(crate) enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// Not a ClientHello (routed without SNI).
    Other,
    /// A complete ClientHello.
    Complete { sni: Option<String>, version: Option<TlsVersion> },
}

/// Looks for a ClientHello at the start of `buf`.
pub(crate) fn client_hello(buf: &[u8]) -> Hello {
    // The SNI parser (smartproxy-tls-hello) is wired in when it lands; until then a TLS
    // record is routed without SNI.
    if buf.len() < 5 {
        return Hello::Incomplete;
    }
    if buf[0] != 0x16 {
        return Hello::Other;
    }
    Hello::Complete { sni: None, version: None }
}
