//! The admin listener: it keeps answering when the process is out of file descriptors.
//!
//! The admin API shares the process's fd table with the proxy; when the proxy has used every
//! fd, a plain accept fails with EMFILE and `/healthz` would go unanswered just when an
//! operator needs it. So the listener holds a few spare fds (`/dev/null`, opened at start, the
//! nginx / HAProxy trick): when an accept fails with EMFILE / ENFILE it closes them and
//! accepts at once into the freed slot; the spares are opened again right after, and once
//! more when that connection closes (so its fd goes back to the reserve, not to the proxy).
//! While fds are available this costs nothing: no syscall beyond the accept.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Spare fds held for the admin API: one admin connection each, and a margin for the proxy's
/// threads that may take a freed slot between the close and the accept.
const SPARE_FDS: usize = 4;

/// EMFILE or ENFILE.
fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23))
}

/// The spare fds.
#[derive(Debug, Default)]
struct Spare(parking_lot::Mutex<Vec<File>>);

impl Spare {
    /// Opens spares up to [`SPARE_FDS`] (as many as the process can).
    fn fill(&self) {
        let mut spare = self.0.lock();
        while spare.len() < SPARE_FDS {
            match File::open("/dev/null") {
                Ok(f) => spare.push(f),
                Err(_) => break,
            }
        }
    }

    fn is_full(&self) -> bool {
        self.0.lock().len() >= SPARE_FDS
    }

    /// Closes every spare; `false` when there was none.
    fn release(&self) -> bool {
        let mut spare = self.0.lock();
        let any = !spare.is_empty();
        spare.clear();
        any
    }
}

/// A [`TcpListener`] with spare fds (see the module docs), for [`axum::serve`].
#[derive(Debug)]
pub(crate) struct AdminListener {
    inner: TcpListener,
    spare: Arc<Spare>,
}

impl AdminListener {
    pub(crate) fn new(inner: TcpListener) -> Self {
        let spare = Arc::new(Spare::default());
        spare.fill();
        Self { inner, spare }
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = AdminConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (AdminConn, SocketAddr) {
        let mut released = false;
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Refilled when this connection closes, if the spares were used.
                    let refill = (released || !self.spare.is_full()).then(|| {
                        self.spare.fill();
                        Arc::clone(&self.spare)
                    });
                    return (AdminConn { stream: Some(stream), refill }, addr);
                }
                Err(e) if out_of_fds(&e) => {
                    if self.spare.release() {
                        tracing::warn!(error = %e, "admin API: out of file descriptors; accepting with a spare one");
                        released = true;
                        continue;
                    }
                    // No spare left (the proxy took the freed slots): try again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    self.spare.fill();
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    tracing::error!(error = %e, "admin API: accept failed; pausing 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// An accepted admin connection. When it was accepted while spares were missing, closing it
/// opens them again (its fd goes back to the reserve).
#[derive(Debug)]
pub(crate) struct AdminConn {
    /// `None` only while dropping.
    stream: Option<TcpStream>,
    refill: Option<Arc<Spare>>,
}

impl AdminConn {
    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.stream.as_mut().map(Pin::new).ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl Drop for AdminConn {
    fn drop(&mut self) {
        drop(self.stream.take());
        if let Some(spare) = self.refill.take() {
            spare.fill();
        }
    }
}

impl AsyncRead for AdminConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for AdminConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }
}
