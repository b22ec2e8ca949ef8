//! `cdrhook resend ID...` (one attempt each, now, waited for) and
//! `cdrhook resend --failed` / SIGUSR1 (queued, not waited for). A resend is
//! one attempt with trigger `resend`, never retried on its own.

use serde_json::{json, Value};

use super::{cell, resolve, since, table};
use crate::journal::Trigger;
use crate::server::Daemon;

pub async fn apply(d: &Daemon, ids: &[String]) -> Result<Value, String> {
    if ids.is_empty() {
        return Err("name at least one attempt or delivery id, or use --failed".into());
    }
    let cfg = d.config();
    let mut pending = Vec::new();
    for id in ids {
        let (delivery, _) = resolve(&d.journal, id)?;
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
        pending.push((id.clone(), delivery.clone()));
    }
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

pub fn apply_failed(
    d: &Daemon,
    subscription: Option<&str>,
    since_text: Option<&str>,
) -> Result<Value, String> {
    if let Some(name) = subscription {
        if !d.config().subscriptions.iter().any(|s| s.name == name) {
            return Err(format!("no subscription named {name:?} in the config"));
        }
    }
    let queued = d.resend_failed(subscription, since(since_text)?)?;
    Ok(json!({ "ok": true, "queued": queued }))
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
