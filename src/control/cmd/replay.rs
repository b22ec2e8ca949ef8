//! `cdrhook replay --subscription NAME --since TIME`: backfill. Every CDR
//! journaled since TIME that the subscription wants goes to it: CDRs it
//! never had get a new delivery (retried like any other, trigger `replay`);
//! CDRs it had are sent once more (one attempt, trigger `replay`).
//! The subscription's `filter` in force applies too (`delivery::route`):
//! a CDR it excludes is neither delivered nor sent again, and is counted
//! in `unmatched`.
//!
//! The CDRs are walked page by page (oldest first, up to the newest one
//! when the replay began), and each page's deliveries are handed to the
//! subscription's worker before the next page is read: what the daemon
//! holds does not grow with the journal.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{lane, since, CmdError, Command};
use crate::config::{EventType, Subscription};
use crate::control::protocol::Request;
use crate::control::Handles;
use crate::delivery::route;
use crate::journal::{CdrSeq, Trigger};

/// CDRs per page.
const PAGE: usize = 512;

/// The request: `{"cmd":"replay","subscription":"crm","since":"…"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    pub subscription: String,
    pub since: String,
}

/// contract §5 `replay --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayResponse {
    pub ok: bool,
    pub subscription: String,
    /// `new_deliveries + resent`.
    pub queued: usize,
    pub new_deliveries: usize,
    pub resent: usize,
    /// CDRs of event types the subscription does not want.
    pub skipped: usize,
    /// CDRs of its event types that its `filter` excludes.
    pub unmatched: usize,
}

impl From<Replay> for Request {
    fn from(c: Replay) -> Request {
        Request::Replay(c)
    }
}

impl Command for Replay {
    type Response = ReplayResponse;

    fn render(v: &ReplayResponse) -> String {
        format!(
            "replaying {} CDR(s) to {}: {} new deliveries, {} sent again ({} of other event types skipped, {} excluded by its filter)\nfollow with `cdrhook attempts --subscription {}`\n",
            v.queued, v.subscription, v.new_deliveries, v.resent, v.skipped, v.unmatched, v.subscription,
        )
    }

    fn succeeded(v: &ReplayResponse) -> bool {
        v.ok
    }
}

#[derive(Default)]
struct Counts {
    new: usize,
    resent: usize,
    skipped: usize,
    unmatched: usize,
}

/// Replays one page of CDRs `from..=to`; returns where the next one starts.
fn replay_page(
    h: &Handles,
    sub: &Subscription,
    from: CdrSeq,
    to: CdrSeq,
    counts: &mut Counts,
) -> Result<Option<CdrSeq>, CmdError> {
    let page = h.journal.cdrs_page(from, to, PAGE)?;
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
        if sub.filter.is_some() {
            // The body is read only for a filtered subscription.
            let passes = match h.journal.cdr_by_seq(meta.seq)? {
                Some(cdr) => route::passes(sub, &cdr.body),
                None => false,
            };
            if !passes {
                counts.unmatched += 1;
                continue;
            }
        }
        let (delivery, new) = h
            .journal
            .ensure_delivery(meta, &sub.name, Trigger::Replay)?;
        if new {
            created.push((delivery.id, None));
        } else {
            h.dispatcher
                .once_later(&sub.name, delivery.id, Trigger::Replay);
            counts.resent += 1;
        }
    }
    // The new deliveries are durable before they are sent.
    h.journal.flush()?;
    counts.new += created.len();
    h.dispatcher.enqueue(&sub.name, created);
    Ok(page.next)
}

impl Replay {
    pub async fn apply(self, h: &Arc<Handles>) -> Result<ReplayResponse, CmdError> {
        let subscription = self.subscription;
        let cfg = h.config();
        let sub = cfg
            .subscriptions
            .iter()
            .find(|s| s.name == subscription)
            .ok_or_else(|| {
                CmdError::Refused(format!(
                    "no subscription named {subscription:?} in the config"
                ))
            })?;
        if !sub.active {
            return Err(CmdError::Refused(format!(
                "subscription {subscription} is inactive"
            )));
        }
        let sub = Arc::new(sub.clone());
        let since_ms = since(Some(&self.since))?.unwrap_or(0);
        let range = lane::heavy(h, move |h| h.journal.cdr_range_since(since_ms)).await??;
        let mut counts = Counts::default();
        if let Some((mut from, to)) = range {
            loop {
                let s = sub.clone();
                let mut c = std::mem::take(&mut counts);
                let (next, c) = lane::heavy(h, move |h| {
                    let next = replay_page(h, &s, from, to, &mut c);
                    (next, c)
                })
                .await?;
                counts = c;
                match next {
                    Ok(Some(n)) => from = n,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(CmdError::Stopped {
                            source: Box::new(e),
                            done: format!(
                                "replay stopped; {} new deliveries and {} resends were queued before it",
                                counts.new, counts.resent
                            ),
                        })
                    }
                }
            }
        }
        let Counts {
            new,
            resent,
            skipped,
            unmatched,
        } = counts;
        log::info!(
            "replay to {subscription}: {new} new deliveries, {resent} resent, {unmatched} excluded by its filter"
        );
        Ok(ReplayResponse {
            ok: true,
            subscription,
            queued: new + resent,
            new_deliveries: new,
            resent,
            skipped,
            unmatched,
        })
    }
}
