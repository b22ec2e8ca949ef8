//! Fuzzes the spool file parser, `cdrhook::cdr::parse_file`.
//!
//! Invariants checked on every input:
//! - it never panics (libFuzzer reports any panic as a crash);
//! - on `Ok`, the vector is non-empty, every id is `cdr_` + 32 lowercase hex
//!   digits (36 chars) and is the SHA-256-derived id of the body, and every
//!   body is the text of one JSON object;
//! - when the input (less a leading BOM) is a single object rather than an
//!   array, there is exactly one CDR and its body is the input less the BOM,
//!   byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;

const BOM: &[u8] = b"\xEF\xBB\xBF";

fuzz_target!(|data: &[u8]| {
    let Ok(cdrs) = cdrhook::cdr::parse_file(data) else {
        return;
    };
    assert!(!cdrs.is_empty(), "Ok with no CDR");
    for cdr in &cdrs {
        assert!(
            cdr.id.starts_with("cdr_") && cdr.id.len() == 36,
            "bad id {:?}",
            cdr.id
        );
        assert!(
            cdr.id[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "id not lowercase hex: {:?}",
            cdr.id
        );
        assert_eq!(
            cdr.id,
            cdrhook::cdr::cdr_id(&cdr.body),
            "id not derived from body"
        );
        assert!(
            is_json_object_text(&cdr.body),
            "body is not the text of a JSON object: {:?}",
            String::from_utf8_lossy(&cdr.body)
        );
    }

    let unbommed = data.strip_prefix(BOM).unwrap_or(data);
    // The parser decides "array or object" on the first non-whitespace char;
    // on Ok the input is valid UTF-8, so this decoding cannot fail.
    let text = std::str::from_utf8(unbommed).expect("Ok on non-UTF-8 input");
    if !text.trim_start().starts_with('[') {
        assert_eq!(cdrs.len(), 1, "single object gave {} CDRs", cdrs.len());
        assert_eq!(cdrs[0].body, unbommed, "body is not the input less the BOM");
    }
});

/// Whether `body` is the text of one JSON object (RFC 8259 grammar).
///
/// serde_json::Value is stricter than RFC 8259 in ways parse_file rightly
/// does not check for properties it does not read (it keeps the body as
/// written): numbers beyond f64 (`1E400`), lone UTF-16 surrogate escapes
/// (`"\ud88b"`) and nesting deeper than 128. The RFC's grammar allows all
/// three; JavaScript and Python receivers read them. Such bodies are checked
/// by grammar alone, through IgnoredAny, which skips values without
/// converting them.
fn is_json_object_text(body: &[u8]) -> bool {
    const BEYOND_VALUE: [&str; 5] = [
        "number out of range",
        "lone leading surrogate in hex escape",
        "unexpected end of hex escape",
        "invalid unicode code point",
        "recursion limit exceeded",
    ];
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => value.is_object(),
        Err(e) if BEYOND_VALUE.iter().any(|m| e.to_string().starts_with(m)) => {
            serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
                && body.trim_ascii_start().first() == Some(&b'{')
        }
        Err(_) => false,
    }
}
