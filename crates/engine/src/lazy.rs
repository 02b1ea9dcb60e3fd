//! An accepted TCP socket registered with the runtime's reactor only once it has to wait.
//!
//! A short HTTP connection (`Connection: close`, the request already in the socket when it is
//! accepted on a `TCP_DEFER_ACCEPT` listener) is read, answered and closed without ever
//! waiting on its socket: tokio's `TcpStream` would still add it to epoll at the accept
//! (`EPOLL_CTL_ADD`) and remove it before the close (`EPOLL_CTL_DEL`), two of the nine system
//! calls such a request costs. [`LazyTcp`] reads and writes the plain non-blocking socket
//! until a call would block, and only then hands it to tokio (which registers it, edge
//! triggered: data that arrived between the `EAGAIN` and the registration is reported by the
//! registration itself, so no wake-up is lost). A socket never registered is closed without
//! the `EPOLL_CTL_DEL`. HAProxy's speculative I/O works the same way.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// How many bytes of a read buffer's uninitialised part a read on the plain socket zeroes
/// first (safe code must hand `read` initialised memory): reads before the registration are
/// a request head or two, not bulk.
const PLAIN_READ_MAX: usize = 16 * 1024;

/// Client sockets of plain HTTP ports registered with the reactor so far, in this process:
/// at their first wait, or at the accept (the listener's connections were not lazy). One
/// relaxed add per registration; read by `tests/lazy_registration.rs`.
pub(crate) static REGISTRATIONS: AtomicU64 = AtomicU64::new(0);

/// A TCP socket, plain until it has to wait, then tokio's (see the module comment).
#[derive(Debug)]
pub(crate) struct LazyTcp {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Non-blocking, not registered with the reactor.
    Plain(std::net::TcpStream),
    Registered(TcpStream),
    /// The registration failed (the error was returned once; the socket is closed).
    Failed,
}

impl LazyTcp {
    /// A non-blocking socket, registered at its first would-block.
    pub(crate) fn new(plain: std::net::TcpStream) -> Self {
        Self { state: State::Plain(plain) }
    }

    /// A socket that is registered already.
    pub(crate) fn registered(tcp: TcpStream) -> Self {
        REGISTRATIONS.fetch_add(1, Relaxed);
        Self { state: State::Registered(tcp) }
    }

    /// Whether the socket has been handed to the reactor.
    #[cfg(test)]
    pub(crate) fn is_registered(&self) -> bool {
        matches!(self.state, State::Registered(_))
    }

    /// Registers the plain socket (a no-op for one registered already); the caller then
    /// polls the registered one, which waits for the reactor's first event on it.
    fn register(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Plain(s) => {
                self.state = State::Registered(TcpStream::from_std(s)?);
                REGISTRATIONS.fetch_add(1, Relaxed);
            }
            other => self.state = other,
        }
        Ok(())
    }

    /// One I/O call: on the plain socket, until it would block (then the socket registers),
    /// else the registered socket's poll. `arg`: the buffer both ways of calling take.
    fn poll_io<A: ?Sized, R>(
        &mut self,
        cx: &mut Context<'_>,
        arg: &mut A,
        plain: impl Fn(&mut std::net::TcpStream, &mut A) -> io::Result<R>,
        registered: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>, &mut A) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        loop {
            match &mut self.state {
                State::Plain(s) => match plain(s, arg) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = self.register() {
                            return Poll::Ready(Err(e));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => return Poll::Ready(r),
                },
                State::Registered(t) => return registered(Pin::new(t), cx, arg),
                State::Failed => return Poll::Ready(Err(failed())),
            }
        }
    }
}

/// The flags of a connection's last write: hold a partial segment for the FIN that follows;
/// no `SIGPIPE` (as std's own `send`).
const LAST_FLAGS: libc::c_int = libc::MSG_MORE | libc::MSG_NOSIGNAL;

/// A `send` with [`LAST_FLAGS`] on the registered socket, once it is writable.
fn poll_send_last(
    t: &TcpStream,
    cx: &mut Context<'_>,
    mut send: impl FnMut(SockRef<'_>) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(t.poll_write_ready(cx))?;
        match t.try_io(Interest::WRITABLE, || send(SockRef::from(t))) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return Poll::Ready(r),
        }
    }
}

fn failed() -> io::Error {
    io::Error::other("the socket could not be registered with the reactor")
}

impl AsFd for LazyTcp {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.state {
            State::Plain(s) => s.as_fd(),
            State::Registered(t) => t.as_fd(),
            // Not reachable through the engine (a failed registration ends the connection);
            // a closed socket has no descriptor to lend.
            State::Failed => panic!("LazyTcp::as_fd after a failed registration"),
        }
    }
}

impl AsyncRead for LazyTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_io(
            cx,
            buf,
            |s, buf| {
                let n = buf.remaining().min(PLAIN_READ_MAX);
                let n = s.read(buf.initialize_unfilled_to(n))?;
                buf.advance(n);
                Ok(())
            },
            |t, cx, buf| t.poll_read(cx, buf),
        )
    }
}

