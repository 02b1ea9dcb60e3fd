//! The owner of one table: create, replace, remove, clean up, read counters.

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::nft::Nft;
use crate::ruleset::{FAMILY, Ruleset};

/// The default table name.
pub const TABLE: &str = "smartproxy";

/// Owns the table `inet smartproxy` (or another name) in one network namespace.
///
/// Every method runs `nft` and waits for it (a few milliseconds): call them from a blocking
/// context (`tokio::task::spawn_blocking`). The methods take `&self` and are serialised by an
/// internal lock, so one `Arc<Manager>` can be shared. One process per table: two managers of
/// the same table in one namespace overwrite each other.
#[derive(Debug)]
pub struct Manager {
    nft: Nft,
    table: String,
    applied: Mutex<Option<Ruleset>>,
}

/// Per-route counters read from the kernel. Bytes are IP bytes as the kernel counts them
/// (IP and transport headers included; a GSO/GRO packet counts once with all its payload).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RouteCounters {
    /// The route's name.
    pub route: String,
    /// Bytes from clients to targets.
    pub bytes_in: u64,
    /// Packets from clients to targets.
    pub packets_in: u64,
    /// Bytes from targets back to clients.
    pub bytes_out: u64,
    /// Packets from targets back to clients.
    pub packets_out: u64,
    /// Flows forwarded: one per new conntrack entry (a TCP connection, a UDP flow).
    pub connections: u64,
    /// New flows dropped by the allow/block lists or `max_connections` (for TCP, every
    /// retried SYN counts).
    pub dropped: u64,
}

impl Manager {
    /// A manager of the table `smartproxy`.
    pub fn new(nft: Nft) -> Self {
        Self::with_table(nft, TABLE)
    }

