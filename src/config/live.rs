//! The live config: one immutable [`Snapshot`] (the config, the HTTP agent
//! built for it, and its load status) that every part reads, and the one
//! path every reload takes.
//!
//! Rules this module keeps:
//!
//! - One reload at a time. The file watcher, SIGHUP, `cdrhook reload` and the
//!   control socket all end in [`LiveConfig::reload`], which holds a lock
//!   from reading the file to the end of applying it; so two reloads never
//!   interleave, and the last one to run applies the file as it is now.
//! - The text validated is the text applied: the file is read once
//!   ([`config::read`]), and those bytes are parsed and put in force.
//! - A new version is published whole: the config, the agent built for its
//!   `delivery` settings and its status go into one new `Arc<Snapshot>`,
//!   swapped in one write, so the dispatcher and `status` read one version,
//!   never a mix. Building the agent is part of validating: a `ca_file`
//!   that cannot be read refuses the version like a YAML error would.
//! - A refused version changes nothing but the status (a new snapshot with
//!   the same config and agent, and the error).
//!
//! Reloading is blocking work (file reads, certificates): call it from a
//! blocking thread, never from the async runtime's threads.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{self, Config, ConfigError, DeliveryConfig};
use crate::locks::{lock, read, write};
use crate::time::now_ms;

/// Builds the one HTTP agent for a version's `delivery` settings, keeping
/// up to the given number of idle connections per host (see
/// [`idle_per_host`]); the daemon passes `delivery::http::build_agent`.
/// Passed in, so the config stage does not depend on the delivery stage
/// after it.
pub type AgentBuilder = fn(&DeliveryConfig, usize) -> Result<ureq::Agent, AgentError>;

/// Idle connections the agent keeps per host: as many as can be in flight
/// to one host, `delivery.concurrency` for each subscription (they may all
/// post to one host). Fewer, and every attempt beyond them closes its
/// connection when it ends and the next one opens a new connection (and,
/// for https, does a new TLS handshake): ureq keeps 3 by default, fewer
/// than the default concurrency of 4 (BENCHMARKS.md, "Connection reuse").
/// The pool only keeps connections that were in use; idle ones close after
/// ureq's 15 s.
pub fn idle_per_host(cfg: &Config) -> usize {
    cfg.delivery
        .concurrency
        .max(1)
        .saturating_mul(cfg.subscriptions.len().max(1))
}

/// Why the HTTP agent of a version could not be built: its `ca_file`.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("delivery.ca_file {}: {source}", path.display())]
    CaFileUnreadable {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("delivery.ca_file {}: {message}", path.display())]
    CaFileInvalid {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("delivery.ca_file {}: no PEM certificate in it", path.display())]
    CaFileEmpty { path: std::path::PathBuf },
}

/// A reload that was refused: the previous version stays in force. The
/// message names the file (and line and column, for a YAML mistake).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReloadRefused(pub String);

/// How long the file must be quiet before we read it: editors write a
/// temporary file and rename it, or truncate and write, in several steps.
const DEBOUNCE: Duration = Duration::from_millis(150);

#[derive(Debug, Clone, Default)]
pub struct LoadStatus {
    pub loaded_ms: u64,
    /// The last refused version's message, until a good version loads.
    pub error: Option<String>,
    pub refused_ms: Option<u64>,
    /// Settings changed in the file that wait for a restart.
    pub restart_required: Vec<&'static str>,
}

/// One version of the daemon's configuration, as every part sees it.
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Built for `config.delivery` (timeout, `ca_file`), published with it.
    pub agent: ureq::Agent,
    /// Counts the versions put in force, from 1 at start-up.
    pub generation: u64,
    pub status: LoadStatus,
}

/// A snapshot's `delivery` settings, keeping the snapshot alive.
pub struct DeliverySettings(Arc<Snapshot>);

impl Deref for DeliverySettings {
    type Target = DeliveryConfig;
    fn deref(&self) -> &DeliveryConfig {
        &self.0.config.delivery
    }
}

pub struct LiveConfig {
    path: PathBuf,
    current: RwLock<Arc<Snapshot>>,
    /// Held for a whole reload: serializes reloads from every source. Holds
    /// the text last read, to skip no-op reloads from the watcher (a
    /// `touch`, an editor saving twice, the same bad version written again).
    reloading: Mutex<Option<String>>,
    build: AgentBuilder,
}

pub enum Reloaded {
    /// A new version was put in force (and handed to `apply`).
    Applied(Arc<Snapshot>),
    /// The file had not changed since it was last read; nothing was done.
    Unchanged(Arc<Snapshot>),
}

