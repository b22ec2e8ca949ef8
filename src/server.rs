//! The daemon: starts every part in order, routes signals and config
//! changes to them, and stops them in order.
//!
//! Start-up: config → control socket (refuse if another daemon answers) →
//! journal → deliveries restored → spool thread (recovery, first scan) →
//! watchers → READY=1. Shutdown: stop intake → let attempts in flight finish
//! (at most `delivery.timeout`) → flush the journal → remove the socket.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::control;
use crate::delivery::{Context, Dispatcher};
use crate::journal::Journal;
use crate::logging;
use crate::reload::{self, LiveConfig, Snapshot};
use crate::shutdown::Shutdown;
use crate::spool::{self, Spool, SpoolMsg};
use crate::time::now_ms;

/// sled's page cache. The journal is written sequentially and read mostly
/// by recent keys, so a small cache keeps the resident size small.
const JOURNAL_CACHE: u64 = 8 << 20;

/// How long after an unflushed write the journal is flushed.
const FLUSH_AFTER: Duration = Duration::from_secs(1);

/// How often retention runs. Far slower than any rescan, so an idle daemon
/// stays idle.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Operator requests that arrive as signals (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Reload,
    ResendFailed,
    LogStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Control(String),
    #[error("cannot open the journal at {path} (is another cdrhook using it?): {source}")]
    Journal {
        path: PathBuf,
        source: crate::journal::JournalError,
    },
    #[error("spool: {0}")]
    Spool(std::io::Error),
    #[error("{0}")]
    Delivery(String),
}

/// What the control commands and signal handlers act on.
pub struct Daemon {
    pub live: Arc<LiveConfig>,
    pub journal: Arc<Journal>,
    pub dispatcher: Arc<Dispatcher>,
    spool_tx: std_mpsc::Sender<SpoolMsg>,
    pub started_ms: u64,
    /// Files rejected since start, for `status`.
    pub rejections: Arc<spool::Rejections>,
}

impl Daemon {
    pub fn config(&self) -> Arc<Config> {
        self.live.get()
    }

    /// The one reload path (file watcher, SIGHUP, `cdrhook reload`, control
    /// socket): reads the file once, validates it, and puts a valid version
    /// in force everywhere, one reload at a time (see `reload`). Returns the
    /// snapshot in force afterwards. Blocking: call it from a blocking
    /// thread.
    pub fn reload(&self, force: bool) -> Result<Arc<Snapshot>, String> {
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Reloading,
                sd_notify::NotifyState::monotonic_usec_now()
                    .unwrap_or(sd_notify::NotifyState::Custom("")),
            ],
        );
        let result = self
            .live
            .reload(force, |snapshot| self.apply(&snapshot.config))
            .map(|r| r.snapshot().clone());
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        result
    }

    /// Hands a version just published to the parts that keep their own
    /// copy. Runs under the reload lock, so parts see versions in order.
    fn apply(&self, cfg: &Config) {
        logging::apply_level(cfg.log_level.as_deref());
        self.dispatcher.apply_subscriptions(&cfg.subscriptions);
        // A shorter rescan_interval should not wait for the old one to run out.
        let _ = self.spool_tx.send(SpoolMsg::Rescan);
    }

    pub fn spool_backlog(&self) -> (usize, usize) {
        spool::backlog(&self.config().spool)
    }
}

