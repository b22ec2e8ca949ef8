//! The configuration file: parsing and validating the YAML config, filling in
//! defaults, expanding `${VAR}` references and loading subscription secrets;
//! and the live config the running daemon reads.
//!
//! Config is the first stage: it uses only `redact`, `time` and `metrics`, never the
//! stages after it. Its parts, by job:
//!
//! - this file: the public types ([`Config`], [`Subscription`], …), the
//!   refusal ([`ConfigError`]) and the entry points (`load`, `read`,
//!   `from_source`, `parse`);
//! - `raw`: the file's shape as serde reads it, and `finish` (defaults,
//!   relative paths);
//! - `values`: durations, sizes, endpoints, header names and values, event
//!   lists, each validated where its position is known;
//! - `expand`: `${VAR}`;
//! - `secrets`: `secret`, `secret_file`, and loose-permission warnings;
//! - `filter`: `subscriptions[].filter` (contract §10.3), its match rule
//!   and the warning for a property no event type has;
//! - `auth`: a subscription's `auth` (OAuth2) and `tls` (client
//!   certificate) keys, contract §10;
//! - `validate`: line/column errors, path resolution, and the
//!   deserialization context;
//! - `live`: the live snapshot and the one reload path (with the file
//!   watcher).
//!
//! This module owns contract §2. A file is either accepted as a whole or
//! refused as a whole with a [`ConfigError`] that names the file, the line and
//! the column (1-based) of the offending node, so the daemon can keep the last
//! good config in force and `cdrhook check-config` can point at the mistake.
//!
//! Rules worth knowing when reading the code:
//!
//! - Validation happens inside `Deserialize` impls of small private newtypes
//!   (endpoint, header name, duration, size, ...). serde_yaml attaches the
//!   position of the node being deserialized to any error raised there, which
//!   is the only way to get positions for semantic errors.
//! - `${VAR}` is expanded in `subscriptions[].endpoint`, header values,
//!   `secret`, `secret_file`, and the values of `auth` and `tls`. `$$`
//!   stands for a literal `$` (so `$${X}` is the literal text `${X}`), and a
//!   `$` not followed by `{` is kept as is. An unset variable refuses the
//!   file.
//! - What is a secret is decided here, once, by the rule in
//!   [`crate::redact`]: a header value that used a variable, or whose header
//!   name says credential, is a [`Sensitive`] shown as `***`; an endpoint
//!   that used a variable is shown as the template written in the file. Each
//!   subscription gets a [`Redactor`] for what the network sends back.
//! - Loose file permissions are warnings, not refusals ([`Config::warnings`]):
//!   a `secret_file`, or a config file holding a secret written literally,
//!   that every user may read (like ssh with a loose private key).
//! - Relative paths (`spool.dir`, `spool.archive_dir`, `spool.rejected_dir`,
//!   `journal.path`, `control.socket`, `delivery.ca_file`, `secret_file`,
//!   `auth.client_secret_file` and `tls.*`)
//!   are resolved against the directory holding the config file, so a
//!   quick-start config with relative paths works whatever the daemon's cwd.
//! - A secret is `whsec_` (optional) followed by standard base64; the decoded
//!   bytes are the HMAC key. Secrets never appear in `Debug` output or in
//!   error messages.
//! - Beyond the refusals contract §2 lists, a few more mistakes are caught
//!   here rather than failing on every delivery later: credentials in an
//!   endpoint URL (they would be logged), headers cdrhook sets itself
//!   (`webhook-*`, `Content-Type`, ...), a header given twice, an empty
//!   `events` list, subscription names outside `[A-Za-z0-9._-]`, and an
//!   archive or rejected directory equal to the spool directory.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::redact::{is_credential_header, trusted_gid, FileAccess, MASK};
pub use crate::redact::{Redactor, Sensitive};

mod auth;
mod expand;
mod filter;
#[cfg(test)]
mod http_tests;
pub mod live;
mod raw;
mod secrets;
mod validate;
mod values;

use auth::{AuthEntry, TlsEntry};
pub use auth::{ClientTls, OAuth2};
use expand::*;
pub use filter::{Filter, FilterValue, PropertyFilter, EVENT_PROPERTIES};
use raw::*;
use secrets::*;
use validate::*;
use values::*;

/// Where the daemon looks for its config unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/cdrhook/config.yaml";

const DEFAULT_SPOOL_DIR: &str = "/var/spool/cdrhook";
const DEFAULT_MAX_FILE_SIZE: u64 = 10 * 1024 * 1024;
const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_JOURNAL_PATH: &str = "/var/lib/cdrhook/journal";
const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
const DEFAULT_CONTROL_SOCKET: &str = "/run/cdrhook/control.sock";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONCURRENCY: usize = 4;
const DEFAULT_RETRY_SCHEDULE_SECS: [u64; 7] = [5, 300, 1800, 7200, 18000, 36000, 36000];

/// Subscription names end up in journal keys, CLI arguments and log lines, so
/// they are kept to a conservative character set and length.
const MAX_NAME_LEN: usize = 64;

/// Headers cdrhook sets itself. Letting a subscription override them would
/// break the signature scheme or the HTTP framing.
const RESERVED_HEADERS: [&str; 10] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-webhook-event",
    "x-webhook-attempt",
    "user-agent",
    "content-type",
    "content-length",
    "transfer-encoding",
    "host",
];

/// Accepts secrets with or without `=` padding: both forms circulate and the
/// decoded key is the same.
const SECRET_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

pub use crate::model::EventType;

