//! Sans-I/O TLS ClientHello peek: SNI, ALPN, versions, resumption flags.
//!
//! A proxy that routes TLS by server name reads the client's first bytes, looks at the
//! ClientHello and forwards everything it read untouched. [`peek`] does the looking: give it
//! every byte buffered so far; it answers [`Peek::Incomplete`] (read more),
//! [`Peek::Complete`] with a [`ClientHello`], or an [`Error`] as soon as the bytes cannot be a
//! ClientHello. It copes with a ClientHello split over several TCP segments and over several
//! TLS records, caps what it will wait for ([`PeekOptions::max_bytes`], 16 KiB by default),
//! never panics and does no I/O.
//!
//! ```
//! use smartproxy_tls_hello::{Peek, PeekOptions, peek};
//!
//! # let first_flight: &[u8] = &[0x16, 0x03, 0x01, 0x00];
//! match peek(first_flight, &PeekOptions::default()) {
//!     Ok(Peek::Complete(hello)) => println!("SNI {:?}, max {:?}", hello.server_name(), hello.max_version()),
//!     Ok(Peek::Incomplete { needed }) => { /* read at least `needed` more bytes, call again */ }
//!     Err(e) => { /* not TLS: close, or try plain HTTP (see `detect`) */ let _ = e; }
//!     Ok(_) => {}
//! }
//! ```
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests
#![forbid(unsafe_code)]

mod detect;
mod error;
mod hello;
mod peek;

pub use self::detect::{Protocol, detect, is_http_start, looks_like_tls};
pub use self::error::Error;
pub use self::hello::{ClientHello, TlsVersion, ext};
pub use self::peek::{Peek, PeekOptions, peek};
