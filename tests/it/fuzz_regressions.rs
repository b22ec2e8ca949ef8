//! Inputs found by the fuzz targets in fuzz/ (see fuzz/README.md), kept so
//! that what they showed stays true.

use cdrhook::cdr::parse_file;
use cdrhook::config::EventType;
use cdrhook::control::protocol;

/// fuzz/artifacts/spool_file/crash-5d1834bb8d45e0e30cf94d37511e9a44bf4bc3d4
/// (target spool_file): a number too large for an f64. RFC 8259 allows it, and
/// parse_file accepts it without converting it; the body must still be the
/// file's exact bytes. The "crash" was the fuzz target's own check, which
/// used serde_json::Value (that refuses such numbers); parse_file was right.
#[test]
fn number_beyond_f64_is_kept_verbatim() {
    let input: &[u8] =
        b"{\"IvrInputs\":428882888E888888888888,\"CallIi\":{\t\t\t\t\"dAAAAA$$$$$$$\":0}}";
    let cdrs = parse_file(input).expect("valid JSON, classified by IvrInputs");
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].event_type, EventType::Ivr);
    assert_eq!(cdrs[0].call_id, None);
    assert_eq!(cdrs[0].body, input);
    assert!(cdrs[0].id.starts_with("cdr_") && cdrs[0].id.len() == 36);

    let array = br#"[{"QueueId":-1e99999,"CallId":"a"}]"#;
    let cdrs = parse_file(array).expect("array element with a huge number");
    assert_eq!(cdrs[0].body, br#"{"QueueId":-1e99999,"CallId":"a"}"#);
}

/// fuzz/artifacts/spool_file/crash-1d2965b702826e770bcb56cc267855695053bb90
/// (target spool_file): a lone UTF-16 surrogate escape in a property that
/// parse_file does not read. RFC 8259's grammar allows it; the body is kept as
/// written. (In EventType or CallId, which are decoded, it is a rejection.)
#[test]
fn lone_surrogate_in_an_unread_property_is_kept_verbatim() {
    let input = br#"[ {"EventType": "App.IvrWebhook", "Other":"{[\ud88b"} ]"#;
    let cdrs = parse_file(input).expect("valid JSON by the RFC's grammar");
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].event_type, EventType::Ivr);
    assert_eq!(
        cdrs[0].body,
        br#"{"EventType": "App.IvrWebhook", "Other":"{[\ud88b"}"#
    );

    let in_call_id = br#"{"QueueId":"q","CallId":"\udc00"}"#;
    assert!(matches!(
        parse_file(in_call_id),
        Err(cdrhook::cdr::Rejection::InvalidJson { .. })
    ));
}

/// Nesting deeper than serde_json::Value's 128 levels, in a property that
/// parse_file skips: accepted and kept as written, without a stack overflow.
#[test]
fn deep_nesting_in_an_unread_property_is_kept_verbatim() {
    let depth = 10_000;
    let input = format!(
        r#"{{"IvrId":"i","Deep":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let cdrs = parse_file(input.as_bytes()).expect("deep but valid");
    assert_eq!(cdrs[0].event_type, EventType::Ivr);
    assert_eq!(cdrs[0].body, input.as_bytes());
}

/// The same kind of number where the control protocol wants an integer is an
/// error response, not a panic.
#[test]
fn control_request_with_huge_number_is_an_error() {
    assert!(protocol::parse(br#"{"cmd":"attempts","limit":1E400}"#).is_err());
    assert!(protocol::parse(br#"{"cmd":"attempts","limit":18446744073709551616}"#).is_err());
}
