//! Reads: single records by id, and the page-by-page walks of operator
//! commands (`attempts`, `replay`, `resend --failed`). A walk reads only the
//! small records of its kind (`c`, `d`, `a`), never bodies or attempt
//! details, so what sled keeps of the pages it read stays small.

use super::records::{self, AttemptDetail, AttemptRec, CdrRec, DeliveryRec};
use super::{Attempt, AttemptFilter, CdrMeta, Delivery, Handles, Journal, Page, Result, StoredCdr};
use crate::cdr::Cdr;
use crate::model::{AttemptId, CdrSeq, DeliveryId, State, Trigger};

pub(super) fn meta_of(seq: CdrSeq, rec: &CdrRec) -> CdrMeta {
    CdrMeta {
        id: rec.id.clone(),
        seq,
        event_type: rec.event_type.clone(),
        call_id: rec.call_id.clone(),
        received_ms: rec.received_ms,
    }
}

/// The next probe of a bisection between `lo` (known before the answer)
/// and `hi` (known at or after it), `None` once they are adjacent.
pub(super) fn bisect(lo: u64, hi: u64) -> Option<u64> {
    (hi > lo + 1).then(|| lo + (hi - lo) / 2)
}

impl Journal {
    pub(super) fn cdr_rec(&self, h: &Handles, seq: CdrSeq) -> Result<Option<CdrRec>> {
        match h
            .tree
            .get(records::key(records::K_CDR, seq))
            .map_err(self.sled_err("read cdr"))?
        {
            Some(b) => Ok(Some(CdrRec::decode(&b)?)),
            None => Ok(None),
        }
    }

    pub(super) fn delivery_rec(&self, h: &Handles, id: DeliveryId) -> Result<Option<DeliveryRec>> {
        match h
            .tree
            .get(records::key(records::K_DELIVERY, id))
            .map_err(self.sled_err("read delivery"))?
        {
            Some(b) => Ok(Some(DeliveryRec::decode(&b)?)),
            None => Ok(None),
        }
    }

    fn seq_of(&self, h: &Handles, content_id: &str) -> Result<Option<CdrSeq>> {
        let key = records::name_key(records::K_CDR_ID, &records::id_bytes(content_id));
        Ok(h.tree
            .get(key)
            .map_err(self.sled_err("read cdr id"))?
            .map(|v| records::be_u64(&v)))
    }

    /// A delivery record with what it shares with its CDR.
    pub(super) fn delivery_of(
        &self,
        id: DeliveryId,
        d: DeliveryRec,
        cdr: Option<&CdrRec>,
    ) -> Delivery {
        Delivery {
            id,
            cdr_id: cdr.map(|c| c.id.clone()).unwrap_or_default(),
            cdr_seq: d.cdr_seq,
            subscription: self.name_of(d.sub),
            event_type: cdr.map(|c| c.event_type.clone()).unwrap_or_default(),
            call_id: cdr.and_then(|c| c.call_id.clone()),
            state: d.state,
            attempts: d.attempts,
            failures: d.failures,
            next_at_ms: d.next_at_ms,
            created_ms: d.created_ms,
            ended_ms: d.ended_ms,
            origin: d.origin,
            last_status: d.last_status,
            last_error: d.last_error,
            hold_until_ms: d.hold_until_ms,
        }
    }

    /// A CDR by its content id (`webhook-id`).
    pub fn cdr(&self, id: &str) -> Result<Option<StoredCdr>> {
        let h = self.h()?;
        match self.seq_of(&h, id)? {
            Some(seq) => self.cdr_by_seq(seq),
            None => Ok(None),
        }
    }

    /// A CDR with its body, read back from its chunks.
    pub fn cdr_by_seq(&self, seq: CdrSeq) -> Result<Option<StoredCdr>> {
        let h = self.h()?;
        let Some(rec) = self.cdr_rec(&h, seq)? else {
            return Ok(None);
        };
        self.with_body(&h, seq, &rec).map(Some)
    }

