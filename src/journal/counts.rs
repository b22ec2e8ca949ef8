//! Per-subscription counts and the start-up state. The counts are kept in
//! memory (`Books`) and written as records (`n`) at every flush, not with
//! every change: a drain changes them at every attempt, and a sled insert
//! per attempt for them cost more than the flush that carries them
//! (BENCHMARKS.md). Start-up reads them instead of scanning every delivery;
//! the open deliveries it resumes, and the pending and retrying counts,
//! come from the small `o` index and the few deliveries above its mark
//! (`open_index.rs`).
//!
//! So the delivered and dead counts on disk are only exact after a clean
//! stop, which flushes them and then leaves a mark (`k`) that open removes
//! (durably) before anything is written: a journal opened without it was
//! not stopped cleanly, and its delivered and dead counts are counted again
//! from the delivery records, a scan of small records that only a crash
//! costs. The last success, failure and error after a crash are those of
//! the last flush (a second before it at most).
//!
//! The unmatched count (CDRs a subscription's filter excluded, as the
//! caller's routing told `ingest`) cannot be counted again after a crash:
//! no record keeps which filters excluded a CDR. It stays the last flushed
//! value, at most one flush behind: it only changes in `ingest`, which
//! flushes it with the CDRs it counts before returning, so only a crash
//! inside an ingest call (after its CDRs, before its counts reached the
//! disk) leaves that one batch's exclusions uncounted.

use super::records::{self, CountsRec, EndpointHold, OpenRec};
use super::{lock, open_index, Books, Handles, Journal, OpenDelivery, Result, SubCounts};
use crate::model::State;
use std::sync::atomic::Ordering;

/// Moves one delivery in or out of a state's count.
pub(super) fn adjust(c: &mut CountsRec, state: State, up: bool) {
    let n = match state {
        State::Pending => &mut c.pending,
        State::Retrying => &mut c.retrying,
        State::Dead => &mut c.dead,
        State::Delivered => &mut c.delivered,
    };
    if up {
        *n += 1;
    } else {
        *n = n.saturating_sub(1);
    }
}

impl Books {
    /// The counts of subscription number `sub` (created empty).
    pub(super) fn counts_mut(&mut self, sub: u32) -> &mut CountsRec {
        let i = sub as usize;
        if self.counts.len() <= i {
            self.counts.resize(i + 1, CountsRec::default());
        }
        &mut self.counts[i]
    }

    /// Notes that the counts of `sub` changed: they are written at the
    /// next flush (`take_changed`), not with every attempt.
    pub(super) fn changed(&mut self, sub: u32) {
        if !self.changed.contains(&sub) {
            self.changed.push(sub);
        }
    }

    /// (subscription, key, record) of every count changed since the last
    /// call.
    pub(super) fn take_changed(&mut self) -> Vec<(u32, [u8; 5], Vec<u8>)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|sub| {
                let rec = self.counts_mut(sub).encode();
                (sub, records::counts_key(sub), rec)
            })
            .collect()
    }
}

