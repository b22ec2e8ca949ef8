//! Retention: removing CDRs whose deliveries all ended before a cutoff,
//! with everything that hangs off them (content id, body chunks,
//! deliveries, attempts and their details) and the counts it changes,
//! written in order with the CDR's record last, so a pass cut short by a
//! crash is finished by the next one. Nothing open is ever pruned.

use super::records::{self, CdrRec};
use super::{counts, lock, Journal, Ops, PruneStats, Result};
use crate::model::CdrSeq;

impl Journal {
    /// Prunes CDRs received before `cutoff_ms` whose deliveries all ended
    /// before it, with their deliveries and attempts. At most `max` CDRs are
    /// examined per call, so that a large backlog of old records does not
    /// stall the daemon.
    pub fn prune(&self, cutoff_ms: u64, max: usize) -> Result<PruneStats> {
        self.wrote();
        let h = self.h()?;
        let mut stats = PruneStats::default();
        let start: CdrSeq = *lock(&self.prune_from);
        // Where the next pass starts: from the top once this one reaches
        // the cutoff or the end, else after the last CDR examined.
        let mut next = 0;
        let range = records::key(records::K_CDR, start)..=records::key(records::K_CDR, u64::MAX);
        for (examined, item) in h.tree.range(range).enumerate() {
            let (key, v) = item.map_err(self.sled_err("scan cdrs"))?;
            let seq = records::key_id(&key);
            if examined >= max {
                next = seq;
                break;
            }
            let rec = CdrRec::decode(&v)?;
            if rec.received_ms >= cutoff_ms {
                break;
            }
            let mut books = lock(&self.books);
            let mut deliveries = Vec::new();
            for &id in &rec.deliveries {
                if let Some(d) = self.delivery_rec(&h, id)? {
                    deliveries.push((id, d));
                }
            }
            let removable = deliveries
                .iter()
                .all(|(_, d)| !d.state.is_open() && d.ended_ms.is_some_and(|t| t < cutoff_ms));
            if !removable {
                continue;
            }
            let mut batch = Ops::default();
            let mut touched = Vec::new();
            for (id, d) in &deliveries {
                stats.attempts += self.remove_attempts(&h, *id, d.last_attempt, &mut batch)?;
                batch.remove(&records::key(records::K_DELIVERY, *id)[..]);
                batch.remove(&records::key(records::K_OPEN, *id)[..]);
                counts::adjust(books.counts_mut(d.sub), d.state, false);
                if !touched.contains(&d.sub) {
                    touched.push(d.sub);
                }
                stats.deliveries += 1;
            }
            for sub in touched {
                books.changed(sub);
            }
            // The chunks as stored (whatever size this version cuts them).
            for item in h.tree.scan_prefix(records::key(records::K_BODY, seq)) {
                let (k, _) = item.map_err(self.sled_err("read body keys"))?;
                batch.remove(k);
            }
            batch.remove(records::name_key(
                records::K_CDR_ID,
                &records::id_bytes(&rec.id),
            ));
            batch.remove(key);
            if let Err(e) = self.apply_in_order(&h, batch, "prune") {
                drop(books);
                let _ = self.load(&h);
                return Err(e);
            }
            stats.cdrs += 1;
        }
        *lock(&self.prune_from) = next;
        Ok(stats)
    }

    /// Puts the removal of every attempt of a delivery into `batch`
    /// (with a format-3 attempt's detail and index entry).
    fn remove_attempts(
        &self,
        h: &super::Handles,
        delivery: u64,
        last_attempt: u64,
        batch: &mut Ops,
    ) -> Result<usize> {
        let attempts = self.attempt_recs_of(h, delivery, last_attempt)?;
        for &(a, _, listed) in &attempts {
            batch.remove(&records::key(records::K_ATTEMPT, a)[..]);
            if listed {
                batch.remove(&records::key(records::K_DETAIL, a)[..]);
                batch.remove(&records::key2(records::K_ATTEMPTS_OF, delivery, a)[..]);
            }
        }
        Ok(attempts.len())
    }
}