    /// What an attempt needs, read once: the delivery (with what it shares
    /// with its CDR) and, unless `open_only` and it has ended, the CDR's
    /// body (`None` if the CDR's record is gone). The delivery path reads
    /// the delivery and CDR records once here instead of once for
    /// `delivery` and again for `cdr_by_seq`.
    pub fn delivery_with_body(
        &self,
        id: DeliveryId,
        open_only: bool,
    ) -> Result<Option<(Delivery, Option<Vec<u8>>)>> {
        let h = self.h()?;
        let Some(d) = self.delivery_rec(&h, id)? else {
            return Ok(None);
        };
        let seq = d.cdr_seq;
        let cdr = self.cdr_rec(&h, seq)?;
        let delivery = self.delivery_of(id, d, cdr.as_ref());
        if open_only && !delivery.state.is_open() {
            return Ok(Some((delivery, None)));
        }
        let body = match &cdr {
            Some(rec) => Some(self.with_body(&h, seq, rec)?.body),
            None => None,
        };
        Ok(Some((delivery, body)))
    }

    /// A CDR's record with its body, kept in it (format 4) or read back
    /// from its chunks.
    fn with_body(&self, h: &Handles, seq: CdrSeq, rec: &CdrRec) -> Result<StoredCdr> {
        if let Some(body) = &rec.body {
            return Ok(StoredCdr {
                meta: meta_of(seq, rec),
                body: body.clone(),
            });
        }
        // A body of one chunk written before format 4 is one read, not a
        // range scan.
        if rec.body_len <= records::BODY_CHUNK as u64 {
            let body = h
                .tree
                .get(records::body_key(seq, 0))
                .map_err(self.sled_err("read body"))?
                .map(|b| b.to_vec())
                .unwrap_or_default();
            if body.len() as u64 == rec.body_len {
                return Ok(StoredCdr {
                    meta: meta_of(seq, rec),
                    body,
                });
            }
        }
        let mut body = Vec::with_capacity(rec.body_len.min(64 << 20) as usize);
        for item in h.tree.scan_prefix(records::key(records::K_BODY, seq)) {
            let (_, chunk) = item.map_err(self.sled_err("read body"))?;
            body.extend_from_slice(&chunk);
        }
        Ok(StoredCdr {
            meta: meta_of(seq, rec),
            body,
        })
    }

    pub fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>> {
        let h = self.h()?;
        let Some(d) = self.delivery_rec(&h, id)? else {
            return Ok(None);
        };
        let cdr = self.cdr_rec(&h, d.cdr_seq)?;
        Ok(Some(self.delivery_of(id, d, cdr.as_ref())))
    }