/// The daemon's whole configuration, validated and with defaults filled in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub spool: SpoolConfig,
    pub journal: JournalConfig,
    pub control: ControlConfig,
    pub delivery: DeliveryConfig,
    /// The optional HTTP listener (contract §9); `None`: off.
    pub http: Option<HttpConfig>,
    /// One of `error`, `warn`, `info`, `debug`, `trace` (lowercased).
    pub log_level: Option<String>,
    pub subscriptions: Vec<Subscription>,
    /// Problems that do not refuse the file but an operator must see
    /// (loose permissions on a file holding a secret): logged at load, shown
    /// by `check-config` and `status`.
    pub warnings: Vec<String>,
    /// Where the file itself holds a secret written literally (e.g.
    /// `subscriptions[crm].secret`), for the permissions warning.
    pub secrets_in_file: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub after_ingest: AfterIngest,
    pub archive_dir: PathBuf,
    pub rejected_dir: PathBuf,
    pub max_file_size: u64,
    pub rescan_interval: Duration,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        let dir = PathBuf::from(DEFAULT_SPOOL_DIR);
        SpoolConfig {
            archive_dir: dir.join("archive"),
            rejected_dir: dir.join("rejected"),
            dir,
            after_ingest: AfterIngest::Delete,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            rescan_interval: DEFAULT_RESCAN_INTERVAL,
        }
    }
}

/// What happens to a spool file once its CDRs are journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterIngest {
    Delete,
    Archive,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JournalConfig {
    pub path: PathBuf,
    pub retention: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: PathBuf::from(DEFAULT_JOURNAL_PATH),
            retention: DEFAULT_RETENTION,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
        }
    }
}

/// The HTTP listener's settings (contract §9). Both need a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: HttpListen,
    pub token_file: Option<PathBuf>,
    /// The bearer token: `token_file`'s content, trimmed, read at load;
    /// shown as `***`. Required for a TCP listener.
    pub token: Option<Sensitive>,
}

/// Where the HTTP listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpListen {
    /// `unix:/run/cdrhook/http.sock`: a socket file, mode 0660.
    Unix(PathBuf),
    /// `127.0.0.1:9787` or `[::1]:9787`: needs the token.
    Tcp(std::net::SocketAddr),
}

impl fmt::Display for HttpListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpListen::Unix(p) => write!(f, "unix:{}", p.display()),
            HttpListen::Tcp(a) => write!(f, "{a}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    pub timeout: Duration,
    pub concurrency: usize,
    /// Waits between attempts. An empty schedule is allowed and means "no
    /// retries": the first failed attempt makes the delivery dead.
    pub retry_schedule: Vec<Duration>,
    pub ca_file: Option<PathBuf>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            retry_schedule: DEFAULT_RETRY_SCHEDULE_SECS
                .iter()
                .map(|&s| Duration::from_secs(s))
                .collect(),
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// Unique within the file; the subscription's identity across reloads.
    pub name: String,
    /// An http or https URL, after `${VAR}` expansion; shown as written in
    /// the file when a variable went into it.
    pub endpoint: Sensitive,
    pub active: bool,
    /// Sorted and without duplicates; `"*"` expands to [`EventType::ALL`].
    pub events: Vec<EventType>,
    /// In file order.
    pub headers: Vec<Header>,
    pub secret: Option<Secret>,
    /// Scrubs this subscription's secret values (expanded endpoint,
    /// credential header values) from what comes back from the network.
    pub redactor: Redactor,
    /// Only CDRs that match get a delivery (contract §10, `filter`).
    pub filter: Option<Filter>,
    /// `auth` (contract §10): an OAuth2 token sent as `Authorization: Bearer`.
    pub auth: Option<Arc<OAuth2>>,
    /// `tls` (contract §10): the client certificate presented to the endpoint.
    pub tls: Option<ClientTls>,
}

impl Subscription {
    /// Whether the subscription lists this event type (regardless of `active`).
    pub fn wants(&self, t: EventType) -> bool {
        self.events.contains(&t)
    }
}

/// An additional request header of a subscription. `Debug` shows a secret
/// value as `***` (see [`Sensitive`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub name: String,
    /// Secret when it came (even partly) from `${VAR}` or the header's name
    /// says credential ([`crate::redact::is_credential_header`]). Such values
    /// are never logged or journaled.
    pub value: Sensitive,
}

impl Header {
    pub fn sensitive(&self) -> bool {
        self.value.is_secret()
    }
}

/// A subscription's signing key (the base64-decoded part after `whsec_`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl Secret {
    /// The raw HMAC key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// For the few problems that have no position, such as an empty file.
    #[error("{path}: {message}")]
    Unpositioned { path: PathBuf, message: String },
}

/// Reads and validates the config file at `path`, taking `${VAR}` values from
/// the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    from_source(&read(path)?, path, &env_var)
}

/// A variable that is not valid Unicode cannot go into a header or URL, so
/// it counts as unset.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The config file's bytes and mode, from one open: what is validated is
/// what is applied, and the mode is that of the file read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub text: String,
    /// Mode and group of the file read, when they could be had.
    pub access: Option<FileAccess>,
}

/// Reads the config file once.
pub fn read(path: &Path) -> Result<Source, ConfigError> {
    use std::io::Read as _;
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let access = file.metadata().ok().map(|m| FileAccess::of(&m));
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    Ok(Source { text, access })
}

/// Validates text read by [`read`], adding the warning for a config file that
/// holds a secret and that every user may read.
pub fn from_source(
    source: &Source,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut config = parse(&source.text, path, env)?;
    if let Some(w) = config_file_warning(path, source.access, &config.secrets_in_file) {
        config.warnings.insert(0, w);
    }
    Ok(config)
}

