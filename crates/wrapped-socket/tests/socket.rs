//! WrappedSocket and header reads over real loopback sockets.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::Duration;

use smartproxy_proxy_protocol::Header;
use smartproxy_wrapped_socket::{
    HeaderError, HeaderOptions, HeaderPolicy, PeekError, PeerAddr, WrappedSocket, read_proxy_header,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

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

#[tokio::test]
async fn v2_header_split_in_single_bytes() {
    let (mut c, s, peer) = pair().await;
    let mut bytes = v2("[2001:db8::1]:1234", "[2001:db8::2]:80");
    bytes.extend_from_slice(b"payload");
    let writer = tokio::spawn(async move {
        for b in bytes {
            c.write_all(&[b]).await.unwrap();
            c.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        c
    });
    let mut w =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Require, 5000)).await.unwrap();
    assert_eq!(w.client_addr().0, "[2001:db8::1]:1234".parse::<SocketAddr>().unwrap());
    let mut got = vec![0u8; 7];
    w.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"payload");
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn slowloris_is_cut_at_the_deadline() {
    let (mut c, s, peer) = pair().await;
    let header = v1("192.0.2.1:4000", "198.51.100.2:443");
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
    assert!(started.elapsed() < Duration::from_secs(3));
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
    let err =
        read_proxy_header(s, PeerAddr(peer), &opts(HeaderPolicy::Refuse, 200)).await.unwrap_err();
    assert!(matches!(err, HeaderError::Untrusted), "{err:?}");
}

#[tokio::test]
async fn silent_client_goes_on_when_optional_or_refuse() {
    for policy in [HeaderPolicy::Refuse, HeaderPolicy::Optional] {
        let (_c, s, peer) = pair().await;
        let w = read_proxy_header(s, PeerAddr(peer), &opts(policy, 100)).await.unwrap();
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

#[tokio::test]
async fn peek_more_buffers_and_replays() {
    let (mut c, s, peer) = pair().await;
    let mut w = WrappedSocket::new(s, PeerAddr(peer));
    c.write_all(b"abc").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.write_all(b"defgh").await.unwrap();
        c
    });
    let n = w.peek_at_least(8, 64, deadline).await.unwrap();
    assert_eq!(n, 8);
    assert_eq!(w.buffered(), b"abcdefgh");
    let mut c = writer.await.unwrap();
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
    let err = w2.peek_more(64, Instant::now() + Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(err, PeekError::Timeout));
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
