//! The intake thread: its queue of names (from hints and rescans), the
//! batches it reads, journals with one flush and then moves into
//! `.inflight/`, and the hand-off of new deliveries to the dispatcher. It
//! owns the order of that sequence, which is the spool's invariant: no file
//! leaves the spool before the flush that holds its CDRs.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::moves::{finish_file, inflight_dir, into_inflight, reject, Rejections};
use super::read::{read_candidate, Taken, SETTLE};
use super::{is_candidate, SpoolMsg, INFLIGHT};
use crate::config::live::LiveConfig;
use crate::config::{Config, SpoolConfig};
use crate::delivery::Dispatcher;
use crate::journal::{IngestFile, IngestOutcome, Journal};

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
pub(super) fn batch_full(files: usize, bytes: usize) -> bool {
    files >= BATCH || (files > 0 && bytes >= BATCH_BYTES)
}

/// The spool thread's state.
pub struct Spool {
    pub(super) live: Arc<LiveConfig>,
    pub(super) journal: Arc<Journal>,
    pub(super) dispatcher: Arc<Dispatcher>,
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
    /// Counted for `status`.
    pub(super) rejections: Arc<Rejections>,
    /// Rejected files that could not be moved out of the spool, as they
    /// were then: not looked at again (nor logged again) until they change.
    given_up: HashMap<String, Stamp>,
    /// Every spool file is read into this one buffer.
    read_buffer: Vec<u8>,
    /// The INFO summary of the files taken in.
    taken: TakenLog,
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
            rejections: Arc::new(Rejections::default()),
            given_up: HashMap::new(),
            read_errors: HashSet::new(),
            taken: TakenLog::default(),
            read_buffer: Vec::new(),
        }
    }

    /// The rejected-files counter that `status` reads.
    pub fn rejections(&self) -> Arc<Rejections> {
        self.rejections.clone()
    }

    pub(super) fn config(&self) -> Arc<Config> {
        self.live.get()
    }

    /// Runs until `SpoolMsg::Stop`.
    ///
    /// Everything happens on this one thread: read and parse a batch,
    /// journal it with one flush, move its files into `.inflight/`, hand its
    /// deliveries to the dispatcher. A second thread that moved the files
    /// while the next batch was read cost more than it gave: measured on a
    /// 100,000-file drain it took more CPU per CDR and drained slower
    /// (BENCHMARKS.md, "Intake hot path"), the hand-off and the set of
    /// names in transit outweighing the overlap on two cores.
    pub fn run(mut self) {
        self.run_loop();
        self.taken.flush_now();
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
            self.taken.flush(now);
        }
    }

    /// After an I/O error (a full disk) sled refuses every write until it
    /// is opened again: reopen the journal at the intake's retry times, and
    /// queue again the deliveries it finds open (writes not yet flushed at
    /// the error are lost, and attempts that could not be journaled meanwhile
    /// were dropped by their workers).
    fn heal_journal(&mut self) {
        // JOURNAL: call site (see the module doc of `intake`).
        if !self.journal.is_broken() || self.journal_retry_at.is_some() {
            return;
        }
        // JOURNAL: call site (see the module doc of `intake`).
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
            SpoolMsg::Hints(names) => {
                for name in names {
                    if !self.deferred.contains_key(&name) {
                        self.push(name)
                    }
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
        if let Some(t) = self.taken.due() {
            at = at.min(t);
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
            if self.still_given_up(&cfg.spool, &name) {
                continue;
            }
            let taken = read_candidate(&cfg.spool, &name, &mut self.read_buffer);
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
        // JOURNAL: call site (see the module doc of `intake`).
        // The journal counts the filters that excluded a new CDR
        // (`unmatched`), flushed with it.
        let route = |cdr: &crate::cdr::Cdr| {
            let routed = crate::delivery::route::route(&cfg.subscriptions, cdr);
            crate::journal::Routing {
                to: routed.to,
                unmatched: routed.filtered_out,
            }
        };
        let outcome = match self.journal.ingest_routed(&parsed, &route) {
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
        // JOURNAL: flushed; only now may the files leave the spool.
        move_batch(
            &names,
            &parsed,
            outcome,
            &self.journal,
            &self.dispatcher,
            &cfg.spool,
            &mut self.taken,
        );
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
}

/// Moves a journaled batch's files into `.inflight/`, then starts its
/// deliveries.
fn move_batch(
    names: &[String],
    files: &[IngestFile],
    outcome: IngestOutcome,
    journal: &Journal,
    dispatcher: &Dispatcher,
    spool: &SpoolConfig,
    taken: &mut TakenLog,
) {
    let inflight = inflight_dir(spool);
    let now = Instant::now();
    for (name, file) in names.iter().zip(files) {
        if into_inflight(spool, &inflight, name, file) {
            taken.note(name, file, now);
        }
    }
    taken.flush(now);
    // A file of known CDRs whose last delivery ended while it was on its
    // way here would otherwise wait in `.inflight/` until the next start.
    // JOURNAL: call site (see the module doc of `intake`).
    for file in files {
        if outcome.recheck_files.contains(&file.inflight_name)
            && journal.cdrs_finished_by_ids(&file.cdrs).unwrap_or(false)
        {
            finish_file(spool, &file.inflight_name);
        }
    }
    dispatch(dispatcher, spool, outcome);
}

/// Hands new deliveries to their workers and lets finished files go.
pub(super) fn dispatch(dispatcher: &Dispatcher, spool: &SpoolConfig, outcome: IngestOutcome) {
    crate::metrics::cdrs_ingested(outcome.new_cdrs);
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

/// The INFO log of what was taken in: at most one line a second however
/// many files arrive (a 100,000-file backlog is a few dozen lines, where
/// one line per file hit journald's default rate limit under systemd).
/// Each file is logged at debug; a lone file still gets its INFO line at
/// once, with its name and CDRs.
#[derive(Debug, Default)]
struct TakenLog {
    files: u64,
    cdrs: u64,
    /// The first file counted, described, for a summary of one file.
    first: Option<String>,
    /// When the counting began.
    since: Option<Instant>,
    /// When the last summary was logged.
    last: Option<Instant>,
}

/// At most one INFO summary per this long.
const TAKEN_LOG_EVERY: Duration = Duration::from_secs(1);

impl TakenLog {
    fn note(&mut self, name: &str, file: &IngestFile, now: Instant) {
        self.files += 1;
        self.cdrs += file.cdrs.len() as u64;
        if self.files == 1 {
            // Once per summary, not per file: cheap.
            self.first = Some(describe(name, file));
            self.since = Some(now);
            log::debug!("took in {name}");
        } else if log::log_enabled!(log::Level::Debug) {
            log::debug!("took in {}", describe(name, file));
        }
    }

    /// When the waiting summary is due (None when none is waiting).
    fn due(&self) -> Option<Instant> {
        if self.files == 0 {
            return None;
        }
        let first = self.since.unwrap_or_else(Instant::now);
        Some(
            self.last
                .map_or(first, |l| (l + TAKEN_LOG_EVERY).max(first)),
        )
    }

    /// Logs the summary if one is waiting and due.
    fn flush(&mut self, now: Instant) {
        if let Some(line) = self.summary(now) {
            log::info!("{line}");
        }
    }

    /// Logs the summary of what is waiting, due or not (at the end).
    fn flush_now(&mut self) {
        if let Some(line) = self.take(Instant::now()) {
            log::info!("{line}");
        }
    }

    /// The summary line if one is waiting and due; the counting starts again.
    fn summary(&mut self, now: Instant) -> Option<String> {
        if self.due().is_none_or(|at| at > now) {
            return None;
        }
        self.last = Some(now);
        self.take(now)
    }

    fn take(&mut self, now: Instant) -> Option<String> {
        let line = match (self.files, self.first.take()) {
            (0, _) => None,
            (1, Some(one)) => Some(format!("took in {one}")),
            (files, _) => Some(format!(
                "took in {files} files, {} CDRs, in {:.1} s",
                self.cdrs,
                self.since
                    .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64())
            )),
        };
        self.files = 0;
        self.cdrs = 0;
        self.since = None;
        line
    }
}

/// `x.json: 1 CDR(s) QueueCallEnded call-1`, for the log.
fn describe(name: &str, file: &IngestFile) -> String {
    format!(
        "{name}: {} CDR(s) {}",
        file.cdrs.len(),
        file.cdrs
            .iter()
            .map(|c| format!("{} {}", c.event_type, c.call_id.as_deref().unwrap_or("-")))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest_file(call: &str) -> IngestFile {
        let body = format!(r#"{{"QueueId":1,"CallId":"{call}"}}"#);
        IngestFile {
            inflight_name: "n".into(),
            cdrs: crate::cdr::parse_file(body.as_bytes()).expect("cdr"),
            identity: None,
        }
    }

    /// A backlog logs one INFO line a second, not one per file; a lone file
    /// still gets its own line at once, naming it.
    #[test]
    fn taken_files_are_summarised_at_most_once_a_second() {
        let mut log = TakenLog::default();
        let t0 = Instant::now();
        log.note("a.json", &ingest_file("c1"), t0);
        assert_eq!(
            log.summary(t0).as_deref(),
            Some("took in a.json: 1 CDR(s) App.QueueWebhook c1"),
            "a lone file, at once"
        );
        let mut lines = Vec::new();
        for i in 1..=10_000u64 {
            // 10,000 files over 2.5 s.
            let now = t0 + Duration::from_micros(250 * i);
            log.note("b.json", &ingest_file("c"), now);
            lines.extend(log.summary(now));
        }
        assert_eq!(
            lines,
            [
                "took in 4000 files, 4000 CDRs, in 1.0 s",
                "took in 4000 files, 4000 CDRs, in 1.0 s"
            ]
        );
        let due = log.due().expect("the rest waits");
        assert_eq!(due, t0 + 3 * TAKEN_LOG_EVERY);
        assert!(
            log.summary(due - Duration::from_millis(1)).is_none(),
            "not before"
        );
        let rest = log.summary(due).expect("the rest, once due");
        assert!(rest.starts_with("took in 2000 files"), "{rest}");
        assert!(log.due().is_none(), "nothing waits");
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
}
