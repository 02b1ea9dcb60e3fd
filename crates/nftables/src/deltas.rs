//! Turning the kernel's running totals into per-tick increases for the metrics collector.

use std::collections::HashMap;

use crate::manager::RouteCounters;

/// Remembers the last counters read, and gives the increase since then on each tick.
///
/// The kernel's counters are running totals per route. A route seen for the first time counts
/// from zero (its whole value is new), and a counter that went down (the table was
/// recreated, or the route was removed and added again) counts from zero again, so nothing is
/// ever negative or counted twice. Routes that disappear are forgotten.
#[derive(Debug, Default, Clone)]
pub struct CounterDeltas {
    last: HashMap<String, RouteCounters>,
}

impl CounterDeltas {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The increase of each route's counters since the previous call (`route` is set, the
    /// other fields are increases), in the order of `now`.
    pub fn update(&mut self, now: &[RouteCounters]) -> Vec<RouteCounters> {
        let mut out = Vec::with_capacity(now.len());
        let mut next = HashMap::with_capacity(now.len());
        for c in now {
            let prev = self.last.get(&c.route);
            let d = |f: fn(&RouteCounters) -> u64| {
                let (new, old) = (f(c), prev.map_or(0, f));
                if new >= old { new - old } else { new }
            };
            out.push(RouteCounters {
                route: c.route.clone(),
                bytes_in: d(|c| c.bytes_in),
                packets_in: d(|c| c.packets_in),
                bytes_out: d(|c| c.bytes_out),
                packets_out: d(|c| c.packets_out),
                connections: d(|c| c.connections),
                dropped: d(|c| c.dropped),
            });
            next.insert(c.route.clone(), c.clone());
        }
        self.last = next;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(route: &str, bytes_in: u64, connections: u64) -> RouteCounters {
        RouteCounters { route: route.into(), bytes_in, connections, ..RouteCounters::default() }
    }

    fn pairs(v: &[RouteCounters]) -> Vec<(&str, u64, u64)> {
        v.iter().map(|c| (c.route.as_str(), c.bytes_in, c.connections)).collect()
    }

    #[test]
    fn increases_resets_and_new_routes() {
        let mut d = CounterDeltas::new();
        assert_eq!(pairs(&d.update(&[c("a", 100, 1)])), [("a", 100, 1)], "first sight: all new");
        assert_eq!(pairs(&d.update(&[c("a", 150, 1)])), [("a", 50, 0)]);
        assert_eq!(
            pairs(&d.update(&[c("a", 20, 0), c("b", 7, 1)])),
            [("a", 20, 0), ("b", 7, 1)],
            "a went down (table recreated): counted from zero"
        );
        assert_eq!(pairs(&d.update(&[c("b", 7, 1)])), [("b", 0, 0)]);
        assert_eq!(pairs(&d.update(&[c("a", 5, 0)])), [("a", 5, 0)], "a was forgotten");
    }
}
