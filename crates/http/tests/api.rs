//! The API the engine relies on: `serve` is a `Send` future (it runs in spawned tasks), and
//! its size is known (the engine boxes it rather than sizing every task by it).

use std::sync::Arc;

use smartproxy_http::{ConnInfo, HttpConfig, HttpService};
use smartproxy_routing::RouteTable;

fn assert_send<T: Send>(t: T) -> T {
    t
}

#[test]
fn serve_future_is_send_and_its_size_is_bounded() {
    let table = Arc::new(RouteTable::compile(Vec::new()).unwrap_or_else(|e| panic!("{e:?}")));
    let svc = HttpService::new(HttpConfig::new(table), None);
    fn size<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static>(
        svc: &HttpService,
        io: I,
    ) -> usize {
        let client = "127.0.0.1:1".parse().unwrap_or_else(|e| panic!("{e}"));
        let f = assert_send(svc.serve(io, ConnInfo::new(client, 1), std::future::pending()));
        std::mem::size_of_val(&f)
    }
    // Any stream type will do for the size: a duplex pipe.
    let (a, _b) = tokio::io::duplex(64);
    let n = size(&svc, a);
    eprintln!("serve future: {n} bytes");
    // 4,176 bytes when this bound was set: the request's future (about 2.2 KiB) held in place
    // by the HTTP/1.1 server of the connection's task (h1_server.rs), hyper's HTTP/1 server
    // boxed out of it (rare since), and two `Quiet` wrappers.
    assert!(n <= 4352, "serve future is {n} bytes");
}
