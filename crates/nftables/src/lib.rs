//! Kernel L4 forwarding for smartproxy: routes forwarded by nftables NAT rules instead of the
//! proxy process, at line rate and with no user-space CPU.
//!
//! The rules live in one table, `inet smartproxy`, written through `nft`'s JSON interface
//! (`nft -j -f -`, a process with a stdin pipe, no shell), one transaction per change.
//!
//! 1. Describe the routes as [`NftRoute`]s (plain data; the engine converts its routes).
//! 2. [`check`] lists what nftables cannot honour, without touching the network (for
//!    `validate`). [`Ruleset::build`] does the same checks, resolves target host names, and
//!    returns the [`Ruleset`] to write.
//! 3. A [`Manager`] owns the table: [`Manager::cleanup_stale`] at start (a table left by a
//!    crash), [`Manager::apply`] to create or replace it atomically, [`Manager::counters`] on
//!    each metrics tick (with [`CounterDeltas`] for the increase since the last tick), [`Manager::status_json`] for the admin API, [`Manager::remove`] at
//!    shutdown. [`Nft`] says how `nft` is run (another path, or inside a network namespace).
//!
//! ```no_run
//! use smartproxy_nftables::{Manager, Nft, NftRoute, PortRange, Ruleset, Target};
//!
//! let mut db = NftRoute::new("db", [PortRange::single(5432)], [Target::new("10.0.0.5", 5432)]);
//! db.preserve_source_ip = true;
//! let ruleset = Ruleset::build(&[db])?;
//! let manager = Manager::new(Nft::new());
//! manager.cleanup_stale()?;
//! manager.apply(&ruleset)?;
//! for c in manager.counters()? {
//!     println!("{}: {} bytes in, {} out, {} connections", c.route, c.bytes_in, c.bytes_out, c.connections);
//! }
//! manager.remove()?;
//! # Ok::<(), smartproxy_nftables::Error>(())
//! ```
//!
//! Needs Linux 5.2 or later (NAT in `inet` tables), nft 0.9.3 or later (JSON), and
//! `CAP_NET_ADMIN` in the network namespace. The README describes the table.
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests

mod check;
mod deltas;
mod error;
mod ip;
mod manager;
mod model;
mod nft;
mod ruleset;

pub use self::check::{Family, Problem, ProblemKind, check, system_resolver};
pub use self::deltas::CounterDeltas;
pub use self::error::Error;
pub use self::ip::{IpRange, IpRangeError};
pub use self::manager::{Manager, RouteCounters, TABLE};
pub use self::model::{Balance, NftRoute, PortRange, PortRangeError, Protocol, Target, TargetPort};
pub use self::nft::Nft;
pub use self::ruleset::{CounterNames, FAMILY, ResolvedTarget, RouteRules, Ruleset};
