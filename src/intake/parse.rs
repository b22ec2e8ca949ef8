//! What a CDR is: turning the bytes of one spool file into CDRs, each with
//! its event type, call id and content-derived id, or into the reason the
//! file must be rejected.
//!
//! This module is pure (no I/O) so that the spool, the fuzzer and the tests
//! share exactly one parser.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::config::EventType;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One call detail record, as it will be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdr {
    /// `cdr_` + 32 hex digits of SHA-256 over `body`: the `webhook-id`.
    pub id: String,
    pub event_type: EventType,
    pub call_id: Option<String>,
    /// The object exactly as the phone system wrote it (less any BOM).
    pub body: Vec<u8>,
}

/// Why a file cannot be taken in. The `Display` text goes into the
/// `NAME.json.reason` file and the log, so it is written for an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Empty,
    TooLarge {
        size: u64,
        max: u64,
    },
    NotRegularFile(String),
    NotUtf8 {
        offset: usize,
    },
    InvalidJson {
        line: usize,
        column: usize,
        message: String,
    },
    NotAnObject {
        index: Option<usize>,
        found: &'static str,
    },
    EmptyArray,
    UnknownEventType {
        index: Option<usize>,
        event_type: String,
    },
    Unclassifiable {
        index: Option<usize>,
    },
    TestEventFromSpool {
        index: Option<usize>,
    },
    /// cdrhook may not open the file: the writer left no read access for
    /// cdrhook's group. The spool fills these in from `lstat`, which needs
    /// no access to the file.
    Unreadable {
        /// The operating system's message (`Permission denied`).
        error: String,
        mode: u32,
        owner_uid: u32,
        group_gid: u32,
        /// The user cdrhook runs as.
        reader_uid: u32,
    },
}

impl Rejection {
    /// A short, stable label for the reason (the `reason` of
    /// `cdrhook_files_rejected_total`, contract §9).
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Empty => "empty",
            Rejection::TooLarge { .. } => "too_large",
            Rejection::NotRegularFile(_) => "not_regular_file",
            Rejection::NotUtf8 { .. } => "not_utf8",
            Rejection::InvalidJson { .. } => "invalid_json",
            Rejection::NotAnObject { .. } => "not_an_object",
            Rejection::EmptyArray => "empty_array",
            Rejection::UnknownEventType { .. } => "unknown_event_type",
            Rejection::Unclassifiable { .. } => "unclassifiable",
            Rejection::TestEventFromSpool { .. } => "test_event",
            Rejection::Unreadable { .. } => "unreadable",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |index: &Option<usize>| match index {
            Some(i) => format!("element {i} of the array: "),
            None => String::new(),
        };
        match self {
            Rejection::Empty => write!(f, "the file is empty"),
            Rejection::TooLarge { size, max } => write!(
                f,
                "the file is {size} bytes, over spool.max_file_size ({max} bytes)"
            ),
            Rejection::NotRegularFile(kind) => write!(
                f,
                "not a regular file ({kind}); cdrhook never follows links or reads special files"
            ),
            Rejection::NotUtf8 { offset } => {
                write!(
                    f,
                    "not UTF-8: invalid byte sequence at byte offset {offset}"
                )
            }
            Rejection::InvalidJson {
                line,
                column,
                message,
            } => write!(f, "invalid JSON at line {line}, column {column}: {message}"),
            Rejection::NotAnObject { index, found } => write!(
                f,
                "{}expected a JSON object (one CDR) or an array of objects, found {found}",
                at(index)
            ),
            Rejection::EmptyArray => write!(f, "the file holds an empty array: no CDR"),
            Rejection::UnknownEventType { index, event_type } => write!(
                f,
                "{}unknown EventType {event_type:?} (expected one of App.QueueWebhook, \
                 App.IvrWebhook, App.AgentWebhook, App.RecordingWebhook)",
                at(index)
            ),
            Rejection::Unclassifiable { index } => write!(
                f,
                "{}no EventType property and none of the properties that identify a type \
                 (QueueId/WaitTime/MetServiceLevel, IvrId/IvrInputs, \
                 CallState/InteractionObjectId/WrapupData, RecordingFileName/Transcription)",
                at(index)
            ),
            Rejection::Unreadable {
                error,
                mode,
                owner_uid,
                group_gid,
                reader_uid,
            } => write!(
                f,
                "cdrhook (uid {reader_uid}) may not read this file: {error} (mode {:04o}, \
                 owner uid {owner_uid}, group gid {group_gid}). The phone system's umask (or \
                 the mode it creates files with) left no read access for group cdrhook. \
                 Fix: group cdrhook needs read access to every file in the spool; the \
                 default ACL that cdrhook's tmpfiles entry puts on the spool grants it \
                 whatever the writer's umask (restore it with \
                 `systemd-tmpfiles --create cdrhook.conf`), or let the phone system write \
                 with umask 027. Then give this file group read access (chmod g+r) and \
                 move it back into the spool",
                mode & 0o7777
            ),
            Rejection::TestEventFromSpool { index } => write!(
                f,
                "{}App.TestWebhook never comes from the spool; it is only sent on an \
                 operator's request",
                at(index)
            ),
        }
    }
}

