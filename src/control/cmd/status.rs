//! `cdrhook status` (and SIGUSR2): what an operator needs at a glance.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{cell, lane, local_time, table, CmdError, Command};
use crate::control::protocol::Request;
use crate::control::Handles;
use crate::time::{now_ms, rfc3339};

/// The request: `{"cmd":"status"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {}

/// contract §5 `status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub version: String,
    pub pid: u32,
    pub started: String,
    pub uptime_s: u64,
    pub config: ConfigState,
    pub spool: SpoolState,
    pub journal: JournalState,
    pub subscriptions: Vec<SubscriptionState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigState {
    pub path: String,
    pub loaded: String,
    pub error: Option<String>,
    pub refused_at: Option<String>,
    pub restart_required: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpoolState {
    pub dir: String,
    pub backlog: u64,
    pub in_flight: u64,
    pub rejected: u64,
    pub rejected_dir: String,
    pub last_rejection: Option<LastRejection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRejection {
    pub file: String,
    pub reason: String,
    pub time: String,
    pub not_moved: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalState {
    pub path: String,
    pub size_bytes: u64,
    /// False after an I/O error (a full disk) until it is reopened.
    pub available: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionState {
    pub name: String,
    pub active: bool,
    pub in_config: bool,
    /// The shown form (a `${VAR}` endpoint as written); null once removed
    /// from the config.
    pub endpoint: Option<String>,
    pub events: Vec<String>,
    pub pending: u64,
    pub retrying: u64,
    pub dead: u64,
    pub delivered: u64,
    pub held: u64,
    /// CDRs of its event types that its `filter` excluded, since the
    /// daemon started (not journaled; a restart starts again at 0).
    pub unmatched: u64,
    pub last_success: Option<String>,
    pub last_failure: Option<String>,
    pub last_error: Option<String>,
    /// OAuth2 (contract §10): null without `auth`.
    #[serde(default)]
    pub auth: Option<AuthState>,
    /// The `tls.client_cert` presented to the endpoint, if any.
    #[serde(default)]
    pub tls_client_cert: Option<String>,
}

/// A subscription's OAuth2 token, as `status` shows it (never the token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthState {
    #[serde(rename = "type")]
    pub kind: String,
    /// As shown (a `${VAR}` URL as written).
    pub token_url: String,
    /// Null: no valid token now (none fetched yet, expired, or dropped).
    pub token_valid_until: Option<String>,
    /// The token endpoint gave no `expires_in`: its lifetime is assumed.
    pub token_lifetime_assumed: bool,
    pub last_token_error: Option<String>,
    pub last_token_error_at: Option<String>,
}

impl From<Status> for Request {
    fn from(c: Status) -> Request {
        Request::Status(c)
    }
}

impl Command for Status {
    type Response = StatusResponse;

    fn render(r: &StatusResponse) -> String {
        render(r)
    }
}

impl Status {
    pub async fn apply(self, h: &Arc<Handles>) -> Result<StatusResponse, CmdError> {
        Ok(lane::light(h, collect).await?)
    }
}

/// Reads the journal's counts and lists the spool: blocking.
pub fn collect(h: &Handles) -> StatusResponse {
    // One snapshot: the config and its load status of the same version.
    let snapshot = h.live.snapshot();
    let cfg = &snapshot.config;
    let load = &snapshot.status;
    let counts = h.journal.counts();
    let (backlog, in_flight) = h.spool.backlog(&cfg.spool);
    let rejected = h.spool.rejections();
    let time = |ms: Option<u64>| ms.map(rfc3339);
    let mut subs = Vec::new();
    for s in &cfg.subscriptions {
        let c = counts.get(&s.name).cloned().unwrap_or_default();
        subs.push(SubscriptionState {
            name: s.name.clone(),
            active: s.active,
            in_config: true,
            endpoint: Some(s.endpoint.shown().to_string()),
            events: s.events.iter().map(|e| e.as_str().to_string()).collect(),
            pending: c.pending,
            retrying: c.retrying,
            dead: c.dead,
            delivered: c.delivered,
            held: if s.active { 0 } else { c.pending + c.retrying },
            unmatched: c.unmatched,
            last_success: time(c.last_success_ms),
            last_failure: time(c.last_failure_ms),
            last_error: c.last_error,
            auth: h.dispatcher.context().tokens.view(s).map(|t| AuthState {
                kind: "oauth2_client_credentials".into(),
                token_url: s
                    .auth
                    .as_ref()
                    .map(|a| a.token_url.shown().to_string())
                    .unwrap_or_default(),
                token_valid_until: time(t.valid_until_ms),
                token_lifetime_assumed: t.lifetime_assumed,
                last_token_error_at: time(t.last_error.as_ref().map(|e| e.0)),
                last_token_error: t.last_error.map(|e| e.1),
            }),
            tls_client_cert: s.tls.as_ref().map(|t| t.client_cert.display().to_string()),
        });
    }
    // Subscriptions removed from the config that still have deliveries.
    let listed = |n: &String| cfg.subscriptions.iter().any(|s| &s.name == n);
    for (name, c) in counts.iter().filter(|(n, _)| !listed(n)) {
        subs.push(SubscriptionState {
            name: name.clone(),
            active: false,
            in_config: false,
            endpoint: None,
            events: Vec::new(),
            pending: c.pending,
            retrying: c.retrying,
            dead: c.dead,
            delivered: c.delivered,
            held: c.pending + c.retrying,
            unmatched: c.unmatched,
            last_success: time(c.last_success_ms),
            last_failure: time(c.last_failure_ms),
            last_error: c.last_error.clone(),
            auth: None,
            tls_client_cert: None,
        });
    }
    StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        started: rfc3339(h.started_ms),
        uptime_s: now_ms().saturating_sub(h.started_ms) / 1000,
        config: ConfigState {
            path: h.live.path().display().to_string(),
            loaded: rfc3339(load.loaded_ms),
            error: load.error.clone(),
            refused_at: time(load.refused_ms),
            restart_required: load
                .restart_required
                .iter()
                .map(|k| k.to_string())
                .collect(),
            warnings: cfg.warnings.clone(),
        },
        spool: SpoolState {
            dir: cfg.spool.dir.display().to_string(),
            backlog: backlog as u64,
            in_flight: in_flight as u64,
            rejected: rejected.count,
            rejected_dir: cfg.spool.rejected_dir.display().to_string(),
            last_rejection: rejected.last.map(|r| LastRejection {
                file: r.file,
                reason: r.reason,
                time: rfc3339(r.time_ms),
                not_moved: r.not_moved,
            }),
        },
        journal: JournalState {
            path: cfg.journal.path.display().to_string(),
            size_bytes: h.journal.size_on_disk(),
            available: !h.journal.is_broken(),
        },
        subscriptions: subs,
    }
}

pub fn render(v: &StatusResponse) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "cdrhook {} (pid {}), up {}\n",
        v.version,
        v.pid,
        humantime::format_duration(std::time::Duration::from_secs(v.uptime_s))
    ));
    let c = &v.config;
    out.push_str(&format!(
        "config:  {} (loaded {})\n",
        c.path,
        local_time(Some(&c.loaded))
    ));
    if let Some(e) = &c.error {
        out.push_str(&format!(
            "         LAST RELOAD REFUSED at {}: {e}\n         (the version loaded before stays in force)\n",
            local_time(c.refused_at.as_deref())
        ));
    }
    if !c.restart_required.is_empty() {
        out.push_str(&format!(
            "         changed, waiting for a restart: {}\n",
            c.restart_required.join(", ")
        ));
    }
    for w in &c.warnings {
        out.push_str(&format!("         WARNING: {w}\n"));
    }
    out.push_str(&format!(
        "spool:   {}: {} waiting, {} in flight\n",
        v.spool.dir, v.spool.backlog, v.spool.in_flight
    ));
    if v.spool.rejected > 0 {
        let last = v.spool.last_rejection.as_ref();
        out.push_str(&format!(
            "         {} file(s) rejected since start, into {}; last {} at {}: {}\n",
            v.spool.rejected,
            v.spool.rejected_dir,
            cell(last.map(|l| &l.file)),
            local_time(last.map(|l| l.time.as_str())),
            cell(last.map(|l| &l.reason))
        ));
        if let Some(why) = last.and_then(|l| l.not_moved.as_ref()) {
            out.push_str(&format!("         NOT MOVED: {why}\n"));
        }
    }
    out.push_str(&format!(
        "journal: {} ({} MiB){}\n\n",
        v.journal.path,
        v.journal.size_bytes / (1 << 20),
        if !v.journal.available {
            "\n         UNAVAILABLE after an I/O error (disk full?): files wait in the spool; \
             it is reopened by itself once it can be written"
        } else {
            ""
        }
    ));
    let rows: Vec<Vec<String>> = v
        .subscriptions
        .iter()
        .map(|s| {
            let state = match (s.in_config, s.active) {
                (false, _) => "removed",
                (_, true) => "active",
                _ => "inactive",
            };
            let failure = match &s.last_failure {
                Some(t) => format!("{} {}", local_time(Some(t)), cell(s.last_error.as_ref())),
                None => "-".to_string(),
            };
            vec![
                s.name.clone(),
                state.to_string(),
                s.pending.to_string(),
                s.retrying.to_string(),
                s.dead.to_string(),
                s.delivered.to_string(),
                s.held.to_string(),
                s.unmatched.to_string(),
                local_time(s.last_success.as_deref()),
                failure,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SUBSCRIPTION",
            "STATE",
            "PENDING",
            "RETRYING",
            "DEAD",
            "DELIVERED",
            "HELD",
            "UNMATCHED",
            "LAST SUCCESS",
            "LAST FAILURE",
        ],
        &rows,
    ));
    for s in &v.subscriptions {
        if let Some(a) = &s.auth {
            let token = match &a.token_valid_until {
                Some(t) if a.token_lifetime_assumed => format!(
                    "token valid until {} (assumed: no expires_in)",
                    local_time(Some(t))
                ),
                Some(t) => format!("token valid until {}", local_time(Some(t))),
                None => "no valid token".to_string(),
            };
            out.push_str(&format!("{}: OAuth2 from {}: {token}", s.name, a.token_url));
            if let Some(e) = &a.last_token_error {
                out.push_str(&format!(
                    "; last token error at {}: {e}",
                    local_time(a.last_token_error_at.as_deref())
                ));
            }
            out.push('\n');
        }
        if let Some(cert) = &s.tls_client_cert {
            out.push_str(&format!("{}: client certificate {cert}\n", s.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys contract §5 fixes, at every level.
    #[test]
    fn the_response_has_the_spec_shape() {
        let r = StatusResponse {
            version: "0.1.0".into(),
            pid: 1,
            started: "2026-01-01T00:00:00Z".into(),
            uptime_s: 2,
            config: ConfigState {
                path: "/c.yaml".into(),
                loaded: "2026-01-01T00:00:00Z".into(),
                error: None,
                refused_at: None,
                restart_required: vec![],
                warnings: vec![],
            },
            spool: SpoolState {
                dir: "/s".into(),
                backlog: 0,
                in_flight: 0,
                rejected: 1,
                rejected_dir: "/r".into(),
                last_rejection: Some(LastRejection {
                    file: "f".into(),
                    reason: "bad".into(),
                    time: "2026-01-01T00:00:00Z".into(),
                    not_moved: None,
                }),
            },
            journal: JournalState {
                path: "/j".into(),
                size_bytes: 0,
                available: true,
            },
            subscriptions: vec![SubscriptionState {
                name: "crm".into(),
                active: true,
                in_config: true,
                endpoint: Some("http://x/".into()),
                events: vec!["App.QueueWebhook".into()],
                pending: 0,
                retrying: 0,
                dead: 0,
                delivered: 0,
                held: 0,
                unmatched: 0,
                last_success: None,
                last_failure: None,
                last_error: None,
                auth: Some(AuthState {
                    kind: "oauth2_client_credentials".into(),
                    token_url: "https://l/t".into(),
                    token_valid_until: Some("2026-01-01T01:00:00Z".into()),
                    token_lifetime_assumed: false,
                    last_token_error: None,
                    last_token_error_at: None,
                }),
                tls_client_cert: Some("/etc/cdrhook/client.pem".into()),
            }],
        };
        let v = serde_json::to_value(&r).expect("encode");
        let keys = crate::control::cmd::object_keys;
        assert_eq!(
            keys(&v),
            [
                "config",
                "journal",
                "pid",
                "spool",
                "started",
                "subscriptions",
                "uptime_s",
                "version"
            ]
        );
        assert_eq!(
            keys(&v["config"]),
            [
                "error",
                "loaded",
                "path",
                "refused_at",
                "restart_required",
                "warnings"
            ]
        );
        assert_eq!(
            keys(&v["spool"]),
            [
                "backlog",
                "dir",
                "in_flight",
                "last_rejection",
                "rejected",
                "rejected_dir"
            ]
        );
        assert_eq!(
            keys(&v["spool"]["last_rejection"]),
            ["file", "not_moved", "reason", "time"]
        );
        assert_eq!(keys(&v["journal"]), ["available", "path", "size_bytes"]);
        assert_eq!(
            keys(&v["subscriptions"][0]),
            [
                "active",
                "auth",
                "dead",
                "delivered",
                "endpoint",
                "events",
                "held",
                "in_config",
                "last_error",
                "last_failure",
                "last_success",
                "name",
                "pending",
                "retrying",
                "tls_client_cert",
                "unmatched"
            ]
        );
        assert_eq!(
            keys(&v["subscriptions"][0]["auth"]),
            [
                "last_token_error",
                "last_token_error_at",
                "token_lifetime_assumed",
                "token_url",
                "token_valid_until",
                "type"
            ]
        );
        // What the command line reads back is what the daemon sent.
        let back: StatusResponse = serde_json::from_value(v).expect("decode");
        assert_eq!(back, r);
    }
}
