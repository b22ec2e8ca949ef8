//! Changes to deliveries after ingest: an attempt and its result, a
//! delivery ended without an attempt, a delivery created by replay or the
//! test webhook. Each writes a few small records in order (`Ops`): the
//! attempt (`a`, with its detail and the delivery's previous attempt),
//! then the delivery's fixed-width record (`d`, the head of that chain)
//! and, for a delivery open long enough to be indexed, its open-index
//! entry (`o`, `open_index.rs`); its subscription's counts change in
//! memory and are written at the next flush (`counts.rs`). Nothing that
//! grows is rewritten. A crash between two of these writes is mended at
//! the next open (`counts.rs`): without the clean-stop mark, delivered and
//! dead are counted again from the delivery records, and an `o` entry
//! whose delivery already ended is dropped.

use super::records::{self, AttemptDetail, AttemptRec, DeliveryRec};
use super::{counts, lock, Attempt, Books, CdrMeta, Delivery, Journal, JournalError, Ops, Result};
use crate::model::{DeliveryId, State, Trigger};
use crate::time::now_ms;

/// Puts a delivery's record into `batch`, and its open-index change after
/// it (so an index entry always has its delivery), or only into the notes
/// for a delivery above the index mark (`open_index.rs`).
fn put_delivery(books: &mut Books, batch: &mut Ops, id: DeliveryId, d: &DeliveryRec) {
    batch.insert(&records::key(records::K_DELIVERY, id)[..], d.encode());
    books.open.put(batch, id, d, now_ms());
}

/// Moves a delivery's count from its old state to its new one.
fn recount(books: &mut Books, old: Option<&DeliveryRec>, new: &DeliveryRec) {
    let c = books.counts_mut(new.sub);
    if let Some(old) = old {
        counts::adjust(c, old.state, false);
    }
    counts::adjust(c, new.state, true);
}

impl Journal {
    /// Records one attempt and the delivery's new state, and returns the
    /// in-flight files that are now finished (every delivery of every CDR in
    /// them ended).
    pub fn record_attempt(&self, updated: &Delivery, attempt: &Attempt) -> Result<Vec<String>> {
        self.wrote();
        let h = self.h()?;
        let (was_open, ended, cdr_seq) = {
            let mut books = lock(&self.books);
            let sub = self.sub_number(&mut books, &h, &updated.subscription)?;
            let old = self.delivery_rec(&h, updated.id)?;
            let mut new = DeliveryRec {
                cdr_seq: updated.cdr_seq,
                sub,
                state: updated.state,
                origin: updated.origin,
                attempts: updated.attempts,
                failures: updated.failures,
                next_at_ms: updated.next_at_ms,
                created_ms: updated.created_ms,
                ended_ms: updated.ended_ms,
                last_status: updated.last_status,
                last_error: updated.last_error.clone(),
                // The head of its attempts' chain.
                last_attempt: attempt.id,
                hold_until_ms: updated
                    .hold_until_ms
                    .filter(|_| updated.state == State::Retrying),
            };
            // A copy read before another attempt ended it never reopens an
            // ended delivery.
            if let Some(old) = old.as_ref().filter(|o| !o.state.is_open()) {
                if new.state.is_open() {
                    new.state = old.state;
                    new.next_at_ms = None;
                    new.hold_until_ms = None;
                    new.ended_ms = old.ended_ms;
                }
            }
            new.attempts = new.attempts.max(old.as_ref().map_or(0, |o| o.attempts));
            let mut batch = Ops::default();
            let detail = AttemptDetail {
                request_headers: attempt.request_headers.clone(),
                response_headers: attempt.response_headers.clone(),
                response_body: attempt.response_body.clone(),
            };
            let ctx = records::HeaderContext {
                webhook_id: &attempt.webhook_id,
                event_type: &attempt.event_type,
                attempt: attempt.attempt,
                time_ms: attempt.time_ms,
            };
            let rec = AttemptRec {
                delivery_id: updated.id,
                cdr_seq: updated.cdr_seq,
                sub,
                event_type: attempt.event_type.clone(),
                webhook_id: attempt.webhook_id.clone(),
                call_id: attempt.call_id.clone(),
                time_ms: attempt.time_ms,
                attempt: attempt.attempt,
                status: attempt.status,
                duration_ms: attempt.duration_ms,
                trigger: attempt.trigger,
                error: attempt.error.clone(),
                // The attempt before it: the chain `attempts_of` walks.
                prev: old.as_ref().map_or(0, |o| o.last_attempt),
                detail: (!detail.is_empty()).then(|| detail.encode(&ctx)),
            };
            // The attempt before the delivery that points at it: a crash
            // in between leaves the attempt in the history, not in its
            // delivery's chain (and the delivery as it was, so the attempt
            // is made again: at least once).
            batch.insert(
                &records::key(records::K_ATTEMPT, attempt.id)[..],
                rec.encode(),
            );
            put_delivery(&mut books, &mut batch, updated.id, &new);
            recount(&mut books, old.as_ref(), &new);
            note_result(books.counts_mut(sub), attempt);
            books.changed(sub);
            self.apply_counted(&h, books, batch, "write attempt")?;
            let was_open = old.as_ref().is_none_or(|o| o.state.is_open());
            (was_open, !new.state.is_open(), new.cdr_seq)
        };
        if was_open && ended {
            self.finished_files_of(cdr_seq, Some(updated.id))
        } else {
            Ok(Vec::new())
        }
    }

