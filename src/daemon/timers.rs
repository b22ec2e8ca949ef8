//! The daemon's two timers: the journal flush a second after a write, and
//! retention every ten minutes. Both sleep while there is nothing to do, so
//! an idle daemon stays idle, and both do their work on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use crate::config::live::LiveConfig;
use crate::journal::Journal;
use crate::shutdown::Shutdown;
use crate::time::now_ms;

/// How long after an unflushed write the journal is flushed.
const FLUSH_AFTER: Duration = Duration::from_secs(1);

/// How often retention runs. Far slower than any rescan, so an idle daemon
/// stays idle.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Removes ended deliveries older than `journal.retention`, every
/// `PRUNE_EVERY`.
pub async fn prune(journal: Arc<Journal>, live: Arc<LiveConfig>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        let (j, l) = (journal.clone(), live.clone());
        let result = tokio::task::spawn_blocking(move || {
            let retention = l.get().journal.retention;
            let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
            j.prune(cutoff, 50_000)
        })
        .await;
        match result {
            Ok(Ok(stats)) if stats.cdrs > 0 => log::info!(
                "retention: pruned {} CDRs, {} deliveries, {} attempts",
                stats.cdrs,
                stats.deliveries,
                stats.attempts
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::error!("retention: {e}"),
            Err(e) => log::error!("retention: {e}"),
        }
    }
}

/// Flushes the journal a second after writes that `ingest` does not flush
/// itself (attempt results): a crash loses at most that second of results,
/// which only means resending those CDRs. Sleeps while nothing is written.
pub async fn flush(journal: Arc<Journal>, mut shutdown: Shutdown) {
    // The journal knows no tokio: it calls back after each such write.
    let written = Arc::new(tokio::sync::Notify::new());
    let wake = written.clone();
    journal.set_on_write(move || wake.notify_one());
    // Writes made before this point (start-up) are flushed once as well.
    written.notify_one();
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = written.notified() => {}
        }
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(FLUSH_AFTER) => {}
        }
        let j = journal.clone();
        match tokio::task::spawn_blocking(move || j.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("{e}"),
            Err(e) => log::error!("journal flush: {e}"),
        }
    }
}
