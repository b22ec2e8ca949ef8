//! The oldest open delivery of a subscription, for the metrics
//! (`cdrhook_oldest_undelivered_age_seconds`, contract §9), and the probe
//! that tells whether the journal's directory can be written (`/readyz`).
//!
//! The open index (`o`) is in delivery-id order, which is creation order,
//! but holds every subscription's open deliveries mixed. So the caller
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
        let Some(sub) = lock(&self.books).by_name.get(subscription).copied() else {
            return Ok(None);
        };
        let h = self.h()?;
        let start = records::key(records::K_OPEN, from);
        let end = records::key(records::K_OPEN, u64::MAX);
        for item in h.tree.range(start..=end) {
            let (k, v) = item.map_err(self.sled_err("read the open index"))?;
            if OpenRec::decode(&v)?.sub != sub {
                continue;
            }
            let id = records::key_id(&k);
            if let Some(d) = self.delivery_rec(&h, id)? {
                return Ok(Some((id, d.created_ms)));
            }
        }
        Ok(None)
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