impl Reloaded {
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        match self {
            Reloaded::Applied(s) | Reloaded::Unchanged(s) => s,
        }
    }
}

impl LiveConfig {
    /// Loads the config for start-up: an error here stops the daemon.
    pub fn load(path: &Path, build: AgentBuilder) -> Result<LiveConfig, ConfigError> {
        let source = config::read(path)?;
        let cfg = config::from_source(&source, path, &config::env_var)?;
        let agent = build_agent(build, path, &cfg)?;
        log_warnings(&cfg);
        Ok(LiveConfig {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(Snapshot {
                config: Arc::new(cfg),
                agent,
                generation: 1,
                status: LoadStatus {
                    loaded_ms: now_ms(),
                    ..LoadStatus::default()
                },
            })),
            reloading: Mutex::new(Some(source.text)),
            build,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version in force.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        read(&self.current).clone()
    }

    pub fn get(&self) -> Arc<Config> {
        self.snapshot().config.clone()
    }

    /// The delivery settings in force.
    pub fn delivery(&self) -> DeliverySettings {
        DeliverySettings(self.snapshot())
    }

    pub fn status(&self) -> LoadStatus {
        self.snapshot().status.clone()
    }

    /// Reads the file once and, if it is valid, publishes it as the new
    /// snapshot (less the settings that need a restart) and calls `apply`
    /// with it, all under the reload lock. An invalid version is refused as
    /// a whole and its message kept for `status`. With `force` false an
    /// unchanged file is a no-op. A forced reload also builds the agent
    /// again, so a renewed `ca_file` is read.
    pub fn reload(
        &self,
        force: bool,
        apply: impl FnOnce(&Snapshot),
    ) -> Result<Reloaded, ReloadRefused> {
        let mut last = lock(&self.reloading);
        let old = self.snapshot();
        let source = match config::read(&self.path) {
            Ok(source) => source,
            Err(e) => {
                *last = None;
                return Err(self.refuse(&old, e.to_string()));
            }
        };
        if !force && last.as_deref() == Some(source.text.as_str()) {
            return Ok(Reloaded::Unchanged(old));
        }
        *last = Some(source.text.clone());
        let new = config::from_source(&source, &self.path, &config::env_var).and_then(|new| {
            let agent = if force
                || new.delivery.timeout != old.config.delivery.timeout
                || new.delivery.ca_file != old.config.delivery.ca_file
                || idle_per_host(&new) != idle_per_host(&old.config)
            {
                build_agent(self.build, &self.path, &new)?
            } else {
                old.agent.clone()
            };
            Ok((new, agent))
        });
        let (mut new, agent) = match new {
            Ok(ok) => ok,
            Err(e) => return Err(self.refuse(&old, e.to_string())),
        };
        let restart = old.config.restart_required(&new);
        // Keep what cannot change under a running daemon.
        new.spool.dir = old.config.spool.dir.clone();
        new.journal.path = old.config.journal.path.clone();
        new.control.socket = old.config.control.socket.clone();
        new.http = old.config.http.clone();
        for key in &restart {
            log::warn!(
                "config: {key} changed in {}: it takes effect after a restart",
                self.path.display()
            );
        }
        log_warnings(&new);
        let snapshot = Arc::new(Snapshot {
            config: Arc::new(new),
            agent,
            generation: old.generation + 1,
            status: LoadStatus {
                loaded_ms: now_ms(),
                error: None,
                refused_ms: None,
                restart_required: restart,
            },
        });
        self.publish(snapshot.clone());
        apply(&snapshot);
        log::info!(
            "config reloaded from {}: {} subscription(s)",
            self.path.display(),
            snapshot.config.subscriptions.len()
        );
        Ok(Reloaded::Applied(snapshot))
    }

    fn publish(&self, snapshot: Arc<Snapshot>) {
        *write(&self.current) = snapshot;
    }

    /// Keeps `old` in force with the refusal in its status; returns the
    /// message.
    fn refuse(&self, old: &Snapshot, message: String) -> ReloadRefused {
        log::error!("config reload refused, the previous version stays in force: {message}");
        crate::metrics::reload_refused();
        self.publish(Arc::new(Snapshot {
            config: old.config.clone(),
            agent: old.agent.clone(),
            generation: old.generation,
            status: LoadStatus {
                error: Some(message.clone()),
                refused_ms: Some(now_ms()),
                ..old.status.clone()
            },
        }));
        ReloadRefused(message)
    }
}

fn build_agent(build: AgentBuilder, path: &Path, cfg: &Config) -> Result<ureq::Agent, ConfigError> {
    build(&cfg.delivery, idle_per_host(cfg)).map_err(|e| ConfigError::Unpositioned {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn log_warnings(cfg: &Config) {
    for w in &cfg.warnings {
        log::warn!("config: {w}");
    }
}

/// Watches the config file's directory (editors replace the file by
/// rename, which a watch on the file itself would lose) and sends one tick
/// per burst of changes to the file.
pub fn watch(
    path: &Path,
    tx: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match res {
            // Our own reads (open, close-after-read) must not trigger reloads.
            Ok(event) => {
                event.need_rescan()
                    || (matches!(
                        event.kind,
                        EventKind::Create(_)
                            | EventKind::Modify(_)
                            | EventKind::Access(AccessKind::Close(AccessMode::Write))
                    ) && event
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_os_string()) == name))
            }
            Err(_) => true,
        };
        if relevant {
            let _ = raw_tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Wait for the burst to end.
            loop {
                match tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(name: &str) -> String {
        format!("subscriptions:\n  - name: {name}\n    endpoint: http://127.0.0.1:1/{name}\n    events: [\"*\"]\n")
    }

    #[test]
    fn the_agent_keeps_an_idle_connection_for_every_request_that_can_be_in_flight() {
        let parse = |yaml: &str| {
            config::parse(yaml, Path::new("/tmp/c.yaml"), &|_| None).expect("test config")
        };
        let one = parse(&sub("a"));
        assert_eq!(
            idle_per_host(&one),
            4,
            "the default concurrency, one subscription"
        );
        let three = parse(&format!(
            "delivery:\n  concurrency: 16\n{}{}{}",
            sub("a"),
            sub("b").replace("subscriptions:\n", ""),
            sub("c").replace("subscriptions:\n", ""),
        ));
        assert_eq!(three.subscriptions.len(), 3);
        assert_eq!(idle_per_host(&three), 48);
    }

    #[test]
    fn reloads_publish_whole_versions_in_order_and_a_refusal_changes_only_the_status() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, sub("a")).expect("write");
        let live = LiveConfig::load(&path, crate::delivery::http::build_agent).expect("load");
        let first = live.snapshot();
        assert_eq!(first.generation, 1);

        let mut applied = Vec::new();
        let mut record = |s: &Snapshot| applied.push(s.config.subscriptions[0].name.clone());

        // Unchanged file: nothing happens unless forced.
        assert!(matches!(
            live.reload(false, &mut record),
            Ok(Reloaded::Unchanged(_))
        ));
        assert!(matches!(
            live.reload(true, &mut record),
            Ok(Reloaded::Applied(_))
        ));

        std::fs::write(&path, sub("b")).expect("write");
        let b = match live.reload(false, &mut record) {
            Ok(Reloaded::Applied(s)) => s,
            _ => panic!("b was not applied"),
        };
        assert_eq!(b.generation, 3);
        assert!(Arc::ptr_eq(&live.snapshot(), &b));

        // A refused version keeps b's config and agent; only the status changes.
        std::fs::write(&path, "subscriptions:\n  - name: c\n").expect("write");
        let err = live.reload(false, &mut record).err().expect("refused").0;
        assert!(err.contains("config.yaml:"), "{err}");
        let after = live.snapshot();
        assert!(Arc::ptr_eq(&after.config, &b.config));
        assert_eq!(after.generation, b.generation);
        assert_eq!(after.status.error.as_deref(), Some(err.as_str()));
        // The same bad text again is not read as new from the watcher.
        assert!(matches!(
            live.reload(false, &mut record),
            Ok(Reloaded::Unchanged(_))
        ));

        // A ca_file that cannot be read refuses the whole version.
        std::fs::write(
            &path,
            format!("delivery:\n  ca_file: /nonexistent/ca.pem\n{}", sub("d")),
        )
        .expect("write");
        let err = live.reload(false, &mut record).err().expect("refused").0;
        assert!(
            err.contains("delivery.ca_file /nonexistent/ca.pem"),
            "{err}"
        );
        assert!(Arc::ptr_eq(&live.snapshot().config, &b.config));

        std::fs::write(&path, sub("e")).expect("write");
        assert!(live.reload(false, &mut record).is_ok());
        let e = live.snapshot();
        assert_eq!(e.status.error, None);
        assert_eq!(e.generation, 4);
        assert_eq!(applied, ["a", "b", "e"]);
    }
}
