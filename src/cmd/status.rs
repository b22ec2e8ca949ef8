//! `cdrhook status` (and SIGUSR2): what an operator needs at a glance.

use serde_json::{json, Value};

use super::{cell, local_time, table};
use crate::server::Daemon;
use crate::time::{now_ms, rfc3339};

pub fn collect(d: &Daemon) -> Value {
    // One snapshot: the config and its load status of the same version.
    // Endpoints serialize in their shown form (a `${VAR}` one as written).
    let snapshot = d.live.snapshot();
    let cfg = &snapshot.config;
    let load = &snapshot.status;
    let counts = d.journal.counts();
    let (backlog, in_flight) = d.spool_backlog();
    let rejected = d.rejections.summary();
    let time = |ms: Option<u64>| ms.map(rfc3339);
    let mut subs = Vec::new();
    let mut listed = Vec::new();
    for s in &cfg.subscriptions {
        listed.push(s.name.clone());
        let c = counts.get(&s.name).cloned().unwrap_or_default();
        subs.push(json!({
            "name": s.name,
            "active": s.active,
            "in_config": true,
            "endpoint": s.endpoint,
            "events": s.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            "pending": c.pending,
            "retrying": c.retrying,
            "dead": c.dead,
            "delivered": c.delivered,
            "held": if s.active { 0 } else { c.pending + c.retrying },
            "last_success": time(c.last_success_ms),
            "last_failure": time(c.last_failure_ms),
            "last_error": c.last_error,
        }));
    }
    // Subscriptions removed from the config that still have deliveries.
    for (name, c) in counts.iter().filter(|(n, _)| !listed.contains(n)) {
        subs.push(json!({
            "name": name,
            "active": false,
            "in_config": false,
            "endpoint": null,
            "events": [],
            "pending": c.pending,
            "retrying": c.retrying,
            "dead": c.dead,
            "delivered": c.delivered,
            "held": c.pending + c.retrying,
            "last_success": time(c.last_success_ms),
            "last_failure": time(c.last_failure_ms),
            "last_error": c.last_error,
        }));
    }
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "started": rfc3339(d.started_ms),
        "uptime_s": now_ms().saturating_sub(d.started_ms) / 1000,
        "config": {
            "path": d.live.path().display().to_string(),
            "loaded": rfc3339(load.loaded_ms),
            "error": load.error,
            "refused_at": time(load.refused_ms),
            "restart_required": load.restart_required,
            "warnings": cfg.warnings,
        },
        "spool": {
            "dir": cfg.spool.dir.display().to_string(),
            "backlog": backlog,
            "in_flight": in_flight,
            "rejected": rejected.count,
            "rejected_dir": cfg.spool.rejected_dir.display().to_string(),
            "last_rejection": rejected.last.map(|r| json!({
                "file": r.file,
                "reason": r.reason,
                "time": rfc3339(r.time_ms),
                "not_moved": r.not_moved,
            })),
        },
        "journal": {
            "path": cfg.journal.path.display().to_string(),
            "size_bytes": d.journal.size_on_disk(),
            // After an I/O error (a full disk) until it is reopened.
            "available": !d.journal.is_broken(),
        },
        "subscriptions": subs,
    })
}

pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let uptime = v["uptime_s"].as_u64().unwrap_or(0);
    out.push_str(&format!(
        "cdrhook {} (pid {}), up {}\n",
        cell(&v["version"]),
        cell(&v["pid"]),
        humantime::format_duration(std::time::Duration::from_secs(uptime))
    ));
    let c = &v["config"];
    out.push_str(&format!(
        "config:  {} (loaded {})\n",
        cell(&c["path"]),
        local_time(&c["loaded"])
    ));
    if let Some(e) = c["error"].as_str() {
        out.push_str(&format!(
            "         LAST RELOAD REFUSED at {}: {e}\n         (the version loaded before stays in force)\n",
            local_time(&c["refused_at"])
        ));
    }
    if let Some(keys) = c["restart_required"].as_array().filter(|k| !k.is_empty()) {
        let keys: Vec<String> = keys.iter().map(cell).collect();
        out.push_str(&format!(
            "         changed, waiting for a restart: {}\n",
            keys.join(", ")
        ));
    }
    for w in c["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("         WARNING: {}\n", cell(w)));
    }
    out.push_str(&format!(
        "spool:   {}: {} waiting, {} in flight\n",
        cell(&v["spool"]["dir"]),
        cell(&v["spool"]["backlog"]),
        cell(&v["spool"]["in_flight"])
    ));
    if let Some(n) = v["spool"]["rejected"].as_u64().filter(|&n| n > 0) {
        let last = &v["spool"]["last_rejection"];
        out.push_str(&format!(
            "         {n} file(s) rejected since start, into {}; last {} at {}: {}\n",
            cell(&v["spool"]["rejected_dir"]),
            cell(&last["file"]),
            local_time(&last["time"]),
            cell(&last["reason"])
        ));
        if let Some(why) = last["not_moved"].as_str() {
            out.push_str(&format!("         NOT MOVED: {why}\n"));
        }
    }
    out.push_str(&format!(
        "journal: {} ({} MiB){}\n\n",
        cell(&v["journal"]["path"]),
        v["journal"]["size_bytes"].as_u64().unwrap_or(0) / (1 << 20),
        if v["journal"]["available"] == false {
            "\n         UNAVAILABLE after an I/O error (disk full?): files wait in the spool; \
             it is reopened by itself once it can be written"
        } else {
            ""
        }
    ));
    let rows: Vec<Vec<String>> = v["subscriptions"]
        .as_array()
        .map(|subs| {
            subs.iter()
                .map(|s| {
                    let state = match (s["in_config"].as_bool(), s["active"].as_bool()) {
                        (Some(false), _) => "removed",
                        (_, Some(true)) => "active",
                        _ => "inactive",
                    };
                    let failure = match s["last_failure"].as_str() {
                        Some(_) => format!(
                            "{} {}",
                            local_time(&s["last_failure"]),
                            cell(&s["last_error"])
                        ),
                        None => "-".to_string(),
                    };
                    vec![
                        cell(&s["name"]),
                        state.to_string(),
                        cell(&s["pending"]),
                        cell(&s["retrying"]),
                        cell(&s["dead"]),
                        cell(&s["delivered"]),
                        cell(&s["held"]),
                        local_time(&s["last_success"]),
                        failure,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&table(
        &[
            "SUBSCRIPTION",
            "STATE",
            "PENDING",
            "RETRYING",
            "DEAD",
            "DELIVERED",
            "HELD",
            "LAST SUCCESS",
            "LAST FAILURE",
        ],
        &rows,
    ));
    out
}
