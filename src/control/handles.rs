//! The narrow handles a control command is applied with: the live config,
//! the journal, the dispatcher and the spool's status. Built once by the
//! daemon at start-up; a command never sees the daemon itself, so nothing
//! here (or in `cmd/`) depends on `crate::daemon`.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use crate::config::live::{LiveConfig, ReloadRefused, Snapshot};
use crate::config::{Config, SpoolConfig};
use crate::delivery::Dispatcher;
use crate::intake::{self as spool, RejectionSummary, Rejections, SpoolMsg};
use crate::journal::Journal;
use crate::logging;

/// What commands (and the daemon's signals and config watcher) act on.
pub struct Handles {
    pub live: Arc<LiveConfig>,
    pub journal: Arc<Journal>,
    pub dispatcher: Arc<Dispatcher>,
    pub spool: SpoolHandle,
    /// When the daemon started, for `status`.
    pub started_ms: u64,
}

/// The spool as commands see it: its counts and rejections, and a nudge to
/// rescan (after a reload).
pub struct SpoolHandle {
    tx: std_mpsc::Sender<SpoolMsg>,
    rejections: Arc<Rejections>,
}

impl SpoolHandle {
    pub fn new(tx: std_mpsc::Sender<SpoolMsg>, rejections: Arc<Rejections>) -> SpoolHandle {
        SpoolHandle { tx, rejections }
    }

    /// Files waiting in the spool, files in flight. Lists two directories:
    /// blocking.
    pub fn backlog(&self, cfg: &SpoolConfig) -> (usize, usize) {
        spool::backlog(cfg)
    }

    /// Files rejected since start.
    pub fn rejections(&self) -> RejectionSummary {
        self.rejections.summary()
    }

    /// Asks the spool thread to scan now; ignored once it has stopped.
    pub fn rescan(&self) {
        let _ = self.tx.send(SpoolMsg::Rescan);
    }
}

impl Handles {
    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.live.get()
    }

    /// The one reload path (file watcher, SIGHUP, `cdrhook reload`, control
    /// socket): reads the file once, validates it, and puts a valid version
    /// in force everywhere, one reload at a time (see `config::live`).
    /// Returns the snapshot in force afterwards. Blocking: call it from a
    /// blocking thread (`cmd::lane::reload`).
    pub fn reload(&self, force: bool) -> Result<Arc<Snapshot>, ReloadRefused> {
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
        self.spool.rescan();
    }
}
