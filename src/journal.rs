//! The journal: everything cdrhook knows, in one sled database. CDRs with
//! their bytes, deliveries with their state, every attempt, and the spool
//! files still in flight. It is the only module that touches sled.
//!
//! Trees (keys are big-endian so that sled's order is time order):
//! - `cdrs`: cdr id → `CdrMeta` JSON, `\n`, the body bytes
//! - `cdr_time`: received ms ++ cdr id → () (replay, retention)
//! - `deliveries`: delivery id → `Delivery` JSON
//! - `by_cdr`: cdr id ++ 0 ++ subscription → delivery id (one delivery per pair)
//! - `open`: delivery id → () for pending and retrying deliveries (start-up)
//! - `dead`: delivery id → () (resend --failed)
//! - `attempts`: attempt id → `Attempt` JSON (ids grow, so newest is last)
//! - `attempts_by_delivery`: delivery id ++ attempt id → ()
//! - `files`: in-flight file name → `FileRec` JSON
//! - `sub_last`: subscription → last success and failure
//!
//! Durability: `ingest` flushes before it returns, and the spool moves a
//! file only after that. Attempts and state changes are not flushed one by
//! one: after a crash an attempt may be repeated, never lost (at least once).
//! Writes go deliveries-first and CDR-last, so a CDR present in the journal
//! always has its deliveries (sled recovers a prefix of its log).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::cdr::Cdr;
use crate::config::Subscription;
use crate::time::now_ms;

