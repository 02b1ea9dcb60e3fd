//! Stage 0, accept: listening sockets and their accept loops; each accepted connection gets
//! its own task running [`super::serve`] on the runtime that accepted it.

use std::io;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::shared::Shared;

/// Opens a listening socket: `SO_REUSEADDR`, `SO_REUSEPORT` when asked, IPv6-only for IPv6.
/// It is registered with a runtime by [`spawn`], on the runtime that will accept on it.
pub(crate) fn bind(
    addr: SocketAddr,
    reuse_port: bool,
    keepalive: &smartproxy_routing::TcpKeepalive,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY on Linux: one setsockopt here instead of one per
    // connection (set per connection on other systems).
    #[cfg(target_os = "linux")]
    socket.set_tcp_nodelay(true)?;
    // The same for the keepalive probes (`SO_KEEPALIVE` and the three `TCP_KEEP*` options):
    // four setsockopt calls here instead of four per connection (see
    // `Shared::listener_keepalive`).
    #[cfg(target_os = "linux")]
    crate::net::set_keepalive(&socket, keepalive);
    #[cfg(not(target_os = "linux"))]
    let _ = keepalive;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Sets `TCP_DEFER_ACCEPT` (and clears `TCP_QUICKACK`, see below) on a listening socket (`on`:
/// the kernel queues a connection for `accept` once its first data has arrived, or after about
/// a second without any: one SYN-ACK retransmission) or clears it. Set where every client speaks first
/// ([`smartproxy_routing::RouteTable::client_speaks_first`]): accept, the first read and
/// routing then happen in one wake-up, with no read that would block and no second trip
/// through the event loop per connection.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn set_defer_accept(sock: &impl std::os::fd::AsFd, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = i32::from(on);
    // SAFETY: the descriptor is `sock`'s, open and borrowed for the call; the option value
    // is a `c_int` that lives across the call, and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const secs).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // With it, delayed acknowledgements from the first byte (an accepted socket starts in its
    // listener's mode): the ACK of the client's first data rides on the proxy's answer
    // instead of going out alone (haproxy's `tcp-smart-accept`). l7-close: the whole machine's
    // CPU per request -2.3 %, requests/s +4 % (README, Performance).
    socket2::SockRef::from(sock).set_tcp_quickack(!on)
}

/// `TCP_DEFER_ACCEPT` exists on Linux only: nothing to set elsewhere.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_defer_accept(_: &impl std::os::fd::AsFd, _: bool) -> io::Result<()> {
    Ok(())
}

/// The host has no IPv6 (the family or the address is not available).
pub(crate) fn ipv6_unavailable(e: &io::Error) -> bool {
    // EAFNOSUPPORT (97) and EADDRNOTAVAIL (99) on Linux.
    e.kind() == io::ErrorKind::AddrNotAvailable || matches!(e.raw_os_error(), Some(97 | 99))
}

/// The IP address a listener is bound to (its `local_addr`), unless it is a wildcard
/// (`0.0.0.0`, `::`): then each accepted socket's own address must be asked for.
pub(crate) fn bound_ip(listener_addr: Option<std::net::SocketAddr>) -> Option<std::net::IpAddr> {
    listener_addr.map(|a| a.ip()).filter(|ip| !ip.is_unspecified())
}

/// An accepted connection's socket: registered with the reactor by tokio's accept, or a
/// plain non-blocking one from a listener whose connections register lazily
/// ([`crate::lazy::LazyTcp`], plain HTTP ports).
pub(crate) enum Accepted {
    Registered(tokio::net::TcpStream),
    Plain(std::net::TcpStream),
}

impl Accepted {
    /// The socket for the HTTP layer: registered already, or at its first wait.
    pub(crate) fn into_lazy(self) -> crate::lazy::LazyTcp {
        match self {
            Self::Registered(t) => crate::lazy::LazyTcp::registered(t),
            Self::Plain(s) => crate::lazy::LazyTcp::new(s),
        }
    }
}

/// A listening socket and how its connections are accepted.
enum Listener {
    /// tokio's accept: the new socket is registered at once (and assumed readable and
    /// writable, so that its first read tries the socket).
    Registered(TcpListener),
    /// accept(2) alone; the socket registers at its first wait, if ever.
    Plain(tokio::io::unix::AsyncFd<mio::net::TcpListener>),
}

