//! The control protocol: one JSON request per line, one JSON response per
//! line (SPEC §7). Shared by the daemon and the command line.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Requests larger than this are refused without being parsed.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status {},
    Attempts(AttemptsQuery),
    Show {
        id: String,
    },
    Resend {
        ids: Vec<String>,
    },
    ResendFailed {
        #[serde(default)]
        subscription: Option<String>,
        #[serde(default)]
        since: Option<String>,
    },
    Replay {
        subscription: String,
        since: String,
    },
    Test {
        #[serde(default)]
        subscription: Option<String>,
    },
    Reload {},
}

/// The filters of `attempts`, as the command line sends them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptsQuery {
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
}

/// `{"ok":true,"result":…}` or `{"ok":false,"error":"…"}`. With `--json`
/// the command line prints `result` (or the error object).
pub fn ok(result: Value) -> Value {
    serde_json::json!({ "ok": true, "result": result })
}

pub fn error(message: impl Into<String>) -> Value {
    serde_json::json!({ "ok": false, "error": message.into() })
}

/// Parses one request line; the error is the text of the error response.
pub fn parse(line: &[u8]) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request larger than {MAX_REQUEST} bytes refused"));
    }
    serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r = Request::Attempts(AttemptsQuery {
            subscription: Some("crm".into()),
            failed: true,
            call_id: None,
            event_type: None,
            since: Some("2h".into()),
            limit: Some(5),
        });
        let line = serde_json::to_vec(&r).expect("encode");
        assert_eq!(parse(&line), Ok(r));
        assert_eq!(parse(br#"{"cmd":"status"}"#), Ok(Request::Status {}));
    }

    #[test]
    fn garbage_and_unknowns_are_errors_not_panics() {
        for bad in [
            &b"not json"[..],
            b"{}",
            br#"{"cmd":"nope"}"#,
            br#"{"cmd":"show"}"#,
            br#"{"cmd":"status","extra":1}"#,
            br#"{"cmd":"attempts","failed":true,"bogus":1}"#,
            b"\xff\xfe",
            b"[1,2]",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&vec![b' '; MAX_REQUEST + 1]).is_err());
    }
}
