//! `cdrhook resend ID...` (one attempt each, now, waited for) and
//! `cdrhook resend --failed` / SIGUSR1 (queued, not waited for). A resend is
//! one attempt with trigger `resend`, never retried on its own.
//!
//! `--failed` walks the deliveries page by page and hands each page's
//! failed ones to their workers before reading the next page.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::{cell, lane, resolve, since, table};
use crate::journal::{DeliveryId, Trigger};
use crate::server::Daemon;

/// Deliveries looked at per page.
const PAGE: usize = 2048;

pub async fn apply(d: &Arc<Daemon>, ids: Vec<String>) -> Result<Value, String> {
    if ids.is_empty() {
        return Err("name at least one attempt or delivery id, or use --failed".into());
    }
    let pending = lane::light(d, move |d| {
        let cfg = d.config();
        let mut pending = Vec::new();
        for id in ids {
            let (delivery, _) = resolve(&d.journal, &id)?;
            let active = cfg
                .subscriptions
                .iter()
                .any(|s| s.name == delivery.subscription && s.active);
            if !active {
                return Err(format!(
                    "{id}: subscription {} is inactive or no longer in the config",
                    delivery.subscription
                ));
            }
            pending.push((id, delivery));
        }
        Ok(pending)
    })
    .await??;
    let futures: Vec<_> = pending
        .iter()
        .map(|(_, dl)| d.dispatcher.once(&dl.subscription, dl.id, Trigger::Resend))
        .collect();
    let mut results = Vec::new();
    let mut all_ok = true;
    for ((id, dl), fut) in pending.iter().zip(futures) {
        let r = match fut.await {
            Ok(a) => {
                all_ok &= a.succeeded();
                json!({
                    "id": id, "delivery_id": format!("d{}", dl.id), "subscription": dl.subscription,
                    "attempt_id": format!("a{}", a.id), "status": a.status, "error": a.error,
                    "ok": a.succeeded(),
                })
            }
            Err(e) => {
                all_ok = false;
                json!({
                    "id": id, "delivery_id": format!("d{}", dl.id), "subscription": dl.subscription,
                    "attempt_id": null, "status": null, "error": e, "ok": false,
                })
            }
        };
        results.push(r);
    }
    Ok(json!({ "ok": all_ok, "results": results }))
}

pub async fn apply_failed(
    d: &Arc<Daemon>,
    subscription: Option<String>,
    since_text: Option<String>,
) -> Result<Value, String> {
    if let Some(name) = &subscription {
        if !d.config().subscriptions.iter().any(|s| &s.name == name) {
            return Err(format!("no subscription named {name:?} in the config"));
        }
    }
    let since_ms = since(since_text.as_deref())?;
    let queued = resend_failed(d, subscription, since_ms).await?;
    Ok(json!({ "ok": true, "queued": queued }))
}

/// Queues one attempt for every dead or retrying delivery that matches (of
/// an active subscription), page by page; returns how many were queued.
pub async fn resend_failed(
    d: &Arc<Daemon>,
    subscription: Option<String>,
    since_ms: Option<u64>,
) -> Result<usize, String> {
    let subscription: Option<Arc<str>> = subscription.map(Arc::from);
    let (mut queued, mut from): (usize, Option<DeliveryId>) = (0, Some(0));
    while let Some(start) = from {
        let sub = subscription.clone();
        let page = lane::heavy(d, move |d| -> Result<_, String> {
            let page = d
                .journal
                .failed_deliveries_page(sub.as_deref(), since_ms, start, PAGE)
                .map_err(|e| e.to_string())?;
            // The config in force now: a subscription made inactive during
            // the walk keeps its deliveries held.
            let cfg = d.config();
            let active = |name: &str| cfg.subscriptions.iter().any(|s| s.name == name && s.active);
            let mut n = 0;
            for dl in page.items.iter().filter(|dl| active(&dl.subscription)) {
                d.dispatcher
                    .once_later(&dl.subscription, dl.id, Trigger::Resend);
                n += 1;
            }
            Ok((n, page.next))
        })
        .await?;
        match page {
            Ok((n, next)) => {
                queued += n;
                from = next;
            }
            Err(e) => {
                return Err(format!(
                    "{e} (stopped; {queued} deliveries were queued before it)"
                ))
            }
        }
    }
    Ok(queued)
}

/// SIGUSR1 repeated while its walk runs asks for one more walk after it,
/// not one per signal: at most one runs and one waits.
#[derive(Debug, Default)]
pub struct Coalesce {
    /// (a walk is running, another was asked for meanwhile)
    state: Mutex<(bool, bool)>,
}

impl Coalesce {
    pub const fn new() -> Coalesce {
        Coalesce {
            state: Mutex::new((false, false)),
        }
    }

    /// A request: true if the caller should start a walk now; false if one
    /// runs, which then runs once more (`finished` says so).
    pub fn request(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 {
            s.1 = true;
            false
        } else {
            s.0 = true;
            true
        }
    }

    /// A walk ended: true if it should run again for requests meanwhile.
    pub fn finished(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.1 {
            s.1 = false;
            true
        } else {
            s.0 = false;
            false
        }
    }
}

static SIGNALLED: Coalesce = Coalesce::new();

/// SIGUSR1: `resend --failed` for every subscription, in the background,
/// coalesced (see `Coalesce`).
pub fn on_signal(d: &Arc<Daemon>) {
    if !SIGNALLED.request() {
        log::info!("SIGUSR1: a resend of the failed deliveries is running; one more follows it");
        return;
    }
    let d = d.clone();
    tokio::spawn(async move {
        loop {
            match resend_failed(&d, None, None).await {
                Ok(n) => log::info!("SIGUSR1: resending {n} dead or retrying deliveries"),
                Err(e) => log::error!("SIGUSR1: {e}"),
            }
            if !SIGNALLED.finished() {
                return;
            }
        }
    });
}

pub fn render(v: &Value) -> String {
    if let Some(n) = v.get("queued") {
        return format!(
            "queued {} dead or retrying deliveries for one attempt each; follow with `cdrhook attempts`\n",
            cell(n)
        );
    }
    let rows: Vec<Vec<String>> = v["results"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|r| {
                    vec![
                        cell(&r["id"]),
                        cell(&r["delivery_id"]),
                        cell(&r["subscription"]),
                        cell(&r["attempt_id"]),
                        if r["ok"].as_bool() == Some(true) {
                            format!("OK {}", cell(&r["status"]))
                        } else {
                            format!("FAILED {}", super::result_text(r))
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &["ID", "DELIVERY", "SUBSCRIPTION", "ATTEMPT", "RESULT"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::Coalesce;

    #[test]
    fn signals_during_a_walk_coalesce_into_one_more_walk() {
        let c = Coalesce::new();
        assert!(c.request(), "the first request starts a walk");
        for _ in 0..9 {
            assert!(!c.request(), "nine more while it runs start nothing");
        }
        assert!(c.finished(), "they ask for one more walk");
        assert!(!c.finished(), "and only one");
        assert!(c.request(), "after that, a request starts a walk again");
        assert!(!c.finished());
    }
}
