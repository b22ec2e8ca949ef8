//! Secrets: the one rule for what is a credential and how it is shown.
//!
//! This module owns contract §4's masking rule. What is secret is decided once,
//! when the config is loaded ([`crate::config`] builds a [`Sensitive`] for
//! every endpoint and header value, and a [`Redactor`] per subscription);
//! every place that displays or journals something goes through these types
//! instead of deciding again:
//!
//! - a header's value is a credential when the header's name says so
//!   ([`is_credential_header`]: `Authorization`, `Proxy-Authorization`,
//!   `Cookie`, `Set-Cookie`, and any name containing `key`, `token`,
//!   `secret`, `password`, `auth` or `signature`, in any letter case), or
//!   when it came (even partly) from `${VAR}`; it is shown as `***`;
//! - an endpoint URL that used `${VAR}` is shown as the template the
//!   operator wrote (`https://crm.example.com/hooks/${CRM_PATH}`), which
//!   still says which endpoint it is without the expanded value;
//! - free text that comes back from the network (an error, a redirect's
//!   `Location`, a response header or body that echoes the request) is
//!   scrubbed of every secret value the subscription sends, before it is
//!   journaled or logged;
//! - an OAuth2 `client_secret` (contract §10) is a secret value of its
//!   subscription like a credential header's; an access token, which only
//!   exists at run time, is scrubbed from what comes back for the request
//!   that carried it ([`Redactor::scrub_with`]) and its `Authorization`
//!   header is masked by name.
//!
//! A [`Sensitive`] value only gives up its real text through
//! [`Sensitive::expose`], which is meant for the HTTP request alone; its
//! `Display`, `Debug` and `Serialize` all give the shown form.

use std::borrow::Cow;
use std::fmt;

/// What a masked value is shown as.
pub const MASK: &str = "***";

/// Words that make a header name a credential wherever they appear in it.
const CREDENTIAL_WORDS: [&str; 6] = ["key", "token", "secret", "password", "auth", "signature"];

/// Header names whose values are credentials, matched whole.
const CREDENTIAL_NAMES: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Secret values shorter than this are not scrubbed from free text: they
/// would match ordinary words and numbers, and are no secret worth the name.
pub const MIN_SCRUBBED_LEN: usize = 4;

/// Whether a header's value is a credential by the header's name alone
/// (case-insensitive). Used for request headers from the config, the
/// headers cdrhook sets itself (`webhook-signature`), response headers, and
/// by `show` on what the journal holds.
pub fn is_credential_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    CREDENTIAL_NAMES.contains(&lower.as_str()) || CREDENTIAL_WORDS.iter().any(|w| lower.contains(w))
}

/// A config value that may be a credential: the real text for the wire,
/// and what every display shows instead.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive {
    value: String,
    /// `None`: not secret, shown as is.
    shown: Option<String>,
}

impl Sensitive {
    /// A value that is no secret.
    pub fn plain(value: impl Into<String>) -> Sensitive {
        Sensitive {
            value: value.into(),
            shown: None,
        }
    }

    /// A secret value, shown as `shown`.
    pub fn secret(value: impl Into<String>, shown: impl Into<String>) -> Sensitive {
        Sensitive {
            value: value.into(),
            shown: Some(shown.into()),
        }
    }

    /// The real text. Only for what goes into the HTTP request.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// What an operator sees: the value itself, or its masked form.
    pub fn shown(&self) -> &str {
        self.shown.as_deref().unwrap_or(&self.value)
    }

    pub fn is_secret(&self) -> bool {
        self.shown.is_some()
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.shown(), f)
    }
}

impl serde::Serialize for Sensitive {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.shown())
    }
}

/// Scrubs a subscription's secret values out of free text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    /// (secret text, what replaces it), longest first, so that a whole URL
    /// is replaced by its template before a part of it by `***`.
    needles: Vec<(String, String)>,
}