/// Runs the daemon until `shutdown` completes. Signals (reload, resend,
/// status) arrive on `signals`; tests drive both directly.
pub async fn run(
    config_path: &Path,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let live = Arc::new(LiveConfig::load(config_path)?);
    let cfg = live.get();
    logging::apply_level(cfg.log_level.as_deref());

    let listener = control::bind(&cfg.control.socket).map_err(StartError::Control)?;
    let socket_path = cfg.control.socket.clone();
    let started = start(live, cfg, listener).await;
    let (daemon, parts) = match started {
        Ok(ok) => ok,
        Err(e) => {
            let _ = std::fs::remove_file(&socket_path);
            return Err(e);
        }
    };

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tokio::pin!(shutdown);
    let mut config_changes = parts.config_changes;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(signal) = signals.recv() => handle_signal(&daemon, signal),
            Some(()) = config_changes.recv() => {
                // Reading the files is off the runtime (cmd::lane).
                let d = daemon.clone();
                tokio::spawn(async move {
                    let _ = crate::cmd::lane::reload(&d, |d| d.reload(false)).await;
                });
            }
        }
    }

    log::info!("stopping: no new files; letting attempts in flight finish");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = parts.stop.send(true);
    let _ = daemon.spool_tx.send(SpoolMsg::Stop);
    let spool_thread = parts.spool_thread;
    let _ = tokio::task::spawn_blocking(move || spool_thread.join()).await;
    let grace = daemon.config().delivery.timeout + Duration::from_secs(1);
    daemon.dispatcher.shutdown(grace).await;
    let _ = parts.control.await;
    if let Err(e) = daemon.journal.flush() {
        log::error!("stopping: {e}");
    }
    let _ = std::fs::remove_file(&socket_path);
    log::info!("stopped");
    Ok(())
}

struct Parts {
    stop: watch::Sender<bool>,
    spool_thread: std::thread::JoinHandle<()>,
    control: tokio::task::JoinHandle<()>,
    config_changes: mpsc::UnboundedReceiver<()>,
    // Dropping a watcher stops it: keep them for the daemon's lifetime.
    _watchers: Vec<notify::RecommendedWatcher>,
}

async fn start(
    live: Arc<LiveConfig>,
    cfg: Arc<Config>,
    listener: tokio::net::UnixListener,
) -> Result<(Arc<Daemon>, Parts), StartError> {
    let journal = Arc::new(
        Journal::open(&cfg.journal.path, JOURNAL_CACHE).map_err(|source| StartError::Journal {
            path: cfg.journal.path.clone(),
            source,
        })?,
    );
    Spool::prepare(&cfg.spool).map_err(StartError::Spool)?;

    let (spool_tx, spool_rx) = std_mpsc::channel();
    let files_live = live.clone();
    let ctx = Arc::new(Context {
        journal: journal.clone(),
        live: live.clone(),
        files_finished: Box::new(move |names| {
            let spool = &files_live.get().spool;
            for name in names {
                spool::finish_file(spool, &name);
            }
        }),
    });
    let dispatcher = Arc::new(Dispatcher::new(ctx, tokio::runtime::Handle::current()));
    dispatcher.apply_subscriptions(&cfg.subscriptions);
    restore(&journal, &dispatcher);

    let mut watchers = Vec::new();
    // CDRHOOK_NO_SPOOL_WATCH=1 runs on rescans alone: for filesystems where
    // inotify does not work (some network mounts), and for the tests that
    // prove the rescan catches what the watcher misses.
    let watch = if std::env::var_os("CDRHOOK_NO_SPOOL_WATCH").is_some_and(|v| v == "1") {
        Err(notify::Error::generic(
            "disabled by CDRHOOK_NO_SPOOL_WATCH=1",
        ))
    } else {
        spool::watch(&cfg.spool.dir, spool_tx.clone())
    };
    match watch {
        Ok(w) => watchers.push(w),
        Err(e) => log::warn!(
            "spool: file watcher unavailable ({e}); files are found by the rescan every {}",
            humantime::format_duration(cfg.spool.rescan_interval)
        ),
    }
    let spool = Spool::new(live.clone(), journal.clone(), dispatcher.clone(), spool_rx);
    let rejections = spool.rejections();
    let spool_thread = std::thread::Builder::new()
        .name("spool".into())
        .spawn(move || spool.run())
        .map_err(StartError::Spool)?;

    let (config_tx, config_changes) = mpsc::unbounded_channel();
    match reload::watch(live.path(), config_tx) {
        Ok(w) => watchers.push(w),
        Err(e) => log::warn!(
            "config: cannot watch {} ({e}); reload with SIGHUP or `cdrhook reload`",
            live.path().display()
        ),
    }

    let daemon = Arc::new(Daemon {
        live,
        journal,
        dispatcher,
        spool_tx,
        started_ms: now_ms(),
        rejections,
    });
    let (stop, stop_rx) = watch::channel(false);
    let control = tokio::spawn(control::serve(
        listener,
        daemon.clone(),
        Shutdown::new(stop_rx.clone()),
    ));
    tokio::spawn(prune_loop(daemon.clone(), Shutdown::new(stop_rx.clone())));
    let written = Arc::new(tokio::sync::Notify::new());
    let wake = written.clone();
    daemon.journal.set_on_write(move || wake.notify_one());
    tokio::spawn(flush_loop(
        daemon.clone(),
        written,
        Shutdown::new(stop_rx.clone()),
    ));
    crate::watchdog::start(tokio::runtime::Handle::current(), stop_rx);
    log::info!(
        "cdrhook {} started: spool {}, {} subscription(s), control socket {}",
        env!("CARGO_PKG_VERSION"),
        cfg.spool.dir.display(),
        cfg.subscriptions.len(),
        cfg.control.socket.display()
    );
    Ok((
        daemon,
        Parts {
            stop,
            spool_thread,
            control,
            config_changes,
            _watchers: watchers,
        },
    ))
}

