//! The file's shape as serde reads it (`Raw*`, every key optional), the
//! per-subscription cross-field checks, and `finish`, which fills in the
//! defaults and resolves relative paths into a [`Config`].

use super::*;

/// One `subscriptions` entry. The field checks come from the derived
/// `RawSubscription`; this wrapper adds the cross-field checks, raised from
/// inside `visit_map` so they carry the entry's position.
pub(super) struct SubscriptionEntry(pub(super) Subscription);

impl<'de> Deserialize<'de> for SubscriptionEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;

        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = SubscriptionEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a subscription (a mapping with name, endpoint and events)")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let raw = RawSubscription::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let name = raw.name.0;
                let mut in_file = Vec::new();
                let secret = match (raw.secret, raw.secret_file) {
                    (Some(_), Some(_)) => {
                        return Err(de::Error::custom(
                            "give either secret or secret_file, not both",
                        ))
                    }
                    (Some(SecretValue { secret, literal }), None) => {
                        if literal {
                            in_file.push(format!("subscriptions[{name}].secret"));
                        }
                        Some(secret)
                    }
                    (None, Some(SecretFile(s))) => Some(s),
                    (None, None) => None,
                };
                let Headers { headers, vars } = raw.headers.unwrap_or(Headers {
                    headers: Vec::new(),
                    vars: Vec::new(),
                });
                let mut redactor = Redactor::default();
                let endpoint = raw.endpoint;
                if endpoint.url.is_secret() {
                    redactor.add(endpoint.url.expose(), endpoint.url.shown());
                    for value in &endpoint.values {
                        redactor.add(value, MASK);
                    }
                }
                for (h, values) in headers.iter().zip(&vars) {
                    if !h.sensitive() {
                        continue;
                    }
                    redactor.add_header_value(h.value.expose());
                    for value in values {
                        redactor.add(value, MASK);
                    }
                    if values.is_empty() {
                        in_file.push(format!("subscriptions[{name}].headers.{}", h.name));
                    }
                }
                let auth = auth::check_subscription(
                    &name,
                    raw.auth,
                    raw.tls.as_ref(),
                    &endpoint.url,
                    &headers,
                    &mut redactor,
                    &mut in_file,
                )
                .map_err(de::Error::custom)?;
                with_context(|ctx| ctx.secrets_in_file.extend(in_file));
                Ok(SubscriptionEntry(Subscription {
                    name,
                    endpoint: endpoint.url,
                    active: raw.active.unwrap_or(true),
                    events: raw.events.0,
                    headers,
                    secret,
                    redactor,
                    filter: raw.filter.map(|f| f.0),
                    auth,
                    tls: raw.tls.map(|t| t.0),
                }))
            }
        }

        d.deserialize_map(EntryVisitor)
    }
}

// ---------------------------------------------------------------------------
// The file's shape. Missing or null keys are `None` and get their defaults in
// `finish`, which is also where relative paths are resolved.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of cdrhook settings")]
pub(super) struct RawConfig {
    pub(super) spool: Option<RawSpool>,
    pub(super) journal: Option<RawJournal>,
    pub(super) control: Option<RawControl>,
    pub(super) delivery: Option<RawDelivery>,
    pub(super) http: Option<HttpEntry>,
    pub(super) log_level: Option<LogLevel>,
    pub(super) subscriptions: Option<Vec<SubscriptionEntry>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a mapping of spool settings")]
pub(super) struct RawSpool {
    pub(super) dir: Option<ConfPath>,
    pub(super) after_ingest: Option<AfterIngest>,
    pub(super) archive_dir: Option<ConfPath>,
    pub(super) rejected_dir: Option<ConfPath>,
    pub(super) max_file_size: Option<Size>,
    pub(super) rescan_interval: Option<NonZeroDur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of journal settings")]
pub(super) struct RawJournal {
    pub(super) path: Option<ConfPath>,
    pub(super) retention: Option<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of control settings")]
pub(super) struct RawControl {
    pub(super) socket: Option<ConfPath>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of delivery settings")]
pub(super) struct RawDelivery {
    pub(super) timeout: Option<NonZeroDur>,
    pub(super) concurrency: Option<Concurrency>,
    pub(super) retry_schedule: Option<Vec<Dur>>,
    pub(super) ca_file: Option<ConfPath>,
}

/// The `http` block. Like [`SubscriptionEntry`], its cross-field check (a
/// TCP listener needs `token_file`) is raised inside `visit_map`, so it
/// carries the block's position.
pub(super) struct HttpEntry(pub(super) HttpConfig);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of http settings")]
pub(super) struct RawHttp {
    pub(super) listen: Listen,
    pub(super) token_file: Option<TokenFile>,
}

impl<'de> Deserialize<'de> for HttpEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HttpVisitor;

