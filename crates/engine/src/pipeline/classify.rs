//! Stage 3, classify: what routing needs from the first bytes, read without consuming them
//! (the socket replays them): a TLS ClientHello (SNI, version) or an HTTP request head (Host,
//! path, headers), bounded by `initial_data_timeout` and a byte cap. Ports whose routes need
//! neither skip this stage.

use smartproxy_routing::{PeekNeed, TlsVersion};
use smartproxy_tls_hello::{Peek, PeekOptions, TlsVersion as WireVersion};
use smartproxy_wrapped_socket::{PeekError, WrappedSocket};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::conn::{Closed, Conn};
use crate::http::{self, RequestHead};
use crate::observe::Refusal;

/// Largest ClientHello buffered (bytes).
const MAX_HELLO: usize = 16 * 1024 + 5;

/// What the peek found.
#[derive(Debug, Default)]
pub(crate) struct PeekInfo {
    pub(crate) is_tls: bool,
    pub(crate) domain: Option<String>,
    pub(crate) tls_version: Option<TlsVersion>,
    pub(crate) head: Option<RequestHead>,
    /// The ClientHello offers ALPN `acme-tls/1` alone: a TLS-ALPN-01 validation handshake.
    pub(crate) acme_tls_alpn: bool,
}

impl PeekInfo {
    pub(crate) fn path(&self) -> Option<&str> {
        self.head.as_ref().map(RequestHead::path)
    }
}

/// Why the peek failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeekFailed {
    #[error("no data before the initial data timeout")]
    Timeout,
    #[error("connection closed before the data needed for routing")]
    Eof,
    #[error("first bytes too large to route on")]
    TooLarge,
    #[error("reading failed: {0}")]
    Io(std::io::Error),
}

impl From<PeekError> for PeekFailed {
    fn from(e: PeekError) -> Self {
        match e {
            PeekError::Timeout => Self::Timeout,
            PeekError::CapReached { .. } => Self::TooLarge,
            PeekError::Io(e) => Self::Io(e),
            _ => Self::TooLarge,
        }
    }
}

/// Peeks what the port's routes need; a client that closes first ends quietly (one debug
/// line), one that sends too little, too late or too much is refused.
pub(crate) async fn classify(
    c: &Conn,
    sock: &mut WrappedSocket<TcpStream>,
) -> Result<PeekInfo, Closed> {
    let need = c.state.table.peek_need(c.port);
    let deadline = c.accepted + c.state.config.defaults.initial_data_timeout;
    match peek(sock, need, deadline).await {
        Ok(i) => Ok(i),
        Err(PeekFailed::Eof) => {
            tracing::debug!(client = %c.client, port = c.port, "closed before sending routing data");
            Err(Closed)
        }
        Err(e) => Err(c.refuse(Refusal::InitialData, &e.to_string())),
    }
}

/// Buffers (without consuming) what `need` asks for, before `deadline`.
pub(crate) async fn peek(
    sock: &mut WrappedSocket<TcpStream>,
    need: PeekNeed,
    deadline: Instant,
) -> Result<PeekInfo, PeekFailed> {
    if need == PeekNeed::None {
        return Ok(PeekInfo::default());
    }
    if sock.buffered().is_empty() && sock.peek_more(MAX_HELLO, deadline).await? == 0 {
        return Err(PeekFailed::Eof);
    }
    let first = sock.buffered().first().copied().unwrap_or(0);
    let tls = match need {
        PeekNeed::Tls => true,
        PeekNeed::Http => false,
        _ => first == 0x16,
    };
    if tls { peek_tls(sock, deadline).await } else { peek_http(sock, deadline).await }
}

async fn peek_tls(
    sock: &mut WrappedSocket<TcpStream>,
    deadline: Instant,
) -> Result<PeekInfo, PeekFailed> {
    let mut info =
        PeekInfo { is_tls: sock.buffered().first() == Some(&0x16), ..PeekInfo::default() };
    if !info.is_tls {
        return Ok(info);
    }
    loop {
        match client_hello(sock.buffered()) {
            Hello::Complete { sni, version, acme_tls_alpn } => {
                info.domain = sni;
                info.tls_version = version;
                info.acme_tls_alpn = acme_tls_alpn;
                return Ok(info);
            }
            Hello::Other => return Ok(info),
            Hello::Incomplete => {
                if sock.peek_more(MAX_HELLO, deadline).await? == 0 {
                    return Err(PeekFailed::Eof);
                }
            }
        }
    }
}

async fn peek_http(
    sock: &mut WrappedSocket<TcpStream>,
    deadline: Instant,
) -> Result<PeekInfo, PeekFailed> {
    loop {
        match http::parse_head(sock.buffered()) {
            Ok(Some((head, _))) => {
                let domain = head.domain();
                return Ok(PeekInfo { domain, head: Some(head), ..PeekInfo::default() });
            }
            // Not HTTP: route on what is known (port, client).
            Err(_) => return Ok(PeekInfo::default()),
            Ok(None) => {
                if sock.peek_more(http::MAX_HEAD, deadline).await? == 0 {
                    return Err(PeekFailed::Eof);
                }
            }
        }
    }
}

/// What the buffered bytes say about a ClientHello.
#[derive(Debug)]
pub(crate) enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// Not a (valid) ClientHello: routed without SNI.
    Other,
    /// A complete ClientHello.
    Complete { sni: Option<String>, version: Option<TlsVersion>, acme_tls_alpn: bool },
}

/// Looks for a ClientHello at the start of `buf`.
pub(crate) fn client_hello(buf: &[u8]) -> Hello {
    match smartproxy_tls_hello::peek(buf, &PeekOptions::default()) {
        Ok(Peek::Complete(hello)) => Hello::Complete {
            sni: hello.server_name().map(str::to_ascii_lowercase),
            version: match hello.max_version() {
                Some(WireVersion::Tls13) => Some(TlsVersion::Tls13),
                Some(WireVersion::Tls12) => Some(TlsVersion::Tls12),
                _ => None,
            },
            acme_tls_alpn: smartproxy_acme::is_tls_alpn01(hello.alpn.iter().map(Vec::as_slice)),
        },
        Ok(Peek::Incomplete { .. }) => Hello::Incomplete,
        Ok(_) => Hello::Other,
        Err(e) => {
            tracing::debug!(error = %e, "not a valid ClientHello; routing without SNI");
            Hello::Other
        }
    }
}
