//! The journal: everything cdrhook knows, in one sled database. CDRs with
//! their bytes, deliveries with their state, and every attempt. It is the
//! only module that touches sled.
//!
//! Trees (numeric keys are big-endian, so sled's order is id order, and ids
//! grow with time):
//! - `cdrs`: CDR sequence number → `CdrMeta` JSON, `\n`, the body bytes.
//!   The meta lists the CDR's deliveries and the in-flight files it came in.
//! - `cdr_ids`: content id (`cdr_…`, the `webhook-id`) → sequence number,
//!   which is how a CDR taken in twice is recognised.
//! - `deliveries`: delivery id → `Delivery` JSON, with its attempt ids.
//! - `attempts`: attempt id → `Attempt` JSON.
//! - `sub_last`: subscription → last success and failure.
//!
//! There are deliberately no other indexes: a sled insert costs several
//! microseconds, and every one on the per-CDR path limits throughput. What
//! needs a listing (start-up, `resend --failed`) scans `deliveries`.
//!
//! Durability: `ingest` flushes before it returns, and the spool moves a
//! file only after that. Attempts and state changes are not flushed one by
//! one: after a crash an attempt may be repeated, never lost (at least once).
//! Within a batch, deliveries are written before their CDR and the CDR
//! before its content id, so a CDR that is recognised as known always has
//! its record and its deliveries (sled recovers a prefix of its log).
//!
//! After an I/O error (a full disk) sled refuses every write until it is
//! opened again; `heal` closes and reopens it, and the spool thread calls it
//! at its retry times, so intake resumes once the disk has room.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cdr::Cdr;
use crate::config::Subscription;
use crate::time::now_ms;

pub type DeliveryId = u64;
pub type AttemptId = u64;
pub type CdrSeq = u64;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal: {context}: {source}")]
    Sled {
        context: &'static str,
        source: sled::Error,
    },
    #[error("journal: {context}: corrupt record: {source}")]
    Corrupt {
        context: &'static str,
        source: serde_json::Error,
    },
    /// Closed after an I/O error, until `Journal::heal` reopens it.
    #[error("journal: unavailable until it is reopened after an I/O error{0}")]
    Unavailable(String),
}

type Result<T> = std::result::Result<T, JournalError>;

fn sled_err(context: &'static str) -> impl FnOnce(sled::Error) -> JournalError {
    move |source| JournalError::Sled { context, source }
}

fn corrupt(context: &'static str) -> impl FnOnce(serde_json::Error) -> JournalError {
    move |source| JournalError::Corrupt { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Retrying,
    Delivered,
    Dead,
}

impl State {
    pub fn is_open(self) -> bool {
        matches!(self, State::Pending | State::Retrying)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Retrying => "retrying",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }
}

/// Why an attempt was made (SPEC §5 `trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Auto,
    Resend,
    Replay,
    Test,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Auto => "auto",
            Trigger::Resend => "resend",
            Trigger::Replay => "replay",
            Trigger::Test => "test",
        }
    }
}

/// An in-flight file a CDR came in, with every CDR of that file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    pub name: String,
    pub cdrs: Vec<CdrSeq>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CdrMeta {
    /// The content id: `webhook-id`.
    pub id: String,
    pub seq: CdrSeq,
    pub event_type: String,
    pub call_id: Option<String>,
    pub received_ms: u64,
    /// (subscription, delivery) pairs: one delivery per pair, ever.
    pub deliveries: Vec<(String, DeliveryId)>,
    pub files: Vec<FileRef>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredCdr {
    pub meta: CdrMeta,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: DeliveryId,
    /// The CDR's content id (`webhook-id`).
    pub cdr_id: String,
    pub cdr_seq: CdrSeq,
    pub subscription: String,
    pub event_type: String,
    pub call_id: Option<String>,
    pub state: State,
    /// Attempts made so far, of every trigger: the next one is `attempts + 1`.
    pub attempts: u32,
    /// Automatic attempts that failed: the position in the retry schedule.
    pub failures: u32,
    pub next_at_ms: Option<u64>,
    pub created_ms: u64,
    pub ended_ms: Option<u64>,
    /// What created it: `auto` (the spool), `replay` or `test`.
    pub origin: Trigger,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub attempt_ids: Vec<AttemptId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub id: AttemptId,
    pub delivery_id: DeliveryId,
    pub time_ms: u64,
    pub subscription: String,
    pub event_type: String,
    pub call_id: Option<String>,
    pub webhook_id: String,
    pub attempt: u32,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub trigger: Trigger,
    /// Secrets already masked by `delivery`.
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Option<String>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        matches!(self.status, Some(200..=299)) && self.error.is_none()
    }
}

/// A parsed spool file, ready to be journaled.
#[derive(Debug, Clone)]
pub struct IngestFile {
    pub inflight_name: String,
    pub cdrs: Vec<Cdr>,
    /// (device, inode) of the spool file that was read, to notice a file
    /// replaced under the same name before it is moved.
    pub identity: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
pub struct IngestOutcome {
    /// (subscription, delivery) for every delivery created.
    pub new_deliveries: Vec<(String, DeliveryId)>,
    /// Files all of whose CDRs were already journaled and finished, or
    /// wanted by nobody: they can leave the in-flight directory at once.
    pub finished_files: Vec<String>,
    pub new_cdrs: usize,
    pub known_cdrs: usize,
    /// New CDRs that no active subscription wants.
    pub unmatched_cdrs: usize,
    /// Files whose CDRs were all known but not all finished: a delivery may
    /// end before the file reaches `.inflight/`, so look again after the move.
    pub recheck_files: Vec<String>,
}

/// An open delivery as start-up needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenDelivery {
    pub id: DeliveryId,
    pub subscription: String,
    /// `Some` for a retrying delivery: when its retry is due.
    pub retry_at_ms: Option<u64>,
    /// `test` for a test webhook, which is never resumed.
    pub origin: Trigger,
}

/// Per-subscription counts for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubCounts {
    pub pending: u64,
    pub retrying: u64,
    pub dead: u64,
    pub delivered: u64,
    pub last_success_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
    pub last_error: Option<String>,
    /// When `last_success_ms` was last written to the journal.
    #[serde(skip)]
    persisted_success_ms: Option<u64>,
}