    /// Whether every CDR with these content ids is journaled and has no
    /// open delivery. Used at start-up for files in `.inflight/`.
    pub fn cdrs_finished_by_ids(&self, cdrs: &[Cdr]) -> Result<bool> {
        let h = self.h()?;
        for cdr in cdrs {
            let Some(seq) = self.seq_of(&h, &cdr.id)? else {
                return Ok(false);
            };
            if !self.cdr_finished(&h, seq)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether every CDR with these content ids is journaled.
    pub fn knows_all(&self, cdrs: &[Cdr]) -> Result<bool> {
        let h = self.h()?;
        for cdr in cdrs {
            if self.seq_of(&h, &cdr.id)?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(super) fn cdr_finished(&self, h: &Handles, seq: CdrSeq) -> Result<bool> {
        // A record that is gone was pruned, and only ended ones are.
        let Some(rec) = self.cdr_rec(h, seq)? else {
            return Ok(true);
        };
        self.deliveries_ended(h, &rec, None)
    }

    /// Whether none of the CDR's deliveries is open: the open index says
    /// (but for `ended`, which the caller just ended).
    fn deliveries_ended(
        &self,
        h: &Handles,
        rec: &CdrRec,
        ended: Option<DeliveryId>,
    ) -> Result<bool> {
        for &id in rec.deliveries.iter().filter(|&&id| Some(id) != ended) {
            if self.is_open(h, id)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The in-flight files of CDR `seq` that are finished: every delivery
    /// of every CDR in them ended (`ended` is one the caller just ended).
    pub(super) fn finished_files_of(
        &self,
        seq: CdrSeq,
        ended: Option<DeliveryId>,
    ) -> Result<Vec<String>> {
        let h = self.h()?;
        let Some(rec) = self.cdr_rec(&h, seq)? else {
            return Ok(Vec::new());
        };
        if !self.deliveries_ended(&h, &rec, ended)? {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for file in &rec.files {
            let mut finished = true;
            for &sibling in file.cdrs.iter().filter(|&&s| s != seq) {
                if !self.cdr_finished(&h, sibling)? {
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

    /// An attempt as listings show it (no headers or response).
    fn attempt_of(&self, id: AttemptId, a: AttemptRec) -> Attempt {
        Attempt {
            id,
            delivery_id: a.delivery_id,
            time_ms: a.time_ms,
            subscription: self.name_of(a.sub),
            event_type: a.event_type,
            call_id: a.call_id,
            webhook_id: a.webhook_id,
            attempt: a.attempt,
            status: a.status,
            error: a.error,
            duration_ms: a.duration_ms,
            trigger: a.trigger,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            response_body: None,
        }
    }

    /// One attempt in full.
    pub fn attempt(&self, id: AttemptId) -> Result<Option<Attempt>> {
        let h = self.h()?;
        match self.attempt_rec(&h, id)? {
            Some(rec) => self.with_detail(&h, id, rec).map(Some),
            None => Ok(None),
        }
    }

    fn attempt_rec(&self, h: &Handles, id: AttemptId) -> Result<Option<AttemptRec>> {
        match h
            .tree
            .get(records::key(records::K_ATTEMPT, id))
            .map_err(self.sled_err("read attempt"))?
        {
            Some(b) => Ok(Some(AttemptRec::decode(&b)?)),
            None => Ok(None),
        }
    }

    /// An attempt in full from its record: the detail is in the record
    /// (format 4) or its `h` record (format 3).
    fn with_detail(&self, h: &Handles, id: AttemptId, mut rec: AttemptRec) -> Result<Attempt> {
        let inline = rec.detail.take();
        let mut a = self.attempt_of(id, rec);
        let detail = match inline {
            Some(d) => Some(d),
            None => h
                .tree
                .get(records::key(records::K_DETAIL, id))
                .map_err(self.sled_err("read attempt detail"))?
                .map(|b| b.to_vec()),
        };
        if let Some(b) = detail {
            let ctx = records::HeaderContext {
                webhook_id: &a.webhook_id,
                event_type: &a.event_type,
                attempt: a.attempt,
                time_ms: a.time_ms,
            };
            let detail = AttemptDetail::decode(&b, &ctx)?;
            a.request_headers = detail.request_headers;
            a.response_headers = detail.response_headers;
            a.response_body = detail.response_body;
        }
        Ok(a)
    }

    /// A delivery's attempts, oldest first: each id with its record (read
    /// once; `None` for an `x` entry whose record is gone) and whether
    /// format 3's `x` index lists it. They are the chain from the delivery
    /// record's `last_attempt` (format 4) and that index (format 3).
    pub(super) fn attempt_recs_of(
        &self,
        h: &Handles,
        id: DeliveryId,
        last_attempt: AttemptId,
    ) -> Result<Vec<(AttemptId, Option<AttemptRec>, bool)>> {
        let mut found = std::collections::BTreeMap::new();
        for item in h.tree.scan_prefix(records::key(records::K_ATTEMPTS_OF, id)) {
            let (k, _) = item.map_err(self.sled_err("read attempts of"))?;
            let a = records::key_id2(&k);
            found.insert(a, (self.attempt_rec(h, a)?, true));
        }
        let mut next = last_attempt;
        while next != 0 && !found.contains_key(&next) {
            // Gone: pruned, or the chain's head written without its record.
            let Some(rec) = self.attempt_rec(h, next)? else {
                break;
            };
            if rec.delivery_id != id {
                break;
            }
            let prev = rec.prev;
            found.insert(next, (Some(rec), false));
            // Each link points back: a damaged one cannot loop.
            if prev >= next {
                break;
            }
            next = prev;
        }
        Ok(found
            .into_iter()
            .map(|(a, (rec, listed))| (a, rec, listed))
            .collect())
    }

    /// The attempts of one delivery in full, oldest first.
    pub fn attempts_of(&self, delivery: &Delivery) -> Result<Vec<Attempt>> {
        let h = self.h()?;
        let last = self
            .delivery_rec(&h, delivery.id)?
            .map_or(0, |d| d.last_attempt);
        let mut out = Vec::new();
        for (a, rec, _) in self.attempt_recs_of(&h, delivery.id, last)? {
            if let Some(rec) = rec {
                out.push(self.with_detail(&h, a, rec)?);
            }
        }
        Ok(out)
    }

    /// One page of the attempt history, newest first: attempts older than
    /// `before` (all when `None`) that match `f`, at most `max` of them and
    /// at most `max_examined` looked at, so that a walk over the whole
    /// history holds one page at a time. `next` is the `before` of the
    /// following page, `None` once the walk is done. `f.limit` is the
    /// caller's to apply across pages. Attempts come without headers and
    /// response (`attempt` reads those).
    pub fn attempts_page(
        &self,
        f: &AttemptFilter,
        before: Option<AttemptId>,
        max: usize,
        max_examined: usize,
    ) -> Result<Page<Attempt, AttemptId>> {
        let h = self.h()?;
        let mut page = Page::default();
        let start = records::key(records::K_ATTEMPT, 0);
        let end = records::key(records::K_ATTEMPT, before.unwrap_or(u64::MAX));
        let range = match before {
            Some(_) => h.tree.range(start..end),
            None => h.tree.range(start..=end),
        };
        let sub_number = f.subscription.as_ref().map(|s| {
            self.names
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .position(|n| n == s)
        });
        for (examined, item) in range.rev().enumerate() {
            let (k, v) = item.map_err(self.sled_err("scan attempts"))?;
            let id = records::key_id(&k);
            if page.items.len() >= max.max(1) || examined >= max_examined {
                page.next = Some(id + 1);
                break;
            }
            let a = AttemptRec::decode(&v)?;
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
            let keep = sub_number.is_none_or(|n| n == Some(a.sub as usize))
                && !(f.failed && a.succeeded())
                && f.event_type.as_ref().is_none_or(|t| *t == a.event_type)
                && f.call_id
                    .as_ref()
                    .is_none_or(|c| Some(c) == a.call_id.as_ref());
            if keep {
                page.items.push(self.attempt_of(id, a));
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
        let h = self.h()?;
        let all = || {
            h.tree
                .range(records::key(records::K_CDR, 0)..=records::key(records::K_CDR, u64::MAX))
        };
        let read = |item: Option<sled::Result<(sled::IVec, sled::IVec)>>| -> Result<Option<(CdrSeq, u64)>> {
            match item.transpose().map_err(self.sled_err("read cdrs"))? {
                Some((k, v)) => Ok(Some((records::key_id(&k), CdrRec::decode(&v)?.received_ms))),
                None => Ok(None),
            }
        };
        let first = read(all().next())?;
        let last = read(all().next_back())?;
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
            read(
                h.tree
                    .range(
                        records::key(records::K_CDR, seq)..=records::key(records::K_CDR, u64::MAX),
                    )
                    .next(),
            )
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
        let h = self.h()?;
        let mut page = Page::default();
        let range = records::key(records::K_CDR, from)..=records::key(records::K_CDR, to);
        for item in h.tree.range(range) {
            let (k, v) = item.map_err(self.sled_err("scan cdrs"))?;
            let seq = records::key_id(&k);
            if page.items.len() >= max.max(1) {
                page.next = Some(seq);
                break;
            }
            page.items.push(meta_of(seq, &CdrRec::decode(&v)?));
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

    /// One page of the dead and retrying deliveries (optionally of one
    /// subscription and created since a time): what `resend --failed` sends.
    /// Examines at most `max_examined` deliveries from id `from` on, so a
    /// walk over the whole journal holds one page at a time and lets others
    /// use the journal between pages; `next` is where the following page
    /// starts. No index: an operator's request, not a hot path; the walk
    /// reads the small fixed-width delivery records only.
    pub fn failed_deliveries_page(
        &self,
        sub: Option<&str>,
        since_ms: Option<u64>,
        from: DeliveryId,
        max_examined: usize,
    ) -> Result<Page<Delivery, DeliveryId>> {
        let h = self.h()?;
        let mut page = Page::default();
        let sub_number = sub.map(|s| {
            self.names
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .position(|n| n == s)
        });
        let range =
            records::key(records::K_DELIVERY, from)..=records::key(records::K_DELIVERY, u64::MAX);
        for (examined, item) in h.tree.range(range).enumerate() {
            let (k, v) = item.map_err(self.sled_err("scan deliveries"))?;
            let id = records::key_id(&k);
            if examined >= max_examined {
                page.next = Some(id);
                break;
            }
            let d = DeliveryRec::decode(&v)?;
            // A failed test webhook ends dead, but it was a probe, not a
            // CDR: `resend --failed` does not send it again.
            let failed =
                matches!(d.state, State::Dead | State::Retrying) && d.origin != Trigger::Test;
            let sub_ok = sub_number.is_none_or(|n| n == Some(d.sub as usize));
            let since_ok = since_ms.is_none_or(|t| d.created_ms >= t);
            if failed && sub_ok && since_ok {
                let cdr = self.cdr_rec(&h, d.cdr_seq)?;
                page.items.push(self.delivery_of(id, d, cdr.as_ref()));
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
}
