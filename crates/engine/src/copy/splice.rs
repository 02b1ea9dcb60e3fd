//! Zero-copy forwarding between two TCP sockets with `splice(2)` through a pipe (Linux).
//!
//! Bytes move socket -> pipe -> socket inside the kernel: no copy to user space and no buffer
//! per connection. Pipes come from a small per-thread pool, so a connection that switches to
//! splice costs no `pipe2`/`close` syscalls once the pool is warm. A pipe that still holds bytes
//! when its connection ends is closed instead of being pooled.
//!
//! The copy state machine ([`super::duplex`]) decides when a direction splices (it starts with
//! plain reads and switches once a read fills the whole buffer, HAProxy's "splice-auto") and
//! when a short splice may end a round; this module only owns the pipes.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{
    PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice,
};

use super::duplex::SplicePipe;

/// At most this many idle pipes are kept per worker thread.
const POOL_MAX: usize = 64;
/// Pipe capacity asked for (the kernel caps it at `/proc/sys/fs/pipe-max-size`, 1 MiB by
/// default): bigger chunks mean fewer splice calls per byte. An empty pipe holds no pages.
const PIPE_SIZE: usize = 256 * 1024;

/// A non-blocking pipe with its capacity.
#[derive(Debug)]
pub(crate) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Capacity of the pipe in bytes (64 KiB by default, [`PIPE_SIZE`] when allowed).
    size: u32,
}

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

fn flags() -> SpliceFlags {
    SpliceFlags::MOVE | SpliceFlags::NONBLOCK
}

impl Pipe {
    /// Moves at most `len` bytes from `from` into the pipe. Fewer than asked does not mean
    /// that `from` is drained: the pipe may be out of slots (one per page fragment).
    pub(crate) fn fill_from(&self, from: &impl AsFd, len: usize) -> io::Result<usize> {
        Ok(splice(from.as_fd(), None, self.w.as_fd(), None, len, flags())?)
    }

    /// Moves at most `len` bytes from the pipe into `to`.
    pub(crate) fn drain_into(&self, to: &impl AsFd, len: usize) -> io::Result<usize> {
        Ok(splice(self.r.as_fd(), None, to.as_fd(), None, len, flags())?)
    }
}

impl SplicePipe for Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(p) = POOL.with(|p| p.borrow_mut().pop()) {
            return Ok(p);
        }
        let (r, w) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // Best effort: a smaller pipe still works.
        let _ = fcntl_setpipe_size(&w, PIPE_SIZE);
        let size = fcntl_getpipe_size(&r).unwrap_or(64 * 1024).clamp(4096, PIPE_SIZE);
        // `size` <= PIPE_SIZE.
        Ok(Pipe { r, w, size: size as u32 })
    }

    fn capacity(&self) -> usize {
        self.size as usize
    }

    fn give_back(self) {
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(self);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// A bulk transfer switches to splice, moves every byte once and in order, and leaves an
    /// empty pipe in the pool at the end.
    #[tokio::test]
    async fn bulk_transfer_splices_and_pools_the_pipe() {
        let (mut app, proxy_in) = pair().await;
        let (proxy_out, mut sink) = pair().await;
        POOL.with(|p| p.borrow_mut().clear());
        let proxy = async move {
            let mut total = 0u64;
            crate::copy::copy_both(&proxy_in, &proxy_out, |n| total += n, |_| {}).await.unwrap();
            // Closing both sockets sends the last FIN (to the writer).
            drop((proxy_in, proxy_out));
            (total, POOL.with(|p| p.borrow().len()))
        };
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let writer = async {
            app.write_all(&data).await.unwrap();
            app.shutdown().await.unwrap();
            // The other direction ends when the sink closes.
            let mut rest = Vec::new();
            app.read_to_end(&mut rest).await.unwrap();
        };
        let reader = async {
            let mut got = vec![0u8; data.len()];
            sink.read_exact(&mut got).await.unwrap();
            let mut eof = [0u8; 1];
            assert_eq!(sink.read(&mut eof).await.unwrap(), 0, "half-close passed on");
            drop(sink);
            got
        };
        let ((total, pooled), (), got) = tokio::join!(proxy, writer, reader);
        assert!(got == data, "byte-exact");
        assert_eq!(total, data.len() as u64);
        assert!(pooled >= 1, "an empty pipe goes back to the pool");
    }
}