/// Hands the journal's open deliveries back to their workers.
fn restore(journal: &Journal, dispatcher: &Dispatcher) {
    let open = journal.take_open_deliveries();
    if !open.is_empty() {
        log::info!("resuming {} open deliveries from the journal", open.len());
    }
    dispatcher.resume(open, false);
}

/// Signals only start work: it runs off the runtime (`cmd::lane`), and
/// this loop goes on at once.
fn handle_signal(daemon: &Arc<Daemon>, signal: Signal) {
    let d = daemon.clone();
    match signal {
        Signal::Reload => {
            log::info!("SIGHUP: reloading the config");
            tokio::spawn(async move {
                let _ = crate::cmd::lane::reload(&d, |d| d.reload(true)).await;
            });
        }
        Signal::ResendFailed => crate::cmd::resend::on_signal(&d),
        Signal::LogStatus => {
            tokio::spawn(async move {
                if let Ok(status) = crate::cmd::lane::light(&d, crate::cmd::status::collect).await {
                    for line in crate::cmd::status::render(&status).lines() {
                        log::info!("status: {line}");
                    }
                }
            });
        }
    }
}

async fn prune_loop(daemon: Arc<Daemon>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        let d = daemon.clone();
        let result = tokio::task::spawn_blocking(move || {
            let retention = d.config().journal.retention;
            let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
            d.journal.prune(cutoff, 50_000)
        })
        .await;
        match result {
            Ok(Ok(stats)) if stats.cdrs > 0 => log::info!(
                "retention: pruned {} CDRs, {} deliveries, {} attempts",
                stats.cdrs,
                stats.deliveries,
                stats.attempts
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::error!("retention: {e}"),
            Err(e) => log::error!("retention: {e}"),
        }
    }
}

/// Flushes the journal a second after writes that `ingest` does not flush
/// itself (attempt results): a crash loses at most that second of results,
/// which only means resending those CDRs. Sleeps while nothing is written.
async fn flush_loop(
    daemon: Arc<Daemon>,
    written: Arc<tokio::sync::Notify>,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = written.notified() => {}
        }
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(FLUSH_AFTER) => {}
        }
        let d = daemon.clone();
        match tokio::task::spawn_blocking(move || d.journal.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("{e}"),
            Err(e) => log::error!("journal flush: {e}"),
        }
    }
}
