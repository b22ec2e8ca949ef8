//! `cdrhook show ID`: one attempt or delivery in full.

use serde_json::{json, Map, Value};

use super::{attempt_json, cell, local_time, resolve, result_text};
use crate::redact::{is_credential_header, MASK};
use crate::server::Daemon;
use crate::time::rfc3339;

/// Headers as journaled (already masked when the attempt was made), with
/// the name rule applied again: an attempt journaled before a header counted
/// as a credential is shown masked all the same.
fn headers(list: &[(String, String)]) -> Value {
    let mut map = Map::new();
    for (k, v) in list {
        let v = if is_credential_header(k) { MASK } else { v };
        map.insert(k.clone(), Value::String(v.to_string()));
    }
    Value::Object(map)
}

pub fn apply(d: &Daemon, id: &str) -> Result<Value, String> {
    let (delivery, named) = resolve(&d.journal, id)?;
    let history = d
        .journal
        .attempts_of(&delivery)
        .map_err(|e| e.to_string())?;
    // A delivery shows its latest attempt in full.
    let attempt = named.or_else(|| history.last().cloned());
    let cdr = d
        .journal
        .cdr_by_seq(delivery.cdr_seq)
        .map_err(|e| e.to_string())?
        .map(|c| {
            serde_json::from_slice::<Value>(&c.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&c.body).into_owned()))
        });
    let mut out = match &attempt {
        Some(a) => attempt_json(a),
        None => json!({
            "id": null, "delivery_id": format!("d{}", delivery.id), "time": null,
            "subscription": delivery.subscription, "event_type": delivery.event_type,
            "call_id": delivery.call_id, "webhook_id": delivery.cdr_id, "attempt": null,
            "status": null, "error": null, "duration_ms": null, "trigger": null,
        }),
    };
    let obj = out
        .as_object_mut()
        .ok_or("internal: attempt is not an object")?;
    obj.insert(
        "request_headers".into(),
        attempt
            .as_ref()
            .map_or(Value::Null, |a| headers(&a.request_headers)),
    );
    obj.insert(
        "response_headers".into(),
        attempt
            .as_ref()
            .map_or(Value::Null, |a| headers(&a.response_headers)),
    );
    obj.insert(
        "response_body".into(),
        attempt
            .as_ref()
            .and_then(|a| a.response_body.clone())
            .map_or(Value::Null, Value::String),
    );
    obj.insert("cdr".into(), cdr.unwrap_or(Value::Null));
    obj.insert(
        "delivery".into(),
        json!({
            "id": format!("d{}", delivery.id),
            "state": delivery.state.as_str(),
            "attempts": delivery.attempts,
            "next_attempt": delivery.next_at_ms.map(rfc3339),
            "created": rfc3339(delivery.created_ms),
            "ended": delivery.ended_ms.map(rfc3339),
            "origin": delivery.origin.as_str(),
            "history": history.iter().map(attempt_json).collect::<Vec<_>>(),
        }),
    );
    Ok(out)
}

pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let d = &v["delivery"];
    out.push_str(&format!(
        "delivery {}: {} to {} ({} attempt(s), created {}{})\n",
        cell(&d["id"]),
        cell(&d["state"]).to_uppercase(),
        cell(&v["subscription"]),
        cell(&d["attempts"]),
        local_time(&d["created"]),
        match d["next_attempt"].as_str() {
            Some(_) => format!(", next attempt {}", local_time(&d["next_attempt"])),
            None => String::new(),
        }
    ));
    out.push_str(&format!(
        "event {}, call {}, webhook-id {}\n",
        cell(&v["event_type"]),
        cell(&v["call_id"]),
        cell(&v["webhook_id"])
    ));
    if !v["id"].is_null() {
        out.push_str(&format!(
            "\nattempt {} (#{}, {}) at {}: {} in {}ms\n",
            cell(&v["id"]),
            cell(&v["attempt"]),
            cell(&v["trigger"]),
            local_time(&v["time"]),
            result_text(v),
            cell(&v["duration_ms"])
        ));
        for (title, key) in [
            ("request headers", "request_headers"),
            ("response headers", "response_headers"),
        ] {
            if let Some(h) = v[key].as_object().filter(|h| !h.is_empty()) {
                out.push_str(&format!("{title}:\n"));
                for (k, val) in h {
                    out.push_str(&format!("  {k}: {}\n", cell(val)));
                }
            }
        }
        if let Some(body) = v["response_body"].as_str() {
            out.push_str(&format!("response body (first 4 KiB):\n  {body}\n"));
        }
    }
    if let Some(history) = d["history"].as_array().filter(|h| h.len() > 1) {
        out.push_str("\nhistory:\n");
        for a in history {
            out.push_str(&format!(
                "  {}  {}  #{}  {}  {}\n",
                cell(&a["id"]),
                local_time(&a["time"]),
                cell(&a["attempt"]),
                cell(&a["trigger"]),
                result_text(a)
            ));
        }
    }
    out.push_str("\ncdr:\n");
    out.push_str(&serde_json::to_string_pretty(&v["cdr"]).unwrap_or_default());
    out.push('\n');
    out
}
