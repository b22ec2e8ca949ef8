//! The control protocol: one JSON request per line, one JSON response per
//! line (contract §7). Shared by the daemon and the command line: a request is
//! one of the command types in `cmd/` (tagged by `cmd`), and a response is
//! `{"ok":true,"result":…}` with that command's response type, or
//! `{"ok":false,"error":"…"}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cmd::attempts::Attempts;
use super::cmd::reload::Reload;
use super::cmd::replay::Replay;
use super::cmd::resend::{Resend, ResendFailed};
use super::cmd::show::Show;
use super::cmd::status::Status;
use super::cmd::test::Test;

/// Requests larger than this are refused without being parsed.
pub const MAX_REQUEST: usize = 64 * 1024;

/// One request line. Each command's fields are its own type's, which
/// refuses unknown fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status(Status),
    Attempts(Attempts),
    Show(Show),
    Resend(Resend),
    ResendFailed(ResendFailed),
    Replay(Replay),
    Test(Test),
    Reload(Reload),
}

/// A request line that is not one: its text is the error response's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("request larger than {MAX_REQUEST} bytes refused")]
    TooLarge,
    #[error("bad request: {0}")]
    Bad(String),
}

/// The success line's object, with `result` as its command's response
/// type serializes. Through a `Value`, so keys are in sorted order as in
/// every response since the first version.
pub fn ok<T: Serialize>(result: &T) -> Value {
    match serde_json::to_value(result) {
        Ok(result) => serde_json::json!({ "ok": true, "result": result }),
        Err(e) => error(format!("internal: {e}")),
    }
}

pub fn error(message: impl Into<String>) -> Value {
    serde_json::json!({ "ok": false, "error": message.into() })
}

/// Parses one request line.
pub fn parse(line: &[u8]) -> Result<Request, ParseError> {
    if line.len() > MAX_REQUEST {
        return Err(ParseError::TooLarge);
    }
    serde_json::from_slice(line).map_err(|e| ParseError::Bad(e.to_string()))
}

/// A response line as the command line reads it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r = Request::Attempts(Attempts {
            subscription: Some("crm".into()),
            failed: true,
            call_id: None,
            event_type: None,
            since: Some("2h".into()),
            limit: Some(5),
            before: Some("a9".into()),
        });
        let line = serde_json::to_vec(&r).expect("encode");
        assert_eq!(parse(&line), Ok(r));
        assert_eq!(
            parse(br#"{"cmd":"status"}"#),
            Ok(Request::Status(Status {}))
        );
    }

    /// The bytes on the wire are those contract §7 gives (and every earlier
    /// version sent).
    #[test]
    fn requests_encode_as_the_spec_says() {
        let cases: [(Request, &str); 8] = [
            (Status {}.into(), r#"{"cmd":"status"}"#),
            (Reload {}.into(), r#"{"cmd":"reload"}"#),
            (
                Show { id: "a1".into() }.into(),
                r#"{"cmd":"show","id":"a1"}"#,
            ),
            (
                Resend {
                    ids: vec!["d1".into()],
                }
                .into(),
                r#"{"cmd":"resend","ids":["d1"]}"#,
            ),
            (
                ResendFailed::default().into(),
                r#"{"cmd":"resend_failed","subscription":null,"since":null}"#,
            ),
            (
                Replay {
                    subscription: "crm".into(),
                    since: "2h".into(),
                }
                .into(),
                r#"{"cmd":"replay","subscription":"crm","since":"2h"}"#,
            ),
            (
                Test::default().into(),
                r#"{"cmd":"test","subscription":null}"#,
            ),
            (
                Attempts::default().into(),
                r#"{"cmd":"attempts","subscription":null,"failed":false,"call_id":null,"event_type":null,"since":null,"limit":null}"#,
            ),
        ];
        for (request, wire) in cases {
            assert_eq!(serde_json::to_string(&request).expect("encode"), wire);
            assert_eq!(parse(wire.as_bytes()), Ok(request));
        }
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
            br#"{"cmd":"reload","force":true}"#,
            b"\xff\xfe",
            b"[1,2]",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            parse(&vec![b' '; MAX_REQUEST + 1]),
            Err(ParseError::TooLarge)
        );
    }

    #[test]
    fn responses_are_ok_and_result_or_an_error() {
        assert_eq!(
            ok(&serde_json::json!({"b": 1, "a": 2})).to_string(),
            r#"{"ok":true,"result":{"a":2,"b":1}}"#
        );
        assert_eq!(error("no").to_string(), r#"{"error":"no","ok":false}"#);
    }
}
