//! `cdrhook test`: sends an `App.TestWebhook` through the same path as a
//! CDR (journal, signing, headers), one attempt per subscription, and
//! reports each result.

use serde_json::{json, Value};

use std::sync::Arc;

use super::{cell, lane, table};
use crate::cdr::{cdr_id, Cdr};
use crate::config::{EventType, Subscription};
use crate::journal::Trigger;
use crate::server::Daemon;
use crate::time::{now_ms, rfc3339};

pub async fn apply(d: &Arc<Daemon>, only: Option<String>) -> Result<Value, String> {
    let cfg = d.config();
    let targets: Vec<Subscription> = match only.as_deref() {
        Some(name) => {
            let sub = cfg
                .subscriptions
                .iter()
                .find(|s| s.name == name)
                .ok_or_else(|| format!("no subscription named {name:?} in the config"))?;
            if !sub.active {
                return Err(format!("subscription {name} is inactive"));
            }
            if !sub.wants(EventType::Test) {
                return Err(format!(
                    "subscription {name} does not list App.TestWebhook in its events (add it, or \"*\")"
                ));
            }
            vec![sub.clone()]
        }
        None => cfg
            .subscriptions
            .iter()
            .filter(|s| s.active && s.wants(EventType::Test))
            .cloned()
            .collect(),
    };
    if targets.is_empty() {
        return Err("no active subscription lists App.TestWebhook (or \"*\") in its events".into());
    }
    // Journaling the test CDRs reads and writes sled: off the runtime.
    let deliveries = lane::light(d, move |d| {
        let mut deliveries = Vec::new();
        for sub in &targets {
            let body = serde_json::to_vec(&json!({
                "EventType": EventType::Test.as_str(),
                "Subscription": sub.name,
                "Time": rfc3339(now_ms()),
                "Message": "Test webhook sent by cdrhook on an operator's request",
            }))
            .map_err(|e| e.to_string())?;
            let cdr = Cdr {
                id: cdr_id(&body),
                event_type: EventType::Test,
                call_id: None,
                body,
            };
            let meta = d.journal.put_cdr(&cdr).map_err(|e| e.to_string())?;
            let (delivery, _) = d
                .journal
                .ensure_delivery(&meta, &sub.name, Trigger::Test)
                .map_err(|e| e.to_string())?;
            deliveries.push((sub.name.clone(), delivery.id));
        }
        Ok::<_, String>(deliveries)
    })
    .await??;
    let waiting: Vec<_> = deliveries
        .into_iter()
        .map(|(name, id)| {
            let fut = d.dispatcher.once(&name, id, Trigger::Test);
            (name, fut)
        })
        .collect();
    let mut results = Vec::new();
    let mut all_ok = true;
    for (name, fut) in waiting {
        let r = match fut.await {
            Ok(a) => {
                all_ok &= a.succeeded();
                json!({
                    "subscription": name, "status": a.status, "error": a.error,
                    "ok": a.succeeded(), "attempt_id": format!("a{}", a.id),
                    "duration_ms": a.duration_ms,
                })
            }
            Err(e) => {
                all_ok = false;
                json!({ "subscription": name, "status": null, "error": e, "ok": false,
                        "attempt_id": null, "duration_ms": null })
            }
        };
        results.push(r);
    }
    Ok(json!({ "ok": all_ok, "results": results }))
}

pub fn render(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["results"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|r| {
                    vec![
                        cell(&r["subscription"]),
                        if r["ok"].as_bool() == Some(true) {
                            "OK".to_string()
                        } else {
                            "FAILED".to_string()
                        },
                        super::result_text(r),
                        format!("{}ms", cell(&r["duration_ms"])),
                        cell(&r["attempt_id"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &["SUBSCRIPTION", "RESULT", "STATUS", "DURATION", "ATTEMPT"],
        &rows,
    )
}
