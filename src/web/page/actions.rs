//! The page's actions (POST, CSRF-checked by `mod.rs` before they get
//! here): Resend one attempt or delivery, Resend all failed of a
//! subscription, Send Test Webhook. Each runs the control command's own
//! `apply` with the daemon's handles (the same code, checks and journal
//! triggers, `resend` and `test`, as `cdrhook resend`/`test`), keeps its
//! typed response for a short while, and the browser is redirected (303) to
//! `/results/KEY`, which renders it. Reloading that page shows the result
//! again and sends nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::html::{self, cli_hint, esc, id_link, opt, result_cell, Nav};
use super::{csrf, form, Reply};
use crate::control::cmd::resend::{Resend, ResendFailed, ResendFailedResponse, ResendResponse};
use crate::control::cmd::test::{Test, TestResponse};
use crate::control::Handles;
use crate::locks::lock;

/// Results kept for their result page; the oldest goes first.
const KEPT: usize = 64;

/// What an action did, as its command answered (or its error's text).
#[derive(Debug, Clone)]
pub enum Outcome {
    Resend {
        id: String,
        result: Result<ResendResponse, String>,
    },
    ResendFailed {
        subscription: String,
        result: Result<ResendFailedResponse, String>,
    },
    Test {
        subscription: String,
        result: Result<TestResponse, String>,
    },
}

/// The results of the last actions, each under a random key and the CSRF
/// nonce of the browser that asked (another browser's key finds nothing).
#[derive(Default)]
pub struct Results {
    kept: Mutex<VecDeque<(String, String, Outcome)>>,
}

impl Results {
    fn put(&self, nonce: &str, outcome: Outcome) -> std::io::Result<String> {
        let key: String = csrf::random::<8>()?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut kept = lock(&self.kept);
        if kept.len() >= KEPT {
            kept.pop_front();
        }
        kept.push_back((key.clone(), nonce.to_string(), outcome));
        Ok(key)
    }

    fn get(&self, key: &str, nonce: &str) -> Option<Outcome> {
        lock(&self.kept)
            .iter()
            .find(|(k, n, _)| k == key && n == nonce)
            .map(|(_, _, o)| o.clone())
    }
}

/// Which action a POST path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Resend,
    ResendFailed,
    Test,
}

impl Action {
    pub fn of_path(path: &str) -> Option<Action> {
        match path {
            "/actions/resend" => Some(Action::Resend),
            "/actions/resend-failed" => Some(Action::ResendFailed),
            "/actions/test" => Some(Action::Test),
            _ => None,
        }
    }
}

/// Carries out an action (its token already checked) and redirects to its
/// result.
pub async fn run(
    h: &Arc<Handles>,
    results: &Results,
    nonce: &str,
    action: Action,
    fields: &[(String, String)],
) -> Reply {
    let field = |k: &str| form::get(fields, k).map(str::to_string);
    let outcome = match action {
        Action::Resend => {
            let Some(id) = field("id") else {
                return Reply::error(400, "Resend", "the form names no attempt or delivery (id)");
            };
            let result = (Resend {
                ids: vec![id.clone()],
            })
            .apply(h)
            .await;
            Outcome::Resend {
                id,
                result: result.map_err(|e| e.to_string()),
            }
        }
        Action::ResendFailed => {
            let Some(subscription) = field("subscription") else {
                return Reply::error(400, "Resend all failed", "the form names no subscription");
            };
            let cmd = ResendFailed {
                subscription: Some(subscription.clone()),
                since: None,
            };
            let result = cmd.apply(h).await;
            Outcome::ResendFailed {
                subscription,
                result: result.map_err(|e| e.to_string()),
            }
        }
        Action::Test => {
            let Some(subscription) = field("subscription") else {
                return Reply::error(400, "Send Test Webhook", "the form names no subscription");
            };
            let result = (Test {
                subscription: Some(subscription.clone()),
            })
            .apply(h)
            .await;
            Outcome::Test {
                subscription,
                result: result.map_err(|e| e.to_string()),
            }
        }
    };
    match results.put(nonce, outcome) {
        Ok(key) => Reply::redirect(&format!("/results/{key}")),
        Err(e) => Reply::error(
            500,
            "Action",
            &format!("the action ran, but its result cannot be kept: {e}"),
        ),
    }
}

