//! Stage 6, serve (socket handlers): the route's handler (a registered one, else a built-in)
//! owns the client connection, under the connection's inactivity and lifetime timeouts.

use std::sync::Arc;

use smartproxy_routing::HandlerAction;
use smartproxy_wrapped_socket::WrappedSocket;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::classify::PeekInfo;
use super::close::log_close;
use super::conn::Conn;
use crate::copy::{self, Counted, Outcome};
use crate::handler::{self, ClientStream, ConnInfo};

/// Runs the handler of the route at `index` on the connection.
pub(crate) async fn serve(
    c: Conn,
    index: usize,
    h: &HandlerAction,
    sock: WrappedSocket<TcpStream>,
    info: PeekInfo,
    stop: &mut watch::Receiver<bool>,
) {
    let route = &c.state.table.routes()[index];
    let conn = ConnInfo {
        client_addr: sock.client_addr(),
        peer_addr: sock.peer_addr(),
        local_addr: c.local_addr(sock.get_ref()),
        port: c.port,
        domain: info.domain,
        initial_data_deadline: Instant::now() + c.effective().initial_data,
    };
    let stream = ClientStream { inner: Counted { inner: sock, obs: Arc::clone(&c.obs) } };
    // Boxed: a handler's future is large and would size every connection's setup.
    let fut = super::in_box(|| handler::run(&c.shared.handlers, stream, route.name(), h, conn));
    let outcome = match copy::supervise(fut, &c.obs, c.timeouts(), stop).await {
        Ok(Ok(())) => Outcome::Done,
        Ok(Err(e)) => Outcome::Error(e),
        Err(o) => o,
    };
    log_close(&c.obs, c.client, c.port, route.name(), &outcome);
}
