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

use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use crate::cdr::{parse_file, Rejection};
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
        }
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
        for entry in entries.filter_map(Result::ok) {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !is_candidate(&name) || self.deferred.contains_key(&name) {
                continue;
            }
            found += 1;
            let mtime = entry
                .metadata()
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
        while parsed.len() < BATCH {
            let Some(name) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&name);
            if lock(&self.in_transit).contains(&name) {
                continue;
            }
            match read_candidate(&cfg.spool, &name) {
                Taken::Parsed(file) => {
                    names.push(name);
                    parsed.push(file);
                }
                Taken::Rejected(why) => reject(&cfg.spool, &name, &why),
                Taken::Later(at) => {
                    log::debug!("spool: {name} is still being written; looking again shortly");
                    self.deferred.insert(name, at);
                }
                Taken::Gone => {}
            }
        }
        if parsed.is_empty() {
            return;
        }
        let subs: Vec<&crate::config::Subscription> = cfg.subscriptions.iter().collect();
        let outcome = match self.journal.ingest(&parsed, &subs) {
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
        let batch = Journaled {
            files: names.into_iter().zip(parsed).collect(),
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
        let mut retake = Vec::new();
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
                    reject_from(&cfg.spool, &path, original_name(&name), &why);
                    continue;
                }
            };
            match self.journal.knows_all(&cdrs) {
                Ok(true) => {
                    if self.journal.cdrs_finished_by_ids(&cdrs).unwrap_or(false) {
                        self.finish(&name);
                    }
                }
                Ok(false) => retake.push(IngestFile {
                    inflight_name: name,
                    cdrs,
                    identity: None,
                }),
                Err(e) => log::error!("spool: {name}: {e}"),
            }
        }
        if retake.is_empty() {
            return Ok(());
        }
        log::warn!(
            "spool: {} file(s) in {INFLIGHT} unknown to the journal; taking them in again",
            retake.len()
        );
        let subs: Vec<&crate::config::Subscription> = cfg.subscriptions.iter().collect();
        for chunk in retake.chunks(BATCH) {
            let outcome = self
                .journal
                .ingest(chunk, &subs)
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.dispatch(outcome);
        }
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
pub fn finish_file(spool: &SpoolConfig, inflight_name: &str) {
    let path = inflight_dir(spool).join(inflight_name);
    let original = original_name(inflight_name);
    let result = match spool.after_ingest {
        AfterIngest::Delete => fs::remove_file(&path),
        AfterIngest::Archive => fs::create_dir_all(&spool.archive_dir)
            .and_then(|_| move_no_clobber(&path, &spool.archive_dir, original).map(|_| ())),
    };
    match result {
        Ok(()) => log::debug!("spool: {original} done"),
        // Already gone: finished twice (a duplicate file raced its original).
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::error!("spool: {inflight_name}: cannot remove from {INFLIGHT}: {e}"),
    }
}

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
        Err(e) => {
            log::warn!("spool: {name}: cannot read: {e}");
            return Taken::Later(Instant::now() + SETTLE);
        }
    };
    let result = read.and_then(|bytes| {
        parse_file(&bytes).map(|cdrs| IngestFile {
            inflight_name: inflight_name(name, &bytes, &cdrs),
            cdrs,
            identity: Some((meta.dev(), meta.ino())),
        })
    });
    let fresh_until = meta
        .modified()
        .ok()
        .and_then(|m| m.checked_add(SETTLE))
        .and_then(|until| until.duration_since(SystemTime::now()).ok())
        .map(|left| Instant::now() + left);
    match (result, fresh_until) {
        (Ok(file), _) => Taken::Parsed(file),
        // A file modified moments ago may be a writer mid-way: look again.
        (Err(_), Some(at)) if meta.is_file() => Taken::Later(at),
        (Err(why), _) => Taken::Rejected(why),
    }
}

/// Moves a file that cannot be taken in to `rejected_dir`, with
/// `NAME.reason` beside it. If even that fails, it stays in the spool.
fn reject(spool: &SpoolConfig, name: &str, why: &Rejection) {
    reject_from(spool, &spool.dir.join(name), name, why)
}

/// Rejects the file at `from` (in the spool, or in `.inflight/` at
/// recovery) under the name `name`.
fn reject_from(spool: &SpoolConfig, from: &Path, name: &str, why: &Rejection) {
    log::warn!("rejected {name}: {why}");
    let text = format!(
        "file: {name}\nrejected: {}\nreason: {why}\n",
        rfc3339(now_ms())
    );
    // The reason is complete on disk before the file appears beside it, so
    // whoever sees `NAME.json` in the rejected directory can read why.
    let result = fs::create_dir_all(&spool.rejected_dir).and_then(|_| {
        let (to, mut reason) = claim_reason(&spool.rejected_dir, name)?;
        let written = reason
            .write_all(text.as_bytes())
            .and_then(|_| reason.sync_all())
            .and_then(|_| move_file(from, &to));
        if written.is_err() {
            let _ = fs::remove_file(reason_path(&to));
        }
        written
    });
    if let Err(e) = result {
        log::error!(
            "spool: {name}: cannot move to {}: {e}; it stays in the spool",
            spool.rejected_dir.display()
        );
    }
}

/// Finds `dir/name` (or `name.1`, …) that is free, and claims it by
/// creating its `.reason` file exclusively.
fn claim_reason(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    for n in 0.. {
        let to = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{name}.{n}"))
        };
        if fs::symlink_metadata(&to).is_ok() {
            continue;
        }
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(reason_path(&to))
        {
            Ok(file) => return Ok((to, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free name"))
}

fn reason_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".reason");
    PathBuf::from(s)
}

/// Moves `from` to `dir/name`, or `dir/name.1`, `.2`, … if taken, and
/// returns where it went: an archive or rejected directory never loses an
/// earlier file of the same name, even when two threads archive at once
/// (a hard link fails on an existing name where a rename would replace it).
fn move_no_clobber(from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0.. {
        let to = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{name}.{n}"))
        };
        if fs::symlink_metadata(reason_path(&to)).is_ok() {
            continue;
        }
        match fs::hard_link(from, &to) {
            Ok(()) => {
                fs::remove_file(from)?;
                return Ok(to);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // Another filesystem, or something that cannot be linked (a
            // directory, a symbolic link): rename, or copy for a file.
            Err(_) => {
                if fs::symlink_metadata(&to).is_ok() {
                    continue;
                }
                return move_file(from, &to).map(|_| to);
            }
        }
    }
    Err(io::Error::other("no free name"))
}

/// rename, or copy + fsync + remove across filesystems.
fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let meta = fs::symlink_metadata(from)?;
            if !meta.is_file() {
                return Err(e);
            }
            let mut src = File::open(from)?;
            let mut dst = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(to)?;
            io::copy(&mut src, &mut dst)?;
            dst.sync_all()?;
            fs::remove_file(from)
        }
        other => other,
    }
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
