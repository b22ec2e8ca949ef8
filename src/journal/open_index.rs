//! The open index (`o`), written late. Start-up resumes the open
//! deliveries from this small index instead of reading every delivery
//! record, but most deliveries end within a second of being created: an
//! index entry written at ingest and removed at the first attempt cost two
//! sled writes per delivery for nothing (BENCHMARKS.md, "The open index
//! written late"). So a new delivery is only noted in memory
//! ([`Unindexed`]), and gets its entry at a flush once it has been open for
//! [`INDEX_AFTER_MS`] (or when more than [`MAX_UNINDEXED`] wait), or at a
//! clean stop.
//!
//! What keeps that crash-safe is one number on disk, the index mark
//! (`w`, [`records::K_INDEXED`]):
//! - every open delivery with an id below the mark has its `o` entry;
//! - no delivery with an id at or above it has one (those are in memory).
//!
//! A flush writes the entries first and the mark after them (sled recovers
//! a prefix of its log), so the mark never covers an entry that is not on
//! disk. Start-up reads the `o` entries below the mark and the delivery
//! records from the mark on: after a clean stop the mark is the newest id
//! and that second read is empty; after a crash it covers what was created
//! in the last [`INDEX_AFTER_MS`] or so. The mark, the notes and every
//! delivery write change under the journal's books lock, so a delivery's
//! side of the mark is decided once per write.

use std::collections::BTreeMap;

use super::records::{self, DeliveryRec, OpenRec};
use super::{lock, Books, Handles, Journal, Ops, Result};
use crate::model::DeliveryId;

/// How long a delivery stays open before its index entry is written.
/// Longer than a backlog drain keeps most deliveries queued (so a fast
/// endpoint's deliveries never get one), short enough that what a crash
/// leaves to read from the delivery records stays small.
pub(super) const INDEX_AFTER_MS: u64 = 30_000;

/// Open deliveries noted in memory at most; beyond it the oldest are
/// indexed at the next flush whatever their age (about 20 bytes each).
pub(super) const MAX_UNINDEXED: usize = 65_536;

/// An open delivery above the index mark: its subscription, and since when
/// it is noted (not its creation: a resent delivery starts again), in Unix
/// seconds. Its entry is made from its record when it is due: a note is
/// kept small because a backlog holds tens of thousands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Unindexed {
    pub(super) sub: u32,
    pub(super) since_s: u32,
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// The in-memory side of the index: the mark and the open deliveries at or
/// above it. Part of `Books`.
#[derive(Debug, Default)]
pub(super) struct OpenNotes {
    /// Every open delivery below it has an `o` entry; none at or above it.
    pub(super) mark: DeliveryId,
    pub(super) unindexed: BTreeMap<DeliveryId, Unindexed>,
}

/// What a flush writes for the index: the entries of these deliveries,
/// then the new mark.
#[derive(Debug, PartialEq)]
pub(super) struct IndexStep {
    pub(super) ids: Vec<DeliveryId>,
    pub(super) mark: DeliveryId,
}

impl OpenNotes {
    /// Puts a delivery's index change into `batch` (below the mark) or
    /// notes it in memory (at or above it). `now_ms` starts a new note.
    pub(super) fn put(&mut self, batch: &mut Ops, id: DeliveryId, d: &DeliveryRec, now_ms: u64) {
        if id >= self.mark {
            if d.state.is_open() {
                if !self.unindexed.contains_key(&id) {
                    self.note_new(id, d.sub, now_ms);
                }
            } else {
                self.unindexed.remove(&id);
            }
            return;
        }
        let key = records::key(records::K_OPEN, id);
        if d.state.is_open() {
            batch.insert(&key[..], open_rec(d).encode());
        } else {
            batch.remove(&key[..]);
        }
    }

    /// Notes a delivery of subscription `sub` created open, at or above the
    /// mark (ingest); below it, returns false: its entry is the caller's to
    /// write with it.
    pub(super) fn note_new(&mut self, id: DeliveryId, sub: u32, now_ms: u64) -> bool {
        if id < self.mark {
            return false;
        }
        let since_s = secs(now_ms);
        self.unindexed.insert(id, Unindexed { sub, since_s });
        true
    }

    /// Whether delivery `id` is open, if the notes know (at or above the
    /// mark); `None` below it, where the `o` entry says.
    pub(super) fn open_above_mark(&self, id: DeliveryId) -> Option<bool> {
        (id >= self.mark).then(|| self.unindexed.contains_key(&id))
    }