impl SubCounts {
    fn adjust(&mut self, state: State, up: bool) {
        let n = match state {
            State::Pending => &mut self.pending,
            State::Retrying => &mut self.retrying,
            State::Dead => &mut self.dead,
            State::Delivered => &mut self.delivered,
        };
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AttemptFilter {
    pub subscription: Option<String>,
    pub failed: bool,
    pub call_id: Option<String>,
    pub event_type: Option<String>,
    pub since_ms: Option<u64>,
    pub limit: usize,
}

#[derive(Debug, Default, PartialEq)]
pub struct PruneStats {
    pub cdrs: usize,
    pub deliveries: usize,
    pub attempts: usize,
}

/// One page of a walk over the journal: what it found, and where the next
/// page starts (`None`: the walk is done). Walks go page by page so that
/// what an operator's command holds does not grow with the journal.
#[derive(Debug, PartialEq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

impl<T, C> Default for Page<T, C> {
    fn default() -> Self {
        Page {
            items: Vec::new(),
            next: None,
        }
    }
}

/// The next probe of a bisection between `lo` (known before the answer)
/// and `hi` (known at or after it), `None` once they are adjacent.
fn bisect(lo: u64, hi: u64) -> Option<u64> {
    (hi > lo + 1).then(|| lo + (hi - lo) / 2)
}

/// sled's handles, replaced as a whole when the journal is reopened.
struct Trees {
    db: sled::Db,
    cdrs: sled::Tree,
    cdr_ids: sled::Tree,
    deliveries: sled::Tree,
    attempts: sled::Tree,
    sub_last: sled::Tree,
}

impl Trees {
    fn open(path: &Path, cache_bytes: u64) -> Result<Trees> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // No background flusher: it would wake every second even when
            // idle. `ingest` flushes its batches itself, and the daemon
            // flushes other writes a second after they happen (`written`).
            .flush_every_ms(None)
            .open()
            .map_err(sled_err("open"))?;
        let tree = |name: &'static str| db.open_tree(name).map_err(sled_err("open tree"));
        Ok(Trees {
            cdrs: tree("cdrs")?,
            cdr_ids: tree("cdr_ids")?,
            deliveries: tree("deliveries")?,
            attempts: tree("attempts")?,
            sub_last: tree("sub_last")?,
            db,
        })
    }
}

pub struct Journal {
    path: PathBuf,
    cache_bytes: u64,
    /// `None` while being reopened, or when reopening failed.
    trees: RwLock<Option<Arc<Trees>>>,
    /// sled returned an I/O error (a full disk, say). After one, sled
    /// refuses every write until the database is opened again.
    broken: AtomicBool,
    heal_lock: Mutex<()>,
    /// Signalled after writes that `ingest` does not flush (attempts,
    /// replays, pruning), so the daemon can flush soon after them and not
    /// at all while idle.
    written: tokio::sync::Notify,
    counts: Mutex<BTreeMap<String, SubCounts>>,
    /// Open deliveries found at start-up, until the daemon takes them.
    open_at_start: Mutex<Vec<OpenDelivery>>,
    /// Where the next retention pass starts, so that old CDRs that cannot
    /// be pruned yet (still open) are stepped over, not re-read every pass.
    prune_from: Mutex<CdrSeq>,
    /// Serialises read-modify-write of records and the counts.
    write_lock: Mutex<()>,
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn id_from(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = bytes.len().min(8);
    a[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(a)
}

fn encode_cdr(meta: &CdrMeta, body: &[u8]) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec(meta).map_err(corrupt("encode cdr"))?;
    v.push(b'\n');
    v.extend_from_slice(body);
    Ok(v)
}

fn split_cdr(bytes: &[u8]) -> (&[u8], &[u8]) {
    let split = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    (&bytes[..split], bytes.get(split + 1..).unwrap_or_default())
}

fn decode_meta(bytes: &[u8]) -> Result<CdrMeta> {
    serde_json::from_slice(split_cdr(bytes).0).map_err(corrupt("cdr"))
}

fn decode_cdr(bytes: &[u8]) -> Result<StoredCdr> {
    let (meta, body) = split_cdr(bytes);
    Ok(StoredCdr {
        meta: serde_json::from_slice(meta).map_err(corrupt("cdr"))?,
        body: body.to_vec(),
    })
}

impl Journal {
    /// Opens (or creates) the journal. `cache_bytes` bounds sled's page cache,
    /// which would otherwise default to 1 GiB.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Journal> {
        let trees = Trees::open(path, cache_bytes)?;
        let journal = Journal {
            path: path.to_path_buf(),
            cache_bytes,
            trees: RwLock::new(None),
            broken: AtomicBool::new(false),
            heal_lock: Mutex::new(()),
            written: tokio::sync::Notify::new(),
            counts: Mutex::new(BTreeMap::new()),
            open_at_start: Mutex::new(Vec::new()),
            prune_from: Mutex::new(0),
            write_lock: Mutex::new(()),
        };
        let (counts, open) = journal.scan(&trees)?;
        *journal.lock_counts() = counts;
        *journal
            .open_at_start
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = open;
        *journal.trees.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(trees));
        Ok(journal)
    }

