//! Zero-copy forwarding between two TCP sockets with `splice(2)` through a pipe (Linux).
//!
//! Bytes move socket -> pipe -> socket inside the kernel: no copy to user space and no buffer
//! per connection. Pipes come from a small per-thread pool, so a connection that switches to
//! splice costs no `pipe2`/`close` syscalls once the pool is warm. A pipe that still holds bytes
//! when its connection ends is closed instead of being pooled.
//!
//! [`crate::copy`] starts every direction with plain reads and writes and switches it here once
//! a read fills the whole buffer (HAProxy's "splice-auto"): for small messages splice costs
//! more syscalls than a copy, for bulk transfers it saves the copies.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{
    PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice,
};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// At most this many idle pipes are kept per worker thread.
const POOL_MAX: usize = 64;
/// Pipe capacity asked for (the kernel caps it at `/proc/sys/fs/pipe-max-size`, 1 MiB by
/// default): bigger chunks mean fewer splice calls per byte. An empty pipe holds no pages.
const PIPE_SIZE: usize = 256 * 1024;

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Capacity of the pipe (64 KiB by default).
    size: usize,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

impl Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(p) = POOL.with(|p| p.borrow_mut().pop()) {
            return Ok(p);
        }
        let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Best effort: a smaller pipe still works.
        let _ = fcntl_setpipe_size(&w, PIPE_SIZE);
        let size = fcntl_getpipe_size(&r).unwrap_or(64 * 1024).max(4096);
        Ok(Pipe { r, w, size })
    }

    /// Returns an empty pipe to the pool (a pipe with bytes in it is dropped).
    fn give_back(self, empty: bool) {
        if empty {
            POOL.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(self);
                }
            });
        }
    }
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

/// Moves bytes from `from` to `to` with splice until `from` reaches EOF (returns `Ok(())`
/// without shutting anything down: the caller passes the half-close on). `on_bytes(n)` is
/// called after each chunk has been handed to `to`.
pub(crate) async fn splice_until_eof(
    from: &TcpStream,
    to: &TcpStream,
    mut on_bytes: impl FnMut(u64),
) -> io::Result<()> {
    let pipe = Pipe::take()?;
    let mut in_pipe = 0usize;
    let result = async {
        loop {
            // Fill the (empty) pipe from the source socket. Less than the pipe's capacity
            // means the socket's receive queue is empty: the readiness is cleared without the
            // extra splice that would return EAGAIN (nginx does the same with short reads).
            from.readable().await?;
            let mut short = 0usize;
            let r = from.try_io(Interest::READABLE, || {
                let n = splice(from.as_fd(), None, pipe.w.as_fd(), None, pipe.size, flags())?;
                if n > 0 && n < pipe.size {
                    short = n;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            let n = match r {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if short == 0 {
                        continue;
                    }
                    short
                }
                Err(e) => return Err(e),
            };
            in_pipe = n;
            // Drain the pipe into the destination socket.
            while in_pipe > 0 {
                let w = to
                    .async_io(Interest::WRITABLE, || {
                        splice(pipe.r.as_fd(), None, to.as_fd(), None, in_pipe, flags())
                            .map_err(io::Error::from)
                    })
                    .await?;
                if w == 0 {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "splice wrote 0 bytes"));
                }
                in_pipe -= w.min(in_pipe);
            }
            on_bytes(n as u64);
        }
    }
    .await;
    pipe.give_back(in_pipe == 0);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn moves_bytes_until_eof_and_pools_the_pipe() {
        let (mut app, proxy_in) = pair().await;
        let (proxy_out, mut sink) = pair().await;
        let proxy = tokio::spawn(async move {
            let mut total = 0u64;
            splice_until_eof(&proxy_in, &proxy_out, |n| total += n).await.unwrap();
            (total, POOL.with(|p| p.borrow().len()))
        });
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            app.write_all(&d2).await.unwrap();
            app.shutdown().await.unwrap();
        });
        let mut got = vec![0u8; data.len()];
        sink.read_exact(&mut got).await.unwrap();
        writer.await.unwrap();
        let (total, pooled) = proxy.await.unwrap();
        assert!(got == data, "byte-exact");
        assert_eq!(total, data.len() as u64);
        assert_eq!(pooled, 1, "an empty pipe goes back to the pool");
    }
}