/// The content-derived id of a CDR body.
pub fn cdr_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut id = String::with_capacity(4 + 32);
    id.push_str("cdr_");
    push_hex(&mut id, &digest[..16]);
    id
}

/// Appends `bytes` in lower-case hex, without a temporary per byte (this
/// runs for every CDR).
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// Parses one spool file. `bytes` is the whole file.
pub fn parse_file(bytes: &[u8]) -> Result<Vec<Cdr>, Rejection> {
    let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Rejection::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| Rejection::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let elements: Vec<&RawValue> = serde_json::from_str(text).map_err(json_error)?;
        if elements.is_empty() {
            return Err(Rejection::EmptyArray);
        }
        elements
            .iter()
            .enumerate()
            .map(|(i, raw)| classify(raw.get(), Some(i)))
            .collect()
    } else {
        // One pass validates the whole document (trailing garbage is an
        // error) and finds the few properties we need; the body is the
        // file's exact bytes (contract §4: the same bytes, less any BOM).
        Ok(vec![classify(text, None)?])
    }
}

fn json_error(e: serde_json::Error) -> Rejection {
    Rejection::InvalidJson {
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    }
}

/// serde_json appends " at line L column C"; we report those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn classify(raw: &str, index: Option<usize>) -> Result<Cdr, Rejection> {
    let first = raw.trim_start().chars().next();
    if first != Some('{') {
        // Invalid JSON is reported as such, not as "not an object".
        serde_json::from_str::<IgnoredAny>(raw).map_err(json_error)?;
        let found = match first {
            Some('[') => "an array",
            Some('"') => "a string",
            Some('t') | Some('f') => "a boolean",
            Some('n') => "null",
            _ => "a number",
        };
        return Err(Rejection::NotAnObject { index, found });
    }
    let probe: Probe = serde_json::from_str(raw).map_err(json_error)?;
    let event_type = match probe.event_type {
        Some(name) => match EventType::parse(&name) {
            Some(EventType::Test) => return Err(Rejection::TestEventFromSpool { index }),
            Some(t) => t,
            None => {
                return Err(Rejection::UnknownEventType {
                    index,
                    event_type: name,
                })
            }
        },
        None => probe.inferred.ok_or(Rejection::Unclassifiable { index })?,
    };
    Ok(Cdr {
        id: cdr_id(raw.as_bytes()),
        event_type,
        call_id: probe.call_id,
        body: raw.as_bytes().to_vec(),
    })
}

/// The few top-level properties cdrhook looks at; everything else is skipped
/// without being materialised.
struct Probe {
    event_type: Option<String>,
    call_id: Option<String>,
    inferred: Option<EventType>,
}

/// Distinguishing properties (contract §1), checked in this order. Agent records
/// carry queue-ish names (`AgentName`) but never `QueueId`, so the order only
/// matters for odd hybrids, where the first match wins.
fn distinguishing(key: &str) -> Option<EventType> {
    match key {
        "QueueId" | "WaitTime" | "MetServiceLevel" => Some(EventType::Queue),
        "IvrId" | "IvrInputs" => Some(EventType::Ivr),
        "CallState" | "InteractionObjectId" | "WrapupData" => Some(EventType::Agent),
        "RecordingFileName" | "Transcription" => Some(EventType::Recording),
        _ => None,
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Probe;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Probe, A::Error> {
                let mut probe = Probe {
                    event_type: None,
                    call_id: None,
                    inferred: None,
                };
                let mut best: Option<EventType> = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "EventType" => {
                            let v: StringOrOther = map.next_value()?;
                            probe.event_type = Some(v.0);
                        }
                        "CallId" => {
                            let v: Option<StringOrOther> = map.next_value()?;
                            probe.call_id = v.map(|s| s.0);
                        }
                        other => {
                            if let Some(t) = distinguishing(other) {
                                best = Some(best.map_or(t, |b| b.min(t)));
                            }
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                probe.inferred = best;
                Ok(probe)
            }
        }
        d.deserialize_map(V)
    }
}

/// A property that should be a string; anything else is kept as its JSON
/// text so that the rejection message can quote it.
struct StringOrOther(String);

