//! Taking CDRs in: spool files in batches (one ordered set of writes and
//! one flush per call, `store::Batch`) and the test webhook's CDR. The
//! caller says, per CDR, which subscriptions get a delivery and whose
//! filters excluded it (`Routing`); the journal only records it, and
//! counts the exclusions (`unmatched`) with the CDRs, under the same books
//! lock and flush.

use std::collections::{HashMap, HashSet};

use super::records::{self, CdrRec, DeliveryRec, FileRef};
use super::{counts, lock, CdrMeta, IngestFile, IngestOutcome, Journal, Result, Routing};
use crate::cdr::Cdr;
use crate::model::{CdrSeq, State, Trigger};
use crate::time::now_ms;

/// A new CDR of the batch, until it is written.
struct NewCdr<'a> {
    rec: CdrRec,
    seq: CdrSeq,
    body: &'a [u8],
    /// (subscription, delivery id) to create.
    deliveries: Vec<(String, u64)>,
}

/// Stores a body larger than one chunk (a small one is in its CDR's
/// record, `records::inline_body`): its chunks are inserted one by one at
/// once, before the batch that holds its CDR record. sled recovers a
/// prefix of its log, so a CDR record that survives a crash has its chunks; chunks whose record did not
/// make it are left behind (a crash in that window costs their space, never
/// a CDR). Why not in the batch: sled pins memory for a whole batch, and
/// each chunk inserted copies its leaf page (up to 16 chunks), so a batch of
/// large bodies held about twelve times their size until it ended.
pub(super) fn put_body(tree: &super::store::Store, seq: CdrSeq, body: &[u8]) -> sled::Result<()> {
    if records::inline_body(body) {
        return Ok(());
    }
    for (i, chunk) in records::chunks(body) {
        tree.insert(records::body_key(seq, i), chunk)?;
    }
    Ok(())
}

impl Journal {
    /// Journals a batch of parsed files and flushes once for all of them.
    /// `route` names the subscriptions that get a delivery of a new CDR
    /// (a CDR journaled before keeps the deliveries it has).
    pub fn ingest(
        &self,
        files: &[IngestFile],
        route: &dyn Fn(&Cdr) -> Vec<String>,
    ) -> Result<IngestOutcome> {
        self.ingest_routed(files, &|cdr| Routing {
            to: route(cdr),
            unmatched: Vec::new(),
        })
    }

