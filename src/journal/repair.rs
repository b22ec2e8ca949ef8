//! Reopening after an I/O error. sled refuses every write after one (a full
//! disk, say) until the database is opened again; `heal` closes and reopens
//! it, and the spool thread calls it at its retry times, so intake resumes
//! once the disk has room.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Handles, Journal, JournalError, OpenDelivery, Result};

impl Journal {
    /// Closes and reopens the database. sled recovers what reached the
    /// disk, so writes that were not yet flushed are lost (never an ingest,
    /// which flushes before the spool moves a file): the deliveries they
    /// would have ended are open again. Returns `None` if the journal was
    /// fine, else every open delivery, for the workers to queue again. On
    /// an error the journal stays closed; call again later. The caller must
    /// not hold journal handles (the spool thread).
    pub fn heal(&self) -> Result<Option<Vec<OpenDelivery>>> {
        let _one = self.heal_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.is_broken() {
            return Ok(None);
        }
        let old = self
            .handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(old) = old {
            // sled's file lock goes with the last handle: wait for the calls
            // still using the old ones (each is short) to finish.
            let start = Instant::now();
            while Arc::strong_count(&old) > 1 {
                if start.elapsed() > Duration::from_secs(10) {
                    *self.handles.write().unwrap_or_else(|p| p.into_inner()) = Some(old);
                    return Err(JournalError::Unavailable(
                        ": the old database is still in use".to_string(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        let handles = Handles::open(&self.path, self.cache_bytes)?;
        self.broken.store(false, Ordering::SeqCst);
        let open = match self.load(&handles) {
            Ok(found) => found,
            Err(e) => {
                self.broken.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        *self.handles.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(handles));
        Ok(Some(open))
    }
}