pub type DeliveryId = u64;
pub type AttemptId = u64;

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CdrMeta {
    pub id: String,
    pub event_type: String,
    pub call_id: Option<String>,
    pub received_ms: u64,
    /// In-flight files that hold this CDR (normally one).
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredCdr {
    pub meta: CdrMeta,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: DeliveryId,
    pub cdr_id: String,
    pub subscription: String,
    pub event_type: String,
    pub call_id: Option<String>,
    pub state: State,
    /// Attempts made so far, of every trigger: the next one is `attempts + 1`.
    pub attempts: u32,
    /// Automatic attempts that failed: the position in the retry schedule.
    #[serde(default)]
    pub failures: u32,
    pub next_at_ms: Option<u64>,
    pub created_ms: u64,
    pub ended_ms: Option<u64>,
    /// What created it: `auto` (the spool), `replay` or `test`.
    pub origin: Trigger,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRec {
    /// The name it had in the spool.
    pub name: String,
    pub cdr_ids: Vec<String>,
    pub taken_ms: u64,
}

/// A parsed spool file, ready to be journaled.
#[derive(Debug, Clone)]
pub struct IngestFile {
    pub inflight_name: String,
    pub original_name: String,
    pub cdrs: Vec<Cdr>,
}

#[derive(Debug, Default)]
pub struct IngestOutcome {
    /// (subscription, delivery) for every delivery created.
    pub new_deliveries: Vec<(String, DeliveryId)>,
    /// Files all of whose CDRs were already journaled and finished: they can
    /// leave the in-flight directory at once.
    pub finished_files: Vec<String>,
    pub new_cdrs: usize,
    pub known_cdrs: usize,
    /// New CDRs that no active subscription wants.
    pub unmatched_cdrs: usize,
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

pub struct Journal {
    db: sled::Db,
    cdrs: sled::Tree,
    cdr_time: sled::Tree,
    deliveries: sled::Tree,
    by_cdr: sled::Tree,
    open: sled::Tree,
    dead: sled::Tree,
    attempts: sled::Tree,
    attempts_by_delivery: sled::Tree,
    files: sled::Tree,
    sub_last: sled::Tree,
    counts: Mutex<BTreeMap<String, SubCounts>>,
    /// Serialises read-modify-write of one delivery's record and the counts.
    write_lock: Mutex<()>,
}

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn by_cdr_key(cdr_id: &str, sub: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(cdr_id.len() + 1 + sub.len());
    k.extend_from_slice(cdr_id.as_bytes());
    k.push(0);
    k.extend_from_slice(sub.as_bytes());
    k
}

fn by_cdr_prefix(cdr_id: &str) -> Vec<u8> {
    let mut k = cdr_id.as_bytes().to_vec();
    k.push(0);
    k
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

fn decode_cdr(bytes: &[u8]) -> Result<StoredCdr> {
    let split = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let meta: CdrMeta = serde_json::from_slice(&bytes[..split]).map_err(corrupt("cdr"))?;
    let body = bytes.get(split + 1..).unwrap_or_default().to_vec();
    Ok(StoredCdr { meta, body })
}

impl Journal {
    /// Opens (or creates) the journal. `cache_bytes` bounds sled's page cache,
    /// which would otherwise default to 1 GiB.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Journal> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(sled_err("open"))?;
        let tree = |name: &'static str| db.open_tree(name).map_err(sled_err("open tree"));
        let journal = Journal {
            cdrs: tree("cdrs")?,
            cdr_time: tree("cdr_time")?,
            deliveries: tree("deliveries")?,
            by_cdr: tree("by_cdr")?,
            open: tree("open")?,
            dead: tree("dead")?,
            attempts: tree("attempts")?,
            attempts_by_delivery: tree("attempts_by_delivery")?,
            files: tree("files")?,
            sub_last: tree("sub_last")?,
            db,
            counts: Mutex::new(BTreeMap::new()),
            write_lock: Mutex::new(()),
        };
        journal.recount()?;
        Ok(journal)
    }

    /// The durability point.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(sled_err("flush"))?;
        Ok(())
    }

    pub fn next_id(&self) -> Result<u64> {
        // generate_id starts at 0; keep 0 free so ids read naturally.
        self.db
            .generate_id()
            .map(|n| n + 1)
            .map_err(sled_err("generate id"))
    }

    fn lock_counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SubCounts>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recount(&self) -> Result<()> {
        let mut counts: BTreeMap<String, SubCounts> = BTreeMap::new();
        for item in self.deliveries.iter() {
            let (_, v) = item.map_err(sled_err("scan deliveries"))?;
            let d: Delivery = serde_json::from_slice(&v).map_err(corrupt("delivery"))?;
            counts
                .entry(d.subscription.clone())
                .or_default()
                .adjust(d.state, true);
        }
        for item in self.sub_last.iter() {
            let (k, v) = item.map_err(sled_err("scan sub_last"))?;
            let last: SubCounts = serde_json::from_slice(&v).map_err(corrupt("sub_last"))?;
            let c = counts
                .entry(String::from_utf8_lossy(&k).into_owned())
                .or_default();
            c.last_success_ms = last.last_success_ms;
            c.last_failure_ms = last.last_failure_ms;
            c.last_error = last.last_error;
        }
        *self.lock_counts() = counts;
        Ok(())
    }

    /// Counts per subscription name (including subscriptions no longer in
    /// the config that still have deliveries).
    pub fn counts(&self) -> BTreeMap<String, SubCounts> {
        self.lock_counts().clone()
    }

    /// Journals a batch of parsed files and flushes once for all of them.
    pub fn ingest(&self, files: &[IngestFile], subs: &[&Subscription]) -> Result<IngestOutcome> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = IngestOutcome::default();
        let now = now_ms();
        let mut new_delivery_cdrs: std::collections::HashSet<String> =
            std::collections::HashSet::new();
        for file in files {
            for cdr in &file.cdrs {
                let existing = self.cdrs.get(&cdr.id).map_err(sled_err("read cdr"))?;
                // Known CDRs (also one repeated earlier in this batch) get no
                // new deliveries: a CDR taken in twice is sent once.
                if let Some(bytes) = existing {
                    out.known_cdrs += 1;
                    let mut stored = decode_cdr(&bytes)?;
                    if !stored.meta.files.contains(&file.inflight_name) {
                        stored.meta.files.push(file.inflight_name.clone());
                        self.cdrs
                            .insert(cdr.id.as_bytes(), encode_cdr(&stored.meta, &stored.body)?)
                            .map_err(sled_err("write cdr"))?;
                    }
                    continue;
                }
                out.new_cdrs += 1;
                let mut matched = 0;
                for sub in subs.iter().filter(|s| s.active && s.wants(cdr.event_type)) {
                    let d = self.create_delivery(cdr, &sub.name, Trigger::Auto, now)?;
                    out.new_deliveries.push((sub.name.clone(), d.id));
                    matched += 1;
                }
                if matched == 0 {
                    out.unmatched_cdrs += 1;
                } else {
                    new_delivery_cdrs.insert(cdr.id.clone());
                }
                let meta = CdrMeta {
                    id: cdr.id.clone(),
                    event_type: cdr.event_type.as_str().to_string(),
                    call_id: cdr.call_id.clone(),
                    received_ms: now,
                    files: vec![file.inflight_name.clone()],
                };
                let mut tkey = be(now).to_vec();
                tkey.extend_from_slice(cdr.id.as_bytes());
                self.cdr_time
                    .insert(tkey, &[])
                    .map_err(sled_err("write cdr index"))?;
                self.cdrs
                    .insert(cdr.id.as_bytes(), encode_cdr(&meta, &cdr.body)?)
                    .map_err(sled_err("write cdr"))?;
            }
            let rec = FileRec {
                name: file.original_name.clone(),
                cdr_ids: file.cdrs.iter().map(|c| c.id.clone()).collect(),
                taken_ms: now,
            };
            self.files
                .insert(
                    file.inflight_name.as_bytes(),
                    serde_json::to_vec(&rec).map_err(corrupt("encode file"))?,
                )
                .map_err(sled_err("write file"))?;
        }
        self.flush()?;
        // Only a file none of whose CDRs got a new delivery can be finished
        // already (all known and ended, or wanted by nobody).
        let waiting: std::collections::HashSet<&str> = files
            .iter()
            .flat_map(|f| f.cdrs.iter().map(|c| c.id.as_str()))
            .filter(|id| new_delivery_cdrs.contains(*id))
            .collect();
        for file in files {
            let any_new = file.cdrs.iter().any(|c| waiting.contains(c.id.as_str()));
            if !any_new && self.file_finished(&file.inflight_name)? {
                out.finished_files.push(file.inflight_name.clone());
            }
        }
        Ok(out)
    }

    fn create_delivery(&self, cdr: &Cdr, sub: &str, origin: Trigger, now: u64) -> Result<Delivery> {
        let d = Delivery {
            id: self.next_id()?,
            cdr_id: cdr.id.clone(),
            subscription: sub.to_string(),
            event_type: cdr.event_type.as_str().to_string(),
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
        };
        self.by_cdr
            .insert(by_cdr_key(&cdr.id, sub), &be(d.id))
            .map_err(sled_err("write delivery index"))?;
        self.write_delivery(None, &d)?;
        Ok(d)
    }

    /// Writes a delivery and keeps the indexes and counts in step with its
    /// state. Callers hold `write_lock`.
    fn write_delivery(&self, old: Option<&Delivery>, new: &Delivery) -> Result<()> {
        let key = be(new.id);
        self.deliveries
            .insert(
                key,
                serde_json::to_vec(new).map_err(corrupt("encode delivery"))?,
            )
            .map_err(sled_err("write delivery"))?;
        if new.state.is_open() {
            self.open.insert(key, &[]).map_err(sled_err("write open"))?;
        } else {
            self.open.remove(key).map_err(sled_err("write open"))?;
        }
        if new.state == State::Dead {
            self.dead.insert(key, &[]).map_err(sled_err("write dead"))?;
        } else if old.map(|o| o.state) == Some(State::Dead) {
            self.dead.remove(key).map_err(sled_err("write dead"))?;
        }
        let mut counts = self.lock_counts();
        let c = counts.entry(new.subscription.clone()).or_default();
        if let Some(old) = old {
            c.adjust(old.state, false);
        }
        c.adjust(new.state, true);
        Ok(())
    }

    pub fn cdr(&self, id: &str) -> Result<Option<StoredCdr>> {
        match self.cdrs.get(id).map_err(sled_err("read cdr"))? {
            Some(bytes) => Ok(Some(decode_cdr(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Journals a CDR that did not come from the spool (the test webhook).
    pub fn put_cdr(&self, cdr: &Cdr) -> Result<()> {
        let now = now_ms();
        let meta = CdrMeta {
            id: cdr.id.clone(),
            event_type: cdr.event_type.as_str().to_string(),
            call_id: cdr.call_id.clone(),
            received_ms: now,
            files: Vec::new(),
        };
        let mut tkey = be(now).to_vec();
        tkey.extend_from_slice(cdr.id.as_bytes());
        self.cdr_time
            .insert(tkey, &[])
            .map_err(sled_err("write cdr index"))?;
        self.cdrs
            .insert(cdr.id.as_bytes(), encode_cdr(&meta, &cdr.body)?)
            .map_err(sled_err("write cdr"))?;
        Ok(())
    }

    pub fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        match self
            .deliveries
            .get(be(id))
            .map_err(sled_err("read delivery"))?
        {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(corrupt("delivery"))?,
            )),
            None => Ok(None),
        }
    }

    pub fn delivery_for(&self, cdr_id: &str, sub: &str) -> Result<Option<Delivery>> {
        match self
            .by_cdr
            .get(by_cdr_key(cdr_id, sub))
            .map_err(sled_err("read delivery index"))?
        {
            Some(id) => self.delivery(id_from(&id)),
            None => Ok(None),
        }
    }

    /// Creates the delivery of `cdr` to `sub` unless it exists; returns it
    /// and whether it was created. Used by replay and the test webhook.
    pub fn ensure_delivery(
        &self,
        cdr: &Cdr,
        sub: &str,
        origin: Trigger,
    ) -> Result<(Delivery, bool)> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = self.delivery_for(&cdr.id, sub)? {
            return Ok((d, false));
        }
        Ok((self.create_delivery(cdr, sub, origin, now_ms())?, true))
    }

    /// Pending and retrying deliveries, oldest first.
    pub fn open_deliveries(&self) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for item in self.open.iter() {
            let (k, _) = item.map_err(sled_err("scan open"))?;
            if let Some(d) = self.delivery(id_from(&k))? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Dead and retrying deliveries, optionally of one subscription and
    /// created since a time: what `resend --failed` sends.
    pub fn failed_deliveries(
        &self,
        sub: Option<&str>,
        since_ms: Option<u64>,
    ) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for tree in [&self.dead, &self.open] {
            for item in tree.iter() {
                let (k, _) = item.map_err(sled_err("scan failed"))?;
                let Some(d) = self.delivery(id_from(&k))? else {
                    continue;
                };
                let failed = matches!(d.state, State::Dead | State::Retrying);
                let sub_ok = sub.is_none_or(|s| s == d.subscription);
                let since_ok = since_ms.is_none_or(|t| d.created_ms >= t);
                if failed && sub_ok && since_ok {
                    out.push(d);
                }
            }
        }
        out.sort_by_key(|d| d.id);
        Ok(out)
    }

    /// Records one attempt and the delivery's new state, and returns the
    /// in-flight files that are now finished (every delivery of every CDR in
    /// them ended).
    pub fn record_attempt(&self, updated: &Delivery, attempt: &Attempt) -> Result<Vec<String>> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.delivery(updated.id)?;
        self.attempts
            .insert(
                be(attempt.id),
                serde_json::to_vec(attempt).map_err(corrupt("encode attempt"))?,
            )
            .map_err(sled_err("write attempt"))?;
        let mut k = be(updated.id).to_vec();
        k.extend_from_slice(&be(attempt.id));
        self.attempts_by_delivery
            .insert(k, &[])
            .map_err(sled_err("write attempt index"))?;
        self.write_delivery(old.as_ref(), updated)?;
        self.note_result(&updated.subscription, attempt)?;
        let was_open = old.as_ref().is_none_or(|o| o.state.is_open());
        if was_open && !updated.state.is_open() {
            self.finished_files_of(&updated.cdr_id)
        } else {
            Ok(Vec::new())
        }
    }

    /// Changes a delivery's state without an attempt (e.g. a replay that
    /// reopens it).
    pub fn update_delivery(&self, updated: &Delivery) -> Result<()> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.delivery(updated.id)?;
        self.write_delivery(old.as_ref(), updated)
    }

    fn note_result(&self, sub: &str, attempt: &Attempt) -> Result<()> {
        let snapshot = {
            let mut counts = self.lock_counts();
            let c = counts.entry(sub.to_string()).or_default();
            if attempt.succeeded() {
                // A busy subscription succeeds thousands of times a second:
                // persist the time at most once a second (status reads the
                // in-memory value, so only a restart can see it a second old).
                c.last_success_ms = c.last_success_ms.max(Some(attempt.time_ms));
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
        self.sub_last
            .insert(
                sub.as_bytes(),
                serde_json::to_vec(&snapshot).map_err(corrupt("encode sub_last"))?,
            )
            .map_err(sled_err("write sub_last"))?;
        Ok(())
    }

    fn deliveries_of(&self, cdr_id: &str) -> Result<Vec<Delivery>> {
        let mut out = Vec::new();
        for item in self.by_cdr.scan_prefix(by_cdr_prefix(cdr_id)) {
            let (_, id) = item.map_err(sled_err("scan delivery index"))?;
            if let Some(d) = self.delivery(id_from(&id))? {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn cdr_finished(&self, cdr_id: &str) -> Result<bool> {
        Ok(self
            .deliveries_of(cdr_id)?
            .iter()
            .all(|d| !d.state.is_open()))
    }

    fn finished_files_of(&self, cdr_id: &str) -> Result<Vec<String>> {
        let Some(cdr) = self.cdr(cdr_id)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for file in &cdr.meta.files {
            if self.file_finished(file)? {
                out.push(file.clone());
            }
        }
        Ok(out)
    }

    /// True when the journal knows the in-flight file and none of its CDRs
    /// has an open delivery.
    pub fn file_finished(&self, inflight_name: &str) -> Result<bool> {
        let Some(rec) = self.file(inflight_name)? else {
            return Ok(false);
        };
        for id in &rec.cdr_ids {
            if !self.cdr_finished(id)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn file(&self, inflight_name: &str) -> Result<Option<FileRec>> {
        match self
            .files
            .get(inflight_name)
            .map_err(sled_err("read file"))?
        {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(corrupt("file"))?)),
            None => Ok(None),
        }
    }

    /// Forgets an in-flight file once it has left the in-flight directory.
    pub fn remove_file(&self, inflight_name: &str) -> Result<()> {
        self.files
            .remove(inflight_name)
            .map_err(sled_err("remove file"))?;
        Ok(())
    }

    /// Names of every in-flight file the journal knows.
    pub fn file_names(&self) -> Result<Vec<String>> {
        self.files
            .iter()
            .keys()
            .map(|k| {
                k.map(|k| String::from_utf8_lossy(&k).into_owned())
                    .map_err(sled_err("scan files"))
            })
            .collect()
    }

    pub fn files_in_flight(&self) -> usize {
        self.files.len()
    }

    pub fn attempt(&self, id: AttemptId) -> Result<Option<Attempt>> {
        match self
            .attempts
            .get(be(id))
            .map_err(sled_err("read attempt"))?
        {
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(corrupt("attempt"))?,
            )),
            None => Ok(None),
        }
    }

    /// The attempts of one delivery, oldest first.
    pub fn attempts_of(&self, delivery: DeliveryId) -> Result<Vec<Attempt>> {
        let mut out = Vec::new();
        for item in self.attempts_by_delivery.scan_prefix(be(delivery)) {
            let (k, _) = item.map_err(sled_err("scan attempt index"))?;
            if let Some(a) = self.attempt(id_from(&k[8..]))? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Attempt history, newest first.
    pub fn attempts(&self, f: &AttemptFilter) -> Result<Vec<Attempt>> {
        let mut out = Vec::new();
        for item in self.attempts.iter().rev() {
            let (_, v) = item.map_err(sled_err("scan attempts"))?;
            let a: Attempt = serde_json::from_slice(&v).map_err(corrupt("attempt"))?;
            // Attempts are keyed in the order they ended, not started: a
            // slow one that started before `since` can come before quicker
            // ones that started after it. Stop only at one that had ended
            // before `since` (with a margin for journaling after the send).
            if let Some(t) = f.since_ms {
                if a.time_ms + a.duration_ms + 1_000 < t {
                    break;
                }
                if a.time_ms < t {
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
                out.push(a);
                if f.limit > 0 && out.len() >= f.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// CDRs journaled at or after `since_ms`, oldest first.
    pub fn cdrs_since(&self, since_ms: u64) -> impl Iterator<Item = Result<StoredCdr>> + '_ {
        self.cdr_time.range(be(since_ms)..).filter_map(move |item| {
            let (k, _) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(sled_err("scan cdr index")(e))),
            };
            let id = String::from_utf8_lossy(&k[8..]).into_owned();
            self.cdr(&id).transpose()
        })
    }

    /// Prunes CDRs received before `cutoff_ms` whose deliveries all ended
    /// before it, with their deliveries and attempts. Nothing open is ever
    /// pruned. At most `max` CDRs per call, so that a large backlog of old
    /// records does not stall the daemon.
    pub fn prune(&self, cutoff_ms: u64, max: usize) -> Result<PruneStats> {
        let mut stats = PruneStats::default();
        for item in self.cdr_time.range(..be(cutoff_ms)).take(max) {
            let (tkey, _) = item.map_err(sled_err("scan cdr index"))?;
            let cdr_id = String::from_utf8_lossy(&tkey[8..]).into_owned();
            let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            let deliveries = self.deliveries_of(&cdr_id)?;
            let removable = deliveries
                .iter()
                .all(|d| !d.state.is_open() && d.ended_ms.is_some_and(|t| t < cutoff_ms));
            if !removable {
                continue;
            }
            // A CDR still named by an in-flight file stays until that file leaves.
            if let Some(c) = self.cdr(&cdr_id)? {
                if c.meta
                    .files
                    .iter()
                    .any(|f| self.files.contains_key(f).unwrap_or(true))
                {
                    continue;
                }
            }
            for d in &deliveries {
                for item in self.attempts_by_delivery.scan_prefix(be(d.id)) {
                    let (k, _) = item.map_err(sled_err("scan attempt index"))?;
                    self.attempts
                        .remove(&k[8..])
                        .map_err(sled_err("prune attempt"))?;
                    self.attempts_by_delivery
                        .remove(&k)
                        .map_err(sled_err("prune attempt index"))?;
                    stats.attempts += 1;
                }
                self.deliveries
                    .remove(be(d.id))
                    .map_err(sled_err("prune delivery"))?;
                self.dead.remove(be(d.id)).map_err(sled_err("prune dead"))?;
                self.by_cdr
                    .remove(by_cdr_key(&cdr_id, &d.subscription))
                    .map_err(sled_err("prune delivery index"))?;
                self.lock_counts()
                    .entry(d.subscription.clone())
                    .or_default()
                    .adjust(d.state, false);
                stats.deliveries += 1;
            }
            self.cdrs
                .remove(cdr_id.as_bytes())
                .map_err(sled_err("prune cdr"))?;
            self.cdr_time
                .remove(&tkey)
                .map_err(sled_err("prune cdr index"))?;
            stats.cdrs += 1;
        }
        Ok(stats)
    }

    /// Approximate size on disk, for status.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
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
            original_name: name.to_string(),
            cdrs: parse_file(body.as_bytes()).expect("cdr"),
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
        let a = Attempt {
            id: j.next_id().expect("id"),
            delivery_id: id,
            time_ms: now_ms(),
            subscription: d.subscription.clone(),
            event_type: d.event_type.clone(),
            call_id: d.call_id.clone(),
            webhook_id: d.cdr_id.clone(),
            attempt: d.attempts,
            status: Some(if state == State::Delivered { 200 } else { 500 }),
            error: None,
            duration_ms: 1,
            trigger: Trigger::Auto,
            request_headers: vec![],
            response_headers: vec![],
            response_body: None,
        };
        j.record_attempt(&d, &a).expect("record")
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
        assert_eq!(j.open_deliveries().expect("open").len(), 2);
    }

    #[test]
    fn file_finishes_only_when_every_delivery_ended() {
        let (_d, j) = open_tmp();
        let (a, b) = (sub("a"), sub("b"));
        let out = j
            .ingest(&[file("f.json", r#"{"IvrId":"i"}"#)], &[&a, &b])
            .expect("ingest");
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
    fn unmatched_cdr_is_journaled_and_its_file_finished() {
        let (_d, j) = open_tmp();
        let out = j
            .ingest(&[file("u.json", r#"{"QueueId":"q"}"#)], &[])
            .expect("ingest");
        assert_eq!(out.unmatched_cdrs, 1);
        assert_eq!(out.finished_files, vec!["x-u.json".to_string()]);
        assert_eq!(j.cdrs_since(0).count(), 1);
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
        j.remove_file("x-1.json").expect("remove");
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
