//! One file per control command, after tokio's mini-redis: each command is
//! one type that is its own request on the wire (serde, the same type on
//! both sides), has one serde response type, is applied by the daemon with
//! the narrow [`Handles`] it needs (`apply`), and is shown by the command
//! line from its typed response (`render`). A command is read and changed
//! in one place; the `--json` shape (contract §5) is the response type.
//!
//! Commands may use config, journal, delivery, spool and `lane` (where their
//! blocking work runs); they never see the daemon.

pub mod attempts;
pub mod lane;
pub mod reload;
pub mod replay;
pub mod resend;
pub mod show;
pub mod status;
pub mod test;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::protocol::{self, Request};
use super::Handles;
use crate::config::live::ReloadRefused;
use crate::journal::{Attempt, AttemptId, Delivery, DeliveryId, Journal, JournalError};
use crate::time::{local, now_ms, parse_since, rfc3339, BadTime};

/// A control command: its own request (serialized into [`Request`]) and
/// its response type, shared by the daemon and the command line.
pub trait Command: Serialize + Into<Request> {
    /// The `result` of a successful response, as `--json` prints it.
    type Response: Serialize + DeserializeOwned;

    /// The table (or text) the command line prints.
    fn render(response: &Self::Response) -> String;

    /// False when the command ran but a send failed (exit code 1).
    fn succeeded(_response: &Self::Response) -> bool {
        true
    }
}

