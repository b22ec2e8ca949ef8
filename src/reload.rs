//! The live config: the version in force, whether the last reload was
//! refused and why, and the watcher that notices the file change.
//!
//! Reloading only decides *which* config is in force; `server` applies it to
//! the other parts. A refused version changes nothing but the status.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{self, Config};
use crate::time::now_ms;

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

pub struct LiveConfig {
    path: PathBuf,
    current: RwLock<Arc<Config>>,
    status: Mutex<LoadStatus>,
    /// The text last read, to skip no-op reloads from the watcher (a
    /// `touch`, an editor saving twice, the same bad version written again).
    text: Mutex<Option<String>>,
}

pub enum Reloaded {
    Applied(Arc<Config>),
    Unchanged,
}

impl LiveConfig {
    /// Loads the config for start-up: an error here stops the daemon.
    pub fn load(path: &Path) -> Result<LiveConfig, config::ConfigError> {
        let cfg = config::load(path)?;
        Ok(LiveConfig {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(cfg)),
            status: Mutex::new(LoadStatus {
                loaded_ms: now_ms(),
                ..LoadStatus::default()
            }),
            text: Mutex::new(std::fs::read_to_string(path).ok()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self) -> Arc<Config> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn status(&self) -> LoadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the file again. A valid version is put in force (less the
    /// settings that need a restart) and returned; an invalid one is refused
    /// as a whole and its message kept for `status`. With `force` false an
    /// unchanged file is a no-op.
    pub fn reload(&self, force: bool) -> Result<Reloaded, String> {
        let text = std::fs::read_to_string(&self.path).ok();
        {
            let mut last = self.text.lock().unwrap_or_else(|p| p.into_inner());
            if !force && text.is_some() && *last == text {
                return Ok(Reloaded::Unchanged);
            }
            *last = text;
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match config::load(&self.path) {
            Ok(mut new) => {
                let old = self.get();
                let restart = old.restart_required(&new);
                // Keep what cannot change under a running daemon.
                new.spool.dir = old.spool.dir.clone();
                new.journal.path = old.journal.path.clone();
                new.control.socket = old.control.socket.clone();
                for key in &restart {
                    log::warn!(
                        "config: {key} changed in {}: it takes effect after a restart",
                        self.path.display()
                    );
                }
                let new = Arc::new(new);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
                *status = LoadStatus {
                    loaded_ms: now_ms(),
                    error: None,
                    refused_ms: None,
                    restart_required: restart,
                };
                log::info!(
                    "config reloaded from {}: {} subscription(s)",
                    self.path.display(),
                    new.subscriptions.len()
                );
                Ok(Reloaded::Applied(new))
            }
            Err(e) => {
                let message = e.to_string();
                log::error!(
                    "config reload refused, the previous version stays in force: {message}"
                );
                status.error = Some(message.clone());
                status.refused_ms = Some(now_ms());
                Err(message)
            }
        }
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
