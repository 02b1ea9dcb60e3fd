//! The value stored in every ring slot.

use std::ops::AddAssign;

/// Traffic counted during one slot of time: bytes in each direction and a number of events
/// (connections or requests).
///
/// `bytes_in` are bytes received from the client, `bytes_out` bytes sent to it. Additions
/// saturate instead of wrapping, so a corrupt input cannot make a total go backwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Sample {
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes sent to clients.
    pub bytes_out: u64,
    /// Events (connections or requests) started.
    pub events: u64,
}

impl Sample {
    /// An empty sample.
    pub const ZERO: Self = Self { bytes_in: 0, bytes_out: 0, events: 0 };

    /// Builds a sample.
    #[must_use]
    pub const fn new(bytes_in: u64, bytes_out: u64, events: u64) -> Self {
        Self { bytes_in, bytes_out, events }
    }

    /// `true` when every field is zero.
    #[must_use]
    pub const fn is_zero(&self) -> bool {
        self.bytes_in == 0 && self.bytes_out == 0 && self.events == 0
    }
}

impl AddAssign for Sample {
    fn add_assign(&mut self, rhs: Self) {
        self.bytes_in = self.bytes_in.saturating_add(rhs.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(rhs.bytes_out);
        self.events = self.events.saturating_add(rhs.events);
    }
}

/// Totals over a window, and the length in seconds the window really covers.
///
/// `seconds` is never zero. It is shorter than the requested window while the series is
/// younger than the window, so a young process does not under-report its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSum {
    /// Sum of the samples inside the window.
    pub sum: Sample,
    /// Length of the window in seconds (at least 1).
    pub seconds: u64,
}

impl WindowSum {
    /// The window as a rate per second.
    #[must_use]
    pub fn rate(&self) -> Rate {
        // `seconds` is >= 1 by construction; max() keeps a hand-built value safe too.
        let secs = self.seconds.max(1) as f64;
        Rate {
            bytes_in: self.sum.bytes_in as f64 / secs,
            bytes_out: self.sum.bytes_out as f64 / secs,
            events: self.sum.events as f64 / secs,
        }
    }
}

/// Rates per second over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    /// Bytes per second received from clients.
    pub bytes_in: f64,
    /// Bytes per second sent to clients.
    pub bytes_out: f64,
    /// Events per second.
    pub events: f64,
}

/// One point of history, for graphs.
///
/// At 1-second resolution `span` is 1 and `sample` holds the bytes of that second; at 1-minute
/// resolution `span` is the number of seconds the minute had covered (60 once closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPoint {
    /// Start of the point, in the caller's clock (seconds). For a 1 s point this is the
    /// sample's own time stamp; for a 1 min point, the first second of the minute.
    pub timestamp: u64,
    /// Seconds covered by the point (1 or up to 60).
    pub span: u64,
    /// Traffic during the point.
    pub sample: Sample,
}

impl HistoryPoint {
    /// The point as a rate per second.
    #[must_use]
    pub fn rate(&self) -> Rate {
        WindowSum { sum: self.sample, seconds: self.span.max(1) }.rate()
    }
}
