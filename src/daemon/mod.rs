//! The daemon: starts every part in order, routes signals and config
//! changes to them, and stops them in order. It is the last stage: it may
//! use every other module, and nothing uses it (commands get the narrow
//! [`Handles`], not the daemon).
//!
//! - `signals`: the one signal mechanism (signal-hook's thread) and what
//!   each signal starts;
//! - `timers`: the journal flush and retention;
//! - `watchdog`: systemd's watchdog thread.
//!
//! Start-up: config → control socket (refuse if another daemon answers) →
//! HTTP listener, if configured →
//! journal → deliveries restored → spool thread (recovery, first scan) →
//! watchers → READY=1. Shutdown: stop intake → let attempts in flight finish
//! (at most `delivery.timeout`) → flush the journal → remove the sockets
//! (the HTTP listener's own task removes its socket once it stopped).

pub mod signals;
mod timers;
pub mod watchdog;

pub use signals::Signal;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::live::{self, LiveConfig};
use crate::config::Config;
use crate::control::{self, Handles, SpoolHandle};
use crate::delivery::{http, Context, Dispatcher};
use crate::intake::{self as spool, Spool, SpoolMsg};
use crate::journal::Journal;
use crate::logging;
use crate::shutdown::Shutdown;
use crate::time::now_ms;

/// Why the daemon could not start (it exits 1 with this message).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Control(#[from] control::BindError),
    #[error(transparent)]
    Http(#[from] crate::web::BindError),
    #[error("cannot open the journal at {path} (is another cdrhook using it?): {source}")]
    Journal {
        path: PathBuf,
        source: crate::journal::JournalError,
    },
    #[error("spool: {0}")]
    Spool(std::io::Error),
}

/// The running daemon, as its own parts (signals, config watcher, stop
/// order) hold it: the handles commands get, and the spool thread's
/// channel to stop it.
pub struct Daemon {
    pub handles: Arc<Handles>,
    spool_tx: std_mpsc::Sender<SpoolMsg>,
}

