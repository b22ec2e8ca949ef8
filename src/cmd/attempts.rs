//! `cdrhook attempts`: the attempt history, newest first.

use serde_json::Value;

use super::{attempt_json, cell, local_time, result_text, since, table};
use crate::control::protocol::AttemptsQuery;
use crate::journal::AttemptFilter;
use crate::server::Daemon;

pub const DEFAULT_LIMIT: usize = 50;

pub fn apply(d: &Daemon, args: AttemptsQuery) -> Result<Value, String> {
    let filter = AttemptFilter {
        subscription: args.subscription,
        failed: args.failed,
        call_id: args.call_id,
        event_type: args.event_type,
        since_ms: since(args.since.as_deref())?,
        limit: args.limit.unwrap_or(DEFAULT_LIMIT),
    };
    let attempts = d.journal.attempts(&filter).map_err(|e| e.to_string())?;
    Ok(Value::Array(attempts.iter().map(attempt_json).collect()))
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
