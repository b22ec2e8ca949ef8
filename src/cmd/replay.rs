//! `cdrhook replay --subscription NAME --since TIME`: backfill. Every CDR
//! journaled since TIME that the subscription wants goes to it: CDRs it
//! never had get a new delivery (retried like any other, trigger `replay`);
//! CDRs it had are sent once more (one attempt, trigger `replay`).
//!
//! The CDRs are walked page by page (oldest first, up to the newest one
//! when the replay began), and each page's deliveries are handed to the
//! subscription's worker before the next page is read: what the daemon
//! holds does not grow with the journal.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{cell, lane, since};
use crate::config::{EventType, Subscription};
use crate::journal::{CdrSeq, Trigger};
use crate::server::Daemon;

/// CDRs per page.
const PAGE: usize = 512;

#[derive(Default)]
struct Counts {
    new: usize,
    resent: usize,
    skipped: usize,
}

/// Replays one page of CDRs `from..=to`; returns where the next one starts.
fn replay_page(
    d: &Daemon,
    sub: &Subscription,
    from: CdrSeq,
    to: CdrSeq,
    counts: &mut Counts,
) -> Result<Option<CdrSeq>, String> {
    let page = d
        .journal
        .cdrs_page(from, to, PAGE)
        .map_err(|e| e.to_string())?;
    let mut created = Vec::new();
    for meta in &page.items {
        let Some(event_type) = EventType::parse(&meta.event_type) else {
            counts.skipped += 1;
            continue;
        };
        if event_type == EventType::Test || !sub.wants(event_type) {
            counts.skipped += 1;
            continue;
        }
        let (delivery, new) = d
            .journal
            .ensure_delivery(meta, &sub.name, Trigger::Replay)
            .map_err(|e| e.to_string())?;
        if new {
            created.push((delivery.id, None));
        } else {
            d.dispatcher
                .once_later(&sub.name, delivery.id, Trigger::Replay);
            counts.resent += 1;
        }
    }
    // The new deliveries are durable before they are sent.
    d.journal.flush().map_err(|e| e.to_string())?;
    counts.new += created.len();
    d.dispatcher.enqueue(&sub.name, created);
    Ok(page.next)
}

pub async fn apply(
    d: &Arc<Daemon>,
    subscription: String,
    since_text: String,
) -> Result<Value, String> {
    let cfg = d.config();
    let sub = cfg
        .subscriptions
        .iter()
        .find(|s| s.name == subscription)
        .ok_or_else(|| format!("no subscription named {subscription:?} in the config"))?;
    if !sub.active {
        return Err(format!("subscription {subscription} is inactive"));
    }
    let sub = Arc::new(sub.clone());
    let since_ms = since(Some(&since_text))?.unwrap_or(0);
    let range = lane::heavy(d, move |d| d.journal.cdr_range_since(since_ms))
        .await?
        .map_err(|e| e.to_string())?;
    let mut counts = Counts::default();
    if let Some((mut from, to)) = range {
        loop {
            let s = sub.clone();
            let mut c = std::mem::take(&mut counts);
            let (next, c) = lane::heavy(d, move |d| {
                let next = replay_page(d, &s, from, to, &mut c);
                (next, c)
            })
            .await?;
            counts = c;
            match next {
                Ok(Some(n)) => from = n,
                Ok(None) => break,
                Err(e) => {
                    return Err(format!(
                    "{e} (replay stopped; {} new deliveries and {} resends were queued before it)",
                    counts.new, counts.resent
                ))
                }
            }
        }
    }
    let Counts {
        new,
        resent,
        skipped,
    } = counts;
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
