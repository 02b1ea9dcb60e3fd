//! A connection's last bytes leave in one segment with its FIN: the proxy writes them with
//! `MSG_MORE` when the FIN follows at once (a layer-4 copy passing on a backend's FIN that
//! came with its last bytes; the last response of an HTTP/1.1 connection), instead of a data
//! segment, a FIN segment and an acknowledgement of each. Seen from the client's socket:
//! `tcpi_segs_in` of `TCP_INFO` counts the segments it received.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use tokio::net::TcpStream;

/// Segments `s` has received (`tcpi_segs_in`).
#[allow(unsafe_code)]
fn segments_in(s: &TcpStream) -> u32 {
    // SAFETY: `tcp_info` is plain integers; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).unwrap();
    // SAFETY: a connected TCP socket, and a buffer of `len` bytes for the kernel to fill.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    assert_eq!(r, 0, "getsockopt(TCP_INFO): {}", std::io::Error::last_os_error());
    info.tcpi_segs_in
}

/// A layer-4 route whose backend speaks first and closes: its greeting and FIN arrive in one
/// segment, and the client receives them in one too. The client sends nothing, so the
/// proxy has nothing to acknowledge: the client's socket receives the SYN-ACK and that one
/// segment, where passing the FIN on after the bytes took a third.
#[tokio::test]
async fn a_backends_last_bytes_and_fin_reach_the_client_in_one_segment() {
    let greeting = b"220 hello from the backend, bye\r\n";
    let (target, _backend) = backend(move |s| async move {
        // The greeting and the FIN in one segment (what the proxy is to pass on as it came).
        let sent = s.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(&s).send_with_flags(greeting, libc::MSG_MORE)
        });
        assert_eq!(sent.ok(), Some(greeting.len()), "the greeting fits the send buffer");
        socket2::SockRef::from(&s).shutdown(std::net::Shutdown::Write).unwrap();
        // Held until the client's side is done (half-close).
        let mut s = s;
        let _ = read_all(&mut s, 10).await;
    })
    .await;
    let (engine, [port]) = engine_on(|[p]| {
        format!(
            r#"[[routes]]
name = "greeter"
match = {{ ports = [{p}] }}
action = {{ type = "forward", targets = [{{ host = "127.0.0.1", port = {} }}] }}
"#,
            target.port()
        )
    })
    .await;
    let mut c = connect(port).await;
    let (got, _) = read_until_closed(&mut c, Duration::from_secs(10)).await;
    assert_eq!(got, greeting);
    let segments = segments_in(&c);
    assert_eq!(
        segments, 2,
        "segments the client received: the SYN-ACK, then the greeting with the FIN"
    );
    drop(c);
    settle(&engine).await;
}

/// An HTTP/1.1 request with `Connection: close` on a plain HTTP route: the response is the
/// connection's last write and leaves with the FIN. The client's socket receives the
/// SYN-ACK and the response with the FIN: two segments. When the proxy acknowledges the
/// request on its own first (its delayed acknowledgement fired: a slow answer on a loaded
/// machine) there is one more, so the test asks for two on at least one of its connections;
/// without the FIN in the response's segment no connection can have fewer than three.
#[tokio::test]
async fn the_last_response_of_a_connection_leaves_with_its_fin() {
    let (target, _backend) = ok_http_backend().await;
    let (engine, port) = http_engine(target).await;
    let mut seen = Vec::new();
    for _ in 0..20 {
        let c = close_request(port, b"").await;
        let n = segments_in(&c);
        seen.push(n);
        if n == 2 {
            break;
        }
    }
    assert!(
        seen.contains(&2),
        "segments received per connection: {seen:?} (2 expected: the SYN-ACK, then the response \
         with the FIN)"
    );
    settle(&engine).await;
}

/// A client that sends more after its `Connection: close` request (which RFC 9112 §9.6 says
/// it must not) still gets the whole response. Its extra bytes may be unread when the proxy
/// closes the socket, and such a close is a reset that drops what the socket still holds:
/// the response held for the FIN goes out with the shutdown before the close.
#[tokio::test]
async fn a_client_that_sends_more_after_its_close_request_still_gets_the_response() {
    let (target, _backend) = ok_http_backend().await;
    let (engine, port) = http_engine(target).await;
    for _ in 0..100 {
        // A second segment right behind the first; the proxy may answer before it, or after.
        close_request(port, b"GET /more HTTP/1.1\r\nHost: a\r\n\r\n").await;
    }
    settle(&engine).await;
}
