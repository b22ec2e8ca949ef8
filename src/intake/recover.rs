//! Start-up recovery of `.inflight/`: each file there is read again; one
//! whose CDRs the journal does not all know is taken in again, one whose
//! deliveries have all ended leaves. Runs once, on the intake thread,
//! before the first scan of the spool. Reads `.inflight/` only; the spool
//! itself is `take_in`'s.

use std::fs;
use std::io;

use super::moves::{finish_file, inflight_dir, original_name, reject_from, INFLIGHT};
use super::parse::parse_file;
use super::read::read_limited;
use super::take_in::{batch_full, dispatch, Spool};
use crate::journal::{IngestFile, IngestOutcome};

impl Spool {
    fn finish(&self, inflight_name: &str) {
        finish_file(&self.config().spool, inflight_name);
    }

    /// At start-up, every file in `.inflight/` is read again: one whose CDRs
    /// the journal does not all know (the journal was lost, or is older) is
    /// taken in again; one whose deliveries have all ended leaves now (the
    /// daemon stopped between the last delivery and the file's removal).
    pub(super) fn recover_inflight(&mut self) -> io::Result<()> {
        let cfg = self.config();
        let dir = inflight_dir(&cfg.spool);
        let subs: Vec<&crate::config::Subscription> = cfg.subscriptions.iter().collect();
        // Files to take in again, journaled a bounded batch at a time so
        // that a large `.inflight/` is never in memory at once.
        let mut retake = Vec::new();
        let mut retake_bytes = 0usize;
        let mut retaken = 0usize;
        let mut names: Vec<String> = fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            // No size limit here: the file was accepted once, and a lowered
            // max_file_size must not reject what is already taken in.
            let parsed = match read_limited(&path, u64::MAX) {
                Ok((_, Ok(bytes))) => parse_file(&bytes),
                Ok((_, Err(why))) => Err(why),
                Err(e) => {
                    log::error!("spool: {INFLIGHT}/{name}: {e}");
                    continue;
                }
            };
            let cdrs = match parsed {
                Ok(cdrs) => cdrs,
                Err(why) => {
                    // Only a file that parsed was ever moved here; if it no
                    // longer does, it was changed by hand: reject it.
                    let _ = reject_from(
                        &cfg.spool,
                        &self.rejections,
                        &path,
                        original_name(&name),
                        &why,
                    );
                    continue;
                }
            };
            // JOURNAL: call site (see the module doc of `intake`).
            match self.journal.knows_all(&cdrs) {
                Ok(true) => {
                    // JOURNAL: call site (see the module doc of `intake`).
                    if self.journal.cdrs_finished_by_ids(&cdrs).unwrap_or(false) {
                        self.finish(&name);
                    }
                }
                Ok(false) => {
                    retake_bytes += cdrs.iter().map(|c| c.body.len()).sum::<usize>();
                    retake.push(IngestFile {
                        inflight_name: name,
                        cdrs,
                        identity: None,
                    });
                }
                Err(e) => log::error!("spool: {name}: {e}"),
            }
            if batch_full(retake.len(), retake_bytes) {
                retaken += retake.len();
                self.retake(std::mem::take(&mut retake), &subs)?;
                retake_bytes = 0;
            }
        }
        retaken += retake.len();
        self.retake(retake, &subs)?;
        if retaken > 0 {
            log::warn!(
                "spool: {retaken} file(s) in {INFLIGHT} were unknown to the journal; taken in again"
            );
        }
        Ok(())
    }

    fn retake(
        &mut self,
        files: Vec<IngestFile>,
        subs: &[&crate::config::Subscription],
    ) -> io::Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        // JOURNAL: call site (see the module doc of `intake`).
        let outcome = self
            .journal
            .ingest_routed(&files, &|cdr: &crate::cdr::Cdr| {
                let routed = crate::delivery::route::route(subs.iter().copied(), cdr);
                crate::journal::Routing {
                    to: routed.to,
                    unmatched: routed.filtered_out,
                }
            })
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.dispatch(outcome);
        Ok(())
    }

    fn dispatch(&mut self, outcome: IngestOutcome) {
        dispatch(&self.dispatcher, &self.config().spool, outcome);
    }
}
