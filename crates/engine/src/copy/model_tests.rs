//! A deterministic model of the plain-TCP copy ([`super::duplex`]): the real state machine
//! driven over scripted sockets that behave as the kernel and tokio do, in seeded random
//! orders.
//!
//! The model of a socket:
//! - tokio's cached readiness: set by an event (bytes or a FIN arriving, send-buffer space
//!   freed), cleared only by a `WouldBlock` inside `try_io` when no event arrived meanwhile;
//!   a waker is woken on each event;
//! - `read` returns what is queued up to the buffer's size (a short read drains the queue,
//!   as `tcp_recvmsg` does), except for bytes that arrive "in the backlog" during the call:
//!   those are queued when the call ends and raise a new event (as `release_sock` does);
//! - `splice` into a pipe may move fewer bytes than are queued and than fit (the pipe ran out
//!   of slots);
//! - writes and splices out move any part of what fits in the send buffer, `WouldBlock` when
//!   it is full; the peer's reads free space and raise an event;
//! - a write with `MSG_MORE` holds back the partial segment at the end of the send buffer
//!   (the peer cannot read it) until the next plain write, the shutdown, the close, or the
//!   peer's next read (its acknowledgement pushes it), as the kernel does;
//! - the peer can send only while the receive queue has room (its window), so a direction that
//!   stops reading with bytes queued never gets another event: the stall of issue 10;
//! - reads and writes fail with an error at a random step in some runs.
//!
//! Each run checks that every byte arrives once and in order (a prefix when an error ended
//! the copy), that a FIN is passed on as a half-close only after the bytes before it and only
//! then, that the counters add up, that a pipe given back to the pool is empty, and that the
//! copy never parks while it could move a byte: when neither peer can do anything more and the
//! copy is not woken, nothing may be left in a queue or a pipe, or held back by `MSG_MORE`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use proptest::prelude::*;

use super::duplex::{CopySocket, Duplex, SplicePipe};

/// A small seeded generator (xorshift64*): the model's scheduler and the kernel's choices.
#[derive(Debug)]
struct Rng(Cell<u64>);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(Cell::new(seed | 1))
    }

    fn next(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `1..=max` (`max` >= 1).
    fn upto(&self, max: usize) -> usize {
        1 + (self.next() % max as u64) as usize
    }

    fn chance(&self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }
}

thread_local! {
    /// The model's kernel for pipes: created by `SplicePipe::take`, which has no arguments.
    static KERNEL: RefCell<Option<Rc<Kernel>>> = const { RefCell::new(None) };
}

/// What pipes and splices need: the generator, the pipe capacity, and counters.
#[derive(Debug)]
struct Kernel {
    rng: Rng,
    pipe_cap: usize,
    /// One `take` in this many fails (no file descriptor left); 0: never.
    take_fails_one_in: u64,
    takes: Cell<u32>,
    give_backs: Cell<u32>,
}

fn kernel() -> Rc<Kernel> {
    KERNEL.with(|k| k.borrow().clone()).expect("a model run sets the kernel")
}

#[derive(Debug)]
struct FakePipe {
    bytes: RefCell<VecDeque<u8>>,
    cap: usize,
}

impl SplicePipe for FakePipe {
    fn take() -> io::Result<Self> {
        let k = kernel();
        if k.take_fails_one_in > 0 && k.rng.chance(k.take_fails_one_in) {
            return Err(io::Error::from_raw_os_error(24)); // EMFILE
        }
        k.takes.set(k.takes.get() + 1);
        Ok(Self { bytes: RefCell::new(VecDeque::new()), cap: k.pipe_cap })
    }

    fn capacity(&self) -> usize {
        self.cap
    }

    fn give_back(self) {
        assert!(self.bytes.borrow().is_empty(), "a pipe with bytes in it went back to the pool");
        let k = kernel();
        k.give_backs.set(k.give_backs.get() + 1);
    }
}