impl Redactor {
    /// Adds a secret text and its replacement. Texts shorter than
    /// [`MIN_SCRUBBED_LEN`] are ignored.
    pub fn add(&mut self, secret: &str, replacement: &str) {
        if secret.len() < MIN_SCRUBBED_LEN || self.needles.iter().any(|(s, _)| s == secret) {
            return;
        }
        self.needles
            .push((secret.to_owned(), replacement.to_owned()));
        self.needles
            .sort_by_key(|(secret, _)| std::cmp::Reverse(secret.len()));
    }

    /// Adds a secret header value: the whole value, and its last word too
    /// (the token of `Bearer TOKEN`), which a receiver may echo alone.
    pub fn add_header_value(&mut self, value: &str) {
        self.add(value, MASK);
        if let Some((_, last)) = value.trim().rsplit_once(char::is_whitespace) {
            self.add(last, MASK);
        }
    }

    /// `text` with every secret replaced, and `also` (a secret known only
    /// at run time, such as an access token) as [`MASK`], unless it is
    /// shorter than [`MIN_SCRUBBED_LEN`].
    pub fn scrub_with<'a>(&self, text: &'a str, also: Option<&str>) -> Cow<'a, str> {
        let out = self.scrub(text);
        match also {
            Some(secret) if secret.len() >= MIN_SCRUBBED_LEN && out.contains(secret) => {
                Cow::Owned(out.replace(secret, MASK))
            }
            _ => out,
        }
    }

    /// `text` with every secret replaced.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for (secret, replacement) in &self.needles {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), replacement));
            }
        }
        out
    }
}

// Never print what it is there to hide.
impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secret values)", self.needles.len())
    }
}

/// Whether a file mode lets every user read the file (the "other" read
/// bit). Owner and group (`cdrhook`) reading it is what is intended.
pub fn readable_by_all(mode: u32) -> bool {
    mode & 0o004 != 0
}

/// A file's mode and group, as read from the very file opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileAccess {
    pub mode: u32,
    pub gid: u32,
}

impl FileAccess {
    pub fn of(meta: &std::fs::Metadata) -> FileAccess {
        use std::os::unix::fs::MetadataExt as _;
        FileAccess {
            mode: meta.mode(),
            gid: meta.gid(),
        }
    }

    /// Who besides its owner and `trusted_gid` may read the file, as a
    /// phrase and the command that fixes it; `None` when nobody else may.
    /// The way ssh treats a private key with loose permissions.
    pub fn loose(&self, trusted_gid: u32, path: &std::path::Path) -> Option<String> {
        let mode = self.mode & 0o7777;
        let path = path.display();
        if readable_by_all(self.mode) {
            Some(format!(
                "can be read by every user (mode {mode:04o}): run `chmod o-r {path}`"
            ))
        } else if self.mode & 0o040 != 0 && self.gid != trusted_gid {
            Some(format!(
                "can be read by group {}, not only group cdrhook (mode {mode:04o}): run \
                 `chgrp cdrhook {path}` or `chmod g-r {path}`",
                self.gid
            ))
        } else {
            None
        }
    }
}

