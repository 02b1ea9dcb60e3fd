//! WrappedSocket and header reads over real loopback sockets, and over a scripted reader
//! where the test needs the bytes to arrive in reads of its choosing.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use smartproxy_proxy_protocol::Header;
use smartproxy_wrapped_socket::{
    HeaderError, HeaderOptions, HeaderPolicy, PeekError, PeerAddr, WrappedSocket, read_proxy_header,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How long a wait in these tests may take before it fails.
const WAIT: Duration = Duration::from_secs(10);

/// Tolerance below a deadline (timers never fire early; the test's clock starts a little
/// before the reader's) and scheduling margin above it on a loaded CI machine.
const EARLY: Duration = Duration::from_millis(20);
const LATE: Duration = Duration::from_millis(700);

#[track_caller]
fn assert_within(what: &str, elapsed: Duration, deadline: Duration) {
    assert!(
        elapsed >= deadline - EARLY && elapsed <= deadline + LATE,
        "{what} after {elapsed:?}, expected between {:?} and {:?}",
        deadline - EARLY,
        deadline + LATE
    );
}

/// A reader that returns the chunks it was given, each in a read of its own (split further
/// only when the caller's buffer is smaller), then the end of the stream; it counts its
/// reads. The bytes arrive in exactly the reads the test chose, which writes on a socket
/// cannot promise.
#[derive(Debug)]
struct Scripted {
    chunks: VecDeque<Vec<u8>>,
    reads: usize,
}

impl Scripted {
    fn new(chunks: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Self { chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(), reads: 0 }
    }

    /// `bytes` cut at `cuts` (ascending offsets).
    fn cut(bytes: &[u8], cuts: &[usize]) -> Self {
        let mut edges = vec![0];
        edges.extend_from_slice(cuts);
        edges.push(bytes.len());
        Self::new(edges.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()))
    }

    /// One byte per read.
    fn bytewise(bytes: &[u8]) -> Self {
        Self::new(bytes.iter().map(|b| vec![*b]))
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(front) = self.chunks.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front[..n]);
            front.drain(..n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            self.reads += 1;
        }
        Poll::Ready(Ok(()))
    }
}

/// A socket that counts the bytes read from it and the largest single read, so that a writer
/// can wait until what it sent has been consumed before it sends more.
struct Counted<S> {
    inner: S,
    bytes: Arc<AtomicUsize>,
    largest: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.bytes.fetch_add(n, Ordering::SeqCst);
        self.largest.fetch_max(n, Ordering::SeqCst);
        r
    }
}

/// Waits until `counter` reaches `n`; fails after [`WAIT`] with what it saw.
async fn wait_count(what: &str, counter: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + WAIT;
    while counter.load(Ordering::SeqCst) != n {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {} of {n}",
            counter.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, peer) = l.accept().await.unwrap();
    (c, s, peer)
}

fn v1(src: &str, dst: &str) -> Vec<u8> {
    let h = Header::v1(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
    let mut out = Vec::new();
    h.encode(&mut out).unwrap();
    out
}

fn v2(src: &str, dst: &str) -> Vec<u8> {
    let h = Header::v2(src.parse().unwrap(), dst.parse().unwrap()).unwrap();
    let mut out = Vec::new();
    h.encode(&mut out).unwrap();
    out
}

fn opts(policy: HeaderPolicy, ms: u64) -> HeaderOptions {
    HeaderOptions::new(policy, Duration::from_millis(ms))
}

#[tokio::test]
async fn v1_header_then_payload_is_replayed() {
    let (mut c, s, peer) = pair().await;
    let mut bytes = v1("192.0.2.1:4000", "198.51.100.2:443");
    bytes.extend_from_slice(b"hello world");
    c.write_all(&bytes).await.unwrap();
    let mut w =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Require, 2000)).await.unwrap();
    assert_eq!(w.client_addr().0, "192.0.2.1:4000".parse::<SocketAddr>().unwrap());
    assert_eq!(w.peer_addr().0, peer);
    assert!(w.is_from_trusted_proxy());
    assert!(w.proxy_header().is_some());
    c.write_all(b"!").await.unwrap();
    let mut got = vec![0u8; 12];
    w.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello world!");
}

