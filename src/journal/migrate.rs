//! The journal's format at open. Format 1 (cdrhook before the binary
//! records: JSON in the trees `cdrs`, `cdr_ids`, `deliveries`, `attempts`
//! and `sub_last`) is migrated to the current format once, streaming, batch
//! by batch; format 2 (the binary records in one tree, `journal.v2`) is
//! moved key by key into the tree of each kind (format 3, `store.rs`). The
//! old trees are dropped only after the new records and the version key
//! are flushed, so a crash in the middle starts the migration again.
//! A journal of a format newer than this code is refused with a message
//! naming the path and what to do.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::records::{
    self, AttemptDetail, AttemptRec, CdrRec, CountsRec, DeliveryRec, FileRef, OpenRec,
};
use super::store::{Batch, Store};
use super::{counts, sled_err, JournalError, Result};
use crate::model::{State, Trigger};

const OLD_TREES: [&str; 5] = ["cdrs", "cdr_ids", "deliveries", "attempts", "sub_last"];
/// Records per batch while migrating.
const BATCH: usize = 2000;

#[derive(Deserialize)]
struct OldFileRef {
    name: String,
    cdrs: Vec<u64>,
}

#[derive(Deserialize)]
struct OldCdrMeta {
    id: String,
    event_type: String,
    call_id: Option<String>,
    received_ms: u64,
    deliveries: Vec<(String, u64)>,
    files: Vec<OldFileRef>,
}

#[derive(Deserialize)]
struct OldDelivery {
    cdr_seq: u64,
    subscription: String,
    state: String,
    attempts: u32,
    failures: u32,
    next_at_ms: Option<u64>,
    created_ms: u64,
    ended_ms: Option<u64>,
    origin: String,
    last_status: Option<u16>,
    last_error: Option<String>,
    attempt_ids: Vec<u64>,
}

#[derive(Deserialize)]
struct OldAttempt {
    delivery_id: u64,
    time_ms: u64,
    subscription: String,
    event_type: String,
    webhook_id: String,
    call_id: Option<String>,
    attempt: u32,
    status: Option<u16>,
    error: Option<String>,
    duration_ms: u64,
    trigger: String,
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
    response_body: Option<String>,
}

#[derive(Deserialize)]
struct OldLast {
    last_success_ms: Option<u64>,
    last_failure_ms: Option<u64>,
    last_error: Option<String>,
}

fn state(s: &str) -> Option<State> {
    Some(match s {
        "pending" => State::Pending,
        "retrying" => State::Retrying,
        "delivered" => State::Delivered,
        "dead" => State::Dead,
        _ => return None,
    })
}

fn trigger(s: &str) -> Option<Trigger> {
    Some(match s {
        "auto" => Trigger::Auto,
        "resend" => Trigger::Resend,
        "replay" => Trigger::Replay,
        "test" => Trigger::Test,
        _ => return None,
    })
}

/// Makes sure `tree` holds a journal of this format: creates the version
/// key of a new one, migrates a format-1 or format-2 one, refuses a newer
/// one.
pub(super) fn ensure_format(path: &Path, db: &sled::Db, tree: &Store) -> Result<()> {
    let refuse = |reason: String| JournalError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let version = tree
        .get([records::K_VERSION])
        .map_err(sled_err("read format version"))?;
    let names = db.tree_names();
    let exists = |name: &str| names.iter().any(|t| &t[..] == name.as_bytes());
    let old: Vec<sled::Tree> = OLD_TREES
        .iter()
        .filter(|n| exists(n))
        .map(|n| db.open_tree(n).map_err(sled_err("open old tree")))
        .collect::<Result<_>>()?;
    match version.as_deref() {
        Some([v]) if *v == records::FORMAT_VERSION => {}
        // Format 3 is format 4 with every open delivery indexed, which is
        // what a journal without an index mark means (`open_index.rs`).
        Some([3]) => {
            log::info!(
                "journal {}: format 3 is now format {}",
                path.display(),
                records::FORMAT_VERSION
            );
            tree.insert([records::K_VERSION], &[records::FORMAT_VERSION])
                .map_err(sled_err("write format version"))?;
            db.flush().map_err(sled_err("flush"))?;
        }
        Some([v]) if *v > records::FORMAT_VERSION => {
            return Err(refuse(format!(
                "written by a newer cdrhook (journal format {v}; this cdrhook reads format {}): \
                 run the newer cdrhook again, or move the journal directory aside to start \
                 with an empty one",
                records::FORMAT_VERSION
            )))
        }
        Some(_) => return Err(refuse("unknown journal format version record".to_string())),
        None => {
            // A format-2 journal is complete once its version key is in.
            let v2 = if exists(records::TREE_V2) {
                let t = db
                    .open_tree(records::TREE_V2)
                    .map_err(sled_err("open format-2 tree"))?;
                let v = t
                    .get([records::K_VERSION])
                    .map_err(sled_err("read format version"))?;
                v.is_some().then_some(t)
            } else {
                None
            };
            let has_old_data = old.iter().any(|t| !t.is_empty());
            // A migration interrupted by a crash left part of the new trees.
            tree.clear().map_err(sled_err("clear partial migration"))?;
            let from = if v2.is_some() { 2 } else { 1 };
            if v2.is_some() || has_old_data {
                log::info!(
                    "journal {}: migrating from format {from} to format {}",
                    path.display(),
                    records::FORMAT_VERSION
                );
            }
            let migrated = match &v2 {
                Some(t) => migrate_v2(t, tree),
                None if has_old_data => migrate(db, &old, tree),
                None => Ok(()),
            };
            migrated.map_err(|e| {
                refuse(format!(
                    "cannot migrate the format-{from} journal ({e}); the old records are kept: \
                     run the previous cdrhook to drain it, or move the journal directory \
                     aside to start with an empty one"
                ))
            })?;
            tree.insert([records::K_VERSION], &[records::FORMAT_VERSION])
                .map_err(sled_err("write format version"))?;
            db.flush().map_err(sled_err("flush"))?;
        }
    }
    for name in OLD_TREES.iter().chain([&records::TREE_V2]) {
        if exists(name) {
            db.drop_tree(name).map_err(sled_err("drop old tree"))?;
        }
    }
    Ok(())
}

