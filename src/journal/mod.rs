//! The journal: everything cdrhook knows, in one sled database. CDRs with
//! their bytes, deliveries with their state, every attempt, and the
//! per-subscription counts. It is the only module that touches sled, and it
//! stores what it is told: which subscriptions get a delivery is decided by
//! the caller (`delivery::route`), not here. It depends on `model`, the
//! parsed `cdr::Cdr` and `time`, never on the config or on tokio.
//!
//! Files by stage:
//! - `records`: the on-disk format (keys, binary records, format version);
//! - `store`: one sled tree per record kind (format 3), routed by key;
//! - `ingest`: taking in spool files and test CDRs;
//! - `writes`: attempts, state changes, replayed and ended deliveries;
//! - `queries`: reads and page-by-page walks for operator commands;
//! - `counts`: the per-subscription counts and the start-up state;
//! - `open_index`: the index of open deliveries, written only for those
//!   still open half a minute on;
//! - `retention`: pruning old records;
//! - `repair`: reopening after an I/O error;
//! - `migrate`: turning a format-1 (JSON) or format-2 (one tree) journal
//!   into format 4 at open (a format-3 one only gets its new number).
//!
//! Durability: `ingest` flushes before it returns, and the spool moves a
//! file only after that; an ingest call's writes are applied key by key,
//! record kind by record kind, in a crash-safe order (`store`: never a sled
//! batch, which locks out every other reader and writer of the process).
//! Attempts, replays and retention write a few keys in a crash-safe order
//! too (`Ops`). The counts are kept in
//! memory and written at each flush (`counts`). Attempts and state changes
//! are not flushed one by one: after a crash an attempt may be repeated,
//! never lost (at least once).

mod counts;
mod ingest;
mod migrate;
mod oldest;
mod open_index;
mod queries;
pub mod records;
mod repair;
mod retention;
mod store;
#[cfg(test)]
mod tests;
mod writes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

pub use crate::model::{AttemptId, CdrSeq, DeliveryId, State, Trigger};
pub use records::{EndpointHold, FileRef};