    /// Applies a batch that changed the counts in `books`; if it fails,
    /// reads the counts back from the disk (they went ahead of it).
    fn apply_counted(
        &self,
        h: &super::Handles,
        books: std::sync::MutexGuard<'_, Books>,
        batch: Ops,
        context: &'static str,
    ) -> Result<()> {
        match self.apply_in_order(h, batch, context) {
            Ok(()) => Ok(()),
            Err(e) => {
                drop(books);
                let _ = self.load(h);
                Err(e)
            }
        }
    }

    /// Ends an open delivery as dead without an attempt, with `error` as
    /// its last error and its subscription's last failure (a test webhook
    /// the daemon was stopped in the middle of). Returns `None` if it was
    /// not open (or is gone), else the in-flight files now finished.
    pub fn end_delivery(&self, id: DeliveryId, error: &str) -> Result<Option<Vec<String>>> {
        self.wrote();
        let h = self.h()?;
        let now = now_ms();
        let cdr_seq = {
            let mut books = lock(&self.books);
            let Some(old) = self.delivery_rec(&h, id)?.filter(|d| d.state.is_open()) else {
                return Ok(None);
            };
            let mut new = old.clone();
            new.state = State::Dead;
            new.next_at_ms = None;
            new.ended_ms = Some(now);
            new.last_error = Some(error.to_string());
            let mut batch = Ops::default();
            put_delivery(&mut books, &mut batch, id, &new);
            recount(&mut books, Some(&old), &new);
            let c = books.counts_mut(new.sub);
            c.last_failure_ms = Some(now);
            c.last_error = Some(error.to_string());
            books.changed(new.sub);
            self.apply_counted(&h, books, batch, "end delivery")?;
            new.cdr_seq
        };
        self.finished_files_of(cdr_seq, Some(id)).map(Some)
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
        self.wrote();
        let h = self.h()?;
        let mut books = lock(&self.books);
        let Some(mut rec) = self.cdr_rec(&h, cdr.seq)? else {
            return Err(JournalError::Sled {
                context: "ensure delivery",
                source: sled::Error::ReportableBug(format!("CDR {} vanished", cdr.id)),
            });
        };
        let number = self.sub_number(&mut books, &h, sub)?;
        for &id in &rec.deliveries {
            if let Some(d) = self.delivery_rec(&h, id)?.filter(|d| d.sub == number) {
                return Ok((self.delivery_of(id, d, Some(&rec)), false));
            }
        }
        let id = self.next_id()?;
        let d = DeliveryRec::new_pending(cdr.seq, number, origin, now_ms());
        rec.deliveries.push(id);
        let mut batch = Ops::default();
        batch.insert(&records::key(records::K_CDR, cdr.seq)[..], rec.encode());
        put_delivery(&mut books, &mut batch, id, &d);
        recount(&mut books, None, &d);
        books.changed(number);
        self.apply_counted(&h, books, batch, "write delivery")?;
        Ok((self.delivery_of(id, d, Some(&rec)), true))
    }
}

/// The subscription's last success or failure after an attempt.
fn note_result(c: &mut records::CountsRec, attempt: &Attempt) {
    if attempt.succeeded() {
        c.last_success_ms = c.last_success_ms.max(Some(attempt.time_ms));
    } else {
        c.last_failure_ms = Some(attempt.time_ms);
        c.last_error = Some(match (&attempt.error, attempt.status) {
            (Some(e), _) => e.clone(),
            (None, Some(s)) => format!("HTTP {s}"),
            (None, None) => "failed".to_string(),
        });
    }
}