/// Format 2 to 3: the same keys and records, moved from the one tree of
/// format 2 into the tree of each key's kind, `BATCH` at a time. The old
/// tree is dropped only after the version key is flushed.
fn migrate_v2(v2: &sled::Tree, tree: &Store) -> Result<()> {
    let mut batch = Batch::default();
    let mut pending = 0usize;
    for item in v2.iter() {
        let (k, v) = item.map_err(sled_err("read format-2 records"))?;
        if k.first() == Some(&records::K_VERSION) {
            continue;
        }
        batch.insert(k, v);
        pending += 1;
        if pending >= BATCH {
            tree.apply_batch(std::mem::take(&mut batch))
                .map_err(sled_err("write migrated records"))?;
            pending = 0;
        }
    }
    if pending > 0 {
        tree.apply_batch(batch)
            .map_err(sled_err("write migrated records"))?;
    }
    Ok(())
}

/// Streams the old trees into the new one, `BATCH` records at a time.
fn migrate(db: &sled::Db, old: &[sled::Tree], tree: &Store) -> Result<()> {
    let open_old = |name: &str| db.open_tree(name).map_err(sled_err("open old tree"));
    let _ = old;
    let (cdrs, deliveries, attempts, sub_last) = (
        open_old("cdrs")?,
        open_old("deliveries")?,
        open_old("attempts")?,
        open_old("sub_last")?,
    );
    let corrupt = |what: &'static str| {
        move |_| records::DecodeError {
            what,
            why: "not the JSON of format 1",
        }
    };
    let mut subs: HashMap<String, u32> = HashMap::new();
    let mut counts: Vec<CountsRec> = Vec::new();
    let number = |name: &str, subs: &mut HashMap<String, u32>, batch: &mut Batch| {
        if let Some(&n) = subs.get(name) {
            return n;
        }
        let n = subs.len() as u32;
        subs.insert(name.to_string(), n);
        batch.insert(
            records::name_key(records::K_SUB, name.as_bytes()),
            &n.to_be_bytes(),
        );
        n
    };
    let mut batch = Batch::default();
    let mut pending = 0usize;
    let flush_batch = |batch: &mut Batch, pending: &mut usize, force: bool| -> Result<()> {
        if *pending >= BATCH || (force && *pending > 0) {
            tree.apply_batch(std::mem::take(batch))
                .map_err(sled_err("write migrated records"))?;
            *pending = 0;
        }
        Ok(())
    };
    for item in cdrs.iter() {
        let (k, v) = item.map_err(sled_err("read old cdrs"))?;
        let seq = records::be_u64(&k);
        let split = v.iter().position(|&b| b == b'\n').unwrap_or(v.len());
        let meta: OldCdrMeta =
            serde_json::from_slice(&v[..split]).map_err(corrupt("format-1 cdr"))?;
        let body = v.get(split + 1..).unwrap_or_default();
        let rec = CdrRec {
            id: meta.id,
            event_type: meta.event_type,
            call_id: meta.call_id,
            received_ms: meta.received_ms,
            body_len: body.len() as u64,
            deliveries: meta.deliveries.iter().map(|(_, d)| *d).collect(),
            files: meta
                .files
                .into_iter()
                .map(|f| FileRef {
                    name: f.name,
                    cdrs: f.cdrs,
                })
                .collect(),
            body: records::inline_body(body).then(|| body.to_vec()),
        };
        batch.insert(&records::key(records::K_CDR, seq)[..], rec.encode());
        batch.insert(
            records::name_key(records::K_CDR_ID, &records::id_bytes(&rec.id)),
            &seq.to_be_bytes(),
        );
        super::ingest::put_body(tree, seq, body).map_err(sled_err("write migrated body"))?;
        pending += 1 + body.len() / 2048;
        flush_batch(&mut batch, &mut pending, false)?;
    }
    flush_batch(&mut batch, &mut pending, true)?;
    for item in deliveries.iter() {
        let (k, v) = item.map_err(sled_err("read old deliveries"))?;
        let id = records::be_u64(&k);
        let d: OldDelivery = serde_json::from_slice(&v).map_err(corrupt("format-1 delivery"))?;
        let st = state(&d.state).ok_or(records::DecodeError {
            what: "format-1 delivery",
            why: "unknown state",
        })?;
        // An open delivery whose CDR never reached the disk (a crash in
        // an unflushed batch of format 1): its file is still in the spool.
        if st.is_open()
            && !tree
                .contains_key(records::key(records::K_CDR, d.cdr_seq))
                .map_err(sled_err("read cdr"))?
        {
            continue;
        }
        let sub = number(&d.subscription, &mut subs, &mut batch);
        let rec = DeliveryRec {
            cdr_seq: d.cdr_seq,
            sub,
            state: st,
            origin: trigger(&d.origin).unwrap_or(Trigger::Auto),
            attempts: d.attempts,
            failures: d.failures,
            next_at_ms: d.next_at_ms,
            created_ms: d.created_ms,
            ended_ms: d.ended_ms,
            last_status: d.last_status,
            last_error: d.last_error,
            last_attempt: 0,
            hold_until_ms: None,
        };
        batch.insert(&records::key(records::K_DELIVERY, id)[..], rec.encode());
        if st.is_open() {
            let o = OpenRec {
                sub,
                state: st,
                origin: rec.origin,
                next_at_ms: rec.next_at_ms.unwrap_or(0),
                hold_until_ms: None,
            };
            batch.insert(&records::key(records::K_OPEN, id)[..], o.encode());
        }
        for a in d.attempt_ids {
            batch.insert(&records::key2(records::K_ATTEMPTS_OF, id, a)[..], &[][..]);
        }
        if counts.len() <= sub as usize {
            counts.resize(sub as usize + 1, CountsRec::default());
        }
        counts::adjust(&mut counts[sub as usize], st, true);
        pending += 1;
        flush_batch(&mut batch, &mut pending, false)?;
    }
    flush_batch(&mut batch, &mut pending, true)?;
    for item in attempts.iter() {
        let (k, v) = item.map_err(sled_err("read old attempts"))?;
        let id = records::be_u64(&k);
        let a: OldAttempt = serde_json::from_slice(&v).map_err(corrupt("format-1 attempt"))?;
        let cdr_seq = match tree
            .get(records::key(records::K_DELIVERY, a.delivery_id))
            .map_err(sled_err("read delivery"))?
        {
            Some(d) => DeliveryRec::decode(&d)?.cdr_seq,
            None => continue,
        };
        let sub = number(&a.subscription, &mut subs, &mut batch);
        let ctx = records::HeaderContext {
            webhook_id: &a.webhook_id,
            event_type: &a.event_type,
            attempt: a.attempt,
            time_ms: a.time_ms,
        };
        let detail = AttemptDetail {
            request_headers: a.request_headers,
            response_headers: a.response_headers,
            response_body: a.response_body,
        };
        if !detail.is_empty() {
            batch.insert(
                &records::key(records::K_DETAIL, id)[..],
                detail.encode(&ctx),
            );
        }
        let rec = AttemptRec {
            delivery_id: a.delivery_id,
            cdr_seq,
            sub,
            event_type: a.event_type,
            webhook_id: a.webhook_id,
            call_id: a.call_id,
            time_ms: a.time_ms,
            attempt: a.attempt,
            status: a.status,
            duration_ms: a.duration_ms,
            trigger: trigger(&a.trigger).unwrap_or(Trigger::Auto),
            error: a.error,
            // Migrated as format 3 had them: the detail in `h`, the
            // delivery's attempts in `x` (both still read).
            prev: 0,
            detail: None,
        };
        batch.insert(&records::key(records::K_ATTEMPT, id)[..], rec.encode());
        pending += 1;
        flush_batch(&mut batch, &mut pending, false)?;
    }
    for item in sub_last.iter() {
        let (k, v) = item.map_err(sled_err("read old sub_last"))?;
        let last: OldLast = serde_json::from_slice(&v).map_err(corrupt("format-1 sub_last"))?;
        let sub = number(&String::from_utf8_lossy(&k), &mut subs, &mut batch);
        if counts.len() <= sub as usize {
            counts.resize(sub as usize + 1, CountsRec::default());
        }
        let c = &mut counts[sub as usize];
        c.last_success_ms = last.last_success_ms;
        c.last_failure_ms = last.last_failure_ms;
        c.last_error = last.last_error;
    }
    for (sub, c) in counts.iter().enumerate() {
        batch.insert(&records::counts_key(sub as u32)[..], c.encode());
    }
    pending += 1;
    flush_batch(&mut batch, &mut pending, true)?;
    Ok(())
}
