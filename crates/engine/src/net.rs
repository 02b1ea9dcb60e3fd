//! Address blocks of trusted proxies, and socket options.

use std::net::IpAddr;

/// An address or CIDR block (`10.0.0.0/8`, `::1`). IPv4-mapped IPv6 addresses match as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: u128,
    mask: u128,
    v4: bool,
}

impl Cidr {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (addr, len) = match t.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (t, None),
        };
        let ip: IpAddr =
            addr.trim().parse().map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let ip = canonical(ip);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u32 = match len {
            Some(l) => l
                .trim()
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
            None => max,
        };
        let bits = to_bits(ip);
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let mask = if len == 0 { 0 } else { (!0u128 << (width - len)) & width_mask(width) };
        if bits & !mask & width_mask(width) != 0 {
            return Err(format!("`{s}` has host bits set after the prefix"));
        }
        Ok(Self { net: bits & mask, mask, v4: ip.is_ipv4() })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.v4 && to_bits(ip) & self.mask == self.net
    }
}

fn width_mask(width: u32) -> u128 {
    if width == 128 { !0 } else { (1u128 << width) - 1 }
}

fn to_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `EINPROGRESS`: a non-blocking connect under way (`ErrorKind::InProgress` is not stable yet).
#[cfg(any(target_os = "linux", target_os = "android"))]
const EINPROGRESS: i32 = 115;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const EINPROGRESS: i32 = 36;

/// Connects to `host:port` with `TCP_NODELAY` set and, when `first` is not empty, writes it
/// as soon as the connection is up. Returns the stream and how much of `first` was written.
///
/// For an IP literal (the usual target) the socket is made with socket2 and the first write
/// doubles as the connect check (a refused connect fails it), which saves the `getsockopt`
/// (`SO_ERROR`) and `setsockopt` round of `TcpStream::connect`. A host name goes through
/// tokio's resolver and connect.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    first: &[u8],
) -> std::io::Result<(tokio::net::TcpStream, usize)> {
    use std::io::ErrorKind;
    let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
        let s = tokio::net::TcpStream::connect((host, port)).await?;
        s.set_nodelay(true)?;
        return Ok((s, 0));
    };
    let addr = std::net::SocketAddr::new(ip, port);
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_tcp_nodelay(true)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8::5".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.1/8").is_err());
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }
}