/// Validates config text. `path` is only used in messages and to resolve
/// relative paths; `env` supplies `${VAR}` values.
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    // A first, untyped pass finds every variable the file could reference, so
    // the typed pass can expand them from an owned table rather than needing
    // to borrow `env` from inside serde.
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| yaml_error(path, &e))?;
    if doc.is_null() {
        // An editor that truncates before writing produces this on reload;
        // refusing keeps the running subscriptions instead of dropping them.
        return Err(ConfigError::Unpositioned {
            path: path.to_path_buf(),
            message: "the file is empty; a valid config needs at least `subscriptions:`".into(),
        });
    }
    let mut names = BTreeSet::new();
    collect_var_names(&doc, &mut names);
    let vars = names
        .into_iter()
        .map(|name| {
            let value = env(&name);
            (name, value)
        })
        .collect();

    let base = base_dir(path);
    let (raw, warnings, secrets_in_file) = {
        let _guard = ContextGuard::install(Context {
            vars,
            base: base.clone(),
            ..Context::default()
        });
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| yaml_error(path, &e))?;
        let (warnings, secrets) = with_context(|ctx| {
            (
                std::mem::take(&mut ctx.warnings),
                std::mem::take(&mut ctx.secrets_in_file),
            )
        });
        (raw, warnings, secrets)
    };
    let mut config = raw
        .finish(&base)
        .map_err(|message| ConfigError::Unpositioned {
            path: path.to_path_buf(),
            message,
        })?;
    config.warnings = warnings;
    config
        .warnings
        .extend(filter::warnings(text, path, &config.subscriptions));
    config.secrets_in_file = secrets_in_file;
    Ok(config)
}

impl Config {
    /// Names of settings that changed between `self` (running) and `new` but
    /// only take effect after a restart.
    pub fn restart_required(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.spool.dir != new.spool.dir {
            changed.push("spool.dir");
        }
        if self.journal.path != new.journal.path {
            changed.push("journal.path");
        }
        if self.control.socket != new.control.socket {
            changed.push("control.socket");
        }
        let listen = |c: &Config| c.http.as_ref().map(|h| h.listen.clone());
        let token = |c: &Config| {
            c.http
                .as_ref()
                .map(|h| (h.token_file.clone(), h.token.clone()))
                .unwrap_or_default()
        };
        if listen(self) != listen(new) {
            changed.push("http.listen");
        }
        if token(self) != token(new) {
            changed.push("http.token_file");
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    const CONFIG_PATH: &str = "/etc/cdrhook/config.yaml";

    /// The 24 bytes behind `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`.
    const SECRET_KEY: [u8; 24] = [
        0x31, 0xf2, 0x90, 0xf6, 0xbf, 0x06, 0x29, 0x8a, 0xab, 0x4f, 0x08, 0xd4, 0x3c, 0x3f, 0x08,
        0x2c, 0xf6, 0x48, 0xa3, 0x62, 0xda, 0x2d, 0xa4, 0xb0,
    ];

    fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        parse(text, Path::new(CONFIG_PATH), &env)
    }

    fn ok(text: &str) -> Config {
        match parse_env(text, &[]) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got: {e}"),
        }
    }

    /// Asserts the text is refused at `line` (and `column` when given), and
    /// returns the message.
    fn refused_env(
        text: &str,
        vars: &[(&str, &str)],
        line: usize,
        column: Option<usize>,
    ) -> String {
        match parse_env(text, vars) {
            Err(ConfigError::Invalid {
                path,
                line: l,
                column: c,
                message,
            }) => {
                assert_eq!(path, Path::new(CONFIG_PATH));
                assert_eq!(l, line, "wrong line for: {message}");
                if let Some(column) = column {
                    assert_eq!(c, column, "wrong column for: {message}");
                }
                let suffix = format!(" at line {l} column {c}");
                assert!(
                    !message.contains(&suffix),
                    "position left in message: {message}"
                );
                message
            }
            other => panic!("expected a positioned refusal, got {other:?}"),
        }
    }

    fn refused(text: &str, line: usize, column: Option<usize>) -> String {
        refused_env(text, &[], line, column)
    }

    fn assert_contains(message: &str, needle: &str) {
        assert!(
            message.contains(needle),
            "{message:?} does not contain {needle:?}"
        );
    }

    const SUB: &str = "subscriptions:\n  - name: crm\n    endpoint: https://crm.example.com/hook\n    events: [\"*\"]\n";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    // --- accepted files -----------------------------------------------------