impl Journal {
    /// Reads the names, counts and open deliveries: a few records per
    /// subscription and one per open delivery, whatever the journal holds.
    pub(super) fn load(&self, h: &Handles) -> Result<Vec<OpenDelivery>> {
        let mut names: Vec<String> = Vec::new();
        let mut books = Books::default();
        for item in h.tree.scan_prefix([records::K_SUB]) {
            let (k, v) = item.map_err(self.sled_err("read subscriptions"))?;
            let n = records::Reader::new(&v, "subscription number").u32()?;
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            if names.len() <= n as usize {
                names.resize(n as usize + 1, String::new());
            }
            names[n as usize] = name.clone();
            books.by_name.insert(name, n);
        }
        for item in h.tree.scan_prefix([records::K_COUNTS]) {
            let (k, v) = item.map_err(self.sled_err("read counts"))?;
            let n = records::Reader::new(&k[1..], "counts key").u32()?;
            *books.counts_mut(n) = CountsRec::decode(&v)?;
        }
        // Pending and retrying are counted again from the open index, which
        // start-up reads anyway: exact even if a crash fell between the
        // writes of one attempt (which are not one batch, see `Ops`).
        for c in &mut books.counts {
            c.pending = 0;
            c.retrying = 0;
        }
        let clean = h
            .tree
            .get([records::K_CLEAN])
            .map_err(self.sled_err("read the clean-stop mark"))?
            .is_some();
        let mut open = Vec::new();
        let mut stale = Vec::new();
        let resume = |books: &mut Books, open: &mut Vec<OpenDelivery>, id, o: &OpenRec| {
            adjust(books.counts_mut(o.sub), o.state, true);
            open.push(OpenDelivery {
                id,
                subscription: names
                    .get(o.sub as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", o.sub)),
                retry_at_ms: (o.state == State::Retrying).then_some(o.next_at_ms),
                hold_until_ms: o.hold_until_ms,
                origin: o.origin,
            });
        };
        let mark = open_index::read_mark(h).map_err(self.sled_err("read the open index mark"))?;
        for item in h.tree.scan_prefix([records::K_OPEN]) {
            let (k, v) = item.map_err(self.sled_err("read open deliveries"))?;
            let o = OpenRec::decode(&v)?;
            if !clean {
                // A crash between an attempt's writes can leave the index
                // entry of a delivery whose record already says it ended
                // (the record is written first): the record is the truth.
                let d_key = records::key(records::K_DELIVERY, records::key_id(&k));
                let d = match h
                    .tree
                    .get(&d_key[..])
                    .map_err(self.sled_err("read a delivery"))?
                {
                    Some(d) => Some(records::DeliveryRec::decode(&d)?),
                    None => None,
                };
                if d.as_ref().is_some_and(|d| !d.state.is_open()) {
                    stale.push(k);
                    continue;
                }
                // An ingest cut short between its trees (`store.rs`) can
                // leave a delivery and its index entry whose CDR has no
                // record, or a record but no content id: that CDR is not
                // known, its file is still in the spool and is taken in
                // again (as a new CDR). Drop what it left, so it is not
                // delivered twice.
                if let Some(d) = &d {
                    if !self.cdr_is_known(h, d.cdr_seq)? {
                        self.left_by_a_cut_ingest(h, d.cdr_seq, &d_key, &mut stale)?;
                        stale.push(k);
                        continue;
                    }
                }
            }
            resume(&mut books, &mut open, records::key_id(&k), &o);
        }
        // Above the mark, the delivery records (`open_index.rs`): after a
        // clean stop none, after a crash what the last half minute or so
        // created. A journal without a mark has every open delivery
        // indexed; it gets one now, before anything is written above it.
        let now = crate::time::now_ms();
        let head = self.head(h)?;
        if let Some(mark) = mark {
            let from = records::key(records::K_DELIVERY, mark);
            let to = records::key(records::K_DELIVERY, u64::MAX);
            for item in h.tree.range(from..=to) {
                let (k, v) = item.map_err(self.sled_err("read new deliveries"))?;
                let d = records::DeliveryRec::decode(&v)?;
                if !d.state.is_open() {
                    continue;
                }
                if !clean && !self.cdr_is_known(h, d.cdr_seq)? {
                    self.left_by_a_cut_ingest(h, d.cdr_seq, &k, &mut stale)?;
                    continue;
                }
                let id = records::key_id(&k);
                books.open.note_new(id, d.sub, now);
                resume(&mut books, &mut open, id, &open_index::open_rec(&d));
            }
        }
        books.open.mark = mark.unwrap_or(head);
        h.tree
            .insert([records::K_INDEXED], &books.open.mark.to_be_bytes())
            .map_err(self.sled_err("write the open index mark"))?;
        if !clean {
            for k in stale {
                h.tree
                    .remove(k)
                    .map_err(self.sled_err("remove a stale open-index entry"))?;
            }
            // Not stopped cleanly (or never yet): delivered and dead from
            // the delivery records themselves.
            for c in &mut books.counts {
                c.delivered = 0;
                c.dead = 0;
            }
            for item in h.tree.scan_prefix([records::K_DELIVERY]) {
                let (_, v) = item.map_err(self.sled_err("recount deliveries"))?;
                let d = records::DeliveryRec::decode(&v)?;
                if !d.state.is_open() {
                    adjust(books.counts_mut(d.sub), d.state, true);
                }
            }
            let mut batch = super::store::Batch::default();
            for (i, c) in books.counts.iter().enumerate() {
                batch.insert(&records::counts_key(i as u32)[..], c.encode());
            }
            h.tree
                .apply_batch(batch)
                .map_err(self.sled_err("write recounted counts"))?;
        }
        // From here on the counts may drift until the next clean stop.
        h.tree
            .remove([records::K_CLEAN])
            .map_err(self.sled_err("clear the clean-stop mark"))?;
        h.db.flush()
            .map_err(self.sled_err("clear the clean-stop mark"))?;
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = names;
        self.endpoint_held.store(
            books.counts.iter().any(|c| c.endpoint_hold.is_some()),
            Ordering::SeqCst,
        );
        *lock(&self.books) = books;
        Ok(open)
    }

    /// Puts into `stale` what an ingest cut short between its trees left of
    /// CDR `seq` (`store.rs`): its body, its record and the delivery
    /// record `d_key`.
    fn left_by_a_cut_ingest(
        &self,
        h: &Handles,
        seq: crate::model::CdrSeq,
        d_key: &[u8],
        stale: &mut Vec<sled::IVec>,
    ) -> Result<()> {
        for item in h.tree.scan_prefix(records::key(records::K_BODY, seq)) {
            let (b, _) = item.map_err(self.sled_err("read body keys"))?;
            stale.push(b);
        }
        stale.push(sled::IVec::from(&records::key(records::K_CDR, seq)[..]));
        stale.push(sled::IVec::from(d_key));
        Ok(())
    }

    /// Whether CDR `seq` has its record and its content id points at it:
    /// both are written last by an ingest (`store.rs`).
    fn cdr_is_known(&self, h: &Handles, seq: crate::model::CdrSeq) -> Result<bool> {
        let Some(bytes) = h
            .tree
            .get(records::key(records::K_CDR, seq))
            .map_err(self.sled_err("read a cdr"))?
        else {
            return Ok(false);
        };
        let rec = records::CdrRec::decode(&bytes)?;
        let id = records::name_key(records::K_CDR_ID, &records::id_bytes(&rec.id));
        Ok(h.tree
            .get(id)
            .map_err(self.sled_err("read a cdr id"))?
            .is_some_and(|v| records::be_u64(&v) == seq))
    }

    /// The number of subscription `name`, given one (and made durable)
    /// the first time. Callers hold the books.
    pub(super) fn sub_number(&self, books: &mut Books, h: &Handles, name: &str) -> Result<u32> {
        if let Some(&n) = books.by_name.get(name) {
            return Ok(n);
        }
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        let n = names.len() as u32;
        // Before any record that uses it: sled recovers a prefix of its log.
        h.tree
            .insert(
                records::name_key(records::K_SUB, name.as_bytes()),
                &n.to_be_bytes(),
            )
            .map_err(self.sled_err("write subscription"))?;
        names.push(name.to_string());
        books.by_name.insert(name.to_string(), n);
        Ok(n)
    }

    /// Journals that subscription `name`'s endpoint asked for no automatic
    /// attempt before `hold.until_ms` (a failing answer's `Retry-After`).
    /// Only raises: an earlier time for the same endpoint is ignored. It is
    /// written with the counts at the next flush, so a crash within a
    /// second of the answer can lose it (each delivery's own hold is in its
    /// record, written with its attempt).
    pub fn hold_endpoint(&self, name: &str, hold: EndpointHold) -> Result<()> {
        let h = self.h()?;
        let mut books = lock(&self.books);
        let n = self.sub_number(&mut books, &h, name)?;
        let c = books.counts_mut(n);
        let raise = match c.endpoint_hold {
            Some(old) => old.endpoint != hold.endpoint || old.until_ms < hold.until_ms,
            None => true,
        };
        if raise {
            c.endpoint_hold = Some(hold);
            self.endpoint_held.store(true, Ordering::SeqCst);
            books.changed(n);
            drop(books);
            self.wrote();
        }
        Ok(())
    }

    /// Clears subscription `name`'s endpoint hold (its endpoint answered,
    /// or its URL changed). Called after every such attempt, so it costs
    /// neither a lock nor a write while no subscription has one.
    pub fn release_endpoint(&self, name: &str) {
        if !self.endpoint_held.load(Ordering::SeqCst) {
            return;
        }
        let mut books = lock(&self.books);
        let Some(&n) = books.by_name.get(name) else {
            return;
        };
        let c = books.counts_mut(n);
        if c.endpoint_hold.take().is_some() {
            if books.counts.iter().all(|c| c.endpoint_hold.is_none()) {
                self.endpoint_held.store(false, Ordering::SeqCst);
            }
            books.changed(n);
            drop(books);
            self.wrote();
        }
    }

    /// The endpoint holds still in force at `now`, by subscription name.
    pub fn endpoint_holds(&self, now: u64) -> Vec<(String, EndpointHold)> {
        self.per_subscription(|c| c.endpoint_hold.filter(|h| h.until_ms > now))
    }

    /// Pending and retrying deliveries found at open, oldest first. Hands
    /// them over once.
    pub fn take_open_deliveries(&self) -> Vec<OpenDelivery> {
        std::mem::take(&mut *lock(&self.open_at_start))
    }

    /// Counts per subscription name (including subscriptions no longer in
    /// the config that still have deliveries).
    pub fn counts(&self) -> std::collections::BTreeMap<String, SubCounts> {
        self.per_subscription(|c| Some(c.clone()))
            .into_iter()
            .collect()
    }

    /// `pick` of each subscription's record, by name, where it gives one.
    fn per_subscription<T>(&self, pick: impl Fn(&CountsRec) -> Option<T>) -> Vec<(String, T)> {
        let names = self.names.read().unwrap_or_else(|p| p.into_inner()).clone();
        let books = lock(&self.books);
        books
            .counts
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((names.get(i)?.clone(), pick(c)?)))
            .collect()
    }
}
