//! The spool: the directory the phone system drops CDR files into, and the
//! directories cdrhook keeps beside it (`.inflight/`, archive, rejected).
//! This module owns every filesystem operation on them.
//!
//! One thread takes files in, in batches: read and parse each, journal the
//! batch with one flush, and only then move each file into `.inflight/`,
//! where it stays until every delivery of its CDRs has ended. The file
//! watcher only gives hints; a full scan at start-up, every
//! `rescan_interval` and after an inotify overflow is what guarantees that
//! nothing is missed.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::cdr::{parse_file, Cdr, Rejection};
use crate::config::{AfterIngest, Config, SpoolConfig};
use crate::delivery::Dispatcher;
use crate::journal::{IngestFile, IngestOutcome, Journal};
use crate::reload::LiveConfig;
use crate::time::{now_ms, rfc3339};

/// The in-flight directory's name inside `spool.dir`. Its leading dot keeps
/// it out of the phone system's way and out of our own `*.json` scan.
pub const INFLIGHT: &str = ".inflight";

/// A file that fails to parse but was modified this recently may still be
/// being written in place: look again later instead of rejecting it.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Names a rescan queues at most; the rest wait for the next listing.
const RESCAN_QUEUE: usize = 16_384;

/// Files journaled per flush. Large enough to amortise the fsync, small
/// enough that a file waits at most one batch.
const BATCH: usize = 512;

/// CDR bytes journaled per flush: a batch ends at `BATCH` files or at this
/// many bytes, whichever comes first, and always holds at least one file.
/// Recording CDRs with transcripts run to megabytes, and 512 of them would
/// be hundreds of MiB in memory at once; 4 MiB of small CDRs is still
/// thousands of files, so small CDRs keep the full batch.
const BATCH_BYTES: usize = 4 << 20;

/// Whether a batch of `files` files holding `bytes` bytes of CDRs takes no
/// more. An empty batch always takes one, however large.
fn batch_full(files: usize, bytes: usize) -> bool {
    files >= BATCH || (files > 0 && bytes >= BATCH_BYTES)
}

/// Messages to the spool thread.
pub enum SpoolMsg {
    /// A file name in the spool that may be ready.
    Hint(String),
    /// Scan the whole directory now (watcher overflow or error).
    Rescan,
    Stop,
}

pub fn inflight_dir(spool: &SpoolConfig) -> PathBuf {
    spool.dir.join(INFLIGHT)
}

/// Whether a directory entry is one the phone system meant for us.
pub fn is_candidate(name: &str) -> bool {
    name.ends_with(".json") && !name.starts_with('.') && name.len() > ".json".len()
}

/// Counts for `status`: files waiting in the spool and files in flight.
pub fn backlog(spool: &SpoolConfig) -> (usize, usize) {
    let count = |dir: &Path, pred: &dyn Fn(&str) -> bool| {
        fs::read_dir(dir)
            .map(|it| {
                it.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_str().is_some_and(pred))
                    .count()
            })
            .unwrap_or(0)
    };
    (
        count(&spool.dir, &is_candidate),
        count(&inflight_dir(spool), &|n: &str| !n.starts_with('.')),
    )
}