    #[test]
    fn only_subscriptions_key_is_valid_in_every_empty_form() {
        for text in [
            "subscriptions:\n",
            "subscriptions: []\n",
            "subscriptions: ~\n",
            "subscriptions: null\n",
        ] {
            let config = ok(text);
            assert!(config.subscriptions.is_empty(), "{text}");
            assert_eq!(config, Config::default(), "{text}");
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = ok(SUB);
        assert_eq!(c.spool.dir, Path::new("/var/spool/cdrhook"));
        assert_eq!(c.spool.after_ingest, AfterIngest::Delete);
        assert_eq!(c.spool.archive_dir, Path::new("/var/spool/cdrhook/archive"));
        assert_eq!(
            c.spool.rejected_dir,
            Path::new("/var/spool/cdrhook/rejected")
        );
        assert_eq!(c.spool.max_file_size, 10 * 1024 * 1024);
        assert_eq!(c.spool.rescan_interval, secs(30));
        assert_eq!(c.journal.path, Path::new("/var/lib/cdrhook/journal"));
        assert_eq!(c.journal.retention, secs(30 * 86400));
        assert_eq!(c.control.socket, Path::new("/run/cdrhook/control.sock"));
        assert_eq!(c.delivery.timeout, secs(10));
        assert_eq!(c.delivery.concurrency, 4);
        assert_eq!(
            c.delivery.retry_schedule,
            [5, 300, 1800, 7200, 18000, 36000, 36000].map(secs)
        );
        assert_eq!(c.delivery.ca_file, None);
        assert_eq!(c.log_level, None);
        let s = &c.subscriptions[0];
        assert!(s.active);
        assert!(s.headers.is_empty());
        assert_eq!(s.secret, None);
    }

    #[test]
    fn archive_and_rejected_dirs_follow_spool_dir() {
        let c = ok("spool:\n  dir: /srv/spool\nsubscriptions:\n");
        assert_eq!(c.spool.archive_dir, Path::new("/srv/spool/archive"));
        assert_eq!(c.spool.rejected_dir, Path::new("/srv/spool/rejected"));
        let c = ok("spool:\n  dir: /srv/spool\n  archive_dir: /srv/old\nsubscriptions:\n");
        assert_eq!(c.spool.archive_dir, Path::new("/srv/old"));
        assert_eq!(c.spool.rejected_dir, Path::new("/srv/spool/rejected"));
    }

    const SPEC_EXAMPLE: &str = r#"spool:
  dir: /var/spool/cdrhook          # where the phone system drops *.json
  after_ingest: delete             # delete | archive
  archive_dir: /var/spool/cdrhook/archive
  rejected_dir: /var/spool/cdrhook/rejected
  max_file_size: 10MiB
  rescan_interval: 30s             # safety net beside the file watcher
journal:
  path: /var/lib/cdrhook/journal   # sled database directory
  retention: 30d                   # finished deliveries older than this are pruned
control:
  socket: /run/cdrhook/control.sock
delivery:
  timeout: 10s                     # whole request, connect to last byte
  concurrency: 4                   # requests in flight per subscription
  retry_schedule: [5s, 5m, 30m, 2h, 5h, 10h, 10h]   # waits between attempts
  ca_file: /etc/cdrhook/ca.pem     # optional extra trusted CAs
subscriptions:
  - name: crm                      # unique; the subscription's identity
    endpoint: https://crm.example.com/hooks/cdr     # http or https only
    active: true                   # false: nothing is sent or queued for it
    events: [App.QueueWebhook, App.AgentWebhook, App.TestWebhook]   # or ["*"]
    headers:                       # additional headers, optional
      Authorization: "Bearer ${CRM_TOKEN}"          # ${VAR} is read from the environment
    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"            # optional: sign requests (section 4)
"#;

    #[test]
    fn full_spec_example() {
        let c = match parse_env(SPEC_EXAMPLE, &[("CRM_TOKEN", "t0ken")]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let mut expected = Config::default();
        expected.delivery.ca_file = Some(PathBuf::from("/etc/cdrhook/ca.pem"));
        let mut redactor = Redactor::default();
        redactor.add_header_value("Bearer t0ken");
        redactor.add("t0ken", MASK);
        expected.subscriptions = vec![Subscription {
            name: "crm".into(),
            endpoint: Sensitive::plain("https://crm.example.com/hooks/cdr"),
            active: true,
            events: vec![EventType::Queue, EventType::Agent, EventType::Test],
            headers: vec![Header {
                name: "Authorization".into(),
                value: Sensitive::secret("Bearer t0ken", MASK),
            }],
            secret: Some(Secret {
                key: SECRET_KEY.to_vec(),
            }),
            redactor,
            filter: None,
            auth: None,
            tls: None,
        }];
        // The secret is written in the file itself.
        expected.secrets_in_file = vec!["subscriptions[crm].secret".into()];
        assert_eq!(c, expected);
        let s = &c.subscriptions[0];
        assert!(s.wants(EventType::Queue));
        assert!(!s.wants(EventType::Ivr));
    }

    #[test]
    fn all_settings_are_read() {
        let c = ok(r#"log_level: DEBUG
spool:
  dir: /s
  after_ingest: archive
  max_file_size: 512KiB
  rescan_interval: 500ms
journal:
  retention: 7d
delivery:
  timeout: 1m
  concurrency: 16
  retry_schedule: []
subscriptions:
  - name: off
    endpoint: http://10.0.0.1:8080
    active: false
    events: App.IvrWebhook
"#);
        assert_eq!(c.log_level.as_deref(), Some("debug"));
        assert_eq!(c.spool.after_ingest, AfterIngest::Archive);
        assert_eq!(c.spool.max_file_size, 512 * 1024);
        assert_eq!(c.spool.rescan_interval, Duration::from_millis(500));
        assert_eq!(c.journal.retention, secs(7 * 86400));
        assert_eq!(c.delivery.timeout, secs(60));
        assert_eq!(c.delivery.concurrency, 16);
        assert!(c.delivery.retry_schedule.is_empty());
        assert!(!c.subscriptions[0].active);
        assert_eq!(c.subscriptions[0].events, [EventType::Ivr]);
        assert_eq!(c.subscriptions[0].endpoint.expose(), "http://10.0.0.1:8080");
    }

    #[test]
    fn star_means_every_event_type_including_test() {
        let c = ok(SUB);
        assert_eq!(c.subscriptions[0].events, EventType::ALL);
        assert!(EventType::ALL.iter().all(|&t| c.subscriptions[0].wants(t)));
        // Duplicates and "*" alongside names collapse.
        let c = ok("subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [App.TestWebhook, \"*\", App.TestWebhook]\n");
        assert_eq!(c.subscriptions[0].events, EventType::ALL);
        let c = ok("subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [App.TestWebhook, App.QueueWebhook, App.TestWebhook]\n");
        assert_eq!(
            c.subscriptions[0].events,
            [EventType::Queue, EventType::Test]
        );
    }

    #[test]
    fn event_type_names_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(EventType::parse("App.QueueWebhook"), Some(EventType::Queue));
        assert_eq!(EventType::parse("app.queuewebhook"), None);
        assert_eq!(EventType::parse("*"), None);
    }

    #[test]
    fn secret_decodes_to_the_key_bytes() {
        let text = |secret: &str| {
            format!("subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    secret: {secret}\n")
        };
        for secret in [
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "\"${HOOK_SECRET}\"",
        ] {
            let c = match parse_env(
                &text(secret),
                &[("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")],
            ) {
                Ok(c) => c,
                Err(e) => panic!("{secret}: {e}"),
            };
            let key = c.subscriptions[0].secret.as_ref().map(Secret::key);
            assert_eq!(key, Some(&SECRET_KEY[..]), "{secret}");
        }
        // Not base64: refused, at the secret's position, without echoing it.
        let message = refused(&text("whsec_not*base64!"), 5, Some(13));
        assert_contains(&message, "subscriptions[0].secret");
        assert!(!message.contains("not*base64"), "{message}");
        refused(&text("whsec_"), 5, Some(13));
    }

    #[test]
    fn secret_debug_never_shows_the_key() {
        let secret = Secret {
            key: SECRET_KEY.to_vec(),
        };
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        let c = match parse_env(SPEC_EXAMPLE, &[("CRM_TOKEN", "t0ken")]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let debug = format!("{c:?}");
        assert!(!debug.contains("t0ken"), "{debug}");
        assert!(debug.contains("Secret(***)"), "{debug}");
        assert!(!debug.contains("49, 242"), "{debug}");
    }

    #[test]
    fn secret_file_is_read_trimmed_and_resolved_against_the_config_dir() {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let write = |name: &str, contents: &str| {
            let mut f = std::fs::File::create(dir.path().join(name)).expect("create");
            f.write_all(contents.as_bytes()).expect("write");
        };
        write("hook.secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
        write("config.yaml", "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    secret_file: hook.secret\n");
        let c = match load(&dir.path().join("config.yaml")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let key = c.subscriptions[0].secret.as_ref().map(Secret::key);
        assert_eq!(key, Some(&SECRET_KEY[..]));

        // An absolute path given through a variable works too.
        let path = dir.path().join("hook.secret");
        let c = parse_env(
            "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    secret_file: ${SECRET_PATH}\n",
            &[("SECRET_PATH", path.to_str().expect("utf-8 temp path"))],
        );
        assert!(
            matches!(c, Ok(ref c) if c.subscriptions[0].secret.is_some()),
            "{c:?}"
        );

        // A file holding garbage is refused like a bad inline secret.
        write("bad.secret", "hunter2!\n");
        write("bad.yaml", "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    secret_file: bad.secret\n");
        match load(&dir.path().join("bad.yaml")) {
            Err(ConfigError::Invalid { line, message, .. }) => {
                assert_eq!(line, 5);
                assert!(!message.contains("hunter2"), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn load_reports_a_missing_file_as_io() {
        let err = load(Path::new("/nonexistent/cdrhook/config.yaml"));
        match err {
            Err(e @ ConfigError::Io { .. }) => {
                assert!(e
                    .to_string()
                    .starts_with("/nonexistent/cdrhook/config.yaml: "))
            }
            other => panic!("expected an io error, got {other:?}"),
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = "spool:\n  dir: spool\n  rejected_dir: ../rejected\njournal:\n  path: ./state/journal\ncontrol:\n  socket: run/control.sock\ndelivery:\n  ca_file: ca.pem\nsubscriptions:\n";
        let c = match parse(text, Path::new("/opt/cdrhook/etc/config.yaml"), &|_| None) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.spool.dir, Path::new("/opt/cdrhook/etc/spool"));
        assert_eq!(
            c.spool.archive_dir,
            Path::new("/opt/cdrhook/etc/spool/archive")
        );
        assert_eq!(
            c.spool.rejected_dir,
            Path::new("/opt/cdrhook/etc/../rejected")
        );
        assert_eq!(c.journal.path, Path::new("/opt/cdrhook/etc/state/journal"));
        assert_eq!(
            c.control.socket,
            Path::new("/opt/cdrhook/etc/run/control.sock")
        );
        assert_eq!(
            c.delivery.ca_file.as_deref(),
            Some(Path::new("/opt/cdrhook/etc/ca.pem"))
        );

        // A config path without a directory is anchored to the cwd.
        let c = match parse(text, Path::new("config.yaml"), &|_| None) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(c.spool.dir.is_absolute(), "{:?}", c.spool.dir);
        assert!(c.spool.dir.ends_with("spool"));
    }

    #[test]
    fn header_sensitivity() {
        let text = "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    headers:\n      Authorization: Basic abc\n      cookie: s=1\n      X-Plain: hello\n      X-Token: ${TOKEN}\n      X-Partial: \"id-${TOKEN}-x\"\n      X-Dollar: \"a$$b $c $${TOKEN}\"\n";
        let c = match parse_env(text, &[("TOKEN", "sekrit")]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let got: Vec<(&str, &str, bool)> = c.subscriptions[0]
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.expose(), h.sensitive()))
            .collect();
        assert_eq!(
            got,
            [
                ("Authorization", "Basic abc", true),
                ("cookie", "s=1", true),
                ("X-Plain", "hello", false),
                ("X-Token", "sekrit", true),
                ("X-Partial", "id-sekrit-x", true),
                ("X-Dollar", "a$b $c ${TOKEN}", false),
            ]
        );
        let debug = format!("{:?}", c.subscriptions[0].headers);
        assert!(
            !debug.contains("sekrit") && !debug.contains("Basic abc"),
            "{debug}"
        );
        assert!(debug.contains("hello"), "{debug}");
    }

    #[test]
    fn credential_names_mask_literal_values_too() {
        let text = "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    headers:\n      X-Api-Key: k-literal\n      Proxy-Authorization: Basic xyz\n      X-Hub-Signature: sig\n      X-Client-Secret: cs\n      X-Request-Source: cdr\n";
        let c = ok(text);
        let got: Vec<(&str, &str, bool)> = c.subscriptions[0]
            .headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.shown(), h.sensitive()))
            .collect();
        assert_eq!(
            got,
            [
                ("X-Api-Key", "***", true),
                ("Proxy-Authorization", "***", true),
                ("X-Hub-Signature", "***", true),
                ("X-Client-Secret", "***", true),
                ("X-Request-Source", "cdr", false),
            ]
        );
        // All four are written in the file itself.
        assert_eq!(
            c.secrets_in_file,
            [
                "subscriptions[a].headers.X-Api-Key",
                "subscriptions[a].headers.Proxy-Authorization",
                "subscriptions[a].headers.X-Hub-Signature",
                "subscriptions[a].headers.X-Client-Secret",
            ]
        );
    }

    #[test]
    fn a_templated_endpoint_is_shown_as_written_and_scrubbed() {
        let c = match parse_env(
            "subscriptions:\n  - name: a\n    endpoint: https://crm.example.com/hooks/${CRM_PATH}\n    events: [\"*\"]\n    headers:\n      Authorization: \"Bearer ${TOKEN}\"\n    secret: ${S}\n",
            &[
                ("CRM_PATH", "p4th-s3cret"),
                ("TOKEN", "t0ken-abc"),
                ("S", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ],
        ) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let s = &c.subscriptions[0];
        assert_eq!(
            s.endpoint.expose(),
            "https://crm.example.com/hooks/p4th-s3cret"
        );
        assert_eq!(
            s.endpoint.shown(),
            "https://crm.example.com/hooks/${CRM_PATH}"
        );
        assert_eq!(s.endpoint.to_string(), s.endpoint.shown());
        assert_eq!(
            s.redactor
                .scrub("Cannot POST /hooks/p4th-s3cret, got Bearer t0ken-abc"),
            "Cannot POST /hooks/***, got ***"
        );
        assert_eq!(
            s.redactor
                .scrub("moved to https://crm.example.com/hooks/p4th-s3cret/"),
            "moved to https://crm.example.com/hooks/${CRM_PATH}/"
        );
        // Nothing is a secret written in the file, so no warning could apply.
        assert!(c.secrets_in_file.is_empty(), "{:?}", c.secrets_in_file);
        let debug = format!("{c:?}");
        for secret in ["p4th-s3cret", "t0ken-abc"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[test]
    fn files_every_user_can_read_are_warned_about_when_they_hold_a_secret() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let write = |name: &str, contents: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        let literal = "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n";
        let from_file = "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    secret_file: hook.secret\n";
        let no_secret =
            "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n";
        // (config text, config mode, secret file mode, warnings expected)
        for (text, config_mode, secret_mode, expected) in [
            (literal, 0o600, 0o600, &[][..]),
            (literal, 0o640, 0o600, &[][..]),
            (
                literal,
                0o644,
                0o600,
                &["holds a secret (subscriptions[a].secret)"][..],
            ),
            (no_secret, 0o644, 0o644, &[][..]),
            (from_file, 0o644, 0o640, &[][..]),
            (from_file, 0o600, 0o644, &["secret file"][..]),
            (from_file, 0o600, 0o604, &["secret file"][..]),
        ] {
            write(
                "hook.secret",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
                secret_mode,
            );
            write("config.yaml", text, config_mode);
            let c = match load(&dir.path().join("config.yaml")) {
                Ok(c) => c,
                Err(e) => panic!("{e}"),
            };
            let case = format!("{config_mode:o}/{secret_mode:o}: {:?}", c.warnings);
            assert_eq!(c.warnings.len(), expected.len(), "{case}");
            for (w, want) in c.warnings.iter().zip(expected) {
                assert_contains(w, want);
                assert_contains(w, "chmod o-r");
                assert!(!w.contains("MfKQ9r8"), "{case}");
            }
        }
    }

    #[test]
    fn endpoint_is_expanded() {
        let c = parse_env(
            "subscriptions:\n  - name: a\n    endpoint: https://${HOST}/hook?x=$1\n    events: [\"*\"]\n",
            &[("HOST", "crm.example.com:8443")],
        );
        assert!(
            matches!(c, Ok(ref c) if c.subscriptions[0].endpoint.expose() == "https://crm.example.com:8443/hook?x=$1"),
            "{c:?}"
        );
    }

    #[test]
    fn restart_required_names_only_restart_settings() {
        let running = ok(SUB);
        assert!(running.restart_required(&running.clone()).is_empty());

        let mut new = running.clone();
        new.delivery.timeout = secs(99);
        new.subscriptions.clear();
        new.spool.max_file_size = 1;
        assert!(running.restart_required(&new).is_empty());

        new.spool.dir = PathBuf::from("/elsewhere");
        new.journal.path = PathBuf::from("/elsewhere/journal");
        new.control.socket = PathBuf::from("/elsewhere/sock");
        assert_eq!(
            running.restart_required(&new),
            ["spool.dir", "journal.path", "control.socket"]
        );
    }

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("10MiB", 10 << 20),
            ("512KiB", 512 << 10),
            ("1GiB", 1 << 30),
            ("100kB", 100_000),
            ("1MB", 1_000_000),
            ("4096", 4096),
            ("2 mib", 2 << 20),
            ("7B", 7),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for text in [
            "",
            "MiB",
            "10XB",
            "1.5MiB",
            "-1",
            "99999999999999999999",
            "18446744073709551615KiB",
        ] {
            assert!(parse_size(text).is_err(), "{text}");
        }
        let c = ok("spool:\n  max_file_size: 1048576\nsubscriptions:\n");
        assert_eq!(c.spool.max_file_size, 1 << 20);
    }

    #[test]
    fn expansion_rules() {
        let mut lookup = |name: &str| (name == "A").then(|| "x".to_owned());
        assert_eq!(expand("${A}-${A}", &mut lookup), Ok(("x-x".into(), true)));
        assert_eq!(
            expand("$$A $A $", &mut lookup),
            Ok(("$A $A $".into(), false))
        );
        assert_eq!(expand("$${A}", &mut lookup), Ok(("${A}".into(), false)));
        let unset = expand("${B}", &mut lookup);
        assert!(
            matches!(&unset, Err(m) if m.contains("B is not set")),
            "{unset:?}"
        );
        assert!(expand("${A", &mut lookup).is_err());
        assert!(expand("${}", &mut lookup).is_err());
        assert!(expand("${A:-d}", &mut lookup).is_err());
    }

    #[test]
    fn error_display_is_path_line_column_message() {
        let err = parse_env(
            "subscriptions:\n  - name: a\n    endpoint: ftp://x\n    events: [\"*\"]\n",
            &[],
        );
        match err {
            Err(e) => assert_eq!(
                e.to_string(),
                "/etc/cdrhook/config.yaml:3:15: subscriptions[0].endpoint: \"ftp://x\" is not an http or https URL"
            ),
            Ok(_) => panic!("ftp endpoint accepted"),
        }
    }

    // --- refused files ------------------------------------------------------

    #[test]
    fn empty_file_is_refused() {
        for text in ["", "\n\n", "# only a comment\n", "~\n"] {
            match parse_env(text, &[]) {
                Err(e @ ConfigError::Unpositioned { .. }) => {
                    assert_contains(&e.to_string(), "empty")
                }
                other => panic!("{text:?}: expected a refusal, got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_yaml_is_refused_with_position() {
        let m = refused(
            "spool:\n  dir: /x\n  bad: [unclosed\nsubscriptions:\n",
            4,
            None,
        );
        assert_contains(&m, "flow sequence at line 3 column 8");
        refused("subscriptions:\n  - name: a\n   endpoint: x\n", 3, None);
    }

    #[test]
    fn top_level_must_be_a_mapping() {
        let message = refused("- a\n- b\n", 1, Some(1));
        assert_contains(&message, "a mapping of cdrhook settings");
    }

    #[test]
    fn unknown_keys_are_refused_everywhere() {
        let m = refused("subscription:\n  - name: a\n", 1, Some(1));
        assert_contains(&m, "unknown field `subscription`");
        let m = refused("spool:\n  dir: /x\n  dri: /y\nsubscriptions:\n", 3, Some(3));
        assert_contains(&m, "spool: unknown field `dri`");
        let m = refused("delivery:\n  retries: 3\nsubscriptions:\n", 2, Some(3));
        assert_contains(&m, "retries");
        let m = refused(
            "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    enabled: true\n",
            5,
            Some(5),
        );
        assert_contains(&m, "subscriptions[0]: unknown field `enabled`");
    }

    #[test]
    fn duplicate_subscription_name_is_refused_at_the_second() {
        let text = "subscriptions:\n  - name: crm\n    endpoint: http://a\n    events: [\"*\"]\n  - name: other\n    endpoint: http://b\n    events: [\"*\"]\n  - endpoint: http://c\n    name: crm\n    events: [\"*\"]\n";
        let m = refused(text, 9, Some(11));
        assert_contains(&m, "subscriptions[2].name");
        assert_contains(&m, "duplicate subscription name \"crm\"");
    }

    #[test]
    fn bad_subscription_names_are_refused() {
        for name in ["\"\"", "\"has space\"", "-dash", "a/b"] {
            let text = format!(
                "subscriptions:\n  - name: {name}\n    endpoint: http://a\n    events: [\"*\"]\n"
            );
            refused(&text, 2, Some(11));
        }
    }

    #[test]
    fn missing_required_fields_are_refused_at_the_entry() {
        let base = "subscriptions:\n  - name: ok\n    endpoint: http://a\n    events: [\"*\"]\n";
        for (text, field) in [
            (
                format!("{base}  - endpoint: http://b\n    events: [\"*\"]\n"),
                "name",
            ),
            (
                format!("{base}  - name: b\n    events: [\"*\"]\n"),
                "endpoint",
            ),
            (
                format!("{base}  - name: b\n    endpoint: http://b\n"),
                "events",
            ),
        ] {
            let m = refused(&text, 5, Some(5));
            assert_contains(&m, &format!("subscriptions[1]: missing field `{field}`"));
        }
    }

    #[test]
    fn non_http_endpoints_are_refused() {
        for (endpoint, problem) in [
            ("ftp://x", "is not an http or https URL"),
            ("crm.example.com/hook", "is not an http or https URL"),
            ("https://", "has no host"),
            ("https:///path", "has no host"),
            ("http://:80/x", "has no host"),
            ("http://host:99999/", "invalid port"),
            ("http://host:/", "invalid port"),
            ("http://user:pw@host/", "credentials"),
            ("\"http://host/a b\"", "whitespace"),
            ("http://[::1/", "IPv6"),
        ] {
            let text = format!(
                "subscriptions:\n  - name: a\n    endpoint: http://ok\n    events: [\"*\"]\n  - name: b\n    endpoint: {endpoint}\n    events: [\"*\"]\n"
            );
            let m = refused(&text, 6, Some(15));
            assert_contains(&m, "subscriptions[1].endpoint");
            assert_contains(&m, problem);
        }
        for endpoint in [
            "HTTPS://Host.Example:443/x",
            "http://[::1]:8080/",
            "http://h_1.local",
        ] {
            let text = format!(
                "subscriptions:\n  - name: a\n    endpoint: {endpoint}\n    events: [\"*\"]\n"
            );
            ok(&text);
        }
    }

    #[test]
    fn endpoint_from_a_variable_is_checked_without_echoing_the_value() {
        let text = "subscriptions:\n  - name: a\n    endpoint: ${URL}\n    events: [\"*\"]\n";
        let m = refused_env(text, &[("URL", "ftp://tok3n@x")], 3, Some(15));
        assert!(!m.contains("tok3n"), "{m}");
        assert_contains(&m, "${URL}");
    }

    #[test]
    fn bad_header_names_are_refused_at_the_key() {
        let head = "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    headers:\n      X-Ok: 1\n";
        for name in ["\"X Bad\"", "\"X:Colon\"", "\"\"", "\"Ünicode\""] {
            let m = refused(&format!("{head}      {name}: v\n"), 7, Some(7));
            assert_contains(&m, "not a valid HTTP header name");
        }
        let m = refused(&format!("{head}      webhook-signature: v\n"), 7, Some(7));
        assert_contains(&m, "set by cdrhook");
        let m = refused(&format!("{head}      x-ok: 2\n"), 7, Some(7));
        assert_contains(&m, "given twice");
    }

    #[test]
    fn header_values_with_line_breaks_are_refused() {
        let head = "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    headers:\n";
        let m = refused(
            &format!("{head}      X-A: \"one\\r\\nX-Injected: two\"\n"),
            6,
            Some(12),
        );
        assert_contains(&m, "line break");
        assert!(!m.contains("Injected"), "{m}");
        refused(&format!("{head}      X-A: \"nul\\0\"\n"), 6, Some(12));
        // Literal block scalars keep their newline.
        refused(
            &format!("{head}      X-A: |\n        multi\n        line\n"),
            6,
            Some(12),
        );
        // The same check applies after expansion.
        let m = refused_env(
            &format!("{head}      X-A: \"Bearer ${{TOKEN}}\"\n"),
            &[("TOKEN", "abc\nX-Injected: 1")],
            6,
            Some(12),
        );
        assert_contains(&m, "after expanding");
        assert!(!m.contains("Injected"), "{m}");
    }

    #[test]
    fn unknown_event_types_are_refused_at_the_element() {
        let m = refused(
            "subscriptions:\n  - name: a\n    endpoint: http://h\n    events:\n      - App.QueueWebhook\n      - App.queueWebhook\n",
            6,
            Some(9),
        );
        assert_contains(&m, "subscriptions[0].events[1]");
        assert_contains(&m, "unknown event type \"App.queueWebhook\"");
        refused(
            "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [App.QueueWebhook, all]\n",
            4,
            Some(32),
        );
        let m = refused(
            "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: []\n",
            4,
            Some(13),
        );
        assert_contains(&m, "at least one event type");
    }

    #[test]
    fn unset_variables_are_refused_naming_the_variable() {
        let m = refused(
            "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    headers:\n      Authorization: \"Bearer ${CRM_TOKEN}\"\n",
            6,
            Some(22),
        );
        assert_contains(&m, "CRM_TOKEN is not set");
        let m = refused(
            "subscriptions:\n  - name: a\n    endpoint: https://${HOST}/\n    events: [\"*\"]\n",
            3,
            Some(15),
        );
        assert_contains(&m, "HOST is not set");
        let m = refused("subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    secret: ${S}\n", 5, Some(13));
        assert_contains(&m, "S is not set");
        let m = refused("subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    secret_file: ${F}\n", 5, Some(18));
        assert_contains(&m, "F is not set");
    }

    #[test]
    fn variables_are_not_expanded_in_other_settings() {
        let c = ok("spool:\n  dir: /x/${NOT_EXPANDED}\nsubscriptions:\n");
        assert_eq!(c.spool.dir, Path::new("/x/${NOT_EXPANDED}"));
    }

    #[test]
    fn secret_and_secret_file_together_are_refused_at_the_entry() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("write");
        let m = refused_env(
            "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n  - name: b\n    endpoint: http://h\n    events: [\"*\"]\n    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n    secret_file: ${F}\n",
            &[("F", file.path().to_str().expect("utf-8 temp path"))],
            5,
            Some(5),
        );
        assert_contains(&m, "subscriptions[1]");
        assert_contains(&m, "either secret or secret_file");
    }

    #[test]
    fn unreadable_secret_file_is_refused_at_the_value() {
        let m = refused(
            "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    secret_file: /nonexistent/cdrhook.secret\n",
            5,
            Some(18),
        );
        assert_contains(&m, "cannot read secret file /nonexistent/cdrhook.secret");
    }

    #[test]
    fn bad_durations_and_sizes_are_refused_at_the_value() {
        let m = refused("delivery:\n  timeout: 10\nsubscriptions:\n", 2, Some(12));
        assert_contains(&m, "delivery.timeout");
        refused("delivery:\n  timeout: 0s\nsubscriptions:\n", 2, Some(12));
        refused(
            "spool:\n  rescan_interval: 0ms\nsubscriptions:\n",
            2,
            Some(20),
        );
        refused(
            "journal:\n  retention: forever\nsubscriptions:\n",
            2,
            Some(14),
        );
        let m = refused(
            "delivery:\n  retry_schedule:\n    - 5s\n    - 5 mins later\nsubscriptions:\n",
            4,
            Some(7),
        );
        assert_contains(&m, "delivery.retry_schedule[1]");
        let m = refused(
            "spool:\n  max_file_size: 10 MeB\nsubscriptions:\n",
            2,
            Some(18),
        );
        assert_contains(&m, "size unit");
        refused("spool:\n  max_file_size: 0\nsubscriptions:\n", 2, Some(18));
        refused("delivery:\n  concurrency: 0\nsubscriptions:\n", 2, Some(16));
        refused(
            "delivery:\n  concurrency: -3\nsubscriptions:\n",
            2,
            Some(16),
        );
    }

    #[test]
    fn other_bad_values_are_refused_at_the_value() {
        let m = refused("log_level: loud\nsubscriptions:\n", 1, Some(12));
        assert_contains(&m, "not a log level");
        let m = refused(
            "spool:\n  after_ingest: move\nsubscriptions:\n",
            2,
            Some(17),
        );
        assert_contains(&m, "move");
        refused(
            "subscriptions:\n  - name: a\n    endpoint: http://h\n    events: [\"*\"]\n    active: yes\n",
            5,
            Some(13),
        );
        refused("spool:\n  dir: \"\"\nsubscriptions:\n", 2, Some(8));
    }

    #[test]
    fn spool_subdirectories_must_differ_from_the_spool() {
        match parse_env(
            "spool:\n  dir: /s\n  archive_dir: /s\nsubscriptions:\n",
            &[],
        ) {
            Err(e @ ConfigError::Unpositioned { .. }) => {
                assert_contains(&e.to_string(), "spool.archive_dir")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