use crate::cdr::Cdr;
use records::{CountsRec, DecodeError};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal: {context}: {source}")]
    Sled {
        context: &'static str,
        source: sled::Error,
    },
    #[error("journal: corrupt record: {0}")]
    Corrupt(#[from] DecodeError),
    /// Closed after an I/O error, until `Journal::heal` reopens it.
    #[error("journal: unavailable until it is reopened after an I/O error{0}")]
    Unavailable(String),
    /// Written by a newer cdrhook, or a format-1 journal that could not be
    /// migrated: refused, with what to do.
    #[error("journal {path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, JournalError>;

fn sled_err(context: &'static str) -> impl FnOnce(sled::Error) -> JournalError {
    move |source| JournalError::Sled { context, source }
}

/// A CDR as walks return it (without its body).
#[derive(Debug, Clone, PartialEq)]
pub struct CdrMeta {
    /// The content id: `webhook-id`.
    pub id: String,
    pub seq: CdrSeq,
    pub event_type: String,
    pub call_id: Option<String>,
    pub received_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredCdr {
    pub meta: CdrMeta,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
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
    /// A retrying delivery's `Retry-After`: not sent before then, even when
    /// its failing endpoint recovers (`delivery::queue`).
    pub hold_until_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
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
    /// Secrets already masked by `delivery`. Empty in listings
    /// (`attempts_page`): only `attempt` and `attempts_of` read them.
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

/// What the caller's routing says of a new CDR: the subscriptions that get
/// a delivery, and those that want its event type but whose filter
/// excluded it (their `unmatched` count goes up, flushed with the CDR).
/// The journal only stores it: routing is `delivery::route`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    pub to: Vec<String>,
    pub unmatched: Vec<String>,
}

/// An open delivery as start-up needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenDelivery {
    pub id: DeliveryId,
    pub subscription: String,
    /// `Some` for a retrying delivery: when its retry is due.
    pub retry_at_ms: Option<u64>,
    /// `Some` for a retrying delivery held by its endpoint's `Retry-After`:
    /// not sent before then, even when the endpoint recovers.
    pub hold_until_ms: Option<u64>,
    /// `test` for a test webhook, which is never resumed.
    pub origin: Trigger,
}

/// Per-subscription counts for `status`: the counts record as the journal
/// keeps it (`records::CountsRec`). `unmatched` holds the CDRs the
/// subscription's filter excluded (`Routing::unmatched`); after an unclean
/// stop it is the last flushed value, at most one flush behind
/// (`counts.rs`).
pub type SubCounts = records::CountsRec;

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

/// sled's handles, replaced as a whole when the journal is reopened.
struct Handles {
    db: sled::Db,
    /// Every record, in the tree of its key kind (`store`), read and
    /// written as if it were one tree.
    tree: store::Store,
}

/// What writers change together, under one lock: the subscription numbers
/// and the counts, written at each flush (`counts.rs`), and the open
/// deliveries not indexed yet (`open_index.rs`).
#[derive(Default)]
struct Books {
    by_name: HashMap<String, u32>,
    /// By subscription number.
    counts: Vec<CountsRec>,
    /// Subscription numbers whose counts changed since the last flush.
    changed: Vec<u32>,
    open: open_index::OpenNotes,
}

/// Writes applied one by one, in order (`Journal::apply_in_order`): what
/// attempts, replays and retention use instead of a sled batch, because
/// sled 0.34 writes out its log buffer twice for every batch (measured: an
/// attempt as a batch cost about 176 µs of CPU). sled recovers a prefix of
/// its log, so the order of the writes is what keeps a crash consistent.
#[derive(Default)]
pub(crate) struct Ops(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Ops {
    pub(crate) fn insert(&mut self, k: impl AsRef<[u8]>, v: impl AsRef<[u8]>) {
        self.0
            .push((k.as_ref().to_vec(), Some(v.as_ref().to_vec())));
    }
    pub(crate) fn remove(&mut self, k: impl AsRef<[u8]>) {
        self.0.push((k.as_ref().to_vec(), None));
    }
}

/// Called after writes that are not flushed at once.
type OnWrite = Box<dyn Fn() + Send + Sync>;

/// The cache the daemon gives sled. The journal is written sequentially
/// and read mostly by recent keys, and sled's accounting counts a page at
/// its size on disk, not the larger node it becomes in memory, so even this
/// holds several times as much. Measured against 8 MiB (BENCHMARKS.md,
/// fifth session): 6 MiB less at the peak of a 100,000-file drain and after
/// the operator bench's walks, and journal writes within their usual spread
/// (2 MiB saved 2–4 MiB more but cost 15–50 % on writes and pruning).
pub const CACHE_BYTES: u64 = 4 << 20;

pub struct Journal {
    path: PathBuf,
    cache_bytes: u64,
    /// `None` while being reopened, or when reopening failed.
    handles: RwLock<Option<Arc<Handles>>>,
    /// sled returned an I/O error (a full disk, say). After one, sled
    /// refuses every write until the database is opened again.
    broken: AtomicBool,
    heal_lock: Mutex<()>,
    /// Told after writes that `ingest` does not flush (attempts, replays,
    /// pruning), so the daemon can flush soon after them and not at all
    /// while idle.
    on_write: RwLock<Option<OnWrite>>,
    /// Subscription names by number: only ever appended to.
    names: RwLock<Vec<String>>,
    /// Serialises read-modify-write of records and the counts.
    books: Mutex<Books>,
    /// Open deliveries found at start-up, until the daemon takes them.
    open_at_start: Mutex<Vec<OpenDelivery>>,
    /// Some subscription may have an endpoint hold: without one, clearing
    /// after each answered attempt takes no lock (`release_endpoint`).
    endpoint_held: AtomicBool,
    /// Where the next retention pass starts, so that old CDRs that cannot
    /// be pruned yet (still open) are stepped over, not re-read every pass.
    prune_from: Mutex<CdrSeq>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handles {
    fn open(path: &Path, cache_bytes: u64) -> Result<Handles> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // No background flusher: it would wake every second even when
            // idle. `ingest` flushes its batches itself, and the daemon
            // flushes other writes a second after they happen (`on_write`).
            .flush_every_ms(None)
            .open()
            .map_err(sled_err("open"))?;
        let tree = store::Store::open(&db).map_err(sled_err("open trees"))?;
        Ok(Handles { db, tree })
    }
}

impl Journal {
    /// Opens (or creates) the journal. `cache_bytes` bounds sled's page cache,
    /// which would otherwise default to 1 GiB. A format-1 journal is
    /// migrated first; one written by a newer cdrhook is refused.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Journal> {
        let handles = Handles::open(path, cache_bytes)?;
        migrate::ensure_format(path, &handles.db, &handles.tree)?;
        let journal = Journal {
            path: path.to_path_buf(),
            cache_bytes,
            handles: RwLock::new(None),
            broken: AtomicBool::new(false),
            heal_lock: Mutex::new(()),
            on_write: RwLock::new(None),
            names: RwLock::new(Vec::new()),
            books: Mutex::new(Books::default()),
            open_at_start: Mutex::new(Vec::new()),
            endpoint_held: AtomicBool::new(true),
            prune_from: Mutex::new(0),
        };
        let open = journal.load(&handles)?;
        *lock(&journal.open_at_start) = open;
        *journal.handles.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(handles));
        Ok(journal)
    }

    /// Ends a clean run: flushes, then marks the journal stopped cleanly
    /// (its persisted counts are exact, so the next open trusts them) and
    /// flushes again. Call it last, when nothing writes any more: a write
    /// after it would not be covered by the mark.
    pub fn close_clean(&self) -> Result<()> {
        let h = self.h()?;
        // Every open delivery indexed: the next start reads no delivery
        // record (`open_index.rs`).
        self.flush_index(true)?;
        h.tree
            .insert([records::K_CLEAN], &[][..])
            .map_err(self.sled_err("mark a clean stop"))?;
        h.db.flush().map_err(self.sled_err("mark a clean stop"))?;
        Ok(())
    }

    /// Sets what is called after each write that is not flushed at once
    /// (the daemon wakes its flusher with it).
    pub fn set_on_write(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.on_write.write().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(f));
    }

    fn wrote(&self) {
        if let Some(f) = &*self.on_write.read().unwrap_or_else(|p| p.into_inner()) {
            f();
        }
    }

    /// The current handles, or `Unavailable` while the journal is closed.
    fn h(&self) -> Result<Arc<Handles>> {
        self.handles
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

    /// Applies one batch, key by key in a crash-safe order (`store.rs`).
    fn apply(&self, h: &Handles, batch: store::Batch, context: &'static str) -> Result<()> {
        h.tree.apply_batch(batch).map_err(self.sled_err(context))
    }

    /// Applies writes one by one, in order.
    fn apply_in_order(&self, h: &Handles, ops: Ops, context: &'static str) -> Result<()> {
        for (k, v) in ops.0 {
            match v {
                Some(v) => h.tree.insert(k, v).map(drop),
                None => h.tree.remove(k).map(drop),
            }
            .map_err(self.sled_err(context))?;
        }
        Ok(())
    }

    /// Whether sled reported an I/O error since the journal was (re)opened.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    /// The durability point. Writes the counts changed since the last
    /// flush first (they are kept in memory between flushes), and the
    /// open-index entries that are due.
    pub fn flush(&self) -> Result<()> {
        self.flush_index(false)
    }

    /// `flush`, indexing every open delivery when `all`.
    fn flush_index(&self, all: bool) -> Result<()> {
        let h = self.h()?;
        {
            // Written under the lock: two flushes at once (intake's and the
            // timer's) never put an older copy of a count after a newer one.
            let mut books = lock(&self.books);
            self.write_index(&h, &mut books, all)?;
            let changed = books.take_changed();
            for (i, (_, k, v)) in changed.iter().enumerate() {
                if let Err(e) = h.tree.insert(k, v.as_slice()) {
                    // What was not written is written at the next flush.
                    for (sub, _, _) in &changed[i..] {
                        books.changed(*sub);
                    }
                    return Err(self.sled_err("write counts")(e));
                }
            }
        }
        h.db.flush().map_err(self.sled_err("flush"))?;
        Ok(())
    }

    pub fn next_id(&self) -> Result<u64> {
        // generate_id starts at 0; keep 0 free so ids read naturally.
        self.h()?
            .db
            .generate_id()
            .map(|n| n + 1)
            .map_err(self.sled_err("generate id"))
    }

    /// Approximate size on disk, for status.
    pub fn size_on_disk(&self) -> u64 {
        self.h()
            .ok()
            .and_then(|h| h.db.size_on_disk().ok())
            .unwrap_or(0)
    }

    fn name_of(&self, sub: u32) -> String {
        self.names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(sub as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{sub}"))
    }
}
