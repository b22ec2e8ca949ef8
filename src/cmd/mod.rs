//! One file per control command, each with what the daemon does for it
//! (`apply`, server side) and how the command line shows the result
//! (`render`, client side), so a command is read and changed in one place.

pub mod attempts;
pub mod lane;
pub mod reload;
pub mod replay;
pub mod resend;
pub mod show;
pub mod status;
pub mod test;

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::control::protocol::{self, Request};
use crate::journal::{Attempt, AttemptId, DeliveryId, Journal};
use crate::server::Daemon;
use crate::time::{local, now_ms, parse_since, rfc3339};

/// Runs one request on the daemon and writes its response line to `out`.
/// `attempts` is written as it is read (see `attempts::stream`); every
/// other response is one object. The work runs in `lane`, off the runtime.
pub async fn respond<W: AsyncWrite + Unpin>(
    daemon: &Arc<Daemon>,
    request: Request,
    out: &mut W,
) -> std::io::Result<()> {
    let result = match request {
        Request::Attempts(query) => return attempts::stream(daemon, query, out).await,
        Request::Status {} => lane::light(daemon, status::collect).await,
        Request::Show { id } => lane::light(daemon, move |d| show::apply(d, &id))
            .await
            .and_then(|r| r),
        Request::Resend { ids } => resend::apply(daemon, ids).await,
        Request::ResendFailed {
            subscription,
            since,
        } => resend::apply_failed(daemon, subscription, since).await,
        Request::Replay {
            subscription,
            since,
        } => replay::apply(daemon, subscription, since).await,
        Request::Test { subscription } => test::apply(daemon, subscription).await,
        Request::Reload {} => lane::reload(daemon, reload::apply).await.and_then(|r| r),
    };
    let response = match result {
        Ok(v) => protocol::ok(v),
        Err(e) => protocol::error(e),
    };
    write_line(out, &response).await
}

/// Writes one JSON value and a newline.
pub async fn write_line<W: AsyncWrite + Unpin>(out: &mut W, v: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    out.write_all(&bytes).await
}

/// An id as the operator types it: `a12` (attempt), `d7` (delivery), or a
/// bare number (ids are unique across both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Id {
    Attempt(AttemptId),
    Delivery(DeliveryId),
    Either(u64),
}

pub fn parse_id(text: &str) -> Result<Id, String> {
    let bad = || format!("{text:?} is not an attempt id (a123) or a delivery id (d45)");
    let t = text.trim();
    let (kind, digits) = match t.chars().next() {
        Some('a') | Some('A') => (Some('a'), &t[1..]),
        Some('d') | Some('D') => (Some('d'), &t[1..]),
        _ => (None, t),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    Ok(match kind {
        Some('a') => Id::Attempt(n),
        Some('d') => Id::Delivery(n),
        _ => Id::Either(n),
    })
}

/// Resolves an id to (delivery, the attempt if an attempt was named).
pub fn resolve(
    journal: &Journal,
    text: &str,
) -> Result<(crate::journal::Delivery, Option<Attempt>), String> {
    let id = parse_id(text)?;
    let err = |e: crate::journal::JournalError| e.to_string();
    let attempt = match id {
        Id::Attempt(n) | Id::Either(n) => journal.attempt(n).map_err(err)?,
        Id::Delivery(_) => None,
    };
    let delivery_id = match (id, &attempt) {
        (_, Some(a)) => a.delivery_id,
        (Id::Delivery(n), None) | (Id::Either(n), None) => n,
        (Id::Attempt(_), None) => return Err(format!("no attempt {text} in the journal")),
    };
    let delivery = journal
        .delivery(delivery_id)
        .map_err(err)?
        .ok_or_else(|| format!("no attempt or delivery {text} in the journal"))?;
    Ok((delivery, attempt))
}

/// SPEC §5 `since`: RFC 3339 or a duration back from now.
pub fn since(text: Option<&str>) -> Result<Option<u64>, String> {
    text.map(|t| parse_since(t, now_ms())).transpose()
}

/// The JSON shape of an attempt (SPEC §5 `attempts`).
pub fn attempt_json(a: &Attempt) -> Value {
    json!({
        "id": format!("a{}", a.id),
        "delivery_id": format!("d{}", a.delivery_id),
        "time": rfc3339(a.time_ms),
        "subscription": a.subscription,
        "event_type": a.event_type,
        "call_id": a.call_id,
        "webhook_id": a.webhook_id,
        "attempt": a.attempt,
        "status": a.status,
        "error": a.error,
        "duration_ms": a.duration_ms,
        "trigger": a.trigger.as_str(),
    })
}

/// RFC 3339 (as JSON carries it) to the operator's local time.
pub fn local_time(v: &Value) -> String {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| local(t.timestamp_millis().max(0) as u64))
        .unwrap_or_else(|| "-".to_string())
}

/// A JSON value as a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// "HTTP 200", or the error, for one attempt object.
pub fn result_text(a: &Value) -> String {
    match (
        a.get("status").and_then(Value::as_u64),
        a.get("error").and_then(Value::as_str),
    ) {
        (Some(s), Some(e)) => format!("{s} {e}"),
        (Some(s), None) => s.to_string(),
        (None, Some(e)) => e.to_string(),
        (None, None) => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_with_and_without_prefix() {
        assert_eq!(parse_id("a12"), Ok(Id::Attempt(12)));
        assert_eq!(parse_id("d7"), Ok(Id::Delivery(7)));
        assert_eq!(parse_id("42"), Ok(Id::Either(42)));
        assert!(parse_id("x1").is_err());
        assert!(parse_id("a").is_err());
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
