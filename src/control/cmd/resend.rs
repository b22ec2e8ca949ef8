//! `cdrhook resend ID...` (one attempt each, now, waited for) and
//! `cdrhook resend --failed` / SIGUSR1 (queued, not waited for). A resend is
//! one attempt with trigger `resend`, never retried on its own.
//!
//! `--failed` walks the deliveries page by page and hands each page's
//! failed ones to their workers before reading the next page.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{cell, lane, resolve, result_text, since, table, CmdError, Command};
use crate::control::protocol::Request;
use crate::control::Handles;
use crate::journal::{DeliveryId, Trigger};
use crate::locks::lock;

/// Deliveries looked at per page.
const PAGE: usize = 2048;

/// `resend ID...`: `{"cmd":"resend","ids":["a12","d7"]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resend {
    pub ids: Vec<String>,
}

/// `resend --failed`: `{"cmd":"resend_failed","subscription":…,"since":…}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResendFailed {
    #[serde(default)]
    pub subscription: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
}

/// contract §5 `resend --json`: one result per id; `ok` is false if any failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResendResponse {
    pub ok: bool,
    pub results: Vec<ResendResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResendResult {
    /// The id as given.
    pub id: String,
    pub delivery_id: String,
    pub subscription: String,
    pub attempt_id: Option<String>,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub ok: bool,
}

/// contract §5 `resend --failed --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResendFailedResponse {
    pub ok: bool,
    pub queued: usize,
}

impl From<Resend> for Request {
    fn from(c: Resend) -> Request {
        Request::Resend(c)
    }
}

impl From<ResendFailed> for Request {
    fn from(c: ResendFailed) -> Request {
        Request::ResendFailed(c)
    }
}

impl Command for Resend {
    type Response = ResendResponse;

    fn render(v: &ResendResponse) -> String {
        let rows: Vec<Vec<String>> = v
            .results
            .iter()
            .map(|r| {
                vec![
                    r.id.clone(),
                    r.delivery_id.clone(),
                    r.subscription.clone(),
                    cell(r.attempt_id.as_ref()),
                    if r.ok {
                        format!("OK {}", cell(r.status))
                    } else {
                        format!("FAILED {}", result_text(r.status, r.error.as_deref()))
                    },
                ]
            })
            .collect();
        table(
            &["ID", "DELIVERY", "SUBSCRIPTION", "ATTEMPT", "RESULT"],
            &rows,
        )
    }

    fn succeeded(v: &ResendResponse) -> bool {
        v.ok
    }
}

impl Command for ResendFailed {
    type Response = ResendFailedResponse;

    fn render(v: &ResendFailedResponse) -> String {
        format!(
            "queued {} dead or retrying deliveries for one attempt each; follow with `cdrhook attempts`\n",
            v.queued
        )
    }

    fn succeeded(v: &ResendFailedResponse) -> bool {
        v.ok
    }
}

impl Resend {
    pub async fn apply(self, h: &Arc<Handles>) -> Result<ResendResponse, CmdError> {
        if self.ids.is_empty() {
            return Err(CmdError::Refused(
                "name at least one attempt or delivery id, or use --failed".into(),
            ));
        }
        let ids = self.ids;
        let pending = lane::light(h, move |h| {
            let cfg = h.config();
            let mut pending = Vec::new();
            for id in ids {
                let (delivery, _) = resolve(&h.journal, &id)?;
                let active = cfg
                    .subscriptions
                    .iter()
                    .any(|s| s.name == delivery.subscription && s.active);
                if !active {
                    return Err(CmdError::Refused(format!(
                        "{id}: subscription {} is inactive or no longer in the config",
                        delivery.subscription
                    )));
                }
                pending.push((id, delivery));
            }
            Ok(pending)
        })
        .await??;
        let futures: Vec<_> = pending
            .iter()
            .map(|(_, dl)| h.dispatcher.once(&dl.subscription, dl.id, Trigger::Resend))
            .collect();
        let mut results = Vec::new();
        for ((id, dl), fut) in pending.into_iter().zip(futures) {
            let (attempt_id, status, error, ok) = match fut.await {
                Ok(a) => (
                    Some(format!("a{}", a.id)),
                    a.status,
                    a.error.clone(),
                    a.succeeded(),
                ),
                Err(e) => (None, None, Some(e.to_string()), false),
            };
            results.push(ResendResult {
                id,
                delivery_id: format!("d{}", dl.id),
                subscription: dl.subscription,
                attempt_id,
                status,
                error,
                ok,
            });
        }
        Ok(ResendResponse {
            ok: results.iter().all(|r| r.ok),
            results,
        })
    }
}

impl ResendFailed {
    pub async fn apply(self, h: &Arc<Handles>) -> Result<ResendFailedResponse, CmdError> {
        if let Some(name) = &self.subscription {
            if !h.config().subscriptions.iter().any(|s| &s.name == name) {
                return Err(CmdError::Refused(format!(
                    "no subscription named {name:?} in the config"
                )));
            }
        }
        let since_ms = since(self.since.as_deref())?;
        let queued = resend_failed(h, self.subscription, since_ms).await?;
        Ok(ResendFailedResponse { ok: true, queued })
    }
}

/// Queues one attempt for every dead or retrying delivery that matches (of
/// an active subscription), page by page; returns how many were queued.
pub async fn resend_failed(
    h: &Arc<Handles>,
    subscription: Option<String>,
    since_ms: Option<u64>,
) -> Result<usize, CmdError> {
    let subscription: Option<Arc<str>> = subscription.map(Arc::from);
    let (mut queued, mut from): (usize, Option<DeliveryId>) = (0, Some(0));
    while let Some(start) = from {
        let sub = subscription.clone();
        let page = lane::heavy(h, move |h| -> Result<_, CmdError> {
            let page = h
                .journal
                .failed_deliveries_page(sub.as_deref(), since_ms, start, PAGE)?;
            // The config in force now: a subscription made inactive during
            // the walk keeps its deliveries held.
            let cfg = h.config();
            let active = |name: &str| cfg.subscriptions.iter().any(|s| s.name == name && s.active);
            let mut n = 0;
            for dl in page.items.iter().filter(|dl| active(&dl.subscription)) {
                h.dispatcher
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
                return Err(CmdError::Stopped {
                    source: Box::new(e),
                    done: format!("stopped; {queued} deliveries were queued before it"),
                })
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
        let mut s = lock(&self.state);
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
        let mut s = lock(&self.state);
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
pub fn on_signal(h: &Arc<Handles>) {
    if !SIGNALLED.request() {
        log::info!("SIGUSR1: a resend of the failed deliveries is running; one more follows it");
        return;
    }
    let h = h.clone();
    tokio::spawn(async move {
        loop {
            match resend_failed(&h, None, None).await {
                Ok(n) => log::info!("SIGUSR1: resending {n} dead or retrying deliveries"),
                Err(e) => log::error!("SIGUSR1: {e}"),
            }
            if !SIGNALLED.finished() {
                return;
            }
        }
    });
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
