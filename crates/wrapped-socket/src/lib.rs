//! A tokio stream that carries the real client address from a PROXY header and replays bytes
//! already read.
//!
//! A proxy has to read the first bytes of a connection before it knows what to do with it: the
//! PROXY protocol header sent by a trusted load balancer, then perhaps a TLS ClientHello or an
//! HTTP request head to route on. [`WrappedSocket`] keeps those bytes and hands them out again
//! ("replays" them) before anything else is read from the socket, so the next stage sees the
//! stream as if nothing had been taken. It also carries two addresses that must never be mixed
//! up: the TCP peer ([`PeerAddr`]) and the real client declared by the PROXY header
//! ([`ClientAddr`]).
//!
//! Start with [`read_proxy_header`], which reads a PROXY header under an absolute deadline and a
//! byte cap, then use [`WrappedSocket::peek_more`] to buffer a ClientHello or an HTTP head.
//!
//! ```no_run
//! use smartproxy_wrapped_socket::{HeaderOptions, HeaderPolicy, PeerAddr, read_proxy_header};
//! use std::time::Duration;
//!
//! # async fn f(listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error>> {
//! let (tcp, peer) = listener.accept().await?;
//! let opts = HeaderOptions::new(HeaderPolicy::Require, Duration::from_secs(5));
//! let sock = read_proxy_header(tcp, PeerAddr(peer), &opts).await?;
//! println!("real client {} via {}", sock.client_addr(), sock.peer_addr());
//! # Ok(()) }
//! ```
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests
#![forbid(unsafe_code)]

mod error;
mod header;
mod socket;

pub use self::error::{HeaderError, PeekError};
pub use self::header::{HeaderOptions, HeaderPolicy, read_proxy_header};
pub use self::socket::{ClientAddr, PeerAddr, WrappedSocket};
