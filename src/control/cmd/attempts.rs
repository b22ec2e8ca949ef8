//! `cdrhook attempts`: the attempt history, newest first.
//!
//! The answer is written to the socket as the journal is read, one page at
//! a time, so `--limit 0` on a journal of any size holds one page in the
//! daemon. The bytes are those of the one response object
//! `{"ok":true,"result":[…]}` (contract §5, §7).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{cell, lane, local_time, parse_id, result_text, since, table, write_line, Id};
use super::{AttemptView, CmdError, Command};
use crate::control::protocol::{self, Request};
use crate::control::Handles;
use crate::journal::{AttemptFilter, AttemptId};

pub const DEFAULT_LIMIT: usize = 50;

/// Attempts listed per page, and looked at per page (a filter that matches
/// few still gives the other heavy commands their turn).
const PAGE: usize = 64;
const PAGE_EXAMINED: usize = 2048;

/// The request, with the filters as the command line sends them:
/// `{"cmd":"attempts","subscription":"crm","failed":true,"limit":5}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempts {
    #[serde(default)]
    pub subscription: Option<String>,
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub call_id: Option<String>,
    #[serde(default)]
    pub event_type: Option<String>,
    /// RFC 3339, or a duration back from now.
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only attempts older than this one (an attempt id, `a123`): the next
    /// page after a page that ended with it. The Webhooks page's paging;
    /// not sent when unset, so the CLI's requests are as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

impl From<Attempts> for Request {
    fn from(c: Attempts) -> Request {
        Request::Attempts(c)
    }
}

impl Command for Attempts {
    /// contract §5 `attempts --json`: newest first.
    type Response = Vec<AttemptView>;

    fn render(list: &Vec<AttemptView>) -> String {
        render(list)
    }
}

/// One page, already in its JSON form: the bytes that go into the
/// `result` list (with the separating commas), how many attempts they
/// hold, and where the next page starts.
struct Chunk {
    bytes: Vec<u8>,
    count: usize,
    next: Option<AttemptId>,
}

fn chunk(
    h: &Handles,
    filter: &AttemptFilter,
    before: Option<AttemptId>,
    max: usize,
    first: bool,
) -> Result<Chunk, CmdError> {
    let page = h
        .journal
        .attempts_page(filter, before, max, PAGE_EXAMINED)?;
    let mut bytes = Vec::new();
    for (i, a) in page.items.iter().enumerate() {
        if !(first && i == 0) {
            bytes.push(b',');
        }
        // Through a `Value`, so the keys come out in the order every other
        // response has (sorted), as they always have.
        let v = serde_json::to_value(AttemptView::of(a))?;
        serde_json::to_writer(&mut bytes, &v)?;
    }
    Ok(Chunk {
        bytes,
        count: page.items.len(),
        next: page.next,
    })
}

impl Attempts {
    /// Writes the response page by page. An error before the first byte is
    /// an error response; one after it (the journal failing mid-way) is
    /// logged and the connection closed without the line's end, which the
    /// command line reports as a cut-off answer.
    pub async fn stream<W: AsyncWrite + Unpin>(
        self,
        h: &Arc<Handles>,
        out: &mut W,
    ) -> std::io::Result<()> {
        let since_ms = match since(self.since.as_deref()) {
            Ok(ms) => ms,
            Err(e) => return write_line(out, &protocol::error(e.to_string())).await,
        };
        let start = match self.before.as_deref().map(before_id).transpose() {
            Ok(id) => id,
            Err(e) => return write_line(out, &protocol::error(e.to_string())).await,
        };
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        let filter = Arc::new(AttemptFilter {
            subscription: self.subscription,
            failed: self.failed,
            call_id: self.call_id,
            event_type: self.event_type,
            since_ms,
            limit,
        });
        let want = |listed: usize| match limit {
            0 => PAGE,
            n => PAGE.min(n - listed),
        };
        let (mut listed, mut before, mut started) = (0usize, start, false);
        loop {
            let f = filter.clone();
            let max = want(listed);
            let first = listed == 0;
            let page = lane::heavy(h, move |h| chunk(h, &f, before, max, first))
                .await
                .map_err(CmdError::from)
                .and_then(|r| r);
            let page = match page {
                Ok(page) => page,
                Err(e) if !started => {
                    return write_line(out, &protocol::error(e.to_string())).await
                }
                Err(e) => {
                    log::error!("attempts: {e}; the answer was cut off");
                    return Err(std::io::Error::other(e.to_string()));
                }
            };
            if !started {
                out.write_all(br#"{"ok":true,"result":["#).await?;
                started = true;
            }
            out.write_all(&page.bytes).await?;
            listed += page.count;
            match page.next {
                Some(next) if limit == 0 || listed < limit => before = Some(next),
                _ => break,
            }
        }
        out.write_all(b"]}\n").await
    }
}

/// `before`: an attempt id (`a123` or `123`); a delivery id is refused.
fn before_id(text: &str) -> Result<AttemptId, CmdError> {
    match parse_id(text)? {
        Id::Attempt(n) | Id::Either(n) => Ok(n),
        Id::Delivery(_) => Err(CmdError::Refused(format!(
            "before: {text:?} is a delivery id; name an attempt (a123)"
        ))),
    }
}

pub fn render(list: &[AttemptView]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                cell(a.id.as_ref()),
                local_time(a.time.as_deref()),
                a.subscription.clone(),
                a.event_type.clone(),
                cell(a.call_id.as_ref()),
                cell(a.attempt),
                result_text(a.status, a.error.as_deref()),
                format!("{}ms", cell(a.duration_ms)),
                cell(a.trigger.as_ref()),
                a.delivery_id.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no attempts match\n".to_string();
    }
    table(
        &[
            "ATTEMPT",
            "TIME",
            "SUBSCRIPTION",
            "EVENT",
            "CALL ID",
            "#",
            "RESULT",
            "DURATION",
            "TRIGGER",
            "DELIVERY",
        ],
        &rows,
    )
}