    /// What to index now: the notes, in id order, up to the first that is
    /// younger than [`INDEX_AFTER_MS`] (all of them when `all`, and the
    /// oldest beyond [`MAX_UNINDEXED`] whatever their age). The new mark
    /// is that first one left, or `head` (an id no delivery has yet) when
    /// none is left. `None` when the mark would not move.
    pub(super) fn due(&self, now_ms: u64, all: bool, head: DeliveryId) -> Option<IndexStep> {
        let over = self.unindexed.len().saturating_sub(MAX_UNINDEXED);
        let now_s = secs(now_ms);
        let after_s = secs(INDEX_AFTER_MS);
        let mut ids = Vec::new();
        let mut mark = head.max(self.mark);
        for (i, (&id, u)) in self.unindexed.iter().enumerate() {
            let old = now_s.saturating_sub(u.since_s) >= after_s;
            if !(all || old || i < over) {
                mark = id;
                break;
            }
            ids.push(id);
        }
        (mark > self.mark).then_some(IndexStep { ids, mark })
    }

    /// Takes a step written to disk into account.
    pub(super) fn done(&mut self, step: &IndexStep) {
        for id in &step.ids {
            self.unindexed.remove(id);
        }
        self.mark = step.mark;
    }

    /// The first note of subscription `sub` at `from` or later.
    pub(super) fn first_of(&self, sub: u32, from: DeliveryId) -> Option<DeliveryId> {
        self.unindexed
            .range(from..)
            .find(|(_, u)| u.sub == sub)
            .map(|(&id, _)| id)
    }
}

/// The index entry of an open delivery.
pub(super) fn open_rec(d: &DeliveryRec) -> OpenRec {
    OpenRec {
        sub: d.sub,
        state: d.state,
        origin: d.origin,
        next_at_ms: d.next_at_ms.unwrap_or(0),
        // Only a retrying delivery's record has one (`record_attempt`).
        hold_until_ms: d.hold_until_ms,
    }
}

/// The mark as stored.
pub(super) fn read_mark(h: &Handles) -> sled::Result<Option<DeliveryId>> {
    Ok(h.tree
        .get([records::K_INDEXED])?
        .map(|v| records::be_u64(&v)))
}

impl Journal {
    /// Writes what is due of the open index (`all`: everything, for a
    /// clean stop), then the mark. Called by `flush` under the books lock.
    pub(super) fn write_index(&self, h: &Handles, books: &mut Books, all: bool) -> Result<()> {
        let head = self.head(h)?;
        let Some(step) = books.open.due(crate::time::now_ms(), all, head) else {
            return Ok(());
        };
        for &id in &step.ids {
            // Its record is current: every write of it holds the books.
            let Some(d) = self.delivery_rec(h, id)?.filter(|d| d.state.is_open()) else {
                continue;
            };
            h.tree
                .insert(records::key(records::K_OPEN, id), open_rec(&d).encode())
                .map_err(self.sled_err("write the open index"))?;
        }
        h.tree
            .insert([records::K_INDEXED], &step.mark.to_be_bytes())
            .map_err(self.sled_err("write the open index mark"))?;
        books.open.done(&step);
        Ok(())
    }

    /// An id no delivery has yet: every id handed out so far is below it.
    pub(super) fn head(&self, h: &Handles) -> Result<DeliveryId> {
        // What `next_id` would hand out now, which nobody gets.
        h.db.generate_id()
            .map(|n| n + 1)
            .map_err(self.sled_err("generate id"))
    }

