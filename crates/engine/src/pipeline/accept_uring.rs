//! Experiment (cargo feature `io-uring`, Linux): the accept loop on io_uring instead of
//! epoll + `accept4`.
//!
//! Each listening socket gets its own ring with [`IN_FLIGHT`] accept requests outstanding,
//! each with its own address buffer. The ring's descriptor is registered with the runtime
//! like any socket (it is readable while completions wait), so connections are still served
//! on the runtime that accepted them. Per wake-up the loop takes every completion from the
//! shared completion ring (no system call), spawns their connections, queues the accept
//! requests again and submits them all with one `io_uring_enter`. What it saves against
//! the epoll loop: the `accept4` per connection and the `accept4` that returns `EAGAIN` per
//! wake-up, for one `io_uring_enter` per wake-up.
//!
//! Differences from the epoll loop, acceptable for an experiment only: while connections
//! wait for an fd (see `fds`) the kernel still takes up to [`IN_FLIGHT`] more; completions
//! not taken when the loop is aborted are closed, not drained.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Weak};
use std::time::Duration;

use io_uring::{opcode, types, IoUring};
use socket2::{SockAddr, SockAddrStorage};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::shared::Shared;

/// Accept requests kept in the kernel per listening socket.
const IN_FLIGHT: usize = 32;

/// The ring's descriptor, as the runtime sees it.
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// One accept request's address buffer; stays at one place while the kernel may write it.
struct Slot {
    addr: SockAddrStorage,
    len: libc::socklen_t,
}

/// The ring, the listening socket and the buffers the kernel writes into. Dropping it
/// closes the ring (the kernel cancels the requests) and any accepted connection not taken.
struct Acceptor {
    ring: IoUring,
    listener: std::net::TcpListener,
    slots: Box<[Slot]>,
}

impl Acceptor {
    /// Sets up the ring and its requests; gives the socket back when that fails.
    fn new(listener: std::net::TcpListener) -> Result<Self, (std::net::TcpListener, io::Error)> {
        // COOP_TASKRUN: a completion does not interrupt the runtime thread with an IPI while
        // it runs (it is handled at its next system call); a sleeping thread is still woken.
        // Without it, every accepted connection cost an IPI, a VM exit on a virtual machine.
        let mut ring = match IoUring::builder().setup_coop_taskrun().build((IN_FLIGHT * 2) as u32) {
            Ok(r) => r,
            Err(e) => return Err((listener, e)),
        };
        let mut slots: Box<[Slot]> = (0..IN_FLIGHT)
            .map(|_| Slot {
                addr: SockAddrStorage::zeroed(),
                len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
            })
            .collect();
        let lfd = listener.as_raw_fd();
        let queued = (0..IN_FLIGHT).try_for_each(|i| queue(&mut ring, lfd, &mut slots[i], i));
        if let Err(e) = queued.and_then(|()| ring.submit().map(drop)) {
            // Dropping the ring cancels what was submitted before the buffers go.
            drop(ring);
            drop(slots);
            return Err((listener, e));
        }
        Ok(Acceptor { ring, listener, slots })
    }

    /// Queues the accept request of slot `i` again (submitted by the next `submit`).
    fn queue(&mut self, i: usize) -> io::Result<()> {
        let lfd = self.listener.as_raw_fd();
        queue(&mut self.ring, lfd, &mut self.slots[i], i)
    }

    /// The address the kernel wrote into slot `i`.
    fn peer(&mut self, i: usize) -> Option<SocketAddr> {
        let slot = &mut self.slots[i];
        let storage = std::mem::replace(&mut slot.addr, SockAddrStorage::zeroed());
        // SAFETY: the kernel wrote a socket address of `len` bytes into the storage.
        let addr = unsafe { SockAddr::new(storage, slot.len) };
        addr.as_socket()
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        // Connections accepted into completions nobody took: close them (their fds are
        // already in the process's table).
        for cqe in self.ring.completion() {
            if cqe.result() >= 0 {
                // SAFETY: a successful accept's result is a descriptor this process owns.
                drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(cqe.result()) });
            }
        }
    }
}

/// Queues an accept request on `listener` writing into `slot` (submitted by the next
/// `submit`).
fn queue(ring: &mut IoUring, listener: RawFd, slot: &mut Slot, i: usize) -> io::Result<()> {
    slot.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let entry = opcode::Accept::new(
        types::Fd(listener),
        std::ptr::from_mut(&mut slot.addr).cast::<libc::sockaddr>(),
        &mut slot.len,
    )
    .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
    .build()
    .user_data(i as u64);
    // SAFETY: the slot is an element of a boxed slice that is neither moved nor freed before
    // the ring is dropped (which cancels the request), and has no other request in flight.
    unsafe { ring.submission().push(&entry) }
        .map_err(|_| io::Error::other("io_uring submission queue full"))
}

/// Runs the accept loop of one socket on io_uring (see the module doc). Returns the socket
/// when the ring cannot be set up (the caller falls back to the epoll loop).
pub(crate) async fn run(
    shared: Weak<Shared>,
    listener: std::net::TcpListener,
    port: u16,
) -> Result<(), std::net::TcpListener> {
    let mut a = match Acceptor::new(listener) {
        Ok(a) => a,
        Err((listener, e)) => {
            tracing::warn!(port, error = %e, "io_uring unavailable; accepting with epoll");
            return Err(listener);
        }
    };
    // SAFETY: the ring's descriptor stays open while registered: `ring_fd` is declared
    // after `a`, so it is dropped (deregistered) before `a` closes the ring.
    let ring_fd = match unsafe {
        AsyncFd::register_with_interest(RingFd(a.ring.as_raw_fd()), Interest::READABLE)
    } {
        Ok(fd) => fd,
        Err(e) => {
            let e = e.into_parts().1;
            tracing::error!(port, error = %e, "cannot register the io_uring descriptor");
            return Ok(());
        }
    };
    let Some(fds) = shared.upgrade().map(|s| Arc::clone(&s.fds)) else { return Ok(()) };
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(IN_FLIGHT);
    loop {
        if fds.any_waiting() {
            fds.until_none_waiting().await;
        }
        let mut guard = match ring_fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(port, error = %e, "io_uring descriptor failed");
                return Ok(());
            }
        };
        done.clear();
        done.extend(a.ring.completion().map(|c| (c.user_data(), c.result())));
        if done.is_empty() {
            guard.clear_ready();
            continue;
        }
        let mut backoff = false;
        for &(slot, res) in &done {
            let i = slot as usize;
            if res >= 0 {
                let accepted = Instant::now();
                // SAFETY: a successful accept's result is a descriptor this process owns.
                let std_tcp = unsafe { std::net::TcpStream::from_raw_fd(res) };
                let peer = a.peer(i);
                fds.refill_if_short();
                match (peer, TcpStream::from_std(std_tcp), shared.upgrade()) {
                    (Some(peer), Ok(tcp), Some(shared)) => {
                        tokio::spawn(super::serve(shared, tcp, peer, port, accepted));
                    }
                    (_, _, None) => return Ok(()),
                    _ => {}
                }
            } else {
                let e = io::Error::from_raw_os_error(-res);
                if !super::accept::is_per_connection(&e) {
                    tracing::warn!(port, error = %e, "accept failed; pausing 100 ms");
                    backoff = true;
                }
            }
            if let Err(e) = a.queue(i) {
                tracing::error!(port, error = %e, "cannot queue an accept request");
                return Ok(());
            }
        }
        if backoff {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Err(e) = a.ring.submit() {
            tracing::error!(port, error = %e, "io_uring submit failed");
            return Ok(());
        }
        guard.clear_ready();
    }
}