/// `/results/KEY`: what an action did.
pub fn result_page(results: &Results, key: &str, nonce: &str) -> Reply {
    let Some(outcome) = results.get(key, nonce) else {
        return Reply::error(
            404,
            "Result",
            "This result is not kept any more (only the last results since the daemon started are). \
             See the send attempts for what was sent.",
        );
    };
    let (title, body) = render(&outcome);
    Reply::html(200, html::layout(title, Nav::None, &body))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn render(outcome: &Outcome) -> (&'static str, String) {
    match outcome {
        Outcome::Resend { id, result } => {
            let mut out = format!("<h1>Resend {}</h1>\n", esc(id));
            out.push_str(&cli_hint(&args(&["cdrhook", "resend", id])));
            match result {
                Err(e) => {
                    out.push_str(&html::notice(Some(false), &format!("Not sent: {}", esc(e))))
                }
                Ok(r) => {
                    for x in &r.results {
                        let what = if x.ok { "Sent" } else { "Sent, and it failed" };
                        out.push_str(&html::notice(
                            Some(x.ok),
                            &format!(
                                "{what}: {} to {} ({}), new attempt {}",
                                result_cell(x.status, x.error.as_deref()),
                                esc(&x.subscription),
                                id_link(&x.delivery_id),
                                x.attempt_id
                                    .as_deref()
                                    .map_or_else(|| "-".to_string(), id_link),
                            ),
                        ));
                    }
                }
            }
            ("Resend", out)
        }
        Outcome::ResendFailed {
            subscription,
            result,
        } => {
            let mut out = format!("<h1>Resend all failed of {}</h1>\n", esc(subscription));
            out.push_str(&cli_hint(&args(&[
                "cdrhook",
                "resend",
                "--failed",
                "--subscription",
                subscription,
            ])));
            match result {
                Err(e) => {
                    out.push_str(&html::notice(Some(false), &format!("Not sent: {}", esc(e))))
                }
                Ok(r) => out.push_str(&html::notice(
                    Some(r.ok),
                    &format!(
                        "Queued {} dead or retrying deliveries for one attempt each. \
                         <a href=\"/attempts?{}\">Follow them in the send attempts</a>.",
                        r.queued,
                        esc(&form::query(&[("subscription", subscription.clone())]))
                    ),
                )),
            }
            ("Resend all failed", out)
        }
        Outcome::Test {
            subscription,
            result,
        } => {
            let mut out = format!("<h1>Send Test Webhook to {}</h1>\n", esc(subscription));
            out.push_str(&cli_hint(&args(&[
                "cdrhook",
                "test",
                "--subscription",
                subscription,
            ])));
            match result {
                Err(e) => {
                    out.push_str(&html::notice(Some(false), &format!("Not sent: {}", esc(e))))
                }
                Ok(r) => {
                    let rows: Vec<Vec<String>> = r
                        .results
                        .iter()
                        .map(|t| {
                            vec![
                                esc(&t.subscription),
                                if t.ok {
                                    "<span class=\"ok\">OK</span>".to_string()
                                } else {
                                    "<span class=\"fail\">FAILED</span>".to_string()
                                },
                                result_cell(t.status, t.error.as_deref()),
                                format!("{}ms", opt(t.duration_ms)),
                                t.attempt_id
                                    .as_deref()
                                    .map_or_else(|| "-".to_string(), id_link),
                            ]
                        })
                        .collect();
                    out.push_str(&html::notice(
                        Some(r.ok),
                        if r.ok {
                            "The test webhook was delivered."
                        } else {
                            "The test webhook failed."
                        },
                    ));
                    out.push_str(&html::table(
                        &["Subscription", "Result", "Status", "Duration", "Attempt"],
                        &rows,
                        "results",
                    ));
                }
            }
            ("Send Test Webhook", out)
        }
    }
}
