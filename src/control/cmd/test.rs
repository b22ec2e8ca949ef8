//! `cdrhook test`: sends an `App.TestWebhook` through the same path as a
//! CDR (journal, signing, headers), one attempt per subscription, and
//! reports each result.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{cell, lane, result_text, table, CmdError, Command};
use crate::cdr::{cdr_id, Cdr};
use crate::config::{EventType, Subscription};
use crate::control::protocol::Request;
use crate::control::Handles;
use crate::journal::Trigger;
use crate::time::{now_ms, rfc3339};

/// The request: `{"cmd":"test"}`, or `{"cmd":"test","subscription":"crm"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Test {
    #[serde(default)]
    pub subscription: Option<String>,
}

/// contract §5 `test --json`: one result per subscription; `ok` is false if
/// any failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResponse {
    pub ok: bool,
    pub results: Vec<TestResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub subscription: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub ok: bool,
    pub attempt_id: Option<String>,
    pub duration_ms: Option<u64>,
}

impl From<Test> for Request {
    fn from(c: Test) -> Request {
        Request::Test(c)
    }
}

impl Command for Test {
    type Response = TestResponse;

    fn render(v: &TestResponse) -> String {
        let rows: Vec<Vec<String>> = v
            .results
            .iter()
            .map(|r| {
                vec![
                    r.subscription.clone(),
                    if r.ok { "OK" } else { "FAILED" }.to_string(),
                    result_text(r.status, r.error.as_deref()),
                    format!("{}ms", cell(r.duration_ms)),
                    cell(r.attempt_id.as_ref()),
                ]
            })
            .collect();
        table(
            &["SUBSCRIPTION", "RESULT", "STATUS", "DURATION", "ATTEMPT"],
            &rows,
        )
    }

    fn succeeded(v: &TestResponse) -> bool {
        v.ok
    }
}

impl Test {
    pub async fn apply(self, h: &Arc<Handles>) -> Result<TestResponse, CmdError> {
        let cfg = h.config();
        let targets: Vec<Subscription> = match self.subscription.as_deref() {
            Some(name) => {
                let sub = cfg
                    .subscriptions
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| {
                        CmdError::Refused(format!("no subscription named {name:?} in the config"))
                    })?;
                if !sub.active {
                    return Err(CmdError::Refused(format!(
                        "subscription {name} is inactive"
                    )));
                }
                if !sub.wants(EventType::Test) {
                    return Err(CmdError::Refused(format!(
                        "subscription {name} does not list App.TestWebhook in its events (add it, or \"*\")"
                    )));
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
            return Err(CmdError::Refused(
                "no active subscription lists App.TestWebhook (or \"*\") in its events".into(),
            ));
        }
        // Journaling the test CDRs reads and writes sled: off the runtime.
        let deliveries = lane::light(h, move |h| {
            let mut deliveries = Vec::new();
            for sub in &targets {
                let body = serde_json::to_vec(&serde_json::json!({
                    "EventType": EventType::Test.as_str(),
                    "Subscription": sub.name,
                    "Time": rfc3339(now_ms()),
                    "Message": "Test webhook sent by cdrhook on an operator's request",
                }))?;
                let cdr = Cdr {
                    id: cdr_id(&body),
                    event_type: EventType::Test,
                    call_id: None,
                    body,
                };
                let meta = h.journal.put_cdr(&cdr)?;
                let (delivery, _) = h.journal.ensure_delivery(&meta, &sub.name, Trigger::Test)?;
                deliveries.push((sub.name.clone(), delivery.id));
            }
            Ok::<_, CmdError>(deliveries)
        })
        .await??;
        let waiting: Vec<_> = deliveries
            .into_iter()
            .map(|(name, id)| {
                let fut = h.dispatcher.once(&name, id, Trigger::Test);
                (name, fut)
            })
            .collect();
        let mut results = Vec::new();
        for (subscription, fut) in waiting {
            results.push(match fut.await {
                Ok(a) => TestResult {
                    subscription,
                    status: a.status,
                    error: a.error.clone(),
                    ok: a.succeeded(),
                    attempt_id: Some(format!("a{}", a.id)),
                    duration_ms: Some(a.duration_ms),
                },
                Err(e) => TestResult {
                    subscription,
                    status: None,
                    error: Some(e.to_string()),
                    ok: false,
                    attempt_id: None,
                    duration_ms: None,
                },
            });
        }
        Ok(TestResponse {
            ok: results.iter().all(|r| r.ok),
            results,
        })
    }
}
