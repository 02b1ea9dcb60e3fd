//! Outgoing connections, and the TCP keepalive probes of both sockets of a connection.

use std::net::IpAddr;

use smartproxy_routing::TcpKeepalive;

/// `EINPROGRESS`: a non-blocking connect under way (`ErrorKind::InProgress` is not stable yet).
#[cfg(any(target_os = "linux", target_os = "android"))]
const EINPROGRESS: i32 = 115;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const EINPROGRESS: i32 = 36;

/// Connects to `host:port` (`ip`: the host as an IP address when it is one, parsed once with
/// the route) with `TCP_NODELAY` set and, when `first` is not empty, writes it
/// as soon as the connection is up. Returns the stream and how much of `first` was written.
///
/// For an IP literal (the usual target) the socket is made with socket2 and the first write
/// doubles as the connect check (a refused connect fails it), which saves the `getsockopt`
/// (`SO_ERROR`) and `setsockopt` round of `TcpStream::connect`. A host name goes through
/// tokio's resolver and connect.
///
/// `keepalive`: the probes are set on the new socket before it connects (a host name: right
/// after), in the same batch of socket options.
pub(crate) async fn connect(
    host: &str,
    ip: Option<IpAddr>,
    port: u16,
    first: &[u8],
    keepalive: &TcpKeepalive,
) -> std::io::Result<(tokio::net::TcpStream, usize)> {
    use std::io::ErrorKind;
    let Some(ip) = ip else {
        let s = tokio::net::TcpStream::connect((host, port)).await?;
        s.set_nodelay(true)?;
        set_keepalive(&socket2::SockRef::from(&s), keepalive);
        return Ok((s, 0));
    };
    let addr = std::net::SocketAddr::new(ip, port);
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_tcp_nodelay(true)?;
    set_keepalive(&sock, keepalive);
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(sock))?;
    stream.writable().await?;
    if first.is_empty() {
        return match stream.take_error()? {
            Some(e) => Err(e),
            None => Ok((stream, 0)),
        };
    }
    loop {
        match stream.try_write(first) {
            Ok(n) => return Ok((stream, n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
}

/// Turns on TCP keepalive probes on `sock` (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`,
/// `TCP_KEEPCNT`: four `setsockopt` calls, once per socket at setup; nothing per packet). Off:
/// nothing is called (new sockets have no probes). A failure is logged and the connection
/// goes on without probes.
pub(crate) fn set_keepalive(sock: &socket2::Socket, keepalive: &TcpKeepalive) {
    if let Err(e) = smartproxy_http::set_tcp_keepalive(&socket2::SockRef::from(sock), keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// The keepalive probes `want` on an accepted socket that came with `inherited` from its
/// listening socket: nothing to do when they are the same (the usual case: no system call),
/// probes set when they differ, and turned off when the route wants none.
pub(crate) fn set_accepted_keepalive(
    tcp: &impl std::os::fd::AsFd,
    want: &TcpKeepalive,
    inherited: &TcpKeepalive,
) {
    if want == inherited {
        return;
    }
    let sock = socket2::SockRef::from(tcp);
    if want.is_on() {
        set_keepalive(&sock, want);
    } else if let Err(e) = sock.set_keepalive(false) {
        tracing::debug!(error = %e, "cannot turn TCP keepalive off");
    }
}