    /// Whether delivery `id` is open, as the index (and its notes) say.
    pub(super) fn is_open(&self, h: &Handles, id: DeliveryId) -> Result<bool> {
        if let Some(open) = lock(&self.books).open.open_above_mark(id) {
            return Ok(open);
        }
        h.tree
            .contains_key(records::key(records::K_OPEN, id))
            .map_err(self.sled_err("read open index"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{State, Trigger};

    fn rec(sub: u32, state: State) -> DeliveryRec {
        DeliveryRec {
            state,
            ..DeliveryRec::new_pending(1, sub, Trigger::Auto, 0)
        }
    }

    /// Notes with the mark at 10 and deliveries 10, 11, 12 noted at the
    /// given times (ms).
    fn notes(since: [u64; 3]) -> OpenNotes {
        let mut n = OpenNotes {
            mark: 10,
            ..Default::default()
        };
        for (i, t) in since.into_iter().enumerate() {
            assert!(n.note_new(10 + i as u64, 0, t));
        }
        n
    }

    #[test]
    fn what_is_due_stops_at_the_first_young_note() {
        const T: u64 = INDEX_AFTER_MS;
        const S: u64 = 1000;
        /// (noted at, now, all, indexed ids, new mark)
        type Row = ([u64; 3], u64, bool, &'static [u64], Option<u64>);
        let table: [Row; 6] = [
            // Nothing old enough: the mark stays.
            ([0, 0, 0], T - S, false, &[], None),
            // The first two are old: the mark moves to the third.
            ([0, S, T], T + S, false, &[10, 11], Some(12)),
            // An old one behind a young one waits for it.
            ([T, 0, 0], T + S, false, &[], None),
            // All old: the mark moves to the head.
            ([0, 0, 0], T, false, &[10, 11, 12], Some(100)),
            // A clean stop indexes everything.
            ([5 * S, 5 * S, 5 * S], 6 * S, true, &[10, 11, 12], Some(100)),
            ([0, 0, 0], 0, true, &[10, 11, 12], Some(100)),
        ];
        for (since, now, all, ids, mark) in table {
            let n = notes(since);
            let step = n.due(now, all, 100);
            assert_eq!(
                step.as_ref().map(|s| s.mark),
                mark,
                "noted {since:?}, now {now}, all {all}"
            );
            let got = step.map(|s| s.ids).unwrap_or_default();
            assert_eq!(got, ids, "noted {since:?}, now {now}, all {all}");
        }
    }

    #[test]
    fn with_no_notes_the_mark_follows_the_head() {
        let n = OpenNotes {
            mark: 10,
            ..Default::default()
        };
        let step = n.due(0, false, 50).expect("moves");
        assert_eq!((step.ids.len(), step.mark), (0, 50));
        // Never backwards.
        assert_eq!(n.due(0, false, 5), None);
    }

    #[test]
    fn beyond_the_cap_the_oldest_are_indexed_whatever_their_age() {
        let mut n = OpenNotes::default();
        for id in 0..(MAX_UNINDEXED as u64 + 3) {
            n.note_new(id, 0, 0);
        }
        let step = n.due(0, false, u64::MAX).expect("moves");
        assert_eq!(step.ids, [0, 1, 2]);
        assert_eq!(step.mark, 3);
        n.done(&step);
        assert_eq!(n.unindexed.len(), MAX_UNINDEXED);
        assert_eq!(n.mark, 3);
    }

    #[test]
    fn a_write_above_the_mark_changes_the_notes_and_below_it_the_index() {
        let mut n = notes([0, 0, 0]);
        let mut batch = Ops::default();
        // Above: a retrying delivery keeps when it was noted; an ended one
        // leaves the notes; nothing goes into the batch.
        let mut retrying = rec(0, State::Retrying);
        retrying.next_at_ms = Some(77);
        n.put(&mut batch, 10, &retrying, 5000);
        assert_eq!(n.unindexed[&10].since_s, 0);
        n.put(&mut batch, 11, &rec(0, State::Delivered), 5000);
        assert_eq!(n.open_above_mark(11), Some(false));
        assert_eq!(n.open_above_mark(12), Some(true));
        // A dead delivery resent above the mark is noted anew.
        n.put(&mut batch, 11, &rec(0, State::Pending), 5000);
        assert_eq!(n.unindexed[&11].since_s, 5);
        assert!(batch.0.is_empty());
        // Below: the entry is written (from the record) or removed; the
        // notes stay.
        assert_eq!(n.open_above_mark(3), None);
        n.put(&mut batch, 3, &retrying, 5000);
        n.put(&mut batch, 4, &rec(0, State::Dead), 5000);
        let ops: Vec<(u64, Option<OpenRec>)> = batch
            .0
            .iter()
            .map(|(k, v)| {
                let v = v.as_ref().map(|v| OpenRec::decode(v).expect("entry"));
                (records::key_id(k), v)
            })
            .collect();
        assert_eq!(ops, [(3, Some(open_rec(&retrying))), (4, None)]);
        assert_eq!(open_rec(&retrying).next_at_ms, 77);
        assert_eq!(n.unindexed.len(), 3);
        // Created below the mark (ids handed out before it moved): the
        // entry is the caller's to write.
        assert!(!n.note_new(5, 0, 0));
    }

    #[test]
    fn the_first_note_of_a_subscription() {
        let mut n = OpenNotes::default();
        n.note_new(1, 0, 0);
        n.note_new(2, 1, 0);
        n.note_new(3, 0, 0);
        assert_eq!(n.first_of(1, 0), Some(2));
        assert_eq!(n.first_of(0, 2), Some(3));
        assert_eq!(n.first_of(1, 3), None);
    }
}