/// Why a command failed; its text is the `error` of the response.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The request cannot be carried out as asked (an unknown id or
    /// subscription, an inactive one, …).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    BadId(#[from] BadId),
    #[error(transparent)]
    BadTime(#[from] BadTime),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Reload(#[from] ReloadRefused),
    #[error(transparent)]
    Lane(#[from] lane::LaneError),
    #[error("internal: {0}")]
    Encode(#[from] serde_json::Error),
    /// A walk that failed part-way: what it had done before.
    #[error("{source} ({done})")]
    Stopped { source: Box<CmdError>, done: String },
}

/// Runs one request with the daemon's handles and writes its response line
/// to `out`. `attempts` is written as it is read (see `attempts::stream`);
/// every other response is one object. The work runs in `lane`, off the
/// runtime.
pub async fn respond<W: AsyncWrite + Unpin>(
    h: &Arc<Handles>,
    request: Request,
    out: &mut W,
) -> std::io::Result<()> {
    let response = match request {
        Request::Attempts(c) => return c.stream(h, out).await,
        Request::Status(c) => encode(c.apply(h).await),
        Request::Show(c) => encode(c.apply(h).await),
        Request::Resend(c) => encode(c.apply(h).await),
        Request::ResendFailed(c) => encode(c.apply(h).await),
        Request::Replay(c) => encode(c.apply(h).await),
        Request::Test(c) => encode(c.apply(h).await),
        Request::Reload(c) => encode(c.apply(h).await),
    };
    write_line(out, &response).await
}

fn encode<T: Serialize>(result: Result<T, CmdError>) -> serde_json::Value {
    match result {
        Ok(v) => protocol::ok(&v),
        Err(e) => protocol::error(e.to_string()),
    }
}

/// Writes one JSON value and a newline.
pub async fn write_line<W: AsyncWrite + Unpin>(
    out: &mut W,
    v: &serde_json::Value,
) -> std::io::Result<()> {
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

/// An id that is neither form of [`Id`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an attempt id (a123) or a delivery id (d45)")]
pub struct BadId(pub String);

pub fn parse_id(text: &str) -> Result<Id, BadId> {
    let bad = || BadId(text.to_string());
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
pub fn resolve(journal: &Journal, text: &str) -> Result<(Delivery, Option<Attempt>), CmdError> {
    let id = parse_id(text)?;
    let attempt = match id {
        Id::Attempt(n) | Id::Either(n) => journal.attempt(n)?,
        Id::Delivery(_) => None,
    };
    let delivery_id = match (id, &attempt) {
        (_, Some(a)) => a.delivery_id,
        (Id::Delivery(n), None) | (Id::Either(n), None) => n,
        (Id::Attempt(_), None) => {
            return Err(CmdError::Refused(format!(
                "no attempt {text} in the journal"
            )))
        }
    };
    journal
        .delivery(delivery_id)?
        .map(|d| (d, attempt))
        .ok_or_else(|| CmdError::Refused(format!("no attempt or delivery {text} in the journal")))
}

/// contract §5 `since`: RFC 3339 or a duration back from now.
pub fn since(text: Option<&str>) -> Result<Option<u64>, BadTime> {
    text.map(|t| parse_since(t, now_ms())).transpose()
}

/// An attempt as `attempts` lists it and `show` shows it (contract §5). In
/// `show` of a delivery never attempted, the attempt's own fields are null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    pub id: Option<String>,
    pub delivery_id: String,
    pub time: Option<String>,
    pub subscription: String,
    pub event_type: String,
    pub call_id: Option<String>,
    pub webhook_id: String,
    pub attempt: Option<u32>,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: Option<u64>,
    pub trigger: Option<String>,
}

impl AttemptView {
    pub fn of(a: &Attempt) -> AttemptView {
        AttemptView {
            id: Some(format!("a{}", a.id)),
            delivery_id: format!("d{}", a.delivery_id),
            time: Some(rfc3339(a.time_ms)),
            subscription: a.subscription.clone(),
            event_type: a.event_type.clone(),
            call_id: a.call_id.clone(),
            webhook_id: a.webhook_id.clone(),
            attempt: Some(a.attempt),
            status: a.status,
            error: a.error.clone(),
            duration_ms: Some(a.duration_ms),
            trigger: Some(a.trigger.as_str().to_string()),
        }
    }

    /// A delivery that has no attempt yet.
    pub fn unattempted(d: &Delivery) -> AttemptView {
        AttemptView {
            id: None,
            delivery_id: format!("d{}", d.id),
            time: None,
            subscription: d.subscription.clone(),
            event_type: d.event_type.clone(),
            call_id: d.call_id.clone(),
            webhook_id: d.cdr_id.clone(),
            attempt: None,
            status: None,
            error: None,
            duration_ms: None,
            trigger: None,
        }
    }
}

/// RFC 3339 (as JSON carries it) to the operator's local time.
pub fn local_time(t: Option<&str>) -> String {
    t.and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| local(t.timestamp_millis().max(0) as u64))
        .unwrap_or_else(|| "-".to_string())
}

/// An optional value as a table cell.
pub fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
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

/// "HTTP 200", or the error, for one attempt's status and error.
pub fn result_text(status: Option<u16>, error: Option<&str>) -> String {
    match (status, error) {
        (Some(s), Some(e)) => format!("{s} {e}"),
        (Some(s), None) => s.to_string(),
        (None, Some(e)) => e.to_string(),
        (None, None) => "-".to_string(),
    }
}

/// The keys of a JSON object, in order: what the shape tests of the
/// `--json` responses compare with the contract.
#[cfg(test)]
pub(crate) fn object_keys(v: &serde_json::Value) -> Vec<String> {
    v.as_object().expect("object").keys().cloned().collect()
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
        assert_eq!(
            parse_id("x1").map_err(|e| e.to_string()),
            Err("\"x1\" is not an attempt id (a123) or a delivery id (d45)".to_string())
        );
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }

    #[test]
    fn an_attempt_view_has_the_spec_keys() {
        let v = serde_json::to_value(AttemptView {
            id: Some("a1".into()),
            delivery_id: "d1".into(),
            time: None,
            subscription: "crm".into(),
            event_type: "App.QueueWebhook".into(),
            call_id: None,
            webhook_id: "w".into(),
            attempt: Some(1),
            status: Some(200),
            error: None,
            duration_ms: Some(3),
            trigger: Some("auto".into()),
        })
        .expect("encode");
        let keys = super::object_keys(&v);
        assert_eq!(
            keys,
            [
                "attempt",
                "call_id",
                "delivery_id",
                "duration_ms",
                "error",
                "event_type",
                "id",
                "status",
                "subscription",
                "time",
                "trigger",
                "webhook_id"
            ]
        );
    }
}