    /// As [`Journal::ingest`], and each new CDR's `Routing::unmatched`
    /// subscriptions count it as unmatched (flushed by this call, with the
    /// CDR). A CDR journaled before is not routed, so not counted again.
    pub fn ingest_routed(
        &self,
        files: &[IngestFile],
        route: &dyn Fn(&Cdr) -> Routing,
    ) -> Result<IngestOutcome> {
        let h = self.h()?;
        let mut out = IngestOutcome::default();
        let now = now_ms();
        // Files with a CDR that got a new delivery cannot be finished yet.
        let mut waiting_files: HashSet<&str> = HashSet::new();
        let mut new: Vec<NewCdr> = Vec::new();
        // Content id → index in `new`: the same CDR twice in one batch is
        // one CDR.
        let mut new_by_id: HashMap<&str, usize> = HashMap::new();
        // Known CDRs (journaled before) that learn of another file.
        let mut known_refs: Vec<(CdrSeq, FileRef)> = Vec::new();
        // Subscriptions whose filter excluded a new CDR, once per CDR.
        let mut excluded: Vec<String> = Vec::new();
        for file in files {
            // Sequence numbers first: each CDR records its file's siblings.
            let mut seqs = Vec::with_capacity(file.cdrs.len());
            let mut kind = Vec::with_capacity(file.cdrs.len());
            let mut in_file: HashMap<&str, CdrSeq> = HashMap::new();
            for cdr in &file.cdrs {
                if let Some(&seq) = in_file.get(cdr.id.as_str()) {
                    seqs.push(seq);
                    kind.push(None);
                    continue;
                }
                let (seq, k) = if let Some(&i) = new_by_id.get(cdr.id.as_str()) {
                    (new[i].seq, Some(Err(i)))
                } else {
                    let key = records::name_key(records::K_CDR_ID, &records::id_bytes(&cdr.id));
                    match h.tree.get(key).map_err(self.sled_err("read cdr id"))? {
                        Some(seq) => {
                            let seq = records::be_u64(&seq);
                            (seq, Some(Ok(seq)))
                        }
                        None => (self.next_id()?, None),
                    }
                };
                seqs.push(seq);
                kind.push(Some(k));
                in_file.insert(cdr.id.as_str(), seq);
            }
            let file_ref = FileRef {
                name: file.inflight_name.clone(),
                cdrs: seqs.clone(),
            };
            for ((cdr, &seq), k) in file.cdrs.iter().zip(&seqs).zip(kind) {
                match k {
                    // A repeat within this file.
                    None => out.known_cdrs += 1,
                    // Journaled before: it only learns that this file holds
                    // it too. A CDR taken in twice is sent once.
                    Some(Some(Ok(seq))) => {
                        out.known_cdrs += 1;
                        known_refs.push((seq, file_ref.clone()));
                    }
                    // Earlier in this batch, in another file.
                    Some(Some(Err(i))) => {
                        out.known_cdrs += 1;
                        let rec = &mut new[i].rec;
                        if !rec.files.iter().any(|f| f.name == file_ref.name) {
                            rec.files.push(file_ref.clone());
                        }
                        if !new[i].deliveries.is_empty() {
                            waiting_files.insert(&file.inflight_name);
                        }
                    }
                    Some(None) => {
                        out.new_cdrs += 1;
                        let mut deliveries = Vec::new();
                        let routing = route(cdr);
                        let excluded_from = excluded.len();
                        for sub in routing.unmatched {
                            if !excluded[excluded_from..].contains(&sub) {
                                excluded.push(sub);
                            }
                        }
                        for sub in routing.to {
                            if deliveries.iter().all(|(s, _)| *s != sub) {
                                deliveries.push((sub, self.next_id()?));
                            }
                        }
                        if deliveries.is_empty() {
                            out.unmatched_cdrs += 1;
                        } else {
                            waiting_files.insert(&file.inflight_name);
                        }
                        new_by_id.insert(cdr.id.as_str(), new.len());
                        new.push(NewCdr {
                            rec: CdrRec {
                                id: cdr.id.clone(),
                                event_type: cdr.event_type.as_str().to_string(),
                                call_id: cdr.call_id.clone(),
                                received_ms: now,
                                body_len: cdr.body.len() as u64,
                                deliveries: deliveries.iter().map(|(_, d)| *d).collect(),
                                files: vec![file_ref.clone()],
                                body: records::inline_body(&cdr.body).then(|| cdr.body.to_vec()),
                            },
                            seq,
                            body: &cdr.body,
                            deliveries,
                        });
                    }
                }
            }
        }
        {
            // One batch for every record, index and count of the call
            // (large bodies are written first, outside it and the lock).
            let mut batch = super::store::Batch::default();
            for n in &new {
                put_body(&h.tree, n.seq, n.body).map_err(self.sled_err("write body"))?;
            }
            let mut books = lock(&self.books);
            let mut touched = Vec::new();
            for (seq, file_ref) in &known_refs {
                let key = records::key(records::K_CDR, *seq);
                let Some(bytes) = h.tree.get(key).map_err(self.sled_err("read cdr"))? else {
                    continue;
                };
                let mut rec = CdrRec::decode(&bytes)?;
                if !rec.files.iter().any(|f| f.name == file_ref.name) {
                    rec.files.push(file_ref.clone());
                    batch.insert(&key[..], rec.encode());
                }
            }
            for n in &new {
                for (sub, id) in &n.deliveries {
                    let number = self.sub_number(&mut books, &h, sub)?;
                    let d = DeliveryRec::new_pending(n.seq, number, Trigger::Auto, now);
                    batch.insert(&records::key(records::K_DELIVERY, *id)[..], d.encode());
                    // Most deliveries end long before their index entry
                    // would be due (`open_index.rs`).
                    if !books.open.note_new(*id, number, now) {
                        let o = super::open_index::open_rec(&d);
                        batch.insert(&records::key(records::K_OPEN, *id)[..], o.encode());
                    }
                    counts::adjust(books.counts_mut(number), State::Pending, true);
                    if !touched.contains(&number) {
                        touched.push(number);
                    }
                    out.new_deliveries.push((sub.clone(), *id));
                }
                batch.insert(&records::key(records::K_CDR, n.seq)[..], n.rec.encode());
                batch.insert(
                    records::name_key(records::K_CDR_ID, &records::id_bytes(&n.rec.id)),
                    &n.seq.to_be_bytes(),
                );
            }
            // Written at the flush below, with these CDRs.
            for sub in &excluded {
                let number = self.sub_number(&mut books, &h, sub)?;
                books.counts_mut(number).unmatched += 1;
                if !touched.contains(&number) {
                    touched.push(number);
                }
            }
            for number in touched {
                books.changed(number);
            }
            if let Err(e) = self.apply(&h, batch, "write cdrs") {
                drop(books);
                // The counts in memory went ahead of the disk: read them back.
                if let Ok(h) = self.h() {
                    let _ = self.load(&h);
                }
                return Err(e);
            }
        }
        drop(new);
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

    /// Journals a CDR that did not come from the spool (the test webhook).
    pub fn put_cdr(&self, cdr: &Cdr) -> Result<CdrMeta> {
        self.wrote();
        let h = self.h()?;
        let _books = lock(&self.books);
        if let Some(stored) = self.cdr(&cdr.id)? {
            return Ok(stored.meta);
        }
        let seq = self.next_id()?;
        let rec = CdrRec {
            id: cdr.id.clone(),
            event_type: cdr.event_type.as_str().to_string(),
            call_id: cdr.call_id.clone(),
            received_ms: now_ms(),
            body_len: cdr.body.len() as u64,
            deliveries: Vec::new(),
            files: Vec::new(),
            body: records::inline_body(&cdr.body).then(|| cdr.body.to_vec()),
        };
        let mut batch = super::store::Batch::default();
        batch.insert(&records::key(records::K_CDR, seq)[..], rec.encode());
        batch.insert(
            records::name_key(records::K_CDR_ID, &records::id_bytes(&cdr.id)),
            &seq.to_be_bytes(),
        );
        put_body(&h.tree, seq, &cdr.body).map_err(self.sled_err("write body"))?;
        self.apply(&h, batch, "write cdr")?;
        Ok(super::queries::meta_of(seq, &rec))
    }
}