/// `map_inner` keeps what the socket knows (client, peer, header, replayed bytes) around the
/// new inner stream, and reads go on through it.
#[tokio::test]
async fn map_inner_keeps_header_client_and_buffered_bytes() {
    let (mut c, s, peer) = pair().await;
    let mut bytes = v2("192.0.2.7:4100", "198.51.100.2:443");
    bytes.extend_from_slice(b"abc");
    c.write_all(&bytes).await.unwrap();
    let w = read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Require, 2000)).await.unwrap();
    let mut m = w.map_inner(tokio::io::BufReader::new);
    assert_eq!(m.client_addr().0, "192.0.2.7:4100".parse::<SocketAddr>().unwrap());
    assert_eq!(m.peer_addr().0, peer);
    assert!(m.is_from_trusted_proxy());
    assert!(m.proxy_header().is_some());
    c.write_all(b"def").await.unwrap();
    let mut got = vec![0u8; 6];
    m.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abcdef");
}

/// Over a real socket, one byte per write, each sent only once the reader has consumed the
/// previous one: every byte of the header comes in a read of its own.
#[tokio::test]
async fn v2_header_split_in_single_bytes() {
    let (mut c, s, peer) = pair().await;
    let header = v2("[2001:db8::1]:1234", "[2001:db8::2]:80");
    let mut bytes = header.clone();
    bytes.extend_from_slice(b"payload");
    let consumed = Arc::new(AtomicUsize::new(0));
    let largest = Arc::new(AtomicUsize::new(0));
    let s = Counted { inner: s, bytes: Arc::clone(&consumed), largest: Arc::clone(&largest) };
    let counter = Arc::clone(&consumed);
    let writer = tokio::spawn(async move {
        for (i, b) in bytes.iter().enumerate() {
            c.write_all(&[*b]).await.unwrap();
            wait_count("the reader to consume the byte", &counter, i + 1).await;
        }
        c
    });
    let mut w =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Require, 5000)).await.unwrap();
    assert_eq!(w.client_addr().0, "[2001:db8::1]:1234".parse::<SocketAddr>().unwrap());
    assert_eq!(consumed.load(Ordering::SeqCst), header.len(), "nothing read past the header");
    assert_eq!(largest.load(Ordering::SeqCst), 1, "the header came one byte per read");
    let mut got = vec![0u8; 7];
    tokio::time::timeout(WAIT, w.read_exact(&mut got)).await.unwrap().unwrap();
    assert_eq!(&got, b"payload");
    drop(writer.await.unwrap());
}

/// Every header cut at every point into two reads, and one byte per read: the same client
/// address and the same bytes replayed after the header. The header is complete after the
/// read that brings its last byte, never later.
#[tokio::test]
async fn headers_split_at_every_point_are_read_the_same() {
    let cases = [
        (v1("192.0.2.1:4000", "198.51.100.2:443"), "192.0.2.1:4000"),
        (v1("[2001:db8::5]:40000", "[2001:db8::6]:443"), "[2001:db8::5]:40000"),
        (v2("10.1.2.3:5555", "10.0.0.1:80"), "10.1.2.3:5555"),
        (v2("[2001:db8::1]:1234", "[2001:db8::2]:80"), "[2001:db8::1]:1234"),
    ];
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (header, client) in cases {
        let client: SocketAddr = client.parse().unwrap();
        let mut bytes = header.clone();
        bytes.extend_from_slice(b"payload");
        let mut scripts: Vec<(String, Scripted, usize)> = (1..bytes.len())
            .map(|cut| {
                // Reads made when the header is complete: the one with the header's last byte.
                let reads = if cut < header.len() { 2 } else { 1 };
                (format!("cut at {cut}"), Scripted::cut(&bytes, &[cut]), reads)
            })
            .collect();
        scripts.push(("one byte per read".into(), Scripted::bytewise(&bytes), header.len()));
        for (how, script, reads) in scripts {
            let what = format!("{client}, {} bytes, {how}", header.len());
            let mut w =
                read_proxy_header(script, PeerAddr(peer), &opts(HeaderPolicy::Require, 2000))
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(w.client_addr().0, client, "{what}");
            assert_eq!(w.get_ref().reads, reads, "{what}: reads when the header was complete");
            let mut rest = Vec::new();
            w.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"payload", "{what}");
        }
    }
}

