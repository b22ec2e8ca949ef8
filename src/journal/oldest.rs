//! The oldest open delivery of a subscription, for the metrics
//! (`cdrhook_oldest_undelivered_age_seconds`, contract §9), and the probe
//! that tells whether the journal's directory can be written (`/readyz`).
//!
//! The open index (`o`, with the notes above its mark: `open_index.rs`) is
//! in delivery-id order, which is creation order, but holds every
//! subscription's open deliveries mixed. So the caller
//! remembers the answer and asks again from it: while that delivery stays
//! open the answer costs one index lookup and one delivery record; once it
//! ended, the walk covers only the open deliveries created since. Only the
//! first question after a start walks the index from its beginning, up to
//! the subscription's first open delivery.

use std::io::Write as _;

use super::records::{self, OpenRec};
use super::{lock, Journal, Result};
use crate::model::DeliveryId;

/// The file the readiness probe writes and removes in the journal's
/// directory (sled ignores files it does not know).
const PROBE: &str = "cdrhook-ready-probe";

impl Journal {
    /// The first open delivery of `subscription` whose id is `from` or
    /// later, with its creation time (ms). `None` when it has none.
    pub fn first_open_of(
        &self,
        subscription: &str,
        from: DeliveryId,
    ) -> Result<Option<(DeliveryId, u64)>> {
        // Below the mark the index says, at or above it the notes
        // (`open_index.rs`); read both sides of one mark: an index entry
        // below it stays until its delivery ends.
        let (sub, mark, noted) = {
            let books = lock(&self.books);
            let Some(sub) = books.by_name.get(subscription).copied() else {
                return Ok(None);
            };
            (sub, books.open.mark, books.open.first_of(sub, from))
        };
        let h = self.h()?;
        let start = records::key(records::K_OPEN, from);
        let end = records::key(records::K_OPEN, mark.max(from));
        for item in h.tree.range(start..end) {
            let (k, v) = item.map_err(self.sled_err("read the open index"))?;
            if OpenRec::decode(&v)?.sub != sub {
                continue;
            }
            let id = records::key_id(&k);
            if let Some(d) = self.delivery_rec(&h, id)? {
                return Ok(Some((id, d.created_ms)));
            }
        }
        let Some(id) = noted else {
            return Ok(None);
        };
        Ok(self.delivery_rec(&h, id)?.map(|d| (id, d.created_ms)))
    }

    /// Whether the journal can take a write now: sled has reported no I/O
    /// error since it was (re)opened, and a small file written beside its
    /// data reaches the disk (a full disk fails here before sled's next
    /// write would). The probe never touches sled itself: a failed sled
    /// write would need the journal reopened, losing unflushed writes.
    pub fn writable(&self) -> std::result::Result<(), String> {
        if self.is_broken() {
            return Err("the journal had an I/O error and is not reopened yet".into());
        }
        let path = self.path.join(PROBE);
        let written = std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(b"ready\n").and_then(|()| f.sync_all()));
        let _ = std::fs::remove_file(&path);
        written.map_err(|e| format!("cannot write in {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Attempt, IngestFile, State, Trigger, CACHE_BYTES};
    use super::*;
    use crate::time::now_ms;

    fn ingest(j: &Journal, call: &str, subs: &[&str]) -> Vec<(String, DeliveryId)> {
        let body = format!(r#"{{"QueueId":"q","CallId":"{call}"}}"#);
        let file = IngestFile {
            inflight_name: format!("x-{call}.json"),
            cdrs: crate::cdr::parse_file(body.as_bytes()).expect("cdr"),
            identity: None,
        };
        let names: Vec<String> = subs.iter().map(|s| s.to_string()).collect();
        j.ingest(&[file], &|_| names.clone())
            .expect("ingest")
            .new_deliveries
    }

    fn deliver(j: &Journal, id: DeliveryId) {
        let mut d = j.delivery(id).expect("read").expect("exists");
        d.state = State::Delivered;
        d.attempts += 1;
        d.ended_ms = Some(now_ms());
        let a = Attempt {
            id: j.next_id().expect("id"),
            delivery_id: d.id,
            time_ms: now_ms(),
            subscription: d.subscription.clone(),
            event_type: d.event_type.clone(),
            call_id: d.call_id.clone(),
            webhook_id: d.cdr_id.clone(),
            attempt: d.attempts,
            status: Some(200),
            error: None,
            duration_ms: 1,
            trigger: Trigger::Auto,
            request_headers: vec![],
            response_headers: vec![],
            response_body: None,
        };
        j.record_attempt(&d, &a).expect("record");
    }

    #[test]
    fn the_first_open_delivery_is_found_from_where_the_last_answer_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(&dir.path().join("j"), CACHE_BYTES).expect("open");
        assert_eq!(j.first_open_of("a", 0).expect("read"), None);
        let before = now_ms();
        let one = ingest(&j, "1", &["a", "b"]);
        let two = ingest(&j, "2", &["a", "b"]);
        let id = |set: &[(String, DeliveryId)], sub: &str| {
            set.iter().find(|(s, _)| s == sub).expect("delivery").1
        };
        let (a1, b1, a2) = (id(&one, "a"), id(&one, "b"), id(&two, "a"));
        let (first, created) = j.first_open_of("a", 0).expect("read").expect("open");
        assert_eq!(first, a1);
        assert!(created >= before && created <= now_ms());
        assert_eq!(
            j.first_open_of("b", 0).expect("read").map(|f| f.0),
            Some(b1)
        );
        // Asked again from the answer: the same while it is open.
        assert_eq!(
            j.first_open_of("a", a1).expect("read").map(|f| f.0),
            Some(a1)
        );
        // Once it ended, the next one of the same subscription.
        deliver(&j, a1);
        assert_eq!(
            j.first_open_of("a", a1).expect("read").map(|f| f.0),
            Some(a2)
        );
        assert_eq!(
            j.first_open_of("b", b1).expect("read").map(|f| f.0),
            Some(b1)
        );
        deliver(&j, a2);
        assert_eq!(j.first_open_of("a", a2).expect("read"), None);
        assert_eq!(j.first_open_of("nobody", 0).expect("read"), None);
    }

    #[test]
    fn a_journal_directory_that_takes_writes_is_writable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(&dir.path().join("j"), CACHE_BYTES).expect("open");
        assert_eq!(j.writable(), Ok(()));
        // The probe leaves nothing behind.
        assert!(!dir.path().join("j").join(PROBE).exists());
    }
}