/// The group allowed to read cdrhook's secrets: `cdrhook` where it exists
/// (what the package creates), else the group this process runs as.
pub fn trusted_gid() -> u32 {
    // SAFETY: getgrnam returns a pointer into static storage or null; the
    // gid is copied out at once, and nothing else here calls getgr*.
    unsafe {
        let group = libc::getgrnam(c"cdrhook".as_ptr());
        if group.is_null() {
            libc::getegid()
        } else {
            (*group).gr_gid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_header_names() {
        for (name, secret) in [
            ("Authorization", true),
            ("authorization", true),
            ("Proxy-Authorization", true),
            ("Cookie", true),
            ("Set-Cookie", true),
            ("X-Api-Key", true),
            ("x-API-KEY", true),
            ("X-Auth-Token", true),
            ("X-Client-Secret", true),
            ("X-Password", true),
            ("X-Hub-Signature-256", true),
            ("webhook-signature", true),
            ("Idempotency-Key", true),
            ("WWW-Authenticate", true),
            ("X-Plain", false),
            ("Content-Type", false),
            ("webhook-id", false),
            ("Keep-Alive", false),
            ("Location", false),
            ("X-Cookie-Consent", false),
        ] {
            assert_eq!(is_credential_header(name), secret, "{name}");
        }
    }

    #[test]
    fn sensitive_shows_its_mask_everywhere_but_expose() {
        let s = Sensitive::secret("https://h/hooks/s3cr3t", "https://h/hooks/${P}");
        assert_eq!(s.expose(), "https://h/hooks/s3cr3t");
        assert_eq!(s.to_string(), "https://h/hooks/${P}");
        assert_eq!(format!("{s:?}"), "\"https://h/hooks/${P}\"");
        assert_eq!(
            serde_json::to_string(&s).ok().as_deref(),
            Some("\"https://h/hooks/${P}\"")
        );
        assert!(s.is_secret());
        let p = Sensitive::plain("hello");
        assert_eq!(
            (p.expose(), p.shown(), p.is_secret()),
            ("hello", "hello", false)
        );
    }

    #[test]
    fn scrub_replaces_longest_first_and_skips_short_values() {
        let mut r = Redactor::default();
        r.add("s3cr3t-path", "${P}");
        r.add("https://h/hooks/s3cr3t-path", "https://h/hooks/${P}");
        r.add_header_value("Bearer tok-123456");
        r.add("abc", MASK);
        for (text, want) in [
            ("Cannot POST /hooks/s3cr3t-path", "Cannot POST /hooks/${P}"),
            (
                "redirect to https://h/hooks/s3cr3t-path/",
                "redirect to https://h/hooks/${P}/",
            ),
            ("auth was Bearer tok-123456", "auth was ***"),
            ("token tok-123456 refused", "token *** refused"),
            ("abc is too short to scrub", "abc is too short to scrub"),
            ("nothing here", "nothing here"),
        ] {
            assert_eq!(r.scrub(text), want, "{text}");
        }
        assert!(!format!("{r:?}").contains("tok-123456"));
    }

    #[test]
    fn a_run_time_secret_is_scrubbed_with_the_subscription_ones() {
        let mut r = Redactor::default();
        // An OAuth2 client secret, added at load like a header value.
        r.add("client-s3cr3t", MASK);
        for (text, token, want) in [
            (
                "echo Bearer eyJ.tok-42 and client-s3cr3t",
                Some("eyJ.tok-42"),
                "echo Bearer *** and ***",
            ),
            ("nothing", Some("eyJ.tok-42"), "nothing"),
            ("tok is short", Some("tok"), "tok is short"),
            ("client-s3cr3t alone", None, "*** alone"),
        ] {
            assert_eq!(r.scrub_with(text, token), want, "{text}");
        }
    }

    #[test]
    fn readers_beyond_the_owner_and_the_trusted_group_are_loose() {
        const TRUSTED: u32 = 990;
        let path = std::path::Path::new("/etc/cdrhook/hook.secret");
        // (mode, file's group, what is said)
        for (mode, gid, said) in [
            (0o100600, 4, None),
            (0o100640, TRUSTED, None),
            (0o100640, 4, Some("can be read by group 4")),
            (0o100660, 4, Some("can be read by group 4")),
            (0o100604, TRUSTED, Some("can be read by every user")),
            (0o100644, TRUSTED, Some("can be read by every user")),
            (0o100620, 4, None),
        ] {
            let got = FileAccess { mode, gid }.loose(TRUSTED, path);
            match said {
                None => assert_eq!(got, None, "{mode:o} gid {gid}"),
                Some(phrase) => {
                    let got = got.unwrap_or_else(|| panic!("{mode:o} gid {gid}: no warning"));
                    assert!(got.starts_with(phrase), "{mode:o} gid {gid}: {got}");
                    assert!(got.contains("/etc/cdrhook/hook.secret"), "{got}");
                }
            }
        }
    }

    #[test]
    fn only_the_other_read_bit_is_loose() {
        for (mode, loose) in [
            (0o100600, false),
            (0o100640, false),
            (0o100660, false),
            (0o100644, true),
            (0o100604, true),
            (0o100666, true),
            (0o100602, false),
        ] {
            assert_eq!(readable_by_all(mode), loose, "{mode:o}");
        }
    }
}