/// Split reads decide like whole ones: a partial PROXY signature from an untrusted peer is
/// refused, other first bytes are missing a header (required) or pass untouched (refused).
#[tokio::test]
async fn split_signatures_and_other_bytes_decide_like_whole_ones() {
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let header = v1("192.0.2.1:4000", "198.51.100.2:443");
    for cut in 1..header.len() {
        let script = Scripted::cut(&header, &[cut]);
        let err = read_proxy_header(script, PeerAddr(peer), &opts(HeaderPolicy::Refuse, 2000))
            .await
            .unwrap_err();
        assert!(matches!(err, HeaderError::Untrusted), "cut at {cut}: {err:?}");
    }
    let request = b"GET / HTTP/1.1\r\n\r\n";
    for cut in 1..request.len() {
        let err = read_proxy_header(
            Scripted::cut(request, &[cut]),
            PeerAddr(peer),
            &opts(HeaderPolicy::Require, 2000),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HeaderError::Missing), "cut at {cut}: {err:?}");
        let mut w = read_proxy_header(
            Scripted::cut(request, &[cut]),
            PeerAddr(peer),
            &opts(HeaderPolicy::Refuse, 2000),
        )
        .await
        .unwrap();
        assert!(!w.is_from_trusted_proxy());
        let mut all = Vec::new();
        w.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, request, "cut at {cut}: replayed whole");
    }
}

#[tokio::test]
async fn slowloris_is_cut_at_the_deadline() {
    let (mut c, s, peer) = pair().await;
    let header = v1("192.0.2.1:4000", "198.51.100.2:443");
    // One byte every 100 ms (pacing on purpose: a slowloris), which would take seconds.
    let writer = tokio::spawn(async move {
        for b in header {
            if c.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let err =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Require, 300)).await.unwrap_err();
    assert!(matches!(err, HeaderError::Timeout(_)), "{err:?}");
    // Cut at the absolute deadline, although bytes kept coming.
    assert_within("the slow header was cut", started.elapsed(), Duration::from_millis(300));
    writer.abort();
}

#[tokio::test]
async fn malformed_header_is_an_error_with_reason() {
    let (mut c, s, peer) = pair().await;
    c.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n").await.unwrap();
    let err =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Require, 2000)).await.unwrap_err();
    assert!(matches!(err, HeaderError::Malformed(_)), "{err:?}");
    assert_eq!(err.kind(), "malformed");
}

#[tokio::test]
async fn eof_inside_header() {
    let (mut c, s, peer) = pair().await;
    c.write_all(b"PROXY TCP4 1.2.3.4").await.unwrap();
    c.shutdown().await.unwrap();
    let err =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Require, 2000)).await.unwrap_err();
    assert!(matches!(err, HeaderError::Eof { received: 18 }), "{err:?}");
}

#[tokio::test]
async fn too_long_v1_line() {
    let (mut c, s, peer) = pair().await;
    let mut line = b"PROXY TCP4 ".to_vec();
    line.extend(std::iter::repeat_n(b'1', 200));
    c.write_all(&line).await.unwrap();
    let err =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Require, 2000)).await.unwrap_err();
    assert!(matches!(err, HeaderError::Malformed(_) | HeaderError::TooLong { .. }), "{err:?}");
}

#[tokio::test]
async fn required_header_missing() {
    let (mut c, s, peer) = pair().await;
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let err =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Require, 2000)).await.unwrap_err();
    assert!(matches!(err, HeaderError::Missing), "{err:?}");
}

#[tokio::test]
async fn untrusted_header_refused_and_plain_data_passes() {
    let (mut c, s, peer) = pair().await;
    c.write_all(&v1("192.0.2.1:4000", "198.51.100.2:443")).await.unwrap();
    let err =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Refuse, 2000)).await.unwrap_err();
    assert!(matches!(err, HeaderError::Untrusted), "{err:?}");

    let (mut c, s, peer) = pair().await;
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut w =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Refuse, 2000)).await.unwrap();
    assert!(!w.is_from_trusted_proxy());
    assert_eq!(w.client_addr().0, peer);
    let mut got = vec![0u8; 18];
    w.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
}

#[tokio::test]
async fn untrusted_partial_signature_at_deadline_refused() {
    let (mut c, s, peer) = pair().await;
    c.write_all(b"PROX").await.unwrap();
    let started = Instant::now();
    let err =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Refuse, 200)).await.unwrap_err();
    assert!(matches!(err, HeaderError::Untrusted), "{err:?}");
    assert_within("refused", started.elapsed(), Duration::from_millis(200));
}

#[tokio::test]
async fn silent_client_goes_on_when_optional_or_refuse() {
    for policy in [HeaderPolicy::Refuse, HeaderPolicy::Optional] {
        let (_c, s, peer) = pair().await;
        let started = Instant::now();
        let w = read_proxy_header(s, PeerAddr(peer), &opts(policy, 100)).await.unwrap();
        assert_within("went on", started.elapsed(), Duration::from_millis(100));
        assert!(w.buffered().is_empty());
        assert_eq!(w.client_addr().0, peer);
    }
}