impl Listener {
    fn new(listener: std::net::TcpListener, lazy: bool) -> io::Result<Self> {
        if lazy {
            return Ok(Self::Plain(register_listener(mio::net::TcpListener::from_std(listener))?));
        }
        Ok(Self::Registered(TcpListener::from_std(listener)?))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Self::Registered(l) => l.local_addr(),
            Self::Plain(l) => l.get_ref().local_addr(),
        }
    }

    async fn accept(&self) -> io::Result<(Accepted, SocketAddr)> {
        match self {
            Self::Registered(l) => l.accept().await.map(|(s, a)| (Accepted::Registered(s), a)),
            Self::Plain(l) => loop {
                let mut ready = l.readable().await?;
                // accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC; a would-block clears the
                // readiness and waits again.
                if let Ok(r) = ready.try_io(|l| l.get_ref().accept()) {
                    return r.map(|(s, a)| (Accepted::Plain(s.into()), a));
                }
            },
        }
    }
}

/// Registers a listening socket with the reactor for readiness only (accepting stays ours).
#[allow(unsafe_code)]
fn register_listener(
    l: mio::net::TcpListener,
) -> io::Result<tokio::io::unix::AsyncFd<mio::net::TcpListener>> {
    // SAFETY: the listener owns its descriptor and the `AsyncFd` owns the listener: the
    // descriptor stays open, and the same, for as long as it is registered (only shared
    // references to the listener are handed out, which cannot close it).
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}

/// Runs the accept loop of one socket on `on` (a worker runtime) or on the current runtime;
/// abort the task to stop listening. The connections it accepts run on the same runtime.
/// `lazy`: the port serves plain HTTP only, whose connections register with the reactor at
/// their first wait ([`crate::lazy`]); decided when the listener starts (a reload that
/// changes the port's routes leaves it: either way every connection is served, the lazy
/// registration only saves system calls where it fits).
pub(crate) fn spawn(
    shared: Weak<Shared>,
    listener: std::net::TcpListener,
    port: u16,
    lazy: bool,
    on: Option<&Handle>,
) -> JoinHandle<()> {
    let accept = async move {
        // Registered here, so that the socket belongs to the runtime that polls it.
        let listener = match Listener::new(listener, lazy) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(port, error = %e, "cannot register the listening socket");
                return;
            }
        };
        // The address every accepted socket has on this side when the listener is bound to
        // one (no `getsockname` per connection then); `None` for a wildcard bind.
        let bound = bound_ip(listener.local_addr().ok());
        // Kept apart from `shared` (a weak reference, upgraded per connection).
        let Some(fds) = shared.upgrade().map(|s| std::sync::Arc::clone(&s.fds)) else { return };
        loop {
            if fds.any_waiting() {
                // Connections wait for an fd: new clients wait in the kernel's accept queue
                // until those are served, rather than take the fds they need.
                fds.until_none_waiting().await;
            }
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let accepted = Instant::now();
                    // Spare fds used during an exhaustion are reopened here (a flag otherwise).
                    fds.refill_if_short();
                    let Some(shared) = shared.upgrade() else { return };
                    // The connection's task: its future (about 700 bytes; see
                    // tests/task_size.rs) is most of the memory of an idle connection.
                    // Boxed before the spawn: tokio moves what it is given several times
                    // on the way into its task cell, and once more for every stage change
                    // (running, finished, consumed); a box is a pointer to move (callgrind:
                    // about 1,000 instructions of memcpy per connection fewer). Written in
                    // the box in place (`in_box`), not copied into it.
                    // Plain HTTP listeners: the HTTP connection is the task.
                    super::spawn(shared, tcp, peer, port, bound, accepted, lazy);
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    // Out of file descriptors or memory: back off instead of spinning.
                    tracing::warn!(port, error = %e, "accept failed; pausing 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    match on {
        Some(rt) => rt.spawn(accept),
        None => tokio::spawn(accept),
    }
}

pub(crate) fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::bound_ip;

    #[test]
    fn bound_ip_is_the_listeners_unless_a_wildcard() {
        let wildcard = ["0.0.0.0:8080", "[::]:8080"].map(|a| Some(a.parse().unwrap()));
        assert_eq!(wildcard.map(bound_ip), [None, None]);
        assert_eq!(bound_ip(None), None);
        // A connection accepted on a listener bound to one address has exactly that local
        // address.
        let specific = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ip = bound_ip(specific.local_addr().ok());
        assert_eq!(ip, Some([127, 0, 0, 1].into()));
        let port = specific.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = specific.accept().unwrap();
        assert_eq!(Some(accepted.local_addr().unwrap().ip()), ip);
    }
}
