//! Form and query strings (`application/x-www-form-urlencoded`), cookies,
//! and URL building: pure text handling, no I/O.

/// The pairs of a query string or form body, in order. `+` is a space;
/// a `%` not followed by two hex digits is kept as it is; bytes that are
/// not UTF-8 become U+FFFD (an id or a name with them matches nothing).
pub fn decode(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (unescape(k), unescape(v)),
            None => (unescape(pair), String::new()),
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: Option<&u8>) -> Option<u8> {
    let b = *b?;
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The first value of `key`, if it is there and not blank (an empty field
/// of a filter form means "any").
pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Percent-encodes a query-string value or a path segment (everything but
/// the unreserved characters of RFC 3986).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs (values encoded), without the `?`.
pub fn query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`).
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms_and_queries() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        for (text, want) in [
            ("", vec![]),
            ("a=1&b=2", vec![p("a", "1"), p("b", "2")]),
            ("q=a+b%20c", vec![p("q", "a b c")]),
            ("x=%3Cscript%3E", vec![p("x", "<script>")]),
            ("bad=%zz%4", vec![p("bad", "%zz%4")]),
            ("trail=%", vec![p("trail", "%")]),
            ("flag&&k=", vec![p("flag", ""), p("k", "")]),
            ("u=%C3%A9", vec![p("u", "é")]),
            ("nonutf=%FF", vec![p("nonutf", "\u{FFFD}")]),
            ("eq=a=b", vec![p("eq", "a=b")]),
        ] {
            assert_eq!(decode(text), want, "{text}");
        }
    }

    #[test]
    fn get_skips_blank_values() {
        let pairs = decode("a=&b=+x+&a=2");
        assert_eq!(get(&pairs, "a"), None);
        assert_eq!(get(&pairs, "b"), Some("x"));
        assert_eq!(get(&pairs, "c"), None);
    }

    #[test]
    fn encode_round_trips_through_decode() {
        for s in ["crm", "a b&c=d", "<é>/?#%+", "App.QueueWebhook", ""] {
            let q = query(&[("k", s.to_string())]);
            assert_eq!(decode(&q), vec![("k".to_string(), s.to_string())], "{s}");
        }
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = "cdrhook_session=abc; cdrhook_csrf=n0nce ;other=1";
        assert_eq!(cookie(h, "cdrhook_csrf"), Some("n0nce"));
        assert_eq!(cookie(h, "other"), Some("1"));
        assert_eq!(cookie(h, "csrf"), None);
        assert_eq!(cookie("", "x"), None);
    }
}