#[tokio::test]
async fn optional_accepts_both() {
    let (mut c, s, peer) = pair().await;
    c.write_all(&v2("10.1.2.3:5555", "10.0.0.1:80")).await.unwrap();
    let w =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Optional, 2000)).await.unwrap();
    assert_eq!(w.client_addr().0, "10.1.2.3:5555".parse::<SocketAddr>().unwrap());

    let (mut c, s, peer) = pair().await;
    c.write_all(b"SSH-2.0-x\r\n").await.unwrap();
    let w =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Optional, 2000)).await.unwrap();
    assert_eq!(w.client_addr().0, peer);
    assert_eq!(w.buffered(), b"SSH-2.0-x\r\n");
}

/// Peeking across reads: the bytes arrive in two reads, as the script says.
#[tokio::test]
async fn peek_at_least_spans_reads_and_replays() {
    let peer = PeerAddr("127.0.0.1:9".parse().unwrap());
    let mut w = WrappedSocket::new(
        Scripted::new([b"abc".to_vec(), b"defgh".to_vec(), b"ij".to_vec()]),
        peer,
    );
    let deadline = Instant::now() + WAIT;
    assert_eq!(w.peek_at_least(8, 64, deadline).await.unwrap(), 8);
    assert_eq!(w.get_ref().reads, 2, "two reads to have 8 bytes");
    assert_eq!(w.buffered(), b"abcdefgh");
    let mut got = vec![0u8; 10];
    w.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abcdefghij");
}

/// The same over a real socket, driven in turn: the first peek can only see "abc", which
/// is all that was sent when it ran.
#[tokio::test]
async fn peek_more_buffers_and_replays() {
    let (mut c, s, peer) = pair().await;
    let mut w = WrappedSocket::new(s, PeerAddr(peer));
    c.write_all(b"abc").await.unwrap();
    let deadline = Instant::now() + WAIT;
    assert_eq!(w.peek_more(64, deadline).await.unwrap(), 3);
    assert_eq!(w.buffered(), b"abc");
    c.write_all(b"defgh").await.unwrap();
    let n = w.peek_at_least(8, 64, deadline).await.unwrap();
    assert_eq!(n, 8);
    assert_eq!(w.buffered(), b"abcdefgh");
    c.write_all(b"ij").await.unwrap();
    let mut got = vec![0u8; 10];
    w.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abcdefghij");
}

#[tokio::test]
async fn peek_cap_and_timeout() {
    let (mut c, s, peer) = pair().await;
    let mut w = WrappedSocket::new(s, PeerAddr(peer));
    c.write_all(&[7u8; 100]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    assert_eq!(
        w.peek_at_least(200, 32, deadline).await.unwrap_err().to_string(),
        "peek buffer full (32 bytes)"
    );
    assert_eq!(w.buffered().len(), 32);
    let (_keep, s2, _) = pair().await;
    let mut w2 = WrappedSocket::new(s2, PeerAddr(peer));
    let started = Instant::now();
    let err = w2.peek_more(64, Instant::now() + Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err, PeekError::Timeout));
    assert_within("the peek timed out", started.elapsed(), Duration::from_millis(50));
}

#[tokio::test]
async fn writes_pass_through_including_vectored() {
    let (mut c, s, peer) = pair().await;
    let mut w = WrappedSocket::with_buffered(s, PeerAddr(peer), b"x".to_vec());
    w.write_all(b"plain ").await.unwrap();
    let bufs = [IoSlice::new(b"vec"), IoSlice::new(b"tored")];
    let mut written = w.write_vectored(&bufs).await.unwrap();
    assert!(written > 0);
    // Finish what a partial vectored write left.
    let all = b"vectored";
    while written < all.len() {
        written += w.write(&all[written..]).await.unwrap();
    }
    w.shutdown().await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(&got, b"plain vectored");
    let (_, rest) = w.into_parts();
    assert_eq!(rest, b"x");
}

#[tokio::test]
async fn take_buffered_empties_replay() {
    let (mut c, s, peer) = pair().await;
    let mut w = WrappedSocket::with_buffered(s, PeerAddr(peer), b"head".to_vec());
    let mut one = [0u8; 1];
    w.read_exact(&mut one).await.unwrap();
    assert_eq!(w.take_buffered(), b"ead");
    c.write_all(b"next").await.unwrap();
    let mut got = [0u8; 4];
    w.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"next");
}
