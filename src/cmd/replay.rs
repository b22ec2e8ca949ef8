//! `cdrhook replay --subscription NAME --since TIME`: backfill. Every CDR
//! journaled since TIME that the subscription wants goes to it: CDRs it
//! never had get a new delivery (retried like any other, trigger `replay`);
//! CDRs it had are sent once more (one attempt, trigger `replay`).

use serde_json::{json, Value};

use super::{cell, since};
use crate::config::EventType;
use crate::journal::Trigger;
use crate::server::Daemon;

pub fn apply(d: &Daemon, subscription: &str, since_text: &str) -> Result<Value, String> {
    let cfg = d.config();
    let sub = cfg
        .subscriptions
        .iter()
        .find(|s| s.name == subscription)
        .ok_or_else(|| format!("no subscription named {subscription:?} in the config"))?;
    if !sub.active {
        return Err(format!("subscription {subscription} is inactive"));
    }
    let since_ms = since(Some(since_text))?.unwrap_or(0);
    let (mut created, mut resent, mut skipped) = (Vec::new(), 0usize, 0usize);
    for meta in d.journal.cdrs_since(since_ms).map_err(|e| e.to_string())? {
        let Some(event_type) = EventType::parse(&meta.event_type) else {
            skipped += 1;
            continue;
        };
        if event_type == EventType::Test || !sub.wants(event_type) {
            skipped += 1;
            continue;
        }
        let (delivery, new) = d
            .journal
            .ensure_delivery(&meta, &sub.name, Trigger::Replay)
            .map_err(|e| e.to_string())?;
        if new {
            created.push((delivery.id, None));
        } else {
            d.dispatcher
                .once_later(&sub.name, delivery.id, Trigger::Replay);
            resent += 1;
        }
    }
    d.journal.flush().map_err(|e| e.to_string())?;
    let new = created.len();
    d.dispatcher.enqueue(&sub.name, created);
    log::info!("replay to {subscription}: {new} new deliveries, {resent} resent");
    Ok(json!({
        "ok": true,
        "subscription": subscription,
        "queued": new + resent,
        "new_deliveries": new,
        "resent": resent,
        "skipped": skipped,
    }))
}

pub fn render(v: &Value) -> String {
    format!(
        "replaying {} CDR(s) to {}: {} new deliveries, {} sent again ({} of other event types skipped)\nfollow with `cdrhook attempts --subscription {}`\n",
        cell(&v["queued"]),
        cell(&v["subscription"]),
        cell(&v["new_deliveries"]),
        cell(&v["resent"]),
        cell(&v["skipped"]),
        cell(&v["subscription"]),
    )
}