    /// A manager of another table (for more than one process in one namespace).
    pub fn with_table(nft: Nft, table: impl Into<String>) -> Self {
        Self { nft, table: table.into(), applied: Mutex::new(None) }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Checks that `nft` is installed and may read the ruleset. A missing program is
    /// [`Error::NftMissing`], a missing capability [`Error::PermissionDenied`].
    pub fn probe(&self) -> Result<(), Error> {
        self.nft.probe()
    }

    /// Deletes the table if it is there, e.g. left by a process that was killed. Call it at
    /// start, before the first [`Self::apply`], so that counters start from zero. Returns
    /// whether there was one.
    pub fn cleanup_stale(&self) -> Result<bool, Error> {
        let mut applied = self.applied.lock();
        let existed = self.list_table()?.is_some();
        if existed {
            self.delete_table()?;
        }
        *applied = None;
        Ok(existed)
    }

    /// Creates the table, or replaces its rules, in one transaction: either the new rules are
    /// in force or (on error) the old ones still are. Flows already established keep their
    /// target (conntrack holds their NAT binding); new flows follow the new rules. Counters
    /// of routes that keep their name keep counting; routes that did not change at all keep
    /// their chains as they were, so their `max_connections` still counts the flows opened
    /// before the reload.
    pub fn apply(&self, ruleset: &Ruleset) -> Result<(), Error> {
        let mut applied = self.applied.lock();
        let existing = self.list_table()?;
        let batch = ruleset.replace_batch(&self.table, existing.as_ref(), applied.as_ref());
        self.nft.apply(&batch)?;
        *applied = Some(ruleset.clone());
        Ok(())
    }

    /// Deletes the table (at shutdown). Returns whether there was one. Established flows
    /// keep their NAT binding until conntrack forgets them.
    pub fn remove(&self) -> Result<bool, Error> {
        let mut applied = self.applied.lock();
        let existed = self.list_table()?.is_some();
        if existed {
            self.delete_table()?;
        }
        *applied = None;
        Ok(existed)
    }

    /// The ruleset last applied by this manager.
    pub fn applied(&self) -> Option<Ruleset> {
        self.applied.lock().clone()
    }

    /// Whether the table exists in the kernel.
    pub fn table_exists(&self) -> Result<bool, Error> {
        Ok(self.list_table()?.is_some())
    }

    /// The counters of every applied route, read from the kernel (one `nft` run).
    pub fn counters(&self) -> Result<Vec<RouteCounters>, Error> {
        let applied = self.applied.lock();
        let Some(ruleset) = applied.as_ref() else { return Ok(Vec::new()) };
        let listing = self
            .nft
            .list(&["list", "counters", "table", FAMILY, &self.table])
            .map_err(|e| self.missing_table(e))?;
        route_counters(ruleset, &listing)
    }

    /// The table as applied, for `GET /api/nftables`: the routes with their resolved
    /// targets and counters, and nft's own JSON listing of the table.
    ///
    /// ```json
    /// {"table": "smartproxy", "family": "inet", "present": true,
    ///  "routes": [{"name": "db", "family": "ipv4", "ports": [5432], "protocol": "tcp",
    ///              "targets": [{"host": "10.0.0.5", "address": "10.0.0.5", "port": 5432}],
    ///              "balance": "round-robin", "preserve_source_ip": true, "slug": "db",
    ///              "counters": {"bytes_in": 0, ...}}],
    ///  "nftables": [{"table": {...}}, {"counter": {...}}, {"chain": {...}}, {"rule": {...}}]}
    /// ```
    pub fn status_json(&self) -> Result<Value, Error> {
        let applied = self.applied.lock();
        let listing = self.list_table()?;
        let items: Vec<Value> = listing
            .as_ref()
            .and_then(|v| v.get("nftables"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter(|i| i.get("metainfo").is_none()).cloned().collect())
            .unwrap_or_default();
        let mut routes = Vec::new();
        if let Some(ruleset) = applied.as_ref() {
            let counters = match &listing {
                Some(l) => route_counters(ruleset, l)?,
                None => Vec::new(),
            };
            for r in ruleset.routes() {
                let mut v = serde_json::to_value(r).map_err(|e| Error::Output(e.to_string()))?;
                let c = counters.iter().find(|c| c.route == r.name);
                if let (Some(obj), Some(c)) = (v.as_object_mut(), c) {
                    let mut c =
                        serde_json::to_value(c).map_err(|e| Error::Output(e.to_string()))?;
                    if let Some(c) = c.as_object_mut() {
                        c.remove("route");
                    }
                    obj.insert("counters".into(), c);
                }
                routes.push(v);
            }
        }
        Ok(json!({
            "table": self.table,
            "family": FAMILY,
            "present": listing.is_some(),
            "routes": routes,
            "nftables": items,
        }))
    }

    /// `nft -j list table inet NAME`, or `None` when there is no such table.
    fn list_table(&self) -> Result<Option<Value>, Error> {
        match self.nft.list(&["list", "table", FAMILY, &self.table]) {
            Ok(v) => Ok(Some(v)),
            Err(Error::Nft { stderr, .. }) if no_such_table(&stderr) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn delete_table(&self) -> Result<(), Error> {
        // `add` first, so that the batch succeeds even if the table went away meanwhile.
        let t = json!({"family": FAMILY, "name": self.table});
        self.nft.apply(&json!({"nftables": [{"add": {"table": t}}, {"delete": {"table": t}}]}))
    }

    fn missing_table(&self, e: Error) -> Error {
        match e {
            Error::Nft { stderr, .. } if no_such_table(&stderr) => {
                Error::TableMissing { table: self.table.clone() }
            }
            e => e,
        }
    }
}

/// nft's answer to `list ... table inet NAME` for a table that is not there (and not, say,
/// `ip netns exec` failing to find a namespace).
fn no_such_table(stderr: &str) -> bool {
    stderr.contains("Error: No such file or directory") && stderr.contains(" table ")
}

/// Counters by route from a listing that holds counter objects.
fn route_counters(ruleset: &Ruleset, listing: &Value) -> Result<Vec<RouteCounters>, Error> {
    let mut by_name: HashMap<&str, (u64, u64)> = HashMap::new();
    let items = listing
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Output("no `nftables` array in the listing".into()))?;
    for item in items {
        let Some(c) = item.get("counter") else { continue };
        let (Some(name), Some(packets), Some(bytes)) = (
            c.get("name").and_then(Value::as_str),
            c.get("packets").and_then(Value::as_u64),
            c.get("bytes").and_then(Value::as_u64),
        ) else {
            return Err(Error::Output(format!("counter without name, packets or bytes: {c}")));
        };
        by_name.insert(name, (packets, bytes));
    }
    ruleset
        .routes()
        .iter()
        .map(|r| {
            let names = r.counter_names();
            let get = |n: &str| {
                by_name.get(n).copied().ok_or_else(|| {
                    Error::Output(format!(
                        "counter `{n}` of route `{}` is not in the table",
                        r.name
                    ))
                })
            };
            let (packets_in, bytes_in) = get(&names.bytes_in)?;
            let (packets_out, bytes_out) = get(&names.bytes_out)?;
            let (connections, _) = get(&names.connections)?;
            let (dropped, _) = get(&names.dropped)?;
            Ok(RouteCounters {
                route: r.name.clone(),
                bytes_in,
                packets_in,
                bytes_out,
                packets_out,
                connections,
                dropped,
            })
        })
        .collect()
}