    /// The current handles, or `Unavailable` while the journal is closed.
    fn t(&self) -> Result<Arc<Trees>> {
        self.trees
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| JournalError::Unavailable(String::new()))
    }

    /// Like the free `sled_err`, and notes an I/O error: sled is unusable
    /// after one until `heal` reopens it.
    fn sled_err(&self, context: &'static str) -> impl FnOnce(sled::Error) -> JournalError + '_ {
        move |source| {
            if matches!(source, sled::Error::Io(_)) {
                self.broken.store(true, Ordering::SeqCst);
            }
            JournalError::Sled { context, source }
        }
    }

    /// Whether sled reported an I/O error since the journal was (re)opened.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// After an I/O error (a full disk), sled refuses every write until the
    /// database is opened again: this closes and reopens it. sled recovers
    /// what reached the disk, so writes that were not yet flushed are lost
    /// (never an ingest, which flushes before the spool moves a file): the
    /// deliveries they would have ended are open again. Returns `None` if
    /// the journal was fine, else every open delivery, for the workers to
    /// queue again. On an error the journal stays closed; call again later.
    /// The caller must not hold journal handles (the spool thread).
    pub fn heal(&self) -> Result<Option<Vec<OpenDelivery>>> {
        let _one = self.heal_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.is_broken() {
            return Ok(None);
        }
        let old = self.trees.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(old) = old {
            // sled's file lock goes with the last handle: wait for the calls
            // still using the old ones (each is short) to finish.
            let start = Instant::now();
            while Arc::strong_count(&old) > 1 {
                if start.elapsed() > Duration::from_secs(10) {
                    *self.trees.write().unwrap_or_else(|p| p.into_inner()) = Some(old);
                    return Err(JournalError::Unavailable(
                        ": the old database is still in use".to_string(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        let trees = Trees::open(&self.path, self.cache_bytes)?;
        self.broken.store(false, Ordering::SeqCst);
        let (counts, open) = match self.scan(&trees) {
            Ok(found) => found,
            Err(e) => {
                self.broken.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        *self.lock_counts() = counts;
        *self.trees.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(trees));
        Ok(Some(open))
    }

    /// Completes after a write that is not flushed yet (see `written`).
    pub async fn written(&self) {
        self.written.notified().await
    }

    /// The durability point.
    pub fn flush(&self) -> Result<()> {
        self.t()?.db.flush().map_err(self.sled_err("flush"))?;
        Ok(())
    }

    pub fn next_id(&self) -> Result<u64> {
        // generate_id starts at 0; keep 0 free so ids read naturally.
        self.t()?
            .db
            .generate_id()
            .map(|n| n + 1)
            .map_err(self.sled_err("generate id"))
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SubCounts>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One pass over the deliveries at open: the counts for `status` and
    /// the open deliveries the workers resume. Deliveries whose CDR never
    /// made it to disk (a crash in the middle of an unflushed batch; the
    /// file is still in the spool and will be taken in again) are dropped.
    fn scan(&self, t: &Trees) -> Result<(BTreeMap<String, SubCounts>, Vec<OpenDelivery>)> {
        let mut counts: BTreeMap<String, SubCounts> = BTreeMap::new();
        let mut open = Vec::new();
        let mut orphans = Vec::new();
        for item in t.deliveries.iter() {
            let (k, v) = item.map_err(self.sled_err("scan deliveries"))?;
            let d: Delivery = serde_json::from_slice(&v).map_err(corrupt("delivery"))?;
            if d.state.is_open() {
                if !t
                    .cdrs
                    .contains_key(be(d.cdr_seq))
                    .map_err(self.sled_err("read cdr"))?
                {
                    orphans.push(k);
                    continue;
                }
                open.push(OpenDelivery {
                    id: d.id,
                    subscription: d.subscription.clone(),
                    retry_at_ms: match d.state {
                        State::Retrying => Some(d.next_at_ms.unwrap_or(0)),
                        _ => None,
                    },
                    origin: d.origin,
                });
            }
            counts
                .entry(d.subscription.clone())
                .or_default()
                .adjust(d.state, true);
        }
        for k in orphans {
            t.deliveries
                .remove(k)
                .map_err(self.sled_err("remove orphan"))?;
        }
        for item in t.sub_last.iter() {
            let (k, v) = item.map_err(self.sled_err("scan sub_last"))?;
            let last: SubCounts = serde_json::from_slice(&v).map_err(corrupt("sub_last"))?;
            let c = counts
                .entry(String::from_utf8_lossy(&k).into_owned())
                .or_default();
            c.last_success_ms = last.last_success_ms;
            c.last_failure_ms = last.last_failure_ms;
            c.last_error = last.last_error;
        }
        Ok((counts, open))
    }

    /// Pending and retrying deliveries found at open, oldest first. Hands
    /// them over once.
    pub fn take_open_deliveries(&self) -> Vec<OpenDelivery> {
        std::mem::take(&mut *self.open_at_start.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Counts per subscription name (including subscriptions no longer in
    /// the config that still have deliveries).
    pub fn counts(&self) -> BTreeMap<String, SubCounts> {
        self.lock_counts().clone()
    }

    /// Journals a batch of parsed files and flushes once for all of them.
    /// New records need no lock: only `add_file_ref` rewrites one, and
    /// holding the lock for a whole batch would stall every delivery thread.
    pub fn ingest(&self, files: &[IngestFile], subs: &[&Subscription]) -> Result<IngestOutcome> {
        let t = self.t()?;
        let mut out = IngestOutcome::default();
        let now = now_ms();
        // Files with a CDR that got a new delivery cannot be finished yet.
        let mut waiting_files: HashSet<&str> = HashSet::new();
        for file in files {
            // Sequence numbers first: each CDR records its file's siblings.
            let mut seqs = Vec::with_capacity(file.cdrs.len());
            let mut known = Vec::with_capacity(file.cdrs.len());
            // The same CDR twice in one array is still one CDR.
            let mut in_file: std::collections::HashMap<&str, CdrSeq> =
                std::collections::HashMap::new();
            for cdr in &file.cdrs {
                if let Some(&seq) = in_file.get(cdr.id.as_str()) {
                    seqs.push(seq);
                    known.push(true);
                    continue;
                }
                match t
                    .cdr_ids
                    .get(&cdr.id)
                    .map_err(self.sled_err("read cdr id"))?
                {
                    Some(seq) => {
                        seqs.push(id_from(&seq));
                        known.push(true);
                    }
                    None => {
                        seqs.push(self.next_id()?);
                        known.push(false);
                    }
                }
                if let Some(&seq) = seqs.last() {
                    in_file.insert(cdr.id.as_str(), seq);
                }
            }
            let file_ref = FileRef {
                name: file.inflight_name.clone(),
                cdrs: seqs.clone(),
            };
            for ((cdr, &seq), &is_known) in file.cdrs.iter().zip(&seqs).zip(&known) {
                if is_known {
                    // A CDR taken in twice is journaled once and sent once;
                    // it only learns that this file holds it too.
                    out.known_cdrs += 1;
                    self.add_file_ref(seq, &file_ref)?;
                    continue;
                }
                out.new_cdrs += 1;
                let mut meta = CdrMeta {
                    id: cdr.id.clone(),
                    seq,
                    event_type: cdr.event_type.as_str().to_string(),
                    call_id: cdr.call_id.clone(),
                    received_ms: now,
                    deliveries: Vec::new(),
                    files: vec![file_ref.clone()],
                };
                for sub in subs.iter().filter(|s| s.active && s.wants(cdr.event_type)) {
                    let d = self.create_delivery(&meta, &sub.name, Trigger::Auto, now)?;
                    meta.deliveries.push((sub.name.clone(), d.id));
                    out.new_deliveries.push((sub.name.clone(), d.id));
                }
                if meta.deliveries.is_empty() {
                    out.unmatched_cdrs += 1;
                } else {
                    waiting_files.insert(&file.inflight_name);
                }
                t.cdrs
                    .insert(be(seq), encode_cdr(&meta, &cdr.body)?)
                    .map_err(self.sled_err("write cdr"))?;
                t.cdr_ids
                    .insert(cdr.id.as_bytes(), &be(seq))
                    .map_err(self.sled_err("write cdr id"))?;
            }
        }
        self.flush()?;
        for file in files {
            if waiting_files.contains(file.inflight_name.as_str()) {
                continue;
            }
            if self.cdrs_finished_by_ids(&file.cdrs)? {
                out.finished_files.push(file.inflight_name.clone());
            } else {
                out.recheck_files.push(file.inflight_name.clone());
            }
        }
        Ok(out)
    }

    fn add_file_ref(&self, seq: CdrSeq, file: &FileRef) -> Result<()> {
        let t = self.t()?;
        let _guard = self.lock_writes();
        let Some(bytes) = t.cdrs.get(be(seq)).map_err(self.sled_err("read cdr"))? else {
            return Ok(());
        };
        let mut stored = decode_cdr(&bytes)?;
        if stored.meta.files.iter().any(|f| f.name == file.name) {
            return Ok(());
        }
        stored.meta.files.push(file.clone());
        t.cdrs
            .insert(be(seq), encode_cdr(&stored.meta, &stored.body)?)
            .map_err(self.sled_err("write cdr"))?;
        Ok(())
    }

    fn create_delivery(
        &self,
        cdr: &CdrMeta,
        sub: &str,
        origin: Trigger,
        now: u64,
    ) -> Result<Delivery> {
        let d = Delivery {
            id: self.next_id()?,
            cdr_id: cdr.id.clone(),
            cdr_seq: cdr.seq,
            subscription: sub.to_string(),
            event_type: cdr.event_type.clone(),
            call_id: cdr.call_id.clone(),
            state: State::Pending,
            attempts: 0,
            failures: 0,
            next_at_ms: None,
            created_ms: now,
            ended_ms: None,
            origin,
            last_status: None,
            last_error: None,
            attempt_ids: Vec::new(),
        };
        self.write_delivery(None, &d)?;
        Ok(d)
    }

    /// Writes a delivery and keeps the counts in step with its state.
    /// Callers hold `write_lock`.
    fn write_delivery(&self, old: Option<&Delivery>, new: &Delivery) -> Result<()> {
        let t = self.t()?;
        t.deliveries
            .insert(
                be(new.id),
                serde_json::to_vec(new).map_err(corrupt("encode delivery"))?,
            )
            .map_err(self.sled_err("write delivery"))?;
        let mut counts = self.lock_counts();
        let c = counts.entry(new.subscription.clone()).or_default();
        if let Some(old) = old {
            c.adjust(old.state, false);
        }
        c.adjust(new.state, true);
        Ok(())
    }

    /// A CDR by its content id (`webhook-id`).
    pub fn cdr(&self, id: &str) -> Result<Option<StoredCdr>> {
        let t = self.t()?;
        match t.cdr_ids.get(id).map_err(self.sled_err("read cdr id"))? {
            Some(seq) => self.cdr_by_seq(id_from(&seq)),
            None => Ok(None),
        }
    }

    pub fn cdr_by_seq(&self, seq: CdrSeq) -> Result<Option<StoredCdr>> {
        let t = self.t()?;
        match t.cdrs.get(be(seq)).map_err(self.sled_err("read cdr"))? {
            Some(bytes) => Ok(Some(decode_cdr(&bytes)?)),
            None => Ok(None),
        }
    }

    fn meta_by_seq(&self, seq: CdrSeq) -> Result<Option<CdrMeta>> {
        let t = self.t()?;
        match t.cdrs.get(be(seq)).map_err(self.sled_err("read cdr"))? {
            Some(bytes) => Ok(Some(decode_meta(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether every CDR with these content ids is journaled and has no
    /// open delivery. Used at start-up for files in `.inflight/`.
    pub fn cdrs_finished_by_ids(&self, cdrs: &[Cdr]) -> Result<bool> {
        let t = self.t()?;
        for cdr in cdrs {
            let Some(seq) = t
                .cdr_ids
                .get(&cdr.id)
                .map_err(self.sled_err("read cdr id"))?
            else {
                return Ok(false);
            };
            if !self.cdr_finished(id_from(&seq))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether every CDR with these content ids is journaled.
    pub fn knows_all(&self, cdrs: &[Cdr]) -> Result<bool> {
        let t = self.t()?;
        for cdr in cdrs {
            if !t
                .cdr_ids
                .contains_key(&cdr.id)
                .map_err(self.sled_err("read cdr id"))?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Journals a CDR that did not come from the spool (the test webhook).
    pub fn put_cdr(&self, cdr: &Cdr) -> Result<CdrMeta> {
        self.written.notify_one();
        let t = self.t()?;
        let _guard = self.lock_writes();
        if let Some(stored) = self.cdr(&cdr.id)? {
            return Ok(stored.meta);
        }
        let meta = CdrMeta {
            id: cdr.id.clone(),
            seq: self.next_id()?,
            event_type: cdr.event_type.as_str().to_string(),
            call_id: cdr.call_id.clone(),
            received_ms: now_ms(),
            deliveries: Vec::new(),
            files: Vec::new(),
        };
        t.cdrs
            .insert(be(meta.seq), encode_cdr(&meta, &cdr.body)?)
            .map_err(self.sled_err("write cdr"))?;
        t.cdr_ids
            .insert(cdr.id.as_bytes(), &be(meta.seq))
            .map_err(self.sled_err("write cdr id"))?;
        Ok(meta)
    }

    pub fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        self.get_json(&self.t()?.deliveries, id, "delivery")
    }

    /// A JSON record by numeric id.
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        id: u64,
        what: &'static str,
    ) -> Result<Option<T>> {
        match tree.get(be(id)).map_err(self.sled_err(what))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(corrupt(what))?)),
            None => Ok(None),
        }
    }

    /// Creates the delivery of a journaled CDR to `sub` unless it exists;
    /// returns it and whether it was created. Used by replay and the test
    /// webhook.
    pub fn ensure_delivery(
        &self,
        cdr: &CdrMeta,
        sub: &str,
        origin: Trigger,
    ) -> Result<(Delivery, bool)> {
        self.written.notify_one();
        let t = self.t()?;
        let _guard = self.lock_writes();
        let Some(bytes) = t.cdrs.get(be(cdr.seq)).map_err(self.sled_err("read cdr"))? else {
            return Err(JournalError::Sled {
                context: "ensure delivery",
                source: sled::Error::ReportableBug(format!("CDR {} vanished", cdr.id)),
            });
        };
        let mut stored = decode_cdr(&bytes)?;
        if let Some((_, id)) = stored.meta.deliveries.iter().find(|(s, _)| s == sub) {
            if let Some(d) = self.delivery(*id)? {
                return Ok((d, false));
            }
        }
        let d = self.create_delivery(&stored.meta, sub, origin, now_ms())?;
        stored.meta.deliveries.retain(|(s, _)| s != sub);
        stored.meta.deliveries.push((sub.to_string(), d.id));
        t.cdrs
            .insert(be(cdr.seq), encode_cdr(&stored.meta, &stored.body)?)
            .map_err(self.sled_err("write cdr"))?;
        Ok((d, true))
    }

    /// One page of the dead and retrying deliveries (optionally of one
    /// subscription and created since a time): what `resend --failed` sends.
    /// Examines at most `max_examined` deliveries from id `from` on, so a
    /// walk over the whole journal holds one page at a time and lets others
    /// use the journal between pages; `next` is where the following page
    /// starts. No index: an operator's request, not a hot path.
    pub fn failed_deliveries_page(
        &self,
        sub: Option<&str>,
        since_ms: Option<u64>,
        from: DeliveryId,
        max_examined: usize,
    ) -> Result<Page<Delivery, DeliveryId>> {
        let t = self.t()?;
        let mut page = Page::default();
        for (examined, item) in t.deliveries.range(be(from)..).enumerate() {
            let (k, v) = item.map_err(self.sled_err("scan deliveries"))?;
            if examined >= max_examined {
                page.next = Some(id_from(&k));
                break;
            }
            let d: Delivery = serde_json::from_slice(&v).map_err(corrupt("delivery"))?;
            // A failed test webhook ends dead, but it was a probe, not a
            // CDR: `resend --failed` does not send it again.
            let failed =
                matches!(d.state, State::Dead | State::Retrying) && d.origin != Trigger::Test;
            let sub_ok = sub.is_none_or(|s| s == d.subscription);
            let since_ok = since_ms.is_none_or(|t| d.created_ms >= t);
            if failed && sub_ok && since_ok {
                page.items.push(d);
            }
        }
        Ok(page)
    }

    /// Every failed delivery at once: for tests (an operator's walk goes
    /// page by page).
    #[cfg(test)]
    pub fn failed_deliveries(
        &self,
        sub: Option<&str>,
        since_ms: Option<u64>,
    ) -> Result<Vec<Delivery>> {
        let (mut out, mut from) = (Vec::new(), Some(0));
        while let Some(start) = from {
            let page = self.failed_deliveries_page(sub, since_ms, start, 2)?;
            out.extend(page.items);
            from = page.next;
        }
        Ok(out)
    }

    /// Records one attempt and the delivery's new state, and returns the
    /// in-flight files that are now finished (every delivery of every CDR in
    /// them ended).
    pub fn record_attempt(&self, updated: &Delivery, attempt: &Attempt) -> Result<Vec<String>> {
        self.written.notify_one();
        let t = self.t()?;
        t.attempts
            .insert(
                be(attempt.id),
                serde_json::to_vec(attempt).map_err(corrupt("encode attempt"))?,
            )
            .map_err(self.sled_err("write attempt"))?;
        // Only the delivery's read-modify-write needs the lock: the attempt
        // is a new key, and the file check below only reads (each thread
        // writes its own state before reading the others', so the last
        // delivery of a file to end always sees the file finished).
        let (old, new) = {
            let _guard = self.lock_writes();
            let old = self.delivery(updated.id)?;
            let mut new = updated.clone();
            // Keep attempts recorded meanwhile (a resend beside a retry).
            if let Some(old) = &old {
                for id in &old.attempt_ids {
                    if !new.attempt_ids.contains(id) {
                        new.attempt_ids.push(*id);
                    }
                }
            }
            if !new.attempt_ids.contains(&attempt.id) {
                new.attempt_ids.push(attempt.id);
            }
            new.attempt_ids.sort_unstable();
            // A copy read before another attempt ended it never reopens an
            // ended delivery.
            if let Some(old) = old.as_ref().filter(|o| !o.state.is_open()) {
                if new.state.is_open() {
                    new.state = old.state;
                    new.next_at_ms = None;
                    new.ended_ms = old.ended_ms;
                }
            }
            new.attempts = new.attempts.max(old.as_ref().map_or(0, |o| o.attempts));
            self.write_delivery(old.as_ref(), &new)?;
            (old, new)
        };
        self.note_result(&new.subscription, attempt)?;
        let was_open = old.as_ref().is_none_or(|o| o.state.is_open());
        if was_open && !new.state.is_open() {
            self.finished_files_of(new.cdr_seq)
        } else {
            Ok(Vec::new())
        }
    }

    /// Ends an open delivery as dead without an attempt, with `error` as
    /// its last error and its subscription's last failure (a test webhook
    /// the daemon was stopped in the middle of). Returns `None` if it was
    /// not open (or is gone), else the in-flight files now finished.
    pub fn end_delivery(&self, id: DeliveryId, error: &str) -> Result<Option<Vec<String>>> {
        self.written.notify_one();
        let now = now_ms();
        let new = {
            let _guard = self.lock_writes();
            let Some(old) = self.delivery(id)?.filter(|d| d.state.is_open()) else {
                return Ok(None);
            };
            let mut new = old.clone();
            new.state = State::Dead;
            new.next_at_ms = None;
            new.ended_ms = Some(now);
            new.last_error = Some(error.to_string());
            self.write_delivery(Some(&old), &new)?;
            new
        };
        let snapshot = {
            let mut counts = self.lock_counts();
            let c = counts.entry(new.subscription.clone()).or_default();
            c.last_failure_ms = Some(now);
            c.last_error = Some(error.to_string());
            SubCounts {
                last_success_ms: c.last_success_ms,
                last_failure_ms: c.last_failure_ms,
                last_error: c.last_error.clone(),
                ..SubCounts::default()
            }
        };
        self.t()?
            .sub_last
            .insert(
                new.subscription.as_bytes(),
                serde_json::to_vec(&snapshot).map_err(corrupt("encode sub_last"))?,
            )
            .map_err(self.sled_err("write sub_last"))?;
        self.finished_files_of(new.cdr_seq).map(Some)
    }

    fn note_result(&self, sub: &str, attempt: &Attempt) -> Result<()> {
        let t = self.t()?;
        let snapshot = {
            let mut counts = self.lock_counts();
            let c = counts.entry(sub.to_string()).or_default();
            if attempt.succeeded() {
                c.last_success_ms = c.last_success_ms.max(Some(attempt.time_ms));
                // A busy subscription succeeds thousands of times a second:
                // persist the time at most once a second (status reads the
                // in-memory value, so only a restart can see it a second old).
                let persisted_recently = c
                    .persisted_success_ms
                    .is_some_and(|t| attempt.time_ms.saturating_sub(t) < 1000);
                if persisted_recently {
                    return Ok(());
                }
                c.persisted_success_ms = Some(attempt.time_ms);
            } else {
                c.last_failure_ms = Some(attempt.time_ms);
                c.last_error = Some(match (&attempt.error, attempt.status) {
                    (Some(e), _) => e.clone(),
                    (None, Some(s)) => format!("HTTP {s}"),
                    (None, None) => "failed".to_string(),
                });
            }
            SubCounts {
                last_success_ms: c.last_success_ms,
                last_failure_ms: c.last_failure_ms,
                last_error: c.last_error.clone(),
                ..SubCounts::default()
            }
        };
        t.sub_last
            .insert(
                sub.as_bytes(),
                serde_json::to_vec(&snapshot).map_err(corrupt("encode sub_last"))?,
            )
            .map_err(self.sled_err("write sub_last"))?;
        Ok(())
    }

    fn cdr_finished(&self, seq: CdrSeq) -> Result<bool> {
        // A record that is gone was pruned, and only ended ones are.
        let Some(meta) = self.meta_by_seq(seq)? else {
            return Ok(true);
        };
        self.deliveries_ended(&meta)
    }

    fn deliveries_ended(&self, meta: &CdrMeta) -> Result<bool> {
        for (_, id) in &meta.deliveries {
            if self.delivery(*id)?.is_some_and(|d| d.state.is_open()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn finished_files_of(&self, seq: CdrSeq) -> Result<Vec<String>> {
        let Some(meta) = self.meta_by_seq(seq)? else {
            return Ok(Vec::new());
        };
        if !self.deliveries_ended(&meta)? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for file in &meta.files {
            let mut finished = true;
            for &sibling in file.cdrs.iter().filter(|&&s| s != seq) {
                if !self.cdr_finished(sibling)? {
                    finished = false;
                    break;
                }
            }
            if finished {
                out.push(file.name.clone());
            }
        }
        Ok(out)
    }

    pub fn attempt(&self, id: AttemptId) -> Result<Option<Attempt>> {
        self.get_json(&self.t()?.attempts, id, "attempt")
    }

    /// The attempts of one delivery, oldest first.
    pub fn attempts_of(&self, delivery: &Delivery) -> Result<Vec<Attempt>> {
        let mut out = Vec::new();
        for &id in &delivery.attempt_ids {
            if let Some(a) = self.attempt(id)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// One page of the attempt history, newest first: attempts older than
    /// `before` (all when `None`) that match `f`, at most `max` of them and
    /// at most `max_examined` looked at, so that a walk over the whole
    /// history holds one page at a time. `next` is the `before` of the
    /// following page, `None` once the walk is done. `f.limit` is the
    /// caller's to apply across pages.
    pub fn attempts_page(
        &self,
        f: &AttemptFilter,
        before: Option<AttemptId>,
        max: usize,
        max_examined: usize,
    ) -> Result<Page<Attempt, AttemptId>> {
        let t = self.t()?;
        let mut page = Page::default();
        let range = match before {
            Some(b) => t.attempts.range(..be(b)),
            None => t.attempts.range::<&[u8], _>(..),
        };
        for (examined, item) in range.rev().enumerate() {
            let (k, v) = item.map_err(self.sled_err("scan attempts"))?;
            if page.items.len() >= max.max(1) || examined >= max_examined {
                page.next = Some(id_from(&k) + 1);
                break;
            }
            let a: Attempt = serde_json::from_slice(&v).map_err(corrupt("attempt"))?;
            // Ids are taken when an attempt ends, times when it starts: a slow
            // attempt can carry an older time than later ids. Skip attempts
            // that started too early, and stop only once they also ended
            // well before the cutoff.
            if let Some(t) = f.since_ms {
                if a.time_ms < t {
                    let ended = a.time_ms + a.duration_ms;
                    if ended + 1000 < t {
                        page.next = None;
                        break;
                    }
                    continue;
                }
            }
            let keep = f.subscription.as_ref().is_none_or(|s| *s == a.subscription)
                && (!f.failed || !a.succeeded())
                && f.call_id
                    .as_ref()
                    .is_none_or(|c| Some(c) == a.call_id.as_ref())
                && f.event_type.as_ref().is_none_or(|t| *t == a.event_type);
            if keep {
                page.items.push(a);
            }
        }
        Ok(page)
    }

    /// Attempt history, newest first, up to `f.limit` (0: all): for tests
    /// (an operator's listing goes page by page).
    #[cfg(test)]
    pub fn attempts(&self, f: &AttemptFilter) -> Result<Vec<Attempt>> {
        let (mut out, mut before) = (Vec::new(), None);
        loop {
            let want = if f.limit == 0 {
                usize::MAX
            } else {
                f.limit - out.len()
            };
            let page = self.attempts_page(f, before, want.min(2), 3)?;
            out.extend(page.items);
            match page.next {
                Some(b) if f.limit == 0 || out.len() < f.limit => before = Some(b),
                _ => return Ok(out),
            }
        }
    }

    /// Where a walk over the CDRs journaled at or after `since_ms` starts
    /// and ends: (first, last) sequence numbers, `None` if there are none.
    /// The end is the newest CDR now, so CDRs taken in during the walk are
    /// left out. Found by bisection over the sequence numbers, which grow
    /// with the time a CDR was received: a few dozen reads, not a scan.
    pub fn cdr_range_since(&self, since_ms: u64) -> Result<Option<(CdrSeq, CdrSeq)>> {
        let t = self.t()?;
        let read = |item: Option<(sled::IVec, sled::IVec)>| -> Result<Option<(CdrSeq, u64)>> {
            match item {
                Some((k, v)) => Ok(Some((id_from(&k), decode_meta(&v)?.received_ms))),
                None => Ok(None),
            }
        };
        let first = read(t.cdrs.first().map_err(self.sled_err("read cdrs"))?)?;
        let last = read(t.cdrs.last().map_err(self.sled_err("read cdrs"))?)?;
        let (Some((first, first_ms)), Some((last, last_ms))) = (first, last) else {
            return Ok(None);
        };
        if last_ms < since_ms {
            return Ok(None);
        }
        if first_ms >= since_ms {
            return Ok(Some((first, last)));
        }
        // The first CDR at or after a sequence number, and when it came.
        let at_or_after = |seq: CdrSeq| -> Result<Option<(CdrSeq, u64)>> {
            let item = t.cdrs.range(be(seq)..).next().transpose();
            read(item.map_err(self.sled_err("read cdrs"))?)
        };
        let (mut lo, mut hi) = (first, last);
        while let Some(mid) = bisect(lo, hi) {
            match at_or_after(mid)? {
                Some((_, ms)) if ms >= since_ms => hi = mid,
                _ => lo = mid,
            }
        }
        Ok(at_or_after(hi)?.map(|(start, _)| (start, last)))
    }

    /// One page of CDR metadata, oldest first: sequence numbers `from..=to`,
    /// at most `max`. `next` is the `from` of the following page.
    pub fn cdrs_page(&self, from: CdrSeq, to: CdrSeq, max: usize) -> Result<Page<CdrMeta, CdrSeq>> {
        let t = self.t()?;
        let mut page = Page::default();
        for item in t.cdrs.range(be(from)..=be(to)) {
            let (k, v) = item.map_err(self.sled_err("scan cdrs"))?;
            if page.items.len() >= max.max(1) {
                page.next = Some(id_from(&k));
                break;
            }
            page.items.push(decode_meta(&v)?);
        }
        Ok(page)
    }

    /// CDRs journaled at or after `since_ms`, oldest first (metadata only):
    /// for tests (replay walks `cdrs_page` by page).
    #[cfg(test)]
    pub fn cdrs_since(&self, since_ms: u64) -> Result<Vec<CdrMeta>> {
        let mut out = Vec::new();
        let Some((mut from, to)) = self.cdr_range_since(since_ms)? else {
            return Ok(out);
        };
        loop {
            let page = self.cdrs_page(from, to, 2)?;
            out.extend(page.items);
            match page.next {
                Some(n) => from = n,
                None => return Ok(out),
            }
        }
    }

    /// Prunes CDRs received before `cutoff_ms` whose deliveries all ended
    /// before it, with their deliveries and attempts. Nothing open is ever
    /// pruned. At most `max` CDRs are examined per call, so that a large
    /// backlog of old records does not stall the daemon.
    pub fn prune(&self, cutoff_ms: u64, max: usize) -> Result<PruneStats> {
        self.written.notify_one();
        let t = self.t()?;
        let mut stats = PruneStats::default();
        let start = *self.prune_from.lock().unwrap_or_else(|p| p.into_inner());
        // Where the next pass starts: from the top once this one reaches
        // the cutoff or the end, else after the last CDR examined.
        let mut next = 0;
        for (examined, item) in t.cdrs.range(be(start)..).enumerate() {
            let (key, v) = item.map_err(self.sled_err("scan cdrs"))?;
            if examined >= max {
                next = id_from(&key);
                break;
            }
            let meta = decode_meta(&v)?;
            if meta.received_ms >= cutoff_ms {
                break;
            }
            let _guard = self.lock_writes();
            let mut deliveries = Vec::new();
            for (_, id) in &meta.deliveries {
                if let Some(d) = self.delivery(*id)? {
                    deliveries.push(d);
                }
            }
            let removable = deliveries
                .iter()
                .all(|d| !d.state.is_open() && d.ended_ms.is_some_and(|t| t < cutoff_ms));
            if !removable {
                continue;
            }
            for d in &deliveries {
                for &a in &d.attempt_ids {
                    t.attempts
                        .remove(be(a))
                        .map_err(self.sled_err("prune attempt"))?;
                    stats.attempts += 1;
                }
                t.deliveries
                    .remove(be(d.id))
                    .map_err(self.sled_err("prune delivery"))?;
                self.lock_counts()
                    .entry(d.subscription.clone())
                    .or_default()
                    .adjust(d.state, false);
                stats.deliveries += 1;
            }
            t.cdr_ids
                .remove(meta.id.as_bytes())
                .map_err(self.sled_err("prune cdr id"))?;
            t.cdrs.remove(key).map_err(self.sled_err("prune cdr"))?;
            stats.cdrs += 1;
        }
        *self.prune_from.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(stats)
    }

    /// Approximate size on disk, for status.
    pub fn size_on_disk(&self) -> u64 {
        self.t()
            .ok()
            .and_then(|t| t.db.size_on_disk().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdr::parse_file;

    fn sub(name: &str) -> Subscription {
        let yaml = format!(
            "subscriptions:\n  - name: {name}\n    endpoint: http://127.0.0.1:1/x\n    events: [\"*\"]\n"
        );
        let cfg =
            crate::config::parse(&yaml, Path::new("/tmp/c.yaml"), &|_| None).expect("test config");
        cfg.subscriptions[0].clone()
    }

    fn file(name: &str, body: &str) -> IngestFile {
        IngestFile {
            inflight_name: format!("x-{name}"),
            cdrs: parse_file(body.as_bytes()).expect("cdr"),
            identity: None,
        }
    }

    fn open_tmp() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(&dir.path().join("j"), 8 << 20).expect("open");
        (dir, j)
    }

    fn finish(j: &Journal, id: DeliveryId, state: State) -> Vec<String> {
        let mut d = j.delivery(id).expect("read").expect("exists");
        d.state = state;
        d.attempts += 1;
        d.ended_ms = Some(now_ms());
        let status = if state == State::Delivered { 200 } else { 500 };
        let a = attempt_for(j, &d, status, Trigger::Auto);
        j.record_attempt(&d, &a).expect("record")
    }

    /// An attempt on `d` with this status, numbered `d.attempts`.
    fn attempt_for(j: &Journal, d: &Delivery, status: u16, trigger: Trigger) -> Attempt {
        Attempt {
            id: j.next_id().expect("id"),
            delivery_id: d.id,
            time_ms: now_ms(),
            subscription: d.subscription.clone(),
            event_type: d.event_type.clone(),
            call_id: d.call_id.clone(),
            webhook_id: d.cdr_id.clone(),
            attempt: d.attempts,
            status: Some(status),
            error: None,
            duration_ms: 1,
            trigger,
            request_headers: vec![],
            response_headers: vec![],
            response_body: None,
        }
    }

    #[test]
    fn ingest_is_idempotent_per_cdr() {
        let (_d, j) = open_tmp();
        let (a, b) = (sub("a"), sub("b"));
        let subs = [&a, &b];
        let f1 = file("one.json", r#"{"QueueId":"q","CallId":"1"}"#);
        let out = j.ingest(std::slice::from_ref(&f1), &subs).expect("ingest");
        assert_eq!(out.new_deliveries.len(), 2);
        assert_eq!(out.new_cdrs, 1);
        let again = j.ingest(&[f1], &subs).expect("again");
        assert!(again.new_deliveries.is_empty());
        assert_eq!(again.known_cdrs, 1);
        assert_eq!(j.counts()["a"].pending, 1);
    }

    #[test]
    fn open_deliveries_are_found_at_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = sub("a");
        {
            let j = Journal::open(&dir.path().join("j"), 8 << 20).expect("open");
            let out = j
                .ingest(
                    &[
                        file("1.json", r#"{"QueueId":"1"}"#),
                        file("2.json", r#"{"QueueId":"2"}"#),
                    ],
                    &[&a],
                )
                .expect("ingest");
            finish(&j, out.new_deliveries[0].1, State::Delivered);
            j.flush().expect("flush");
        }
        let j = Journal::open(&dir.path().join("j"), 8 << 20).expect("reopen");
        let open = j.take_open_deliveries();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].subscription, "a");
        assert!(j.take_open_deliveries().is_empty(), "handed over once");
    }

    #[test]
    fn file_finishes_only_when_every_delivery_ended() {
        let (_d, j) = open_tmp();
        let (a, b) = (sub("a"), sub("b"));
        let out = j
            .ingest(&[file("f.json", r#"{"IvrId":"i"}"#)], &[&a, &b])
            .expect("ingest");
        assert!(out.finished_files.is_empty());
        let ids: Vec<_> = out.new_deliveries.iter().map(|(_, id)| *id).collect();
        assert!(finish(&j, ids[0], State::Delivered).is_empty());
        assert_eq!(
            finish(&j, ids[1], State::Dead),
            vec!["x-f.json".to_string()]
        );
        let c = j.counts();
        assert_eq!((c["a"].delivered, c["b"].dead, c["b"].pending), (1, 1, 0));
        assert_eq!(j.failed_deliveries(None, None).expect("failed").len(), 1);
    }

    #[test]
    fn an_array_file_finishes_with_its_last_cdr() {
        let (_d, j) = open_tmp();
        let a = sub("a");
        let out = j
            .ingest(
                &[file("arr.json", r#"[{"QueueId":"1"},{"QueueId":"2"}]"#)],
                &[&a],
            )
            .expect("ingest");
        assert_eq!(out.new_deliveries.len(), 2);
        assert!(finish(&j, out.new_deliveries[0].1, State::Delivered).is_empty());
        assert_eq!(
            finish(&j, out.new_deliveries[1].1, State::Delivered),
            vec!["x-arr.json".to_string()]
        );
    }

    #[test]
    fn a_known_cdr_in_a_new_file_finishes_that_file_at_once() {
        let (_d, j) = open_tmp();
        let a = sub("a");
        let body = r#"{"QueueId":"1"}"#;
        let out = j.ingest(&[file("1.json", body)], &[&a]).expect("ingest");
        finish(&j, out.new_deliveries[0].1, State::Delivered);
        let again = j.ingest(&[file("2.json", body)], &[&a]).expect("again");
        assert_eq!(again.finished_files, vec!["x-2.json".to_string()]);
        assert!(j
            .cdrs_finished_by_ids(&file("3.json", body).cdrs)
            .expect("check"));
    }

    #[test]
    fn unmatched_cdr_is_journaled_and_its_file_finished() {
        let (_d, j) = open_tmp();
        let out = j
            .ingest(&[file("u.json", r#"{"QueueId":"q"}"#)], &[])
            .expect("ingest");
        assert_eq!(out.unmatched_cdrs, 1);
        assert_eq!(out.finished_files, vec!["x-u.json".to_string()]);
        assert_eq!(j.cdrs_since(0).expect("since").len(), 1);
    }

    #[test]
    fn replay_creates_a_delivery_once() {
        let (_d, j) = open_tmp();
        j.ingest(&[file("u.json", r#"{"QueueId":"q"}"#)], &[])
            .expect("ingest");
        let meta = j.cdrs_since(0).expect("since").remove(0);
        let (d, created) = j
            .ensure_delivery(&meta, "new", Trigger::Replay)
            .expect("ensure");
        assert!(created);
        let (again, created) = j
            .ensure_delivery(&meta, "new", Trigger::Replay)
            .expect("ensure");
        assert!(!created);
        assert_eq!(d.id, again.id);
        assert_eq!(j.counts()["new"].pending, 1);
    }

    #[test]
    fn an_open_test_webhook_is_found_at_open_and_can_be_ended_without_an_attempt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("journal");
        let id = {
            let j = Journal::open(&path, 1 << 20).expect("open");
            let meta = j
                .put_cdr(&Cdr {
                    id: "t1".into(),
                    event_type: crate::config::EventType::Test,
                    call_id: None,
                    body: b"{}".to_vec(),
                })
                .expect("put");
            let (d, _) = j
                .ensure_delivery(&meta, "crm", Trigger::Test)
                .expect("ensure");
            j.flush().expect("flush");
            d.id
        };
        let j = Journal::open(&path, 1 << 20).expect("reopen");
        let open = j.take_open_deliveries();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].origin, Trigger::Test);
        let files = j.end_delivery(id, "restarted").expect("end");
        assert_eq!(files, Some(vec![]), "a test CDR came in no file");
        let d = j.delivery(id).expect("read").expect("kept");
        assert_eq!((d.state, d.attempts), (State::Dead, 0));
        assert_eq!(d.last_error.as_deref(), Some("restarted"));
        let c = &j.counts()["crm"];
        assert_eq!((c.pending, c.dead), (0, 1));
        assert_eq!(c.last_error.as_deref(), Some("restarted"));
        assert_eq!(
            j.end_delivery(id, "again").expect("end"),
            None,
            "ended once"
        );
    }

    #[test]
    fn prune_keeps_open_deliveries_and_removes_ended_ones() {
        let (_d, j) = open_tmp();
        let a = sub("a");
        let out = j
            .ingest(
                &[
                    file("1.json", r#"{"QueueId":"1"}"#),
                    file("2.json", r#"{"QueueId":"2"}"#),
                ],
                &[&a],
            )
            .expect("ingest");
        finish(&j, out.new_deliveries[0].1, State::Delivered);
        let stats = j.prune(now_ms() + 1000, 100).expect("prune");
        assert_eq!(
            stats,
            PruneStats {
                cdrs: 1,
                deliveries: 1,
                attempts: 1
            }
        );
        assert!(j.delivery(out.new_deliveries[1].1).expect("read").is_some());
        assert_eq!(j.counts()["a"].pending, 1);
        assert_eq!(j.counts()["a"].delivered, 0);
        assert_eq!(j.cdrs_since(0).expect("since").len(), 1);
    }

    #[test]
    fn attempts_are_listed_newest_first_with_filters() {
        let (_d, j) = open_tmp();
        let a = sub("a");
        let out = j
            .ingest(
                &[
                    file("1.json", r#"{"QueueId":"1","CallId":"c1"}"#),
                    file("2.json", r#"{"QueueId":"2","CallId":"c2"}"#),
                ],
                &[&a],
            )
            .expect("ingest");
        finish(&j, out.new_deliveries[0].1, State::Delivered);
        finish(&j, out.new_deliveries[1].1, State::Dead);
        let all = j
            .attempts(&AttemptFilter {
                limit: 10,
                ..Default::default()
            })
            .expect("list");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].call_id.as_deref(), Some("c2"));
        let failed = j
            .attempts(&AttemptFilter {
                failed: true,
                limit: 10,
                ..Default::default()
            })
            .expect("failed");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].status, Some(500));
        let d = j
            .delivery(out.new_deliveries[1].1)
            .expect("read")
            .expect("d");
        assert_eq!(j.attempts_of(&d).expect("of").len(), 1);
    }

    #[test]
    fn the_same_cdr_twice_in_one_array_is_one_cdr() {
        let (_d, j) = open_tmp();
        let a = sub("a");
        let out = j
            .ingest(
                &[file("dup.json", r#"[{"QueueId":"1"},{"QueueId":"1"}]"#)],
                &[&a],
            )
            .expect("ingest");
        assert_eq!(out.new_deliveries.len(), 1);
        assert_eq!(out.new_cdrs, 1);
        assert_eq!(
            finish(&j, out.new_deliveries[0].1, State::Delivered),
            vec!["x-dup.json".to_string()]
        );
    }

    #[test]
    fn a_stale_copy_never_reopens_an_ended_delivery() {
        let (_d, j) = open_tmp();
        let a = sub("a");
        let out = j
            .ingest(&[file("1.json", r#"{"QueueId":"1"}"#)], &[&a])
            .expect("ingest");
        let id = out.new_deliveries[0].1;
        let mut stale = j.delivery(id).expect("read").expect("d");
        finish(&j, id, State::Delivered);
        // A failed resend that read the delivery before it was delivered.
        stale.state = State::Retrying;
        stale.next_at_ms = Some(now_ms() + 1000);
        stale.attempts = 2;
        let attempt = attempt_for(&j, &stale, 500, Trigger::Resend);
        j.record_attempt(&stale, &attempt).expect("record");
        let d = j.delivery(id).expect("read").expect("d");
        assert_eq!(d.state, State::Delivered);
        assert_eq!(d.attempt_ids.len(), 2, "both attempts in the history");
        assert_eq!(j.counts()["a"].retrying, 0);
    }

    #[test]
    fn a_pruned_sibling_does_not_hold_its_file_back() {
        let (_d, j) = open_tmp();
        let a = sub("a");
        let out = j
            .ingest(
                &[file("arr.json", r#"[{"QueueId":"1"},{"QueueId":"2"}]"#)],
                &[&a],
            )
            .expect("ingest");
        finish(&j, out.new_deliveries[0].1, State::Delivered);
        let stats = j.prune(now_ms() + 1000, 100).expect("prune");
        assert_eq!(stats.cdrs, 1, "the ended one is pruned, the open one kept");
        assert_eq!(
            finish(&j, out.new_deliveries[1].1, State::Delivered),
            vec!["x-arr.json".to_string()]
        );
    }

    #[test]
    fn prune_steps_over_open_cdrs_from_pass_to_pass() {
        let (_d, j) = open_tmp();
        let a = sub("a");
        let out = j
            .ingest(
                &[
                    file("1.json", r#"{"QueueId":"1"}"#),
                    file("2.json", r#"{"QueueId":"2"}"#),
                    file("3.json", r#"{"QueueId":"3"}"#),
                ],
                &[&a],
            )
            .expect("ingest");
        // The oldest stays open; the two after it end.
        finish(&j, out.new_deliveries[1].1, State::Delivered);
        finish(&j, out.new_deliveries[2].1, State::Delivered);
        let cutoff = now_ms() + 1000;
        let first = j.prune(cutoff, 1).expect("pass 1");
        assert_eq!(first.cdrs, 0, "pass 1 sees only the open one");
        let second = j.prune(cutoff, 1).expect("pass 2");
        assert_eq!(second.cdrs, 1, "pass 2 goes on after it");
        let third = j.prune(cutoff, 1).expect("pass 3");
        assert_eq!(third.cdrs, 1);
        assert_eq!(
            j.cdrs_since(0).expect("since").len(),
            1,
            "the open one stays"
        );
    }

    #[test]
    fn bisection_probes_strictly_between_and_stops_when_adjacent() {
        for (lo, hi, want) in [
            (0, 1, None),
            (5, 5, None),
            (5, 6, None),
            (5, 7, Some(6)),
            (0, 10, Some(5)),
            (10, 0, None),
            (u64::MAX - 2, u64::MAX, Some(u64::MAX - 1)),
        ] {
            assert_eq!(bisect(lo, hi), want, "{lo}..{hi}");
        }
    }

    /// `n` one-CDR files, each its own ingest batch, for subscription `a`.
    fn ingest_n(j: &Journal, a: &Subscription, n: usize) -> Vec<DeliveryId> {
        (0..n)
            .map(|i| {
                let body = format!(r#"{{"QueueId":"{i}","CallId":"c{i}"}}"#);
                let out = j
                    .ingest(&[file(&format!("{i}.json"), &body)], &[a])
                    .expect("ingest");
                out.new_deliveries[0].1
            })
            .collect()
    }

    #[test]
    fn a_walk_since_a_time_starts_at_the_first_cdr_received_then() {
        let (_d, j) = open_tmp();
        let a = sub("a");
        assert_eq!(j.cdr_range_since(0).expect("empty"), None);
        ingest_n(&j, &a, 7);
        std::thread::sleep(Duration::from_millis(5));
        let cut = now_ms();
        std::thread::sleep(Duration::from_millis(5));
        for i in 0..5 {
            let body = format!(r#"{{"QueueId":"late{i}"}}"#);
            j.ingest(&[file(&format!("l{i}.json"), &body)], &[&a])
                .expect("ingest");
        }
        let metas = j.cdrs_since(cut).expect("since");
        assert_eq!(metas.len(), 5, "only the ones after the cut");
        assert!(metas.iter().all(|m| m.received_ms >= cut));
        assert!(
            metas.windows(2).all(|w| w[0].seq < w[1].seq),
            "oldest first"
        );
        assert_eq!(j.cdrs_since(0).expect("all").len(), 12);
        assert!(j.cdrs_since(now_ms() + 1000).expect("none").is_empty());
        // CDRs taken in after the walk began are not part of it.
        let (from, to) = j.cdr_range_since(cut).expect("range").expect("some");
        j.ingest(&[file("new.json", r#"{"QueueId":"new"}"#)], &[&a])
            .expect("ingest");
        let page = j.cdrs_page(from, to, 100).expect("page");
        assert_eq!((page.items.len(), page.next), (5, None));
    }

    #[test]
    fn pages_resume_where_the_last_one_stopped() {
        let (_d, j) = open_tmp();
        let a = sub("a");
        let ids = ingest_n(&j, &a, 5);
        for (i, &id) in ids.iter().enumerate() {
            finish(
                &j,
                id,
                if i % 2 == 0 {
                    State::Dead
                } else {
                    State::Delivered
                },
            );
        }
        // Two of every five deliveries looked at per page: three pages.
        let (mut failed, mut from, mut pages) = (Vec::new(), Some(0), 0);
        while let Some(start) = from {
            let page = j
                .failed_deliveries_page(None, None, start, 2)
                .expect("page");
            failed.extend(page.items.iter().map(|d| d.id));
            from = page.next;
            pages += 1;
        }
        assert_eq!(failed, vec![ids[0], ids[2], ids[4]]);
        assert_eq!(pages, 3);
        // Attempts: newest first, page by page, the same as in one go.
        let all = j
            .attempts(&AttemptFilter::default())
            .expect("all")
            .iter()
            .map(|a| a.delivery_id)
            .collect::<Vec<_>>();
        assert_eq!(all, ids.iter().rev().copied().collect::<Vec<_>>());
        let first = j
            .attempts_page(&AttemptFilter::default(), None, 2, 100)
            .expect("page");
        let second = j
            .attempts_page(&AttemptFilter::default(), first.next, 2, 100)
            .expect("page");
        let paged: Vec<_> = first
            .items
            .iter()
            .chain(&second.items)
            .map(|a| a.delivery_id)
            .collect();
        assert_eq!(paged, all[..4].to_vec());
        // A filter that matches nothing still stops after `max_examined`.
        let none = AttemptFilter {
            call_id: Some("nobody".into()),
            ..Default::default()
        };
        let page = j.attempts_page(&none, None, 10, 3).expect("page");
        assert!(page.items.is_empty());
        assert!(page.next.is_some(), "more to look at");
        assert!(j.attempts(&none).expect("all").is_empty());
        let limited = j
            .attempts(&AttemptFilter {
                limit: 3,
                ..Default::default()
            })
            .expect("limited");
        assert_eq!(limited.len(), 3);
    }

    #[test]
    fn counts_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = sub("a");
        {
            let j = Journal::open(&dir.path().join("j"), 8 << 20).expect("open");
            let out = j
                .ingest(&[file("1.json", r#"{"QueueId":"1"}"#)], &[&a])
                .expect("ingest");
            finish(&j, out.new_deliveries[0].1, State::Delivered);
            j.flush().expect("flush");
        }
        let j = Journal::open(&dir.path().join("j"), 8 << 20).expect("reopen");
        let c = &j.counts()["a"];
        assert_eq!(c.delivered, 1);
        assert!(c.last_success_ms.is_some());
    }
}
