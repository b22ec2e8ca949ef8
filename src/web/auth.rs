//! Who may use the HTTP listener (contract §9). On a Unix socket the
//! socket file's mode (0660) is the gate, as for the control socket. On a
//! TCP listener every path but `/healthz` and the login form needs the
//! bearer token of `http.token_file`, or the session cookie a browser gets
//! from the login form.
//!
//! Pure logic, no I/O but the random session ids: the token comparison
//! (constant time), header and form parsing, and the session store.

use std::time::{Duration, Instant};

use crate::config::Sensitive;

/// The session cookie's name.
pub const COOKIE: &str = "cdrhook_session";

/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at once; logging in past this ends the oldest.
const MAX_SESSIONS: usize = 32;

/// Compares in time that depends only on the lengths, not on where the
/// first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the compiler from short-cutting the fold.
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer TOKEN` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim())
    })
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
pub fn form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k)? == name).then(|| percent_decode(v))?
    })
}

/// Decodes `+` and `%XX` of a form field; `None` for a bad escape or text
/// that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Whether a `Host` header names this machine the way a forward reaches
/// it: `localhost` or a name under `.localhost`, or an IP address (v4, or
/// v6 in brackets), each with or without a port.
///
/// On a listener without a token (the Unix socket, reached with `ssh -L`
/// on the operator's desk) this is what stops DNS rebinding: a web page
/// whose own name the attacker points at 127.0.0.1 would otherwise be
/// same-origin with the forwarded page, read its CDRs and post its forms
/// with a valid CSRF token. Such a page always sends its own DNS name.
pub fn local_host(host: &str) -> bool {
    let host = host.trim();
    let port_ok = |p: &str| {
        p.is_empty()
            || p.strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok())
    };
    if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split_once(']')
            .is_some_and(|(ip, port)| ip.parse::<std::net::Ipv6Addr>().is_ok() && port_ok(port));
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port_ok(&format!(":{port}")) => name,
        Some(_) => return false,
        None => host,
    };
    let name = name.to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || (name.ends_with(".localhost") && name.len() > ".localhost".len())
}

/// Whether `given` is the token.
pub fn token_matches(token: &Sensitive, given: &str) -> bool {
    constant_time_eq(token.expose().as_bytes(), given.as_bytes())
}

/// Browser sessions opened with the login form: random ids, in memory
/// only (a restart logs everyone out), each valid for [`SESSION_TTL`].
#[derive(Default)]
pub struct Sessions {
    open: Vec<(String, Instant)>,
}

impl Sessions {
    /// Opens a session and returns its id (64 hex digits), or `None` when
    /// the system gave no randomness.
    pub fn open(&mut self, now: Instant) -> Option<String> {
        let id = random_id()?;
        self.open
            .retain(|(_, at)| now.duration_since(*at) < SESSION_TTL);
        if self.open.len() >= MAX_SESSIONS {
            self.open.remove(0);
        }
        self.open.push((id.clone(), now));
        Some(id)
    }

    /// Whether `id` is an open session (compared in constant time).
    pub fn valid(&self, id: &str, now: Instant) -> bool {
        let mut found = false;
        for (open, at) in &self.open {
            let fresh = now.duration_since(*at) < SESSION_TTL;
            found |= constant_time_eq(open.as_bytes(), id.as_bytes()) && fresh;
        }
        found
    }

    pub fn close(&mut self, id: &str) {
        self.open
            .retain(|(open, _)| !constant_time_eq(open.as_bytes(), id.as_bytes()));
    }
}

/// 32 bytes from the kernel's random source, as hex.
fn random_id() -> Option<String> {
    let mut buf = [0u8; 32];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return None;
    }
    Some(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        for (a, b, eq) in [
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("abc", "ab", false),
            ("", "", true),
            ("abc", "", false),
        ] {
            assert_eq!(constant_time_eq(a.as_bytes(), b.as_bytes()), eq, "{a} {b}");
        }
        let t = Sensitive::secret("s3cret", "***");
        assert!(token_matches(&t, "s3cret"));
        assert!(!token_matches(&t, "s3cret "));
        assert!(!token_matches(&t, "***"));
    }

    #[test]
    fn headers_and_forms_are_read() {
        for (h, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer   abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
        ] {
            assert_eq!(bearer(h), want, "{h:?}");
        }
        let c = "a=1; cdrhook_session=xyz ; csrf=2";
        assert_eq!(cookie(c, COOKIE), Some("xyz"));
        assert_eq!(cookie(c, "csrf"), Some("2"));
        assert_eq!(cookie(c, "none"), None);
        assert_eq!(
            form_value(b"x=1&token=a%2Bb+c%3D", "token").as_deref(),
            Some("a+b c=")
        );
        assert_eq!(form_value(b"token=", "token").as_deref(), Some(""));
        assert_eq!(form_value(b"token=%zz", "token"), None);
        assert_eq!(form_value(b"other=1", "token"), None);
        assert_eq!(percent_decode("%e2%9c%93"), Some("✓".to_string()));
        assert_eq!(percent_decode("%"), None);
    }

    #[test]
    fn only_local_names_and_addresses_are_local_hosts() {
        for (host, local) in [
            ("localhost", true),
            ("localhost:8080", true),
            ("LocalHost:8080", true),
            ("app.localhost:8080", true),
            ("127.0.0.1:8080", true),
            ("10.1.2.3", true),
            ("[::1]:8080", true),
            ("[::1]", true),
            ("evil.example.com:8080", false),
            ("evil.example.com", false),
            ("localhost.evil.example.com", false),
            ("evillocalhost", false),
            (".localhost", false),
            ("localhost:", false),
            ("localhost:99999", false),
            ("localhost:80:80", false),
            ("[::1]x", false),
            ("[evil]:80", false),
            ("127.0.0.1.nip.io", false),
            ("", false),
        ] {
            assert_eq!(local_host(host), local, "{host:?}");
        }
    }

    #[test]
    fn sessions_open_expire_and_close() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        let a = s.open(t0).expect("random");
        assert_eq!(a.len(), 64);
        assert!(s.valid(&a, t0));
        assert!(!s.valid("nope", t0));
        assert!(!s.valid(&a, t0 + SESSION_TTL));
        let b = s.open(t0).expect("random");
        assert_ne!(a, b);
        s.close(&a);
        assert!(!s.valid(&a, t0));
        assert!(s.valid(&b, t0));
        // Bounded: the oldest goes.
        for _ in 0..MAX_SESSIONS {
            s.open(t0);
        }
        assert!(!s.valid(&b, t0));
        assert_eq!(s.open.len(), MAX_SESSIONS);
    }
}