/// Starts watching the spool directory; events become hints on `tx`.
pub fn watch(dir: &Path, tx: mpsc::Sender<SpoolMsg>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let event = match res {
            Ok(event) => event,
            Err(e) => {
                log::warn!("spool watcher: {e}; rescanning");
                let _ = tx.send(SpoolMsg::Rescan);
                return;
            }
        };
        if event.need_rescan() {
            log::info!("spool watcher overflowed; rescanning the spool");
            let _ = tx.send(SpoolMsg::Rescan);
            return;
        }
        let path = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => event.paths.first(),
            EventKind::Modify(ModifyKind::Name(RenameMode::To))
            | EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.last(),
            _ => None,
        };
        if let Some(name) = path.and_then(|p| p.file_name()).and_then(|n| n.to_str()) {
            if is_candidate(name) {
                let _ = tx.send(SpoolMsg::Hint(name.to_string()));
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// The spool thread's state.
pub struct Spool {
    live: Arc<LiveConfig>,
    journal: Arc<Journal>,
    dispatcher: Arc<Dispatcher>,
    rx: mpsc::Receiver<SpoolMsg>,
    /// Names to look at, in order, without repeats.
    queue: VecDeque<String>,
    queued: HashSet<String>,
    /// Files that may still be being written, by when to look again.
    deferred: BTreeMap<String, Instant>,
    next_rescan: Instant,
    /// The last rescan found more files than it queued.
    more_in_spool: bool,
    /// Set while the journal cannot be written: no intake until then.
    journal_retry_at: Option<Instant>,
    journal_backoff: Duration,
    /// Journaled batches on their way into `.inflight/` (see `move_batches`).
    mover: Option<(mpsc::SyncSender<Journaled>, std::thread::JoinHandle<()>)>,
    /// Names of files journaled but not yet moved: not to be read again.
    in_transit: Arc<Mutex<HashSet<String>>>,
    /// Counted for `status`.
    rejections: Arc<Rejections>,
    /// Rejected files that could not be moved out of the spool, as they
    /// were then: not looked at again (nor logged again) until they change.
    given_up: HashMap<String, Stamp>,
    /// Files that failed to read for a reason other than permissions
    /// (tried again every `SETTLE`, logged only the first time).
    read_errors: HashSet<String>,
}

/// What identifies one version of a file without reading it: a changed
/// mode (`chmod g+r`), owner, content or a new file under the same name
/// all change it (ctime moves on any of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

/// A batch that is journaled and flushed: its files can move into
/// `.inflight/` and its deliveries can start.
struct Journaled {
    files: Vec<(String, IngestFile)>,
    outcome: IngestOutcome,
}

enum Taken {
    Parsed(IngestFile),
    Rejected(Rejection),
    Later(Instant),
    /// A read error other than permissions (I/O error, too many open
    /// files): try again after `SETTLE`.
    Failed(io::Error),
    Gone,
}

impl Spool {
    pub fn new(
        live: Arc<LiveConfig>,
        journal: Arc<Journal>,
        dispatcher: Arc<Dispatcher>,
        rx: mpsc::Receiver<SpoolMsg>,
    ) -> Spool {
        Spool {
            live,
            journal,
            dispatcher,
            rx,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            deferred: BTreeMap::new(),
            next_rescan: Instant::now(),
            more_in_spool: false,
            journal_retry_at: None,
            journal_backoff: Duration::from_millis(500),
            mover: None,
            in_transit: Arc::new(Mutex::new(HashSet::new())),
            rejections: Arc::new(Rejections::default()),
            given_up: HashMap::new(),
            read_errors: HashSet::new(),
        }
    }

    /// The rejected-files counter that `status` reads.
    pub fn rejections(&self) -> Arc<Rejections> {
        self.rejections.clone()
    }

    fn config(&self) -> Arc<Config> {
        self.live.get()
    }

    /// Creates the directories cdrhook owns. Called before the daemon says
    /// it is ready, so that a permissions problem stops the start with a
    /// clear message.
    pub fn prepare(spool: &SpoolConfig) -> io::Result<()> {
        fs::create_dir_all(&spool.dir).map_err(|e| {
            io::Error::new(e.kind(), format!("spool.dir {}: {e}", spool.dir.display()))
        })?;
        let inflight = inflight_dir(spool);
        fs::create_dir_all(&inflight)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", inflight.display())))?;
        Ok(())
    }

    /// Runs until `SpoolMsg::Stop`.
    pub fn run(mut self) {
        // Moving files and starting deliveries runs beside intake, so that
        // the next batch is read and journaled while this one moves. The
        // bound keeps at most a few batches in memory.
        let (tx, rx) = mpsc::sync_channel::<Journaled>(2);
        let (journal, dispatcher, live, in_transit) = (
            self.journal.clone(),
            self.dispatcher.clone(),
            self.live.clone(),
            self.in_transit.clone(),
        );
        match std::thread::Builder::new()
            .name("spool-move".into())
            .spawn(move || move_batches(rx, &journal, &dispatcher, &live, &in_transit))
        {
            Ok(handle) => self.mover = Some((tx, handle)),
            Err(e) => {
                log::error!("spool: no mover thread ({e}); moving files on the intake thread")
            }
        }
        self.run_loop();
        if let Some((tx, handle)) = self.mover.take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    fn run_loop(&mut self) {
        if let Err(e) = self.recover_inflight() {
            log::error!("spool: recovering {}: {e}", INFLIGHT);
        }
        self.rescan();
        loop {
            self.heal_journal();
            self.take_in_batch();
            if self.queue.is_empty() && self.more_in_spool {
                self.rescan();
            }
            let timeout = self.next_timeout();
            let msg = if self.queue.is_empty() || self.journal_retry_at.is_some() {
                self.rx.recv_timeout(timeout)
            } else {
                self.rx.try_recv().map_err(|e| match e {
                    mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                    mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            };
            match msg {
                Ok(SpoolMsg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(msg) => {
                    self.handle(msg);
                    // Drain what else is waiting so a burst becomes one batch.
                    while let Ok(msg) = self.rx.try_recv() {
                        if matches!(msg, SpoolMsg::Stop) {
                            return;
                        }
                        self.handle(msg);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= self.next_rescan {
                self.rescan();
            }
            let due: Vec<String> = self
                .deferred
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(n, _)| n.clone())
                .collect();
            for name in due {
                self.deferred.remove(&name);
                self.push(name);
            }
            if self.journal_retry_at.is_some_and(|at| at <= now) {
                self.journal_retry_at = None;
            }
        }
    }

    /// After an I/O error (a full disk) sled refuses every write until it
    /// is opened again: reopen the journal at the intake's retry times, and
    /// queue again the deliveries it finds open (writes not yet flushed at
    /// the error are lost, and attempts that could not be journaled meanwhile
    /// were dropped by their workers).
    fn heal_journal(&mut self) {
        if !self.journal.is_broken() || self.journal_retry_at.is_some() {
            return;
        }
        match self.journal.heal() {
            Ok(None) => {}
            Ok(Some(open)) => {
                log::warn!(
                    "journal reopened after an I/O error; {} open deliveries",
                    open.len()
                );
                self.dispatcher.resume(open, true);
            }
            Err(e) => {
                log::error!("spool: cannot reopen the journal yet: {e}");
                self.journal_retry_at = Some(Instant::now() + self.journal_backoff);
                self.journal_backoff = (self.journal_backoff * 2).min(Duration::from_secs(30));
            }
        }
    }

    fn handle(&mut self, msg: SpoolMsg) {
        match msg {
            SpoolMsg::Hint(name) => {
                if !self.deferred.contains_key(&name) {
                    self.push(name)
                }
            }
            SpoolMsg::Rescan => self.rescan(),
            SpoolMsg::Stop => {}
        }
    }

    fn next_timeout(&self) -> Duration {
        let now = Instant::now();
        let mut at = self.next_rescan;
        if let Some(&d) = self.deferred.values().min() {
            at = at.min(d);
        }
        if let Some(j) = self.journal_retry_at {
            at = at.min(j);
        }
        at.saturating_duration_since(now)
    }

    fn push(&mut self, name: String) {
        if self.queued.insert(name.clone()) {
            self.queue.push_back(name);
        }
    }

    /// Queues every candidate in the spool, oldest first.
    fn rescan(&mut self) {
        let cfg = self.config();
        self.next_rescan = Instant::now() + cfg.spool.rescan_interval;
        self.more_in_spool = false;
        let entries = match fs::read_dir(&cfg.spool.dir) {
            Ok(it) => it,
            Err(e) => {
                log::error!("spool: cannot list {}: {e}", cfg.spool.dir.display());
                return;
            }
        };
        // Keep only the oldest RESCAN_QUEUE names: a backlog of 100,000
        // files is taken in a slice at a time, listing the directory again
        // when a slice is done, so that memory stays flat whatever the backlog.
        let mut oldest: BinaryHeap<(SystemTime, String)> = BinaryHeap::new();
        let mut found = 0usize;
        // Only what is still in the spool stays remembered.
        let mut given_up = HashMap::new();
        let mut read_errors = HashSet::new();
        for entry in entries.filter_map(Result::ok) {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_candidate(&name) || self.deferred.contains_key(&name) {
                continue;
            }
            let meta = entry.metadata();
            if let Some(stamp) = self.given_up.remove(&name) {
                if meta.as_ref().is_ok_and(|m| Stamp::of(m) == stamp) {
                    given_up.insert(name, stamp);
                    continue;
                }
                log::info!("spool: {name} changed since it was rejected; looking at it again");
            }
            if self.read_errors.contains(&name) {
                read_errors.insert(name.clone());
            }
            found += 1;
            let mtime = meta
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            if oldest.len() < RESCAN_QUEUE {
                oldest.push((mtime, name));
            } else if oldest
                .peek()
                .is_some_and(|newest| (mtime, &name) < (newest.0, &newest.1))
            {
                oldest.pop();
                oldest.push((mtime, name));
            }
        }
        self.given_up = given_up;
        self.read_errors = read_errors;
        if found > 0 {
            log::debug!("spool: rescan found {found} files");
        }
        self.more_in_spool = found > oldest.len();
        for (_, name) in oldest.into_sorted_vec() {
            self.push(name);
        }
    }

    fn take_in_batch(&mut self) {
        if self.journal_retry_at.is_some() || self.queue.is_empty() {
            return;
        }
        let cfg = self.config();
        let mut parsed: Vec<IngestFile> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let mut bytes = 0usize;
        while !batch_full(parsed.len(), bytes) {
            let Some(name) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&name);
            if lock(&self.in_transit).contains(&name) || self.still_given_up(&cfg.spool, &name) {
                continue;
            }
            let taken = read_candidate(&cfg.spool, &name);
            if !matches!(taken, Taken::Failed(_) | Taken::Later(_)) {
                self.read_errors.remove(&name);
            }
            match taken {
                Taken::Parsed(file) => {
                    bytes += file.cdrs.iter().map(|c| c.body.len()).sum::<usize>();
                    names.push(name);
                    parsed.push(file);
                }
                Taken::Rejected(why) => {
                    if reject(&cfg.spool, &self.rejections, &name, &why).is_err() {
                        // Logged once by `reject`; remembered so that
                        // neither a hint nor a rescan tries (and logs) it
                        // again until someone changes it.
                        if let Ok(meta) = fs::symlink_metadata(cfg.spool.dir.join(&name)) {
                            self.given_up.insert(name, Stamp::of(&meta));
                        }
                    }
                }
                Taken::Later(at) => {
                    log::debug!("spool: {name} is still being written; looking again shortly");
                    self.deferred.insert(name, at);
                }
                Taken::Failed(e) => {
                    if self.read_errors.insert(name.clone()) {
                        log::warn!(
                            "spool: {name}: cannot read: {e}; trying again every {SETTLE:?}"
                        );
                    } else {
                        log::debug!("spool: {name}: cannot read: {e}");
                    }
                    self.deferred.insert(name, Instant::now() + SETTLE);
                }
                Taken::Gone => {}
            }
        }
        if parsed.is_empty() {
            return;
        }
        let route = |cdr: &Cdr| crate::delivery::route::subscriptions_for(&cfg.subscriptions, cdr);
        let outcome = match self.journal.ingest(&parsed, &route) {
            Ok(outcome) => outcome,
            Err(e) => {
                // Disk full or similar: the files stay in the spool untouched
                // and are taken in once the journal can be written again.
                log::error!(
                    "spool: cannot journal {} files, leaving them in the spool: {e}",
                    parsed.len()
                );
                for name in names.into_iter().rev() {
                    self.queued.insert(name.clone());
                    self.queue.push_front(name);
                }
                self.journal_retry_at = Some(Instant::now() + self.journal_backoff);
                self.journal_backoff = (self.journal_backoff * 2).min(Duration::from_secs(30));
                return;
            }
        };
        self.journal_backoff = Duration::from_millis(500);
        if outcome.unmatched_cdrs > 0 {
            log::info!(
                "{} CDR(s) matched no active subscription; journaled for replay",
                outcome.unmatched_cdrs
            );
        }
        // The bodies are in the journal now; the mover only needs names,
        // ids and call ids, so no queue past this point holds file contents.
        let batch = Journaled {
            files: names
                .into_iter()
                .zip(parsed.into_iter().map(without_bodies))
                .collect(),
            outcome,
        };
        match &self.mover {
            Some((tx, _)) => {
                lock(&self.in_transit).extend(batch.files.iter().map(|(n, _)| n.clone()));
                if let Err(mpsc::SendError(batch)) = tx.send(batch) {
                    move_batch(
                        batch,
                        &self.journal,
                        &self.dispatcher,
                        &self.live.get().spool,
                        &self.in_transit,
                    );
                }
            }
            None => move_batch(
                batch,
                &self.journal,
                &self.dispatcher,
                &cfg.spool,
                &self.in_transit,
            ),
        }
    }

    /// Whether `name` is a rejected file that could not be moved away and
    /// has not changed since; forgets it once it changed or went.
    fn still_given_up(&mut self, spool: &SpoolConfig, name: &str) -> bool {
        let Some(stamp) = self.given_up.get(name) else {
            return false;
        };
        match fs::symlink_metadata(spool.dir.join(name)) {
            Ok(meta) if Stamp::of(&meta) == *stamp => true,
            Ok(_) => {
                log::info!("spool: {name} changed since it was rejected; looking at it again");
                self.given_up.remove(name);
                false
            }
            Err(_) => {
                self.given_up.remove(name);
                true
            }
        }
    }

    fn finish(&self, inflight_name: &str) {
        finish_file(&self.config().spool, inflight_name);
    }

    /// At start-up, every file in `.inflight/` is read again: one whose CDRs
    /// the journal does not all know (the journal was lost, or is older) is
    /// taken in again; one whose deliveries have all ended leaves now (the
    /// daemon stopped between the last delivery and the file's removal).
    fn recover_inflight(&mut self) -> io::Result<()> {
        let cfg = self.config();
        let dir = inflight_dir(&cfg.spool);
        let subs: Vec<&crate::config::Subscription> = cfg.subscriptions.iter().collect();
        // Files to take in again, journaled a bounded batch at a time so
        // that a large `.inflight/` is never in memory at once.
        let mut retake = Vec::new();
        let mut retake_bytes = 0usize;
        let mut retaken = 0usize;
        let mut names: Vec<String> = fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            // No size limit here: the file was accepted once, and a lowered
            // max_file_size must not reject what is already taken in.
            let parsed = match read_limited(&path, u64::MAX) {
                Ok((_, Ok(bytes))) => parse_file(&bytes),
                Ok((_, Err(why))) => Err(why),
                Err(e) => {
                    log::error!("spool: {INFLIGHT}/{name}: {e}");
                    continue;
                }
            };
            let cdrs = match parsed {
                Ok(cdrs) => cdrs,
                Err(why) => {
                    // Only a file that parsed was ever moved here; if it no
                    // longer does, it was changed by hand: reject it.
                    let _ = reject_from(
                        &cfg.spool,
                        &self.rejections,
                        &path,
                        original_name(&name),
                        &why,
                    );
                    continue;
                }
            };
            match self.journal.knows_all(&cdrs) {
                Ok(true) => {
                    if self.journal.cdrs_finished_by_ids(&cdrs).unwrap_or(false) {
                        self.finish(&name);
                    }
                }
                Ok(false) => {
                    retake_bytes += cdrs.iter().map(|c| c.body.len()).sum::<usize>();
                    retake.push(IngestFile {
                        inflight_name: name,
                        cdrs,
                        identity: None,
                    });
                }
                Err(e) => log::error!("spool: {name}: {e}"),
            }
            if batch_full(retake.len(), retake_bytes) {
                retaken += retake.len();
                self.retake(std::mem::take(&mut retake), &subs)?;
                retake_bytes = 0;
            }
        }
        retaken += retake.len();
        self.retake(retake, &subs)?;
        if retaken > 0 {
            log::warn!(
                "spool: {retaken} file(s) in {INFLIGHT} were unknown to the journal; taken in again"
            );
        }
        Ok(())
    }

    fn retake(
        &mut self,
        files: Vec<IngestFile>,
        subs: &[&crate::config::Subscription],
    ) -> io::Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let outcome = self
            .journal
            .ingest(&files, &|cdr: &Cdr| {
                crate::delivery::route::subscriptions_for(subs.iter().copied(), cdr)
            })
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.dispatch(outcome);
        Ok(())
    }

    fn dispatch(&mut self, outcome: IngestOutcome) {
        dispatch(&self.dispatcher, &self.config().spool, outcome);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The mover thread: each journaled batch's files go into `.inflight/`,
/// then its deliveries start.
fn move_batches(
    rx: mpsc::Receiver<Journaled>,
    journal: &Journal,
    dispatcher: &Dispatcher,
    live: &LiveConfig,
    in_transit: &Mutex<HashSet<String>>,
) {
    for batch in rx {
        move_batch(batch, journal, dispatcher, &live.get().spool, in_transit);
    }
}

fn move_batch(
    batch: Journaled,
    journal: &Journal,
    dispatcher: &Dispatcher,
    spool: &SpoolConfig,
    in_transit: &Mutex<HashSet<String>>,
) {
    let inflight = inflight_dir(spool);
    for (name, file) in &batch.files {
        let from = spool.dir.join(name);
        // The phone system may have renamed a new file over this name
        // since it was read: that one is not journaled, so it stays for
        // the next scan instead of going into `.inflight/` under the wrong
        // content's name.
        let same = match (fs::symlink_metadata(&from), file.identity) {
            (Ok(m), Some((dev, ino))) => m.dev() == dev && m.ino() == ino,
            (Ok(_), None) => true,
            (Err(_), _) => false,
        };
        if !same {
            log::info!("spool: {name} was replaced after it was read; taking in the new one next");
            continue;
        }
        let to = inflight.join(&file.inflight_name);
        if let Err(e) = fs::rename(&from, &to) {
            // Journaled already, so nothing is lost: the next scan finds
            // the file again, and the journal recognises its CDRs.
            log::error!("spool: {name}: cannot move into {INFLIGHT}: {e}");
            continue;
        }
        log::info!(
            "took in {name}: {} CDR(s) {}",
            file.cdrs.len(),
            file.cdrs
                .iter()
                .map(|c| format!("{} {}", c.event_type, c.call_id.as_deref().unwrap_or("-")))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    {
        let mut moving = lock(in_transit);
        for (name, _) in &batch.files {
            moving.remove(name);
        }
    }
    // A file of known CDRs whose last delivery ended while it was on its
    // way here would otherwise wait in `.inflight/` until the next start.
    for (_, file) in &batch.files {
        if batch.outcome.recheck_files.contains(&file.inflight_name)
            && journal.cdrs_finished_by_ids(&file.cdrs).unwrap_or(false)
        {
            finish_file(spool, &file.inflight_name);
        }
    }
    dispatch(dispatcher, spool, batch.outcome);
}

/// Hands new deliveries to their workers and lets finished files go.
fn dispatch(dispatcher: &Dispatcher, spool: &SpoolConfig, outcome: IngestOutcome) {
    let mut by_sub: BTreeMap<String, Vec<(u64, Option<u64>)>> = BTreeMap::new();
    for (sub, id) in outcome.new_deliveries {
        by_sub.entry(sub).or_default().push((id, None));
    }
    for (sub, ids) in by_sub {
        dispatcher.enqueue(&sub, ids);
    }
    for name in outcome.finished_files {
        finish_file(spool, &name);
    }
}

/// An in-flight file whose deliveries have all ended leaves: deleted, or
/// moved to the archive under its original name. Called from the delivery
/// threads, right where the last delivery ends.
///
/// Two threads may finish the same file at once (two subscriptions' last
/// deliveries ending together, or a duplicate file racing its original):
/// exactly one of them moves it, the other finds it gone. Each try to
/// archive is an atomic rename that cannot replace, so with renameat2 the
/// source can only move once; the fallbacks (link + unlink, copy) are two
/// steps, so archiving holds `FINISHING` to keep a second thread from
/// linking the same source under the next free name in between.
pub fn finish_file(spool: &SpoolConfig, inflight_name: &str) {
    finish_file_via(MoveWay::Renameat2, spool, inflight_name)
}

fn finish_file_via(way: MoveWay, spool: &SpoolConfig, inflight_name: &str) {
    let path = inflight_dir(spool).join(inflight_name);
    let original = original_name(inflight_name);
    let result = match spool.after_ingest {
        AfterIngest::Delete => fs::remove_file(&path),
        AfterIngest::Archive => {
            let _one_at_a_time = lock(&FINISHING);
            fs::create_dir_all(&spool.archive_dir)
                .and_then(|_| move_no_clobber_via(way, &path, &spool.archive_dir, original))
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => log::debug!("spool: {original} done"),
        // Already gone: finished twice, and the other call moved it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::debug!("spool: {original} was already finished by another thread")
        }
        Err(e) => log::error!("spool: {inflight_name}: cannot remove from {INFLIGHT}: {e}"),
    }
}

/// Held while a finished file is archived (see `finish_file`).
static FINISHING: Mutex<()> = Mutex::new(());

/// `<16 hex of the file's SHA-256>-<original name>`: the same file always
/// gets the same name (so a re-take after a crash is idempotent), and two
/// files that reuse a name do not collide.
fn inflight_name(original: &str, bytes: &[u8], cdrs: &[crate::cdr::Cdr]) -> String {
    let mut name = String::with_capacity(17 + original.len());
    match cdrs {
        // A single object's id is already the hash of the file's bytes.
        [only] if only.body.len() == bytes.len() && only.id.len() >= 20 => {
            name.push_str(&only.id[4..20]);
        }
        _ => {
            for b in &Sha256::digest(bytes)[..8] {
                name.push_str(&format!("{b:02x}"));
            }
        }
    }
    name.push('-');
    // Keep within NAME_MAX with the prefix added.
    let mut cut = original.len().min(200);
    while !original.is_char_boundary(cut) {
        cut -= 1;
    }
    name.push_str(&original[original.len() - cut..]);
    name
}

fn original_name(inflight_name: &str) -> &str {
    match inflight_name.split_once('-') {
        Some((hash, rest)) if hash.len() == 16 => rest,
        _ => inflight_name,
    }
}

/// Opens without following a link and reads at most `max` bytes; a file
/// that is larger, or not a regular file, is a rejection, not a read.
fn read_limited(path: &Path, max: u64) -> io::Result<(fs::Metadata, Result<Vec<u8>, Rejection>)> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let kind = kind_of(&meta);
        return Ok((meta, Err(Rejection::NotRegularFile(kind))));
    }
    if meta.len() > max {
        let size = meta.len();
        return Ok((meta, Err(Rejection::TooLarge { size, max })));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        let size = bytes.len() as u64;
        return Ok((meta, Err(Rejection::TooLarge { size, max })));
    }
    Ok((meta, Ok(bytes)))
}

fn kind_of(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
    .to_string()
}

fn read_candidate(spool: &SpoolConfig, name: &str) -> Taken {
    let path = spool.dir.join(name);
    // O_NOFOLLOW: a symbolic link is refused by open itself, never read
    // through; fstat on the open file then judges what it is.
    let (meta, read) = match read_limited(&path, spool.max_file_size) {
        Ok(ok) => ok,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Taken::Gone,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Taken::Rejected(Rejection::NotRegularFile("a symbolic link".to_string()))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return unreadable(&path, e),
        Err(e) => return Taken::Failed(e),
    };
    let result = read.and_then(|bytes| {
        parse_file(&bytes).map(|cdrs| IngestFile {
            inflight_name: inflight_name(name, &bytes, &cdrs),
            cdrs,
            identity: Some((meta.dev(), meta.ino())),
        })
    });
    match (result, fresh_until(&meta)) {
        (Ok(file), _) => Taken::Parsed(file),
        // A file modified moments ago may be a writer mid-way: look again.
        (Err(_), Some(at)) if meta.is_file() => Taken::Later(at),
        (Err(why), _) => Taken::Rejected(why),
    }
}

/// Until when a file modified moments ago may still be being written (None
/// once it has not changed for `SETTLE`).
fn fresh_until(meta: &fs::Metadata) -> Option<Instant> {
    meta.modified()
        .ok()
        .and_then(|m| m.checked_add(SETTLE))
        .and_then(|until| until.duration_since(SystemTime::now()).ok())
        .map(|left| Instant::now() + left)
}

/// A file we may not open (the writer's umask left no read access for our
/// group): rejected with the cause and the fix once it has settled, so that
/// a writer that sets the mode after writing is not rejected. `lstat` needs
/// no access to the file, only to the directory.
fn unreadable(path: &Path, error: io::Error) -> Taken {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Taken::Gone,
        Err(_) => return Taken::Failed(error),
    };
    if let Some(at) = fresh_until(&meta) {
        return Taken::Later(at);
    }
    // Drop " (os error 13)": the reason is for an operator.
    let text = error.to_string();
    let error = text.split(" (os error").next().unwrap_or(&text).to_string();
    Taken::Rejected(Rejection::Unreadable {
        error,
        mode: meta.mode(),
        owner_uid: meta.uid(),
        group_gid: meta.gid(),
        // SAFETY: geteuid cannot fail and touches no memory of ours.
        reader_uid: unsafe { libc::geteuid() },
    })
}

/// An ingested file without its CDRs' bodies (once they are journaled).
fn without_bodies(mut file: IngestFile) -> IngestFile {
    for cdr in &mut file.cdrs {
        cdr.body = Vec::new();
    }
    file
}

/// Moves a file that cannot be taken in to `rejected_dir`, with
/// `NAME.reason` beside it. If even that fails, it stays in the spool.
fn reject(
    spool: &SpoolConfig,
    rejections: &Rejections,
    name: &str,
    why: &Rejection,
) -> io::Result<PathBuf> {
    reject_from(spool, rejections, &spool.dir.join(name), name, why)
}

/// Rejects the file at `from` (in the spool, or in `.inflight/` at
/// recovery) under the name `name`: logs it, counts it for `status`, and
/// moves it with its reason into `rejected_dir`. Returns where it went.
fn reject_from(
    spool: &SpoolConfig,
    rejections: &Rejections,
    from: &Path,
    name: &str,
    why: &Rejection,
) -> io::Result<PathBuf> {
    log::warn!("rejected {name}: {why}");
    let text = format!(
        "file: {name}\nrejected: {}\nreason: {why}\n",
        rfc3339(now_ms())
    );
    let result = fs::create_dir_all(&spool.rejected_dir)
        .and_then(|_| place_rejected(from, &spool.rejected_dir, name, &text));
    let stays = match &result {
        Ok(to) => {
            log::debug!("spool: {name} is now {}", to.display());
            None
        }
        Err(e) => {
            let stays = format!(
                "cannot move it to {}: {e}; it stays where it is, and is not tried again until it changes",
                spool.rejected_dir.display()
            );
            log::error!("spool: {name}: {stays}");
            Some(stays)
        }
    };
    rejections.note(name, why, stays);
    result
}

/// Puts `from` into `dir` under `name` (or `name.1`, …) with its reason
/// beside it. The reason is complete on disk before the file appears, so
/// whoever sees `NAME.json` in the rejected directory can read why; each
/// name is claimed by creating its `.reason` exclusively, and the file
/// itself never replaces anything (`rename_noreplace`).
fn place_rejected(from: &Path, dir: &Path, name: &str, text: &str) -> io::Result<PathBuf> {
    for n in 0..MAX_SUFFIX {
        let to = numbered(dir, name, n);
        if fs::symlink_metadata(&to).is_ok() {
            continue;
        }
        let reason = reason_path(&to);
        let mut file = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&reason)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let placed = file
            .write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .and_then(|_| rename_noreplace(from, &to));
        match placed {
            Ok(()) => return Ok(to),
            Err(e) => {
                let _ = fs::remove_file(&reason);
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
        }
    }
    Err(no_free_name(dir, name))
}

/// What `status` shows about rejected files: how many since start, and the
/// last one. Shared between the spool thread and the control commands.
#[derive(Debug, Default)]
pub struct Rejections(Mutex<RejectionSummary>);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RejectionSummary {
    /// Files rejected since the daemon started.
    pub count: u64,
    pub last: Option<LastRejection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRejection {
    pub file: String,
    pub reason: String,
    pub time_ms: u64,
    /// Set when the file could not be moved to `rejected_dir`: why, and
    /// that it stays where it is.
    pub not_moved: Option<String>,
}

impl Rejections {
    pub fn summary(&self) -> RejectionSummary {
        lock(&self.0).clone()
    }

    fn note(&self, file: &str, why: &Rejection, not_moved: Option<String>) {
        let mut s = lock(&self.0);
        s.count += 1;
        s.last = Some(LastRejection {
            file: file.to_string(),
            reason: why.to_string(),
            time_ms: now_ms(),
            not_moved,
        });
    }
}

fn reason_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".reason");
    PathBuf::from(s)
}

/// Moves `from` to `dir/name`, or `dir/name.1`, `.2`, … if taken, and
/// returns where it went. An existing name is never replaced, even when
/// something else creates it at the same moment: each try is one
/// `rename_noreplace`, which fails instead of replacing.
#[cfg(test)]
fn move_no_clobber(from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    move_no_clobber_via(MoveWay::Renameat2, from, dir, name)
}

fn move_no_clobber_via(way: MoveWay, from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0..MAX_SUFFIX {
        let to = numbered(dir, name, n);
        // A name whose `.reason` exists belongs to a rejected file (when
        // archive and rejected are one directory): leave it to that file.
        if fs::symlink_metadata(reason_path(&to)).is_ok() {
            continue;
        }
        match rename_noreplace_from(way, from, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(no_free_name(dir, name))
}

/// Suffixes tried before giving up on a name (`NAME.1` … `NAME.9999`): a
/// directory holding that many copies of one name needs an operator.
const MAX_SUFFIX: u32 = 10_000;

fn numbered(dir: &Path, name: &str, n: u32) -> PathBuf {
    if n == 0 {
        dir.join(name)
    } else {
        dir.join(format!("{name}.{n}"))
    }
}

fn no_free_name(dir: &Path, name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{name} and {name}.1 to {name}.{} all exist in {}",
            MAX_SUFFIX - 1,
            dir.display()
        ),
    )
}

/// How `rename_noreplace` moves a file; each step falls back to the next
/// where the file system or the kernel refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoveWay {
    /// `renameat2(RENAME_NOREPLACE)`: atomic, never replaces, needs no
    /// access to the file itself (Linux 3.15+, ext4, xfs, btrfs, tmpfs…).
    Renameat2,
    /// A hard link, then unlink of the old name: never replaces (link fails
    /// on an existing name), but `fs.protected_hardlinks=1` refuses it for
    /// a file owned by another user that we cannot also write.
    Link,
    /// An exclusive create + copy + fsync + unlink: works across file
    /// systems, needs to read the file.
    Copy,
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of ever
/// replacing `to`. The result is the same whichever way it takes: either
/// the file is at `to` and gone from `from`, or nothing changed.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rename_noreplace_from(MoveWay::Renameat2, from, to)
}

fn rename_noreplace_from(way: MoveWay, from: &Path, to: &Path) -> io::Result<()> {
    match way {
        MoveWay::Renameat2 => match renameat2_noreplace(from, to) {
            // EINVAL: the file system does not support the flag; ENOSYS:
            // the kernel (or a seccomp filter) lacks the call.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                rename_noreplace_from(MoveWay::Link, from, to)
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                rename_noreplace_from(MoveWay::Copy, from, to)
            }
            other => other,
        },
        MoveWay::Link => match fs::hard_link(from, to) {
            Ok(()) => remove_or_undo(from, to),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                ) =>
            {
                Err(e)
            }
            // EPERM (protected_hardlinks), EXDEV, a file system without
            // hard links: copy.
            Err(_) => rename_noreplace_from(MoveWay::Copy, from, to),
        },
        MoveWay::Copy => copy_noreplace(from, to),
    }
}

fn renameat2_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // The raw system call rather than glibc's wrapper, which only exists
    // from glibc 2.28 on.
    // SAFETY: both pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copies a regular file to a name created exclusively, syncs it, and only
/// then removes the original; a copy that fails half-way is removed.
fn copy_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)?;
    if !src.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", from.display()),
        ));
    }
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let copied = io::copy(&mut src, &mut dst).and_then(|_| dst.sync_all());
    if let Err(e) = copied {
        let _ = fs::remove_file(to);
        return Err(e);
    }
    remove_or_undo(from, to)
}

