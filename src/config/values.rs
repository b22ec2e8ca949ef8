//! The config's values, each a newtype that validates in its visitor so a
//! mistake carries its position: paths, durations, sizes, counts, log
//! levels, subscription names, endpoints, header names and values, event
//! lists.

use super::*;

// ---------------------------------------------------------------------------
// Scalar newtypes: each validates in its visitor so errors carry a position.

pub(super) struct ConfPath(pub(super) PathBuf);
text_newtype!(ConfPath, "a file system path", |s| {
    if s.is_empty() {
        Err("the path is empty".into())
    } else if s.contains('\0') {
        Err("the path contains a NUL character".into())
    } else {
        Ok(ConfPath(PathBuf::from(s)))
    }
});

/// `http.listen`: `unix:PATH` (relative to the config's directory) or an
/// IP address and port; names are not resolved (`localhost` could be
/// either family, or something else in /etc/hosts).
pub(super) struct Listen(pub(super) HttpListen);
text_newtype!(
    Listen,
    "unix:/run/cdrhook/http.sock, 127.0.0.1:9787 or [::1]:9787",
    |s| {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err("unix: needs a path, e.g. unix:/run/cdrhook/http.sock".into());
            }
            if p.contains('\0') {
                return Err("the path contains a NUL character".into());
            }
            let base = with_context(|ctx| ctx.base.clone());
            return Ok(Listen(HttpListen::Unix(resolve(&base, Path::new(p)))));
        }
        s.parse::<std::net::SocketAddr>()
            .map(|a| Listen(HttpListen::Tcp(a)))
            .map_err(|_| {
                format!(
                    "{s:?} is not a listen address: write unix:/run/cdrhook/http.sock, \
                     127.0.0.1:9787 or [::1]:9787 (an IP address and a port, no host name)"
                )
            })
    }
);

pub(super) struct Dur(pub(super) Duration);
text_newtype!(Dur, "a duration such as \"30s\", \"5m\" or \"2h\"", |s| {
    parse_duration(s).map(Dur)
});

/// For settings where zero would stall the daemon or make no sense.
pub(super) struct NonZeroDur(pub(super) Duration);
text_newtype!(
    NonZeroDur,
    "a duration such as \"30s\", \"5m\" or \"2h\"",
    |s| {
        match parse_duration(s)? {
            d if d.is_zero() => Err(format!("{s:?}: must be longer than zero")),
            d => Ok(NonZeroDur(d)),
        }
    }
);

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "{s:?} is not a duration ({e}); \
                 write e.g. \"500ms\", \"30s\", \"5m\", \"2h\" or \"7d\""
        )
    })
}

pub(super) struct Size(pub(super) u64);
text_newtype!(Size, "a size such as \"10MiB\" or a number of bytes", |s| {
    match parse_size(s)? {
        0 => Err(format!("{s:?}: must be larger than zero")),
        n => Ok(Size(n)),
    }
});

/// Sizes are a whole number with an optional unit: `B`, `kB`, `MB`, `GB`, `TB`
/// (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024), in any
/// letter case.
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let hint = "write e.g. \"10MiB\", \"512KiB\", \"100kB\" or a number of bytes";
    if number.is_empty() {
        return Err(format!("{s:?} is not a size; {hint}"));
    }
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(format!("{s:?} has an unknown size unit; {hint}")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub(super) struct Concurrency(pub(super) usize);
text_newtype!(Concurrency, "a whole number of requests", |s| {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(Concurrency(n)),
        Err(_) => Err(format!("{s:?} is not a whole number of requests")),
    }
});

pub(super) struct LogLevel(pub(super) String);
text_newtype!(LogLevel, "a log level", |s| {
    let level = s.trim().to_ascii_lowercase();
    match level.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => Ok(LogLevel(level)),
        _ => Err(format!(
            "{s:?} is not a log level; use error, warn, info, debug or trace"
        )),
    }
});

pub(super) struct SubscriptionName(pub(super) String);
text_newtype!(SubscriptionName, "a subscription name", |s| {
    let valid = s.len() <= MAX_NAME_LEN
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(format!(
            "{s:?} is not a valid subscription name (1 to {MAX_NAME_LEN} letters, digits, \
             '-', '_' or '.', starting with a letter or digit)"
        ));
    }
    if !with_context(|ctx| ctx.names.insert(s.to_owned())) {
        return Err(format!(
            "duplicate subscription name {s:?}; names must be unique"
        ));
    }
    Ok(SubscriptionName(s.to_owned()))
});

pub(super) struct Endpoint {
    pub(super) url: Sensitive,
    /// The variables' values, to scrub from free text on their own.
    pub(super) values: Vec<String>,
}
text_newtype!(Endpoint, "an http or https URL", |s| {
    let expanded = expand_in_context(s)?;
    let used_var = expanded.used_var();
    check_endpoint(&expanded.text).map_err(|problem| {
        // Echo what the operator wrote, not the expansion: a variable in an
        // endpoint may well carry a token.
        let shown = if used_var {
            format!("{s:?} (after expanding variables)")
        } else {
            format!("{s:?}")
        };
        format!("{shown} {problem}")
    })?;
    // The template names the variable, so the operator still recognises
    // the endpoint; the expanded URL is never shown.
    let url = if used_var {
        Sensitive::secret(expanded.text, s)
    } else {
        Sensitive::plain(expanded.text)
    };
    Ok(Endpoint {
        url,
        values: expanded.values,
    })
});

