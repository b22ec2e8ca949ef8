//! `cdrhook show ID`: one attempt or delivery in full.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{cell, lane, local_time, resolve, result_text, AttemptView, CmdError, Command};
use crate::control::protocol::Request;
use crate::control::Handles;
use crate::journal::Journal;
use crate::redact::{is_credential_header, MASK};
use crate::time::rfc3339;

/// The request: `{"cmd":"show","id":"a12"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Show {
    pub id: String,
}

/// contract §5 `show --json`: the attempt named (or a delivery's latest), the
/// headers and response, the CDR, and the delivery with its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShowResponse {
    #[serde(flatten)]
    pub attempt: AttemptView,
    pub request_headers: Option<BTreeMap<String, String>>,
    pub response_headers: Option<BTreeMap<String, String>>,
    pub response_body: Option<String>,
    /// The CDR as journaled: its JSON, or its text if it is not JSON.
    pub cdr: serde_json::Value,
    pub delivery: DeliveryView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub id: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt: Option<String>,
    pub created: String,
    pub ended: Option<String>,
    pub origin: String,
    pub history: Vec<AttemptView>,
}

impl From<Show> for Request {
    fn from(c: Show) -> Request {
        Request::Show(c)
    }
}

impl Command for Show {
    type Response = ShowResponse;

    fn render(r: &ShowResponse) -> String {
        render(r)
    }
}

impl Show {
    pub async fn apply(self, h: &Arc<Handles>) -> Result<ShowResponse, CmdError> {
        lane::light(h, move |h| show(&h.journal, &self.id)).await?
    }
}

/// Headers as journaled (already masked when the attempt was made), with
/// the name rule applied again: an attempt journaled before a header counted
/// as a credential is shown masked all the same.
fn headers(list: &[(String, String)]) -> BTreeMap<String, String> {
    list.iter()
        .map(|(k, v)| {
            let v = if is_credential_header(k) { MASK } else { v };
            (k.clone(), v.to_string())
        })
        .collect()
}

fn show(journal: &Journal, id: &str) -> Result<ShowResponse, CmdError> {
    let (delivery, named) = resolve(journal, id)?;
    let history = journal.attempts_of(&delivery)?;
    // A delivery shows its latest attempt in full.
    let attempt = named.or_else(|| history.last().cloned());
    let cdr = journal.cdr_by_seq(delivery.cdr_seq)?.map(|c| {
        serde_json::from_slice::<serde_json::Value>(&c.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&c.body).into_owned())
        })
    });
    Ok(ShowResponse {
        attempt: match &attempt {
            Some(a) => AttemptView::of(a),
            None => AttemptView::unattempted(&delivery),
        },
        request_headers: attempt.as_ref().map(|a| headers(&a.request_headers)),
        response_headers: attempt.as_ref().map(|a| headers(&a.response_headers)),
        response_body: attempt.as_ref().and_then(|a| a.response_body.clone()),
        cdr: cdr.unwrap_or(serde_json::Value::Null),
        delivery: DeliveryView {
            id: format!("d{}", delivery.id),
            state: delivery.state.as_str().to_string(),
            attempts: delivery.attempts,
            next_attempt: delivery.next_at_ms.map(rfc3339),
            created: rfc3339(delivery.created_ms),
            ended: delivery.ended_ms.map(rfc3339),
            origin: delivery.origin.as_str().to_string(),
            history: history.iter().map(AttemptView::of).collect(),
        },
    })
}

pub fn render(v: &ShowResponse) -> String {
    let mut out = String::new();
    let d = &v.delivery;
    let a = &v.attempt;
    out.push_str(&format!(
        "delivery {}: {} to {} ({} attempt(s), created {}{})\n",
        d.id,
        d.state.to_uppercase(),
        a.subscription,
        d.attempts,
        local_time(Some(&d.created)),
        match &d.next_attempt {
            Some(t) => format!(", next attempt {}", local_time(Some(t))),
            None => String::new(),
        }
    ));
    out.push_str(&format!(
        "event {}, call {}, webhook-id {}\n",
        a.event_type,
        cell(a.call_id.as_ref()),
        a.webhook_id
    ));
    if let Some(id) = &a.id {
        out.push_str(&format!(
            "\nattempt {} (#{}, {}) at {}: {} in {}ms\n",
            id,
            cell(a.attempt),
            cell(a.trigger.as_ref()),
            local_time(a.time.as_deref()),
            result_text(a.status, a.error.as_deref()),
            cell(a.duration_ms)
        ));
        for (title, headers) in [
            ("request headers", &v.request_headers),
            ("response headers", &v.response_headers),
        ] {
            if let Some(h) = headers.as_ref().filter(|h| !h.is_empty()) {
                out.push_str(&format!("{title}:\n"));
                for (k, val) in h {
                    out.push_str(&format!("  {k}: {val}\n"));
                }
            }
        }
        if let Some(body) = &v.response_body {
            out.push_str(&format!("response body (first 4 KiB):\n  {body}\n"));
        }
    }
    if d.history.len() > 1 {
        out.push_str("\nhistory:\n");
        for a in &d.history {
            out.push_str(&format!(
                "  {}  {}  #{}  {}  {}\n",
                cell(a.id.as_ref()),
                local_time(a.time.as_deref()),
                cell(a.attempt),
                cell(a.trigger.as_ref()),
                result_text(a.status, a.error.as_deref())
            ));
        }
    }
    out.push_str("\ncdr:\n");
    out.push_str(&serde_json::to_string_pretty(&v.cdr).unwrap_or_default());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_has_the_spec_shape_and_reads_back() {
        let attempt = AttemptView {
            id: None,
            delivery_id: "d1".into(),
            time: None,
            subscription: "crm".into(),
            event_type: "App.QueueWebhook".into(),
            call_id: None,
            webhook_id: "w".into(),
            attempt: None,
            status: None,
            error: None,
            duration_ms: None,
            trigger: None,
        };
        let r = ShowResponse {
            attempt,
            request_headers: None,
            response_headers: Some(BTreeMap::from([("x".into(), "y".into())])),
            response_body: None,
            cdr: serde_json::json!({"CallId": "c1"}),
            delivery: DeliveryView {
                id: "d1".into(),
                state: "pending".into(),
                attempts: 0,
                next_attempt: None,
                created: "2026-01-01T00:00:00Z".into(),
                ended: None,
                origin: "auto".into(),
                history: vec![],
            },
        };
        let v = serde_json::to_value(&r).expect("encode");
        let keys = crate::control::cmd::object_keys(&v);
        assert_eq!(
            keys,
            [
                "attempt",
                "call_id",
                "cdr",
                "delivery",
                "delivery_id",
                "duration_ms",
                "error",
                "event_type",
                "id",
                "request_headers",
                "response_body",
                "response_headers",
                "status",
                "subscription",
                "time",
                "trigger",
                "webhook_id"
            ]
        );
        // A never-attempted delivery: the attempt's fields are null, not absent.
        assert!(v["id"].is_null() && v["status"].is_null() && v["request_headers"].is_null());
        let back: ShowResponse = serde_json::from_value(v).expect("decode");
        assert_eq!(back, r);
    }
}