/// One socket of the proxy; its peer is the test.
#[derive(Debug, Default)]
struct Sock {
    /// The receive queue: bytes from the peer that the proxy has not read.
    rx: VecDeque<u8>,
    /// Bytes that arrive during the proxy's next call on this socket (the socket's backlog):
    /// queued, with an event, when that call ends.
    backlog: VecDeque<u8>,
    /// The peer's FIN arrived (after every byte it sent).
    fin: bool,
    read_ready: bool,
    read_event: bool,
    read_waker: Option<Waker>,
    /// The send buffer: bytes the proxy wrote that the peer has not read.
    tx: VecDeque<u8>,
    tx_cap: usize,
    write_ready: bool,
    write_event: bool,
    write_waker: Option<Waker>,
    /// The proxy shut down its write half.
    shut: bool,
    /// The last write had `MSG_MORE`: the partial segment at the end of `tx` is held back.
    corked: bool,
    /// Writes with `MSG_MORE`.
    more_writes: u32,
    fail_read: bool,
    fail_write: bool,
}

#[derive(Debug)]
struct FakeSock {
    s: RefCell<Sock>,
    k: Rc<Kernel>,
}

impl FakeSock {
    fn new(k: &Rc<Kernel>, tx_cap: usize) -> Self {
        let s = Sock { tx_cap, write_ready: true, ..Sock::default() };
        Self { s: RefCell::new(s), k: Rc::clone(k) }
    }

    fn read_event(s: &mut Sock) {
        s.read_ready = true;
        s.read_event = true;
        if let Some(w) = s.read_waker.take() {
            w.wake();
        }
    }

    fn write_event(s: &mut Sock) {
        s.write_ready = true;
        s.write_event = true;
        if let Some(w) = s.write_waker.take() {
            w.wake();
        }
    }

    /// The end of a call on the socket: the backlog is queued and raises an event.
    fn release(s: &mut Sock) {
        if !s.backlog.is_empty() {
            let b = std::mem::take(&mut s.backlog);
            s.rx.extend(b);
            Self::read_event(s);
        }
    }

    /// tokio's `try_io(WRITABLE, f)`.
    fn try_write_io<R>(&self, f: impl FnOnce(&mut Sock) -> io::Result<R>) -> io::Result<R> {
        let mut s = self.s.borrow_mut();
        if !s.write_ready {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        s.write_event = false;
        let r = f(&mut s);
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) && !s.write_event {
            s.write_ready = false;
        }
        r
    }

    /// What the peer can read of `tx`: all but the partial segment held back by `MSG_MORE`.
    fn readable(s: &Sock) -> usize {
        if s.corked { s.tx.len() - s.tx.len() % s.tx_cap.min(MSS) } else { s.tx.len() }
    }

    /// A write of some of what fits of `buf`; `more`: with `MSG_MORE` (the partial segment at
    /// the end is held back), else a plain write (which pushes one held back).
    fn write(&self, buf: &[u8], more: bool) -> io::Result<usize> {
        self.try_write_io(|s| {
            let n = self.room(s, buf.len())?;
            s.tx.extend(&buf[..n]);
            s.corked = more;
            s.more_writes += u32::from(more);
            Ok(n)
        })
    }

