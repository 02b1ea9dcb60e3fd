//! What routing needs from the first bytes: TLS ClientHello (SNI, version) or HTTP head.

use smartproxy_routing::{PeekNeed, TlsVersion};
use smartproxy_wrapped_socket::{PeekError, WrappedSocket};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::{self, RequestHead};

/// Largest ClientHello buffered (bytes).
const MAX_HELLO: usize = 16 * 1024 + 5;

/// What the peek found.
#[derive(Debug, Default)]
pub(crate) struct PeekInfo {
    pub(crate) is_tls: bool,
    pub(crate) domain: Option<String>,
    pub(crate) tls_version: Option<TlsVersion>,
    pub(crate) head: Option<RequestHead>,
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
        match crate::sni::client_hello(sock.buffered()) {
            crate::sni::Hello::Complete { sni, version } => {
                info.domain = sni;
                info.tls_version = version;
                return Ok(info);
            }
            crate::sni::Hello::Other => return Ok(info),
            crate::sni::Hello::Incomplete => {
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
