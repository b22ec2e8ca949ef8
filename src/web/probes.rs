//! What `/metrics`, `/healthz` and `/readyz` read from the running daemon
//! (contract §9). All of it is state the daemon keeps live: the journal's
//! per-subscription counts, the config snapshot, the journal's size; the
//! spool's two directories are counted (a `readdir` each, as `cdrhook
//! status` does). Nothing here walks the journal: the oldest open delivery
//! of a subscription is remembered between scrapes ([`Oldest`]).
//!
//! The blocking parts run in the control commands' light lane.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::control::Handles;
use crate::locks::lock;
use crate::metrics::Gauges;
use crate::time::now_ms;

/// Per subscription, its oldest open delivery found at the last scrape
/// (id, created ms): the next scrape asks the journal from there.
#[derive(Default)]
pub struct Oldest(Mutex<HashMap<String, (u64, u64)>>);

/// Reads the gauges of one scrape. Blocking.
pub fn gauges(h: &Handles, oldest: &Oldest) -> Gauges {
    let snapshot = h.live.snapshot();
    let cfg = &snapshot.config;
    let counts = h.journal.counts();
    let now = now_ms();
    let mut g = Gauges::default();
    let mut remembered = lock(&oldest.0);
    remembered.retain(|name, _| counts.contains_key(name));
    for (name, c) in &counts {
        let in_service = cfg
            .subscriptions
            .iter()
            .any(|s| &s.name == name && s.active);
        let open = c.pending + c.retrying;
        // The states partition the deliveries: an out-of-service
        // subscription's open deliveries are held, not pending.
        let (pending, retrying, held) = if in_service {
            (c.pending, c.retrying, 0)
        } else {
            (0, 0, open)
        };
        for (state, n) in [
            ("pending", pending),
            ("retrying", retrying),
            ("dead", c.dead),
            ("held", held),
            ("delivered", c.delivered),
        ] {
            g.deliveries.push((name.clone(), state, n));
        }
        let created = if open == 0 {
            remembered.remove(name);
            None
        } else {
            let from = remembered.get(name).map_or(0, |&(id, _)| id);
            match h.journal.first_open_of(name, from) {
                Ok(Some((id, created))) => {
                    remembered.insert(name.clone(), (id, created));
                    Some(created)
                }
                Ok(None) => {
                    remembered.remove(name);
                    None
                }
                // The journal is unavailable (a full disk): the last known.
                Err(_) => remembered.get(name).map(|&(_, c)| c),
            }
        };
        let age = created.map_or(0.0, |c| now.saturating_sub(c) as f64 / 1000.0);
        g.oldest_age_s.push((name.clone(), age));
        g.unmatched.push((name.clone(), c.unmatched));
    }
    drop(remembered);
    // Subscriptions in the config with nothing journaled yet.
    for s in &cfg.subscriptions {
        if !counts.contains_key(&s.name) {
            for state in crate::metrics::STATES {
                g.deliveries.push((s.name.clone(), state, 0));
            }
            g.oldest_age_s.push((s.name.clone(), 0.0));
            g.unmatched.push((s.name.clone(), 0));
        }
    }
    let (waiting, inflight) = h.spool.backlog(&cfg.spool);
    g.spool_waiting = waiting as u64;
    g.spool_inflight = inflight as u64;
    g.config_loaded_ms = snapshot.status.loaded_ms;
    g.journal_bytes = h.journal.size_on_disk();
    g
}

/// Why the daemon is not ready, or `None` when it is: the journal takes
/// writes, the spool directory can be listed, a config is loaded (always,
/// once running: the daemon does not start without one, and a refused
/// reload keeps the last good one). Blocking.
pub fn not_ready(h: &Handles) -> Option<String> {
    if let Err(e) = h.journal.writable() {
        return Some(format!("journal: {e}"));
    }
    let cfg = h.config();
    if let Err(e) = std::fs::read_dir(&cfg.spool.dir) {
        return Some(format!(
            "spool: cannot read {}: {e}",
            cfg.spool.dir.display()
        ));
    }
    None
}

/// How long the runtime may take to run a trivial task before `/healthz`
/// says it does not answer.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// Liveness: the runtime that runs the daemon's loop, its workers and its
/// sockets still runs a new task (the heartbeat the watchdog also uses).
pub async fn alive() -> bool {
    let beat = tokio::spawn(async {});
    matches!(tokio::time::timeout(HEARTBEAT, beat).await, Ok(Ok(())))
}
