//! `cdrhook attempts`: the attempt history, newest first.
//!
//! The answer is written to the socket as the journal is read, one page at
//! a time, so `--limit 0` on a journal of any size holds one page in the
//! daemon. The bytes are those of the one response object
//! `{"ok":true,"result":[…]}` (SPEC §5, §7).

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{attempt_json, cell, lane, local_time, result_text, since, table, write_line};
use crate::control::protocol::{self, AttemptsQuery};
use crate::journal::{AttemptFilter, AttemptId};
use crate::server::Daemon;

pub const DEFAULT_LIMIT: usize = 50;

/// Attempts listed per page, and looked at per page (a filter that matches
/// few still gives the other heavy commands their turn).
const PAGE: usize = 64;
const PAGE_EXAMINED: usize = 2048;

/// One page, already in its JSON form: the bytes that go into the
/// `result` list (with the separating commas), how many attempts they
/// hold, and where the next page starts.
struct Chunk {
    bytes: Vec<u8>,
    count: usize,
    next: Option<AttemptId>,
}

fn chunk(
    d: &Daemon,
    filter: &AttemptFilter,
    before: Option<AttemptId>,
    max: usize,
    first: bool,
) -> Result<Chunk, String> {
    let page = d
        .journal
        .attempts_page(filter, before, max, PAGE_EXAMINED)
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    for (i, a) in page.items.iter().enumerate() {
        if !(first && i == 0) {
            bytes.push(b',');
        }
        serde_json::to_writer(&mut bytes, &attempt_json(a)).map_err(|e| e.to_string())?;
    }
    Ok(Chunk {
        bytes,
        count: page.items.len(),
        next: page.next,
    })
}

/// Writes the response to `attempts` page by page. An error before the
/// first byte is an error response; one after it (the journal failing
/// mid-way) is logged and the connection closed without the line's end,
/// which the command line reports as a cut-off answer.
pub async fn stream<W: AsyncWrite + Unpin>(
    d: &Arc<Daemon>,
    args: AttemptsQuery,
    out: &mut W,
) -> std::io::Result<()> {
    let since_ms = match since(args.since.as_deref()) {
        Ok(ms) => ms,
        Err(e) => return write_line(out, &protocol::error(e)).await,
    };
    let limit = args.limit.unwrap_or(DEFAULT_LIMIT);
    let filter = Arc::new(AttemptFilter {
        subscription: args.subscription,
        failed: args.failed,
        call_id: args.call_id,
        event_type: args.event_type,
        since_ms,
        limit,
    });
    let want = |listed: usize| match limit {
        0 => PAGE,
        n => PAGE.min(n - listed),
    };
    let (mut listed, mut before, mut started) = (0usize, None, false);
    loop {
        let f = filter.clone();
        let max = want(listed);
        let first = listed == 0;
        let page = lane::heavy(d, move |d| chunk(d, &f, before, max, first))
            .await
            .and_then(|r| r);
        let page = match page {
            Ok(page) => page,
            Err(e) if !started => return write_line(out, &protocol::error(e)).await,
            Err(e) => {
                log::error!("attempts: {e}; the answer was cut off");
                return Err(std::io::Error::other(e));
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

pub fn render(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| {
                    vec![
                        cell(&a["id"]),
                        local_time(&a["time"]),
                        cell(&a["subscription"]),
                        cell(&a["event_type"]),
                        cell(&a["call_id"]),
                        cell(&a["attempt"]),
                        result_text(a),
                        format!("{}ms", cell(&a["duration_ms"])),
                        cell(&a["trigger"]),
                        cell(&a["delivery_id"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
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