/// The second half of a link or copy: remove the original, or, if that is
/// refused, the new name, so the file is never in both places.
fn remove_or_undo(from: &Path, to: &Path) -> io::Result<()> {
    fs::remove_file(from).inspect_err(|_| {
        let _ = fs::remove_file(to);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_json_names_are_candidates() {
        assert!(is_candidate("call.json"));
        assert!(!is_candidate(".call.json"));
        assert!(!is_candidate("call.json.tmp"));
        assert!(!is_candidate("call.JSON"));
        assert!(!is_candidate(".json"));
    }

    #[test]
    fn inflight_names_are_stable_and_reversible() {
        let one = br#"{"QueueId":1}"#;
        let cdrs = crate::cdr::parse_file(one).expect("cdr");
        let a = inflight_name("x-1.json", one, &cdrs);
        let digest: String = Sha256::digest(one)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(a, format!("{digest}-x-1.json"), "same name either way");
        assert_eq!(a, inflight_name("x-1.json", one, &[]));
        assert_ne!(a, inflight_name("x-1.json", b"{ }", &[]));
        assert_eq!(original_name(&a), "x-1.json");
    }

    #[test]
    fn move_no_clobber_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        fs::create_dir(&out).expect("mkdir");
        let mut places = Vec::new();
        for content in [b"1", b"2"] {
            let src = dir.path().join("a.json");
            fs::write(&src, content).expect("write");
            places.push(move_no_clobber(&src, &out, "a.json").expect("move"));
            assert!(!src.exists());
        }
        assert_eq!(places[0], out.join("a.json"));
        assert_eq!(places[1], out.join("a.json.1"));
        assert_eq!(fs::read(&places[0]).expect("read"), b"1");
    }

    const WAYS: [MoveWay; 3] = [MoveWay::Renameat2, MoveWay::Link, MoveWay::Copy];

    #[test]
    fn rename_noreplace_never_replaces_whichever_way_it_takes() {
        for way in WAYS {
            let dir = tempfile::tempdir().expect("tempdir");
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            fs::write(&a, b"new").expect("write");
            fs::write(&b, b"old").expect("write");
            let err = rename_noreplace_from(way, &a, &b).expect_err("b exists");
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{way:?}");
            assert_eq!(fs::read(&a).expect("a"), b"new", "{way:?}: source kept");
            assert_eq!(fs::read(&b).expect("b"), b"old", "{way:?}: never replaced");

            let c = dir.path().join("c");
            rename_noreplace_from(way, &a, &c).expect("c is free");
            assert!(!a.exists(), "{way:?}: moved, not copied");
            assert_eq!(fs::read(&c).expect("c"), b"new", "{way:?}");

            let err = rename_noreplace_from(way, &a, &dir.path().join("d")).expect_err("gone");
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{way:?}");
        }
    }

    fn archive_spool(root: &Path) -> SpoolConfig {
        let spool = SpoolConfig {
            dir: root.join("spool"),
            archive_dir: root.join("archive"),
            rejected_dir: root.join("rejected"),
            after_ingest: AfterIngest::Archive,
            ..SpoolConfig::default()
        };
        fs::create_dir_all(inflight_dir(&spool)).expect("mkdir");
        spool
    }

    /// Several delivery threads finishing the same file at the same moment
    /// archive it once: without the no-replace rename (or, on the
    /// fallbacks, the lock) the loser linked the file again as `x.json.1`
    /// about once in 400 rounds here.
    #[test]
    fn concurrent_finish_of_one_file_archives_exactly_one_copy() {
        for way in WAYS {
            for round in 0..500 {
                let dir = tempfile::tempdir().expect("tempdir");
                let spool = archive_spool(dir.path());
                let name = "0123456789abcdef-x.json";
                fs::write(inflight_dir(&spool).join(name), b"{}").expect("write");
                let barrier = std::sync::Barrier::new(4);
                std::thread::scope(|s| {
                    for _ in 0..4 {
                        s.spawn(|| {
                            barrier.wait();
                            finish_file_via(way, &spool, name);
                        });
                    }
                });
                let archived: Vec<_> = fs::read_dir(&spool.archive_dir)
                    .expect("ls")
                    .filter_map(Result::ok)
                    .map(|e| e.file_name())
                    .collect();
                assert_eq!(archived, ["x.json"], "{way:?}, round {round}");
                assert!(!inflight_dir(&spool).join(name).exists());
            }
        }
    }

    #[test]
    fn archiving_never_replaces_an_earlier_file_of_the_same_name() {
        for way in WAYS {
            let dir = tempfile::tempdir().expect("tempdir");
            let spool = archive_spool(dir.path());
            fs::create_dir_all(&spool.archive_dir).expect("mkdir");
            fs::write(spool.archive_dir.join("x.json"), b"earlier").expect("write");
            fs::write(spool.archive_dir.join("x.json.1.reason"), b"rejected").expect("write");
            let name = "0123456789abcdef-x.json";
            fs::write(inflight_dir(&spool).join(name), b"later").expect("write");
            finish_file_via(way, &spool, name);
            let read = |n: &str| fs::read(spool.archive_dir.join(n)).expect(n);
            assert_eq!(read("x.json"), b"earlier", "{way:?}");
            assert!(!spool.archive_dir.join("x.json.1").exists(), "{way:?}");
            assert_eq!(read("x.json.2"), b"later", "{way:?}");
        }
    }

    #[test]
    fn a_rejected_file_never_replaces_one_of_the_same_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = archive_spool(dir.path());
        fs::create_dir_all(&spool.rejected_dir).expect("mkdir");
        // Cases: the name itself is taken; only its reason is (a rejection
        // of the same name half-way).
        fs::write(spool.rejected_dir.join("x.json"), b"first").expect("write");
        fs::write(spool.rejected_dir.join("x.json.1.reason"), b"claimed").expect("write");
        fs::write(spool.dir.join("x.json"), b"second").expect("write");
        let rejections = Rejections::default();
        let to = reject(&spool, &rejections, "x.json", &Rejection::Empty).expect("rejected");
        assert_eq!(to, spool.rejected_dir.join("x.json.2"));
        let read = |n: &str| fs::read(spool.rejected_dir.join(n)).expect(n);
        assert_eq!(read("x.json"), b"first");
        assert_eq!(read("x.json.1.reason"), b"claimed");
        assert_eq!(read("x.json.2"), b"second");
        assert!(String::from_utf8_lossy(&read("x.json.2.reason")).contains("empty"));
        let summary = rejections.summary();
        assert_eq!(summary.count, 1);
        let last = summary.last.expect("last");
        assert_eq!((last.file.as_str(), last.not_moved), ("x.json", None));
    }

    #[test]
    fn a_rejection_that_cannot_move_is_counted_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = archive_spool(dir.path());
        // rejected_dir cannot be created: a file is in its way.
        fs::write(dir.path().join("blocker"), b"").expect("write");
        spool.rejected_dir = dir.path().join("blocker").join("rejected");
        fs::write(spool.dir.join("x.json"), b"").expect("write");
        let rejections = Rejections::default();
        reject(&spool, &rejections, "x.json", &Rejection::Empty).expect_err("cannot move");
        assert!(spool.dir.join("x.json").exists(), "stays in the spool");
        let last = rejections.summary().last.expect("last");
        assert!(last
            .not_moved
            .is_some_and(|w| w.contains("stays where it is")));
    }

    #[test]
    fn a_stamp_changes_with_mode_content_or_a_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.json");
        fs::write(&path, b"{}").expect("write");
        let stamp = || Stamp::of(&fs::symlink_metadata(&path).expect("stat"));
        let first = stamp();
        assert_eq!(first, stamp(), "unchanged");
        std::thread::sleep(Duration::from_millis(10));
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let second = stamp();
        assert_ne!(first, second, "chmod");
        let other = dir.path().join("y");
        fs::write(&other, b"{}").expect("write");
        fs::rename(&other, &path).expect("rename");
        assert_ne!(second, stamp(), "a new file under the name");
    }

    #[test]
    fn a_batch_ends_at_its_file_count_or_its_bytes_but_holds_one_file() {
        let mib = 1 << 20;
        for (files, bytes, full) in [
            (0, 0, false),
            (1, 10 * mib, true), // one file over the byte budget: alone
            (1, 1000, false),
            (20, 4 * mib - 1, false),
            (20, 4 * mib, true),
            (511, 600 * 511, false),
            (512, 600 * 512, true), // small CDRs: the count ends it
        ] {
            assert_eq!(
                batch_full(files, bytes),
                full,
                "{files} files, {bytes} bytes"
            );
        }
    }

    #[test]
    fn without_bodies_keeps_what_the_mover_needs() {
        let cdrs = crate::cdr::parse_file(br#"{"QueueId":1,"CallId":"c"}"#).expect("cdr");
        let file = without_bodies(IngestFile {
            inflight_name: "n".into(),
            cdrs: cdrs.clone(),
            identity: Some((1, 2)),
        });
        assert!(file.cdrs[0].body.is_empty());
        assert_eq!(file.cdrs[0].id, cdrs[0].id);
        assert_eq!(file.cdrs[0].call_id.as_deref(), Some("c"));
        assert_eq!(file.identity, Some((1, 2)));
    }

    #[test]
    fn read_limited_refuses_links_and_large_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t.json");
        fs::write(&target, b"{\"QueueId\":1}").expect("write");
        let link = dir.path().join("l.json");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = read_limited(&link, 100).expect_err("O_NOFOLLOW refuses a link");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert!(matches!(
            read_limited(&target, 3).expect("io ok").1,
            Err(Rejection::TooLarge { .. })
        ));
    }
}