/// Runs the daemon until `shutdown` completes. Signals (reload, resend,
/// status) arrive on `signals`; tests drive both directly.
pub async fn run(
    config_path: &Path,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let live = Arc::new(LiveConfig::load(config_path, http::build_agent)?);
    let cfg = live.get();
    logging::apply_level(cfg.log_level.as_deref());

    let listener = control::bind(&cfg.control.socket)?;
    let socket_path = cfg.control.socket.clone();
    let http = match cfg.http.as_ref().map(crate::web::bind).transpose() {
        Ok(http) => http,
        Err(e) => {
            let _ = std::fs::remove_file(&socket_path);
            return Err(e.into());
        }
    };
    let http_socket = http
        .as_ref()
        .and_then(|l| l.socket_path().map(Path::to_path_buf));
    let started = start(live, cfg, listener, http).await;
    let (daemon, parts) = match started {
        Ok(ok) => ok,
        Err(e) => {
            let _ = std::fs::remove_file(&socket_path);
            if let Some(p) = &http_socket {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tokio::pin!(shutdown);
    let mut config_changes = parts.config_changes;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(signal) = signals.recv() => signals::handle(&daemon.handles, signal),
            Some(()) = config_changes.recv() => {
                // Reading the files is off the runtime (cmd::lane).
                let h = daemon.handles.clone();
                tokio::spawn(async move {
                    let _ = control::cmd::lane::reload(&h, |h| h.reload(false)).await;
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
    let grace = daemon
        .handles
        .config()
        .delivery
        .timeout
        .saturating_add(Duration::from_secs(1));
    let all_ended = daemon.handles.dispatcher.shutdown(grace).await;
    let _ = parts.control.await;
    if let Some(http) = parts.http {
        let _ = http.await;
    }
    // A clean stop marks the journal so the next start trusts its counts;
    // with an attempt still running (it could still write), only flush.
    let journal = daemon.handles.journal.clone();
    let closed = tokio::task::spawn_blocking(move || {
        if all_ended {
            journal.close_clean()
        } else {
            journal.flush()
        }
    })
    .await;
    match closed {
        Ok(Err(e)) => log::error!("stopping: {e}"),
        Err(e) => log::error!("stopping: the journal's last flush failed: {e}"),
        Ok(Ok(())) => {}
    }
    let _ = std::fs::remove_file(&socket_path);
    log::info!("stopped");
    Ok(())
}

struct Parts {
    stop: watch::Sender<bool>,
    spool_thread: std::thread::JoinHandle<()>,
    control: tokio::task::JoinHandle<()>,
    http: Option<tokio::task::JoinHandle<()>>,
    config_changes: mpsc::UnboundedReceiver<()>,
    // Dropping a watcher stops it: keep them for the daemon's lifetime.
    _watchers: Vec<notify::RecommendedWatcher>,
    _spool_watch: Option<spool::SpoolWatch>,
}

async fn start(
    live: Arc<LiveConfig>,
    cfg: Arc<Config>,
    listener: tokio::net::UnixListener,
    http: Option<crate::web::Listener>,
) -> Result<(Daemon, Parts), StartError> {
    let journal = Arc::new(
        Journal::open(&cfg.journal.path, crate::journal::CACHE_BYTES).map_err(|source| {
            StartError::Journal {
                path: cfg.journal.path.clone(),
                source,
            }
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
        tokens: Default::default(),
    });
    let dispatcher = Arc::new(Dispatcher::new(ctx, tokio::runtime::Handle::current()));
    dispatcher.apply_subscriptions(&cfg.subscriptions);
    restore(&journal, &dispatcher);

    let mut watchers = Vec::new();
    // CDRHOOK_NO_SPOOL_WATCH=1 runs on rescans alone: for filesystems where
    // inotify does not work (some network mounts), and for the tests that
    // prove the rescan catches what the watcher misses.
    let watch = if std::env::var_os("CDRHOOK_NO_SPOOL_WATCH").is_some_and(|v| v == "1") {
        Err(std::io::Error::other(
            "disabled by CDRHOOK_NO_SPOOL_WATCH=1",
        ))
    } else {
        spool::watch(&cfg.spool.dir, spool_tx.clone())
    };
    let spool_watch = match watch {
        Ok(w) => Some(w),
        Err(e) => {
            log::warn!(
                "spool: file watcher unavailable ({e}); files are found by the rescan every {}",
                humantime::format_duration(cfg.spool.rescan_interval)
            );
            None
        }
    };
    let spool = Spool::new(live.clone(), journal.clone(), dispatcher.clone(), spool_rx);
    let rejections = spool.rejections();
    let spool_thread = std::thread::Builder::new()
        .name("spool".into())
        .spawn(move || spool.run())
        .map_err(StartError::Spool)?;

    let (config_tx, config_changes) = mpsc::unbounded_channel();
    match live::watch(live.path(), config_tx) {
        Ok(w) => watchers.push(w),
        Err(e) => log::warn!(
            "config: cannot watch {} ({e}); reload with SIGHUP or `cdrhook reload`",
            live.path().display()
        ),
    }

    let handles = Arc::new(Handles {
        live: live.clone(),
        journal: journal.clone(),
        dispatcher,
        spool: SpoolHandle::new(spool_tx.clone(), rejections),
        started_ms: now_ms(),
    });
    let daemon = Daemon { handles, spool_tx };
    let (stop, stop_rx) = watch::channel(false);
    let control = tokio::spawn(control::serve(
        listener,
        daemon.handles.clone(),
        Shutdown::new(stop_rx.clone()),
    ));
    let http = http.map(|l| {
        log::info!("http: listening on {}", l.describe());
        let token = cfg.http.as_ref().and_then(|h| h.token.clone());
        let stop = Shutdown::new(stop_rx.clone());
        tokio::spawn(crate::web::serve(l, daemon.handles.clone(), token, stop))
    });
    tokio::spawn(timers::prune(
        journal.clone(),
        live,
        Shutdown::new(stop_rx.clone()),
    ));
    tokio::spawn(timers::flush(journal, Shutdown::new(stop_rx.clone())));
    watchdog::start(tokio::runtime::Handle::current(), stop_rx);
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
            http,
            config_changes,
            _watchers: watchers,
            _spool_watch: spool_watch,
        },
    ))
}

/// Hands the journal's open deliveries back to their workers.
fn restore(journal: &Journal, dispatcher: &Dispatcher) {
    // Holds first: a resumed delivery must not go out before its
    // endpoint's `Retry-After` ends.
    dispatcher.restore_endpoint_holds(journal.endpoint_holds(crate::time::now_ms()));
    let open = journal.take_open_deliveries();
    if !open.is_empty() {
        log::info!("resuming {} open deliveries from the journal", open.len());
    }
    dispatcher.resume(open, false);
}
