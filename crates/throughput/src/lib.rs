//! Time-series throughput rings (1 s samples, 1 min aggregates) with an injected clock.
//!
//! No I/O, no threads, no clock of its own: every call takes `now`, a `u64` count of seconds on
//! a clock the caller chooses (UNIX seconds, or seconds since the process started). That makes
//! the rings deterministic and testable with jumps in time.
//!
//! * [`Series`]: one time series. A ring of 1-second [`Sample`]s (default 3600, one hour) and a
//!   ring of 1-minute aggregates (default 1440, one day), allocated once. A minute is folded into
//!   the minute ring when it closes. Queries: [`Series::window`] (totals and the real length of
//!   any window, from 1 s to 24 h, as a [`WindowSum`] that converts to a [`Rate`]) and
//!   [`Series::history`] (points for graphs).
//! * [`KeyedSeries`]: the same per key (route name, client IP), with a bound on the number of
//!   keys; the least recently active keys are evicted first.
//!
//! ```
//! use smartproxy_throughput::{Sample, Series, SeriesConfig};
//!
//! let start = 1_700_000_000;
//! let mut s = Series::new(SeriesConfig::default(), start);
//! for t in 1..=10 {
//!     s.push(start + t, Sample::new(1_000, 4_000, 1));
//! }
//! let w = s.window(start + 10, 60); // the process is 10 s old: divide by 10, not 60
//! assert_eq!(w.seconds, 10);
//! assert_eq!(w.rate().bytes_in, 1_000.0);
//! assert_eq!(s.history(start + 10, 3).len(), 3);
//! ```
//!
//! Clock rules: a sample pushed at `t` stands for the second `(t - 1, t]`; a push stamped
//! before the newest one is counted in the newest second (time never goes backwards inside a
//! series); a jump forward zeroes the skipped slots at a cost bounded by the ring size.
#![cfg_attr(doctest, doc = include_str!("../README.md"))] // README examples run as doc tests

mod keyed;
mod sample;
mod series;

pub use self::keyed::KeyedSeries;
pub use self::sample::{HistoryPoint, Rate, Sample, WindowSum};
pub use self::series::{Series, SeriesConfig};