pub(super) fn check_endpoint(url: &str) -> Result<(), &'static str> {
    let not_http = "is not an http or https URL";
    let (scheme, rest) = url.split_once("://").ok_or(not_http)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(not_http);
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or a control character");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "has credentials in it, which would end up in logs; use an Authorization header",
        );
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("has a malformed IPv6 address")?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err("has a malformed IPv6 address");
        }
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(after.strip_prefix(':').ok_or("has a malformed host")?),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
    {
        return Err("has a host with characters that are not allowed \
                    (non-ASCII names must be written in punycode)");
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p != 0 && port.chars().all(|c| c.is_ascii_digit()) => {}
            _ => return Err("has an invalid port"),
        }
    }
    Ok(())
}

pub(super) struct HeaderValue {
    pub(super) value: String,
    /// The variables' values that went into it (none: written literally).
    pub(super) values: Vec<String>,
}
// Values are never echoed in messages: they may be credentials.
text_newtype!(HeaderValue, "a header value", |s| {
    let Expanded {
        text: value,
        values,
    } = expand_in_context(s)?;
    let after = if !values.is_empty() {
        " (after expanding variables)"
    } else {
        ""
    };
    if value.contains(['\r', '\n']) {
        return Err(format!(
            "the header value contains a line break (CR or LF){after}"
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "the header value contains a control character{after}"
        ));
    }
    Ok(HeaderValue { value, values })
});

// ---------------------------------------------------------------------------
// Structured values

/// The `events` list: event type names or `"*"` (a lone string is accepted as
/// a one-element list).
pub(super) struct Events(pub(super) Vec<EventType>);

impl<'de> Deserialize<'de> for Events {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EventsVisitor;

        impl<'de> Visitor<'de> for EventsVisitor {
            type Value = Events;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of event types or [\"*\"]")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Events, E> {
                let one = parse_event_spec(v).map_err(E::custom)?;
                Ok(Events(one))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Events, E> {
                Err(E::custom(NO_EVENTS))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Events, A::Error> {
                let mut events = BTreeSet::new();
                while let Some(EventSpec(types)) = seq.next_element()? {
                    events.extend(types);
                }
                if events.is_empty() {
                    return Err(de::Error::custom(NO_EVENTS));
                }
                Ok(Events(events.into_iter().collect()))
            }
        }

        d.deserialize_any(EventsVisitor)
    }
}

pub(super) const NO_EVENTS: &str = "list at least one event type, or \"*\" for all";

pub(super) struct EventSpec(pub(super) Vec<EventType>);
text_newtype!(EventSpec, "an event type name or \"*\"", |s| {
    parse_event_spec(s).map(EventSpec)
});

pub(super) fn parse_event_spec(s: &str) -> Result<Vec<EventType>, String> {
    if s == "*" {
        return Ok(EventType::ALL.to_vec());
    }
    EventType::parse(s).map(|t| vec![t]).ok_or_else(|| {
        let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        format!(
            "unknown event type {s:?}; expected one of {} or \"*\"",
            known.join(", ")
        )
    })
}

/// The `headers` mapping, kept in file order, with the variables' values
/// that went into each (in the same order).
pub(super) struct Headers {
    pub(super) headers: Vec<Header>,
    pub(super) vars: Vec<Vec<String>>,
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;

        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of header names to values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut headers: Vec<Header> = Vec::new();
                let mut vars = Vec::new();
                while let Some(name) = map.next_key_seed(HeaderNameSeed { seen: &headers })? {
                    let HeaderValue { value, values } = map.next_value()?;
                    let by_name = is_credential_header(&name);
                    let value = if by_name || !values.is_empty() {
                        Sensitive::secret(value, MASK)
                    } else {
                        Sensitive::plain(value)
                    };
                    headers.push(Header { name, value });
                    vars.push(values);
                }
                Ok(Headers { headers, vars })
            }
        }

        d.deserialize_map(HeadersVisitor)
    }
}

/// Validates a header name against the ones already seen, so a duplicate is
/// reported at the position of the second one.
pub(super) struct HeaderNameSeed<'a> {
    pub(super) seen: &'a [Header],
}

impl<'de> DeserializeSeed<'de> for HeaderNameSeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for HeaderNameSeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a header name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if v.is_empty() || !v.chars().all(is_tchar) {
            return Err(E::custom(format!(
                "{v:?} is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)"
            )));
        }
        if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(v)) {
            return Err(E::custom(format!(
                "header {v:?} is set by cdrhook itself and cannot be overridden"
            )));
        }
        if self.seen.iter().any(|h| h.name.eq_ignore_ascii_case(v)) {
            return Err(E::custom(format!(
                "header {v:?} is given twice (header names are case-insensitive)"
            )));
        }
        Ok(v.to_owned())
    }
}