    /// Moves what a write of `len` bytes may take: some of what fits.
    fn room(&self, s: &Sock, len: usize) -> io::Result<usize> {
        assert!(!s.shut, "the copy wrote after shutting its write half down");
        if s.fail_write {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let free = s.tx_cap - s.tx.len();
        if free == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(self.k.rng.upto(len.min(free)))
    }
}

impl CopySocket for FakeSock {
    type Pipe = FakePipe;

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut s = self.s.borrow_mut();
        if s.read_ready {
            Poll::Ready(Ok(s.fin))
        } else {
            s.read_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.s.borrow_mut();
        if s.write_ready {
            Poll::Ready(Ok(()))
        } else {
            s.write_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn try_read_io<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        // The state is released while `f` runs (it calls `read` or `splice_in`), then the
        // readiness is cleared as tokio clears it.
        {
            let mut s = self.s.borrow_mut();
            if !s.read_ready {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            s.read_event = false;
        }
        let r = f();
        let mut s = self.s.borrow_mut();
        Self::release(&mut s);
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) && !s.read_event {
            s.read_ready = false;
        }
        r
    }

    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.s.borrow_mut();
        if s.fail_read {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if s.rx.is_empty() {
            return if s.fin { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(s.rx.len());
        for (d, b) in buf.iter_mut().zip(s.rx.drain(..n)) {
            *d = b;
        }
        Ok(n)
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.write(buf, false)
    }

    fn try_write_more(&self, buf: &[u8]) -> io::Result<usize> {
        self.write(buf, true)
    }

    fn splice_in(&self, pipe: &FakePipe, len: usize) -> io::Result<usize> {
        let mut s = self.s.borrow_mut();
        if s.fail_read {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let mut p = pipe.bytes.borrow_mut();
        let fits = len.min(pipe.cap - p.len());
        if s.rx.is_empty() || fits == 0 {
            return if s.rx.is_empty() && s.fin {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let mut n = fits.min(s.rx.len());
        // Out of pipe slots: fewer bytes than are queued and than fit.
        if self.k.rng.chance(2) {
            n = self.k.rng.upto(n);
        }
        p.extend(s.rx.drain(..n));
        Ok(n)
    }

    fn try_splice_out(&self, pipe: &FakePipe, len: usize) -> io::Result<usize> {
        self.try_write_io(|s| {
            let mut p = pipe.bytes.borrow_mut();
            let n = self.room(s, len.min(p.len()))?;
            s.tx.extend(p.drain(..n));
            Ok(n)
        })
    }

    fn shutdown_write(&self) -> io::Result<()> {
        let mut s = self.s.borrow_mut();
        s.shut = true;
        // The FIN goes out with (after) the held-back segment.
        s.corked = false;
        Ok(())
    }
}

/// Wakes by setting a flag.
#[derive(Debug, Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One direction's peer traffic: what the sending peer sends, what the receiving peer got.
#[derive(Debug)]
struct Flow {
    data: Vec<u8>,
    sent: usize,
    /// The sender closes its write half once everything is sent.
    half_close: bool,
    fin_sent: bool,
    got: Vec<u8>,
    counted: u64,
}

impl Flow {
    fn new(data: Vec<u8>, half_close: bool) -> Self {
        Self { data, sent: 0, half_close, fin_sent: false, got: Vec::new(), counted: 0 }
    }
}

/// A model run's settings.
#[derive(Debug, Clone)]
struct Run {
    seed: u64,
    up: usize,
    down: usize,
    up_fin: bool,
    down_fin: bool,
    splice: bool,
    /// The route's `half_close`: a FIN is passed on (`true`) or ends the copy.
    half_close: bool,
    pipe_cap: usize,
    rx_cap: usize,
    tx_cap: usize,
    /// Fail a read or a write at this step (when `Some`).
    fail_at: Option<u32>,
}

/// What a run ended with.
#[derive(Debug)]
struct Ended {
    result: Option<io::Result<()>>,
    takes: u32,
    give_backs: u32,
    /// Writes with `MSG_MORE` on the client's and the backend's socket.
    more_writes: (u32, u32),
}

/// Sends up to the receiver's window; `true` when something was sent.
fn send(k: &Kernel, flow: &mut Flow, to: &FakeSock, rx_cap: usize) -> bool {
    let mut s = to.s.borrow_mut();
    let queued = s.rx.len() + s.backlog.len();
    if flow.sent < flow.data.len() && queued < rx_cap {
        let n = k.rng.upto((flow.data.len() - flow.sent).min(rx_cap - queued));
        let bytes = &flow.data[flow.sent..flow.sent + n];
        flow.sent += n;
        // In the backlog: arrives during the proxy's next call (after what is there already).
        if !s.backlog.is_empty() || k.rng.chance(4) {
            s.backlog.extend(bytes);
        } else {
            s.rx.extend(bytes);
            FakeSock::read_event(&mut s);
        }
        return true;
    }
    if flow.half_close && !flow.fin_sent && flow.sent == flow.data.len() && s.backlog.is_empty() {
        flow.fin_sent = true;
        s.fin = true;
        FakeSock::read_event(&mut s);
        return true;
    }
    false
}

/// The peer reads some of what the proxy wrote; `true` when it read something. Its
/// acknowledgement pushes a segment held back by `MSG_MORE`.
fn receive(k: &Kernel, flow: &mut Flow, from: &FakeSock) -> bool {
    let mut s = from.s.borrow_mut();
    let readable = FakeSock::readable(&s);
    if readable == 0 {
        return false;
    }
    let n = k.rng.upto(readable);
    flow.got.extend(s.tx.drain(..n));
    s.corked = false;
    FakeSock::write_event(&mut s);
    true
}

/// The model's segment size: what `MSG_MORE` holds back is the part of the send buffer past
/// the last full segment.
const MSS: usize = 1000;

fn run_model(r: &Run) -> Ended {
    let k = Rc::new(Kernel {
        rng: Rng::new(r.seed),
        pipe_cap: r.pipe_cap,
        take_fails_one_in: if r.seed % 5 == 0 { 3 } else { 0 },
        takes: Cell::new(0),
        give_backs: Cell::new(0),
    });
    KERNEL.with(|c| *c.borrow_mut() = Some(Rc::clone(&k)));
    let data = |n: usize, salt: u64| -> Vec<u8> {
        let g = Rng::new(r.seed ^ salt);
        (0..n).map(|_| g.next() as u8).collect()
    };
    let (a, b) = (FakeSock::new(&k, r.tx_cap), FakeSock::new(&k, r.tx_cap));
    let mut up = Flow::new(data(r.up, 0x5555), r.up_fin);
    let mut down = Flow::new(data(r.down, 0xaaaa), r.down_fin);

    let mut duplex: Duplex<FakePipe> = Duplex::new(r.splice);
    let flag = Arc::new(Flag(AtomicBool::new(true)));
    let waker = Waker::from(Arc::clone(&flag));
    let mut cx = Context::from_waker(&waker);
    let (mut up_n, mut down_n) = (0u64, 0u64);
    let mut result = None;
    let mut step = 0u32;

    while result.is_none() {
        step += 1;
        assert!(step < 2_000_000, "the model run did not end: {r:?}");
        if r.fail_at == Some(step) {
            let sock = if k.rng.chance(2) { &a } else { &b };
            let mut s = sock.s.borrow_mut();
            if k.rng.chance(2) {
                s.fail_read = true;
                FakeSock::read_event(&mut s);
            } else {
                s.fail_write = true;
                FakeSock::write_event(&mut s);
            }
        }
        // The peers act in a random order; the copy runs only when woken.
        let woken = flag.0.load(Ordering::SeqCst);
        let acted = match k.rng.next() % 5 {
            0 => send(&k, &mut up, &a, r.rx_cap),
            1 => send(&k, &mut down, &b, r.rx_cap),
            2 => receive(&k, &mut up, &b),
            3 => receive(&k, &mut down, &a),
            _ => false,
        };
        if acted {
            continue;
        }
        if woken {
            flag.0.store(false, Ordering::SeqCst);
            let (mut cu, mut cd) = (|n| up_n += n, |n| down_n += n);
            if let Poll::Ready(res) = duplex.poll(&mut cx, &a, &b, &mut cu, &mut cd, r.half_close) {
                result = Some(res);
            }
            continue;
        }
        // Not woken: the peers may still have something to do.
        let can_act = send(&k, &mut up, &a, r.rx_cap)
            || send(&k, &mut down, &b, r.rx_cap)
            || receive(&k, &mut up, &b)
            || receive(&k, &mut down, &a);
        if can_act {
            continue;
        }
        // Bytes still in the backlog arrive (no call of the proxy holds the socket).
        let mut flushed = false;
        for sock in [&a, &b] {
            let mut s = sock.s.borrow_mut();
            if !s.backlog.is_empty() {
                FakeSock::release(&mut s);
                flushed = true;
            }
        }
        if flushed {
            continue;
        }
        // Nobody can act and the copy is parked: it must have nothing left to move.
        for (name, sock) in [("client", &a), ("backend", &b)] {
            let s = sock.s.borrow();
            let failed = s.fail_read || s.fail_write;
            assert!(
                failed || s.rx.is_empty(),
                "parked with {} bytes queued on the {name} socket (read ready: {}): {r:?}",
                s.rx.len(),
                s.read_ready
            );
            assert!(
                failed || !s.corked || s.tx.is_empty(),
                "parked with {} bytes held back by MSG_MORE on the {name} socket: {r:?}",
                s.tx.len()
            );
        }
        break;
    }
    // What the copy wrote is delivered after it ends too (the kernel sends the send buffer;
    // the caller's close sends a segment held back by `MSG_MORE`).
    for sock in [&a, &b] {
        sock.s.borrow_mut().corked = false;
    }
    while receive(&k, &mut up, &b) || receive(&k, &mut down, &a) {}
    up.counted = up_n;
    down.counted = down_n;
    KERNEL.with(|c| c.borrow_mut().take());
    let more_writes = (a.s.borrow().more_writes, b.s.borrow().more_writes);
    let ended = Ended { result, takes: k.takes.get(), give_backs: k.give_backs.get(), more_writes };
    check(r, &up, &down, &a, &b, &ended);
    ended
}

/// The end state of a run against the invariants.
fn check(r: &Run, up: &Flow, down: &Flow, a: &FakeSock, b: &FakeSock, e: &Ended) {
    let errored = matches!(e.result, Some(Err(_)));
    for (name, f) in [("client -> backend", up), ("backend -> client", down)] {
        assert!(f.data.starts_with(&f.got), "{name}: bytes out of order or altered: {r:?}");
        assert!(f.counted <= f.got.len() as u64 + r.tx_cap as u64, "{name}: over-counted: {r:?}");
        if errored {
            continue;
        }
        // Without half-close the copy may end before a direction whose sender did not
        // close has moved everything; what it wrote is still counted exactly.
        assert_eq!(f.counted, f.got.len() as u64, "{name}: counted: {r:?}");
        if r.half_close {
            assert_eq!(f.got.len(), f.data.len(), "{name}: bytes lost: {r:?}");
        }
    }
    if errored {
        return;
    }
    let (a, b) = (a.s.borrow(), b.s.borrow());
    let done = e.result.is_some();
    if !r.half_close {
        // The first FIN ends the copy (once the other direction has nothing in hand) and is
        // never passed on as a half-close: the caller's close sends both FINs.
        assert_eq!(done, r.up_fin || r.down_fin, "done exactly when one closed: {r:?}");
        // The FIN that ended it came after every byte of its direction.
        let whole = |f: &Flow| f.half_close && f.got == f.data;
        assert!(
            !done || whole(up) || whole(down),
            "the closing direction's bytes all passed: {r:?}"
        );
        assert!(!a.shut && !b.shut, "no half-close passed on: {r:?}");
        // No FIN follows a write at once here (the copy may wait for the other direction).
        assert_eq!(e.more_writes, (0, 0), "MSG_MORE without half-close: {r:?}");
        assert!(e.give_backs <= e.takes, "pipes given back that were never taken: {r:?}");
        return;
    }
    // The copy ends when both senders closed (the caller then closes both sockets, which
    // sends both FINs); before that, a FIN is passed on as a half-close exactly when its
    // sender closed.
    assert_eq!(done, r.up_fin && r.down_fin, "done exactly when both closed: {r:?}");
    if !done {
        assert_eq!(b.shut, r.up_fin, "client FIN passed on to the backend: {r:?}");
        assert_eq!(a.shut, r.down_fin, "backend FIN passed on to the client: {r:?}");
    }
    assert!(e.give_backs <= e.takes, "pipes given back that were never taken: {r:?}");
}

fn runs() -> impl Strategy<Value = Run> {
    (
        any::<u64>(),
        0usize..120_000,
        0usize..120_000,
        any::<(bool, bool, bool, bool)>(),
        prop::sample::select(vec![4096usize, 65_536, 262_144]),
        prop::sample::select(vec![1usize, 3000, 40_000, 300_000]),
        prop::sample::select(vec![1usize, 5000, 70_000]),
        prop::option::weighted(0.2, 1u32..20_000),
    )
        .prop_map(
            |(
                seed,
                up,
                down,
                (up_fin, down_fin, splice, half_close),
                pipe_cap,
                rx_cap,
                tx_cap,
                fail_at,
            )| Run {
                seed,
                up,
                down,
                up_fin,
                down_fin,
                splice,
                half_close,
                pipe_cap,
                rx_cap,
                tx_cap,
                fail_at,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Every byte once and in order, half-close passed on, counters right, no pipe pooled
    /// with bytes in it, and never parked with bytes it could move.
    #[test]
    fn copy_moves_every_byte_and_never_parks(r in runs()) {
        run_model(&r);
    }
}

/// A bulk transfer hands off to splice (a read filled the buffer) and, once the sender slows
/// to small messages, switches back to plain reads: the pipe went back to the pool.
#[test]
fn bulk_hands_off_to_splice_and_switches_back() {
    let mut handed_off = 0;
    let mut switched_back = 0;
    for seed in 1..200u64 {
        let r = Run {
            seed: seed * 7919,
            up: 150_000,
            down: 0,
            up_fin: true,
            down_fin: true,
            splice: true,
            half_close: true,
            pipe_cap: 65_536,
            rx_cap: 300_000,
            tx_cap: 70_000,
            fail_at: None,
        };
        let e = run_model(&r);
        assert!(matches!(e.result, Some(Ok(()))), "{r:?}: {:?}", e.result);
        if e.takes > 0 {
            handed_off += 1;
        }
        if e.give_backs > 0 {
            switched_back += 1;
        }
    }
    assert!(handed_off > 100, "bulk runs switched to splice in {handed_off} of 199");
    assert!(switched_back > 0, "no run switched back to plain reads");
}

/// Splice off: no pipe is ever taken.
#[test]
fn splice_off_takes_no_pipe() {
    let r = Run {
        seed: 42,
        up: 150_000,
        down: 150_000,
        up_fin: true,
        down_fin: true,
        splice: false,
        half_close: true,
        pipe_cap: 65_536,
        rx_cap: 300_000,
        tx_cap: 70_000,
        fail_at: None,
    };
    let e = run_model(&r);
    assert!(matches!(e.result, Some(Ok(()))));
    assert_eq!(e.takes, 0);
}

/// The backend's last bytes and its FIN arrive together: with half-close, the copy writes
/// them to the client with `MSG_MORE` and shuts the client's side down in the same poll, so
/// that they leave in one segment with the FIN; without half-close (the caller's close may
/// wait for the other direction), never.
#[test]
fn the_last_bytes_leave_with_the_fin() {
    for half_close in [true, false] {
        let mut with_more = 0;
        for seed in 1..100u64 {
            let r = Run {
                seed: seed * 104_729,
                up: 0,
                down: 700,
                up_fin: false,
                down_fin: true,
                splice: false,
                half_close,
                pipe_cap: 65_536,
                rx_cap: 300_000,
                tx_cap: 70_000,
                fail_at: None,
            };
            let e = run_model(&r);
            assert_eq!(e.more_writes.1, 0, "MSG_MORE towards the backend: {r:?}");
            if e.more_writes.0 > 0 {
                with_more += 1;
            }
        }
        if half_close {
            assert!(with_more > 10, "the FIN's chunk went with MSG_MORE in {with_more} of 99");
        } else {
            assert_eq!(with_more, 0);
        }
    }
}