impl<'de> Deserialize<'de> for StringOrOther {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(StringOrOther(match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Vec<u8> {
        let path = format!("{}/examples/cdr/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).expect("sample CDR")
    }

    fn bad(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/data/bad/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).expect("bad sample")
    }

    #[test]
    fn every_sample_is_classified_as_its_name_says() {
        let cases = [
            ("agent-missed-direct.json", EventType::Agent),
            ("agent-wrapup.json", EventType::Agent),
            ("inferred-agent.json", EventType::Agent),
            ("inferred-ivr.json", EventType::Ivr),
            ("inferred-queue.json", EventType::Queue),
            ("inferred-recording.json", EventType::Recording),
            ("ivr-inputs.json", EventType::Ivr),
            ("queue-abandoned-callback.json", EventType::Queue),
            ("queue-answered.json", EventType::Queue),
            ("recording-transcript.json", EventType::Recording),
        ];
        for (name, want) in cases {
            let cdrs = parse_file(&sample(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(cdrs.len(), 1, "{name}");
            assert_eq!(cdrs[0].event_type, want, "{name}");
            assert!(cdrs[0].call_id.is_some(), "{name} has a CallId");
        }
    }

    #[test]
    fn single_object_body_is_the_file_bytes() {
        let bytes = sample("queue-answered.json");
        let cdrs = parse_file(&bytes).expect("parses");
        assert_eq!(cdrs[0].body, bytes, "sent exactly as written");
        assert_eq!(
            cdrs[0].call_id.as_deref(),
            Some("6f1c2a9e-4b7d-4c1e-9a51-0d3e8b2f7a10")
        );
    }

    #[test]
    fn bom_is_dropped_and_id_is_unchanged() {
        let bytes = sample("agent-wrapup.json");
        let mut with_bom = BOM.to_vec();
        with_bom.extend_from_slice(&bytes);
        let a = parse_file(&bytes).expect("plain");
        let b = parse_file(&with_bom).expect("with BOM");
        assert_eq!(a, b);
        assert!(!b[0].body.starts_with(BOM));
    }

    #[test]
    fn array_gives_each_element_its_exact_bytes() {
        let text = br#"[ {"EventType":"App.QueueWebhook","CallId":"a"} ,
            {"IvrId":"x","CallId":"b"} ]"#;
        let cdrs = parse_file(text).expect("array");
        assert_eq!(cdrs.len(), 2);
        assert_eq!(
            cdrs[0].body,
            br#"{"EventType":"App.QueueWebhook","CallId":"a"}"#
        );
        assert_eq!(cdrs[1].event_type, EventType::Ivr);
        assert_ne!(cdrs[0].id, cdrs[1].id);
    }

    #[test]
    fn id_depends_on_content_only() {
        let a = parse_file(br#"{"QueueId":"q","CallId":"1"}"#).expect("a");
        let b = parse_file(br#"{"QueueId":"q","CallId":"1"}"#).expect("b");
        let c = parse_file(br#"{"QueueId":"q","CallId":"2"}"#).expect("c");
        assert_eq!(a[0].id, b[0].id);
        assert_ne!(a[0].id, c[0].id);
        assert!(a[0].id.starts_with("cdr_") && a[0].id.len() == 36);
    }

    #[test]
    fn every_bad_sample_is_rejected_with_the_right_reason() {
        assert_eq!(parse_file(&bad("empty.json")), Err(Rejection::Empty));
        assert!(matches!(
            parse_file(&bad("binary.json")),
            Err(Rejection::NotUtf8 { .. })
        ));
        assert!(matches!(
            parse_file(&bad("scalar.json")),
            Err(Rejection::NotAnObject {
                found: "a string",
                ..
            })
        ));
        assert!(matches!(
            parse_file(&bad("truncated.json")),
            Err(Rejection::InvalidJson { .. })
        ));
        assert!(matches!(
            parse_file(&bad("unterminated.json")),
            Err(Rejection::InvalidJson { .. })
        ));
        assert_eq!(
            parse_file(&bad("unclassifiable.json")),
            Err(Rejection::Unclassifiable { index: None })
        );
        assert!(matches!(
            parse_file(&bad("unknown-type.json")),
            Err(Rejection::UnknownEventType { .. })
        ));
    }

    #[test]
    fn test_webhook_and_bad_arrays_are_rejected() {
        assert_eq!(
            parse_file(br#"{"EventType":"App.TestWebhook"}"#),
            Err(Rejection::TestEventFromSpool { index: None })
        );
        assert_eq!(parse_file(b"[]"), Err(Rejection::EmptyArray));
        assert!(matches!(
            parse_file(br#"[{"QueueId":1}, 3]"#),
            Err(Rejection::NotAnObject { index: Some(1), .. })
        ));
        assert!(matches!(
            parse_file(br#"{"QueueId":1} trailing"#),
            Err(Rejection::InvalidJson { .. })
        ));
    }

    #[test]
    fn an_unreadable_file_names_the_cause_and_the_fix() {
        let text = Rejection::Unreadable {
            error: "Permission denied (os error 13)".to_string(),
            mode: 0o100600,
            owner_uid: 1000,
            group_gid: 998,
            reader_uid: 998,
        }
        .to_string();
        for needle in [
            "Permission denied",
            "mode 0600",
            "owner uid 1000",
            "group cdrhook needs read access",
            "umask",
            "ACL",
            "move it back into the spool",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from: {text}");
        }
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let err = parse_file(b"{\n  \"QueueId\": 1,\n  oops\n}").expect_err("invalid");
        match err {
            Rejection::InvalidJson { line, .. } => assert_eq!(line, 3),
            other => panic!("unexpected {other:?}"),
        }
    }
}