        impl<'de> Visitor<'de> for HttpVisitor {
            type Value = HttpEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of http settings (listen, token_file)")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let raw = RawHttp::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let listen = raw.listen.0;
                let (token_file, token) = match raw.token_file {
                    Some(TokenFile { path, token }) => (Some(path), Some(token)),
                    None => (None, None),
                };
                if matches!(listen, HttpListen::Tcp(_)) && token.is_none() {
                    return Err(de::Error::custom(format!(
                        "http.listen {listen} is a TCP address: every path but /healthz then \
                         needs a bearer token, so http.token_file is required (or listen on a \
                         Unix socket, e.g. unix:/run/cdrhook/http.sock)"
                    )));
                }
                Ok(HttpEntry(HttpConfig {
                    listen,
                    token_file,
                    token,
                }))
            }
        }

        d.deserialize_map(HttpVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a subscription")]
pub(super) struct RawSubscription {
    pub(super) name: SubscriptionName,
    pub(super) endpoint: Endpoint,
    pub(super) active: Option<bool>,
    pub(super) events: Events,
    pub(super) headers: Option<Headers>,
    pub(super) secret: Option<SecretValue>,
    pub(super) secret_file: Option<SecretFile>,
    #[serde(default, deserialize_with = "filter::present")]
    pub(super) filter: Option<filter::RawFilter>,
    pub(super) auth: Option<AuthEntry>,
    pub(super) tls: Option<TlsEntry>,
}

impl RawConfig {
    pub(super) fn finish(self, base: &Path) -> Result<Config, String> {
        let path = |p: Option<ConfPath>, default: &str| match p {
            Some(ConfPath(p)) => resolve(base, &p),
            None => PathBuf::from(default),
        };

        let spool = self.spool.unwrap_or_default();
        let dir = path(spool.dir, DEFAULT_SPOOL_DIR);
        let archive_dir = match spool.archive_dir {
            Some(ConfPath(p)) => resolve(base, &p),
            None => dir.join("archive"),
        };
        let rejected_dir = match spool.rejected_dir {
            Some(ConfPath(p)) => resolve(base, &p),
            None => dir.join("rejected"),
        };
        // Files moved into the spool directory itself would be ingested again.
        for (key, moved_to) in [
            ("archive_dir", &archive_dir),
            ("rejected_dir", &rejected_dir),
        ] {
            if *moved_to == dir {
                return Err(format!(
                    "spool.{key} must not be the spool directory itself ({})",
                    dir.display()
                ));
            }
        }
        let spool = SpoolConfig {
            dir,
            after_ingest: spool.after_ingest.unwrap_or(AfterIngest::Delete),
            archive_dir,
            rejected_dir,
            max_file_size: spool.max_file_size.map_or(DEFAULT_MAX_FILE_SIZE, |s| s.0),
            rescan_interval: spool
                .rescan_interval
                .map_or(DEFAULT_RESCAN_INTERVAL, |d| d.0),
        };

        let (journal_path, retention) = match self.journal {
            Some(j) => (j.path, j.retention),
            None => (None, None),
        };
        let journal = JournalConfig {
            path: path(journal_path, DEFAULT_JOURNAL_PATH),
            retention: retention.map_or(DEFAULT_RETENTION, |d| d.0),
        };

        let control = ControlConfig {
            socket: path(self.control.and_then(|c| c.socket), DEFAULT_CONTROL_SOCKET),
        };

        let defaults = DeliveryConfig::default();
        let delivery = match self.delivery {
            None => defaults,
            Some(d) => DeliveryConfig {
                timeout: d.timeout.map_or(defaults.timeout, |t| t.0),
                concurrency: d.concurrency.map_or(defaults.concurrency, |c| c.0),
                retry_schedule: d.retry_schedule.map_or(defaults.retry_schedule, |s| {
                    s.into_iter().map(|d| d.0).collect()
                }),
                ca_file: d.ca_file.map(|ConfPath(p)| resolve(base, &p)),
            },
        };

        let http = self.http.map(|h| h.0);
        if let Some(HttpConfig {
            listen: HttpListen::Unix(p),
            ..
        }) = &http
        {
            if *p == control.socket {
                return Err(format!(
                    "http.listen must not be the control socket ({})",
                    p.display()
                ));
            }
        }

        Ok(Config {
            spool,
            journal,
            control,
            delivery,
            http,
            log_level: self.log_level.map(|l| l.0),
            subscriptions: self
                .subscriptions
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.0)
                .collect(),
            warnings: Vec::new(),
            secrets_in_file: Vec::new(),
        })
    }
}