impl AsyncWrite for LazyTcp {
    /// A write the HTTP layer marks as the connection's last ([`smartproxy_http::last_write`]:
    /// the close follows at once) goes with `MSG_MORE`, so that its bytes leave with the FIN
    /// in one segment; any other write is a plain `send`.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = buf;
        if smartproxy_http::last_write() {
            return self.get_mut().poll_io(
                cx,
                &mut buf,
                |s, b| SockRef::from(&*s).send_with_flags(b, LAST_FLAGS),
                |t, cx, b| poll_send_last(&t, cx, |s| s.send_with_flags(b, LAST_FLAGS)),
            );
        }
        self.get_mut().poll_io(cx, &mut buf, |s, b| s.write(b), |t, cx, b| t.poll_write(cx, b))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut bufs = bufs;
        if smartproxy_http::last_write() {
            return self.get_mut().poll_io(
                cx,
                &mut bufs,
                |s, b| SockRef::from(&*s).send_vectored_with_flags(b, LAST_FLAGS),
                |t, cx, b| poll_send_last(&t, cx, |s| s.send_vectored_with_flags(b, LAST_FLAGS)),
            );
        }
        self.get_mut().poll_io(
            cx,
            &mut bufs,
            |s, b| s.write_vectored(b),
            |t, cx, b| t.poll_write_vectored(cx, b),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Registered(t) => Pin::new(t).poll_flush(cx),
            // Nothing is buffered here.
            State::Plain(_) | State::Failed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Plain(s) => Poll::Ready(s.shutdown(Shutdown::Write)),
            State::Registered(t) => {
                ready!(Pin::new(t).poll_shutdown(cx))?;
                Poll::Ready(Ok(()))
            }
            State::Failed => Poll::Ready(Err(failed())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LazyTcp;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair on loopback, `first` sent by the client and in the accepted socket's
    /// receive queue: the accepted side as a plain non-blocking socket, the client as tokio's.
    async fn pair(first: &[u8]) -> (LazyTcp, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = l.accept().await.unwrap();
        if !first.is_empty() {
            client.write_all(first).await.unwrap();
            let mut b = [0u8; 1];
            accepted.peek(&mut b).await.unwrap();
        }
        let std = accepted.into_std().unwrap();
        std.set_nonblocking(true).unwrap();
        (LazyTcp::new(std), client)
    }

    /// Bytes already in the socket are read, and the answer written, without registering;
    /// the first read that has to wait registers it, and the data sent later still wakes it.
    #[tokio::test]
    async fn reads_and_writes_plain_until_a_read_has_to_wait() {
        let (mut lazy, mut client) = pair(b"GET / HTTP/1.1\r\n\r\n").await;
        let mut got = vec![0u8; 18];
        lazy.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
        lazy.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(!lazy.is_registered(), "a read of queued bytes and a small write never wait");
        let mut answer = vec![0u8; 19];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200 OK\r\n\r\n");
        // Nothing more to read: this read registers and waits for the client's next bytes.
        let reader = tokio::spawn(async move {
            let mut b = [0u8; 4];
            lazy.read_exact(&mut b).await.map(|_| (b, lazy))
        });
        tokio::task::yield_now().await;
        client.write_all(b"next").await.unwrap();
        let (b, lazy) = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("the registered socket was not woken by the client's bytes")
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"next");
        assert!(lazy.is_registered(), "a read that had to wait registers the socket");
    }

    /// A socket never registered: the peer sees the close (end of stream) and a write-side
    /// shutdown on the plain socket.
    #[tokio::test]
    async fn shutdown_and_close_of_a_plain_socket_reach_the_peer() {
        let (mut lazy, mut client) = pair(b"").await;
        lazy.write_all(b"bye").await.unwrap();
        lazy.shutdown().await.unwrap();
        assert!(!lazy.is_registered(), "writing and shutting down never waited");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got, b"bye");
        drop(lazy);
        client.write_all(b"x").await.unwrap();
    }

    /// A write larger than the socket buffers would block: the socket registers and the
    /// write completes as the peer reads.
    #[tokio::test]
    async fn a_write_that_would_block_registers_and_completes() {
        let (mut lazy, mut client) = pair(b"").await;
        let big = vec![7u8; 8 << 20];
        let writer = tokio::spawn(async move {
            lazy.write_all(&big).await.unwrap();
            lazy
        });
        let mut got = vec![0u8; 8 << 20];
        tokio::time::timeout(std::time::Duration::from_secs(10), client.read_exact(&mut got))
            .await
            .expect("the write did not complete")
            .unwrap();
        let lazy = writer.await.unwrap();
        assert!(lazy.is_registered(), "8 MiB do not fit in loopback socket buffers");
        assert!(got.iter().all(|&b| b == 7));
    }
}
