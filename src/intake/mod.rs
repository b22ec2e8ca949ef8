//! Intake: everything between a file landing in the spool and its CDRs
//! being journaled, and every filesystem operation on the spool and the
//! directories cdrhook keeps beside it (`.inflight/`, archive, rejected).
//! No other module touches those directories; the rest of the daemon calls
//! [`finish_file`] when a file's deliveries have all ended and
//! [`backlog`] for `status`.
//!
//! One thread takes files in, in batches: read and parse each, journal the
//! batch with one flush, and only then move each file into `.inflight/`,
//! where it stays until every delivery of its CDRs has ended. The file
//! watcher only gives hints; a full scan at start-up, every
//! `rescan_interval` and after an inotify overflow is what guarantees that
//! nothing is missed.
//!
//! Files by job, in pipeline order:
//! - `parse`: pure; the bytes of one file into CDRs or a [`Rejection`];
//! - `watch`: the spool watcher, which turns kernel events into hints;
//! - `read`: opening and reading one spool file safely and judging it;
//! - `take_in`: the intake thread, its queue, batches and rescans;
//! - `moves`: every move of a file (into `.inflight/`, archive, rejected);
//! - `recover`: start-up recovery of `.inflight/`.
//!
//! The journal is called from `take_in` (ingest of a batch, healing) and
//! `recover` (knows_all, cdrs_finished_by_ids, ingest) only; each call site
//! is marked `JOURNAL:` so a change of the journal's API finds them all.

mod moves;
pub mod parse;
mod read;
mod recover;
mod take_in;
mod watch;

use std::fs;
use std::path::Path;
use std::sync::Mutex;

use crate::config::SpoolConfig;

pub use moves::{finish_file, inflight_dir, LastRejection, RejectionSummary, Rejections, INFLIGHT};
pub use parse::{Cdr, Rejection};
pub use read::SETTLE;
pub use take_in::Spool;
pub use watch::{watch, SpoolWatch};

/// Messages to the spool thread.
pub enum SpoolMsg {
    /// File names in the spool that may be ready (one read of the
    /// watcher's events).
    Hints(Vec<String>),
    /// Scan the whole directory now (watcher overflow or error).
    Rescan,
    Stop,
}

/// Whether a directory entry is one the phone system meant for us.
pub fn is_candidate(name: &str) -> bool {
    name.ends_with(".json") && !name.starts_with('.') && name.len() > ".json".len()
}

/// Counts for `status`: files waiting in the spool and files in flight.
pub fn backlog(spool: &SpoolConfig) -> (usize, usize) {
    let count = |dir: &Path, pred: &dyn Fn(&str) -> bool| {
        fs::read_dir(dir)
            .map(|it| {
                it.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_str().is_some_and(pred))
                    .count()
            })
            .unwrap_or(0)
    };
    (
        count(&spool.dir, &is_candidate),
        count(&inflight_dir(spool), &|n: &str| !n.starts_with('.')),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// For benches/stages.rs: one spool file through what intake does to it,
/// less the journal: read and judge it, move it into `.inflight/`, and
/// finish it as its last delivery would. Returns whether it went all the
/// way.
#[doc(hidden)]
pub fn stage_file_once(spool: &SpoolConfig, name: &str, buffer: &mut Vec<u8>) -> bool {
    match read::read_candidate(spool, name, buffer) {
        read::Taken::Parsed(file) => {
            let moved = moves::into_inflight(spool, &inflight_dir(spool), name, &file);
            if moved {
                finish_file(spool, &file.inflight_name);
            }
            moved
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_json_names_are_candidates() {
        assert!(is_candidate("call.json"));
        assert!(!is_candidate(".call.json"));
        assert!(!is_candidate("call.json.tmp"));
        assert!(!is_candidate("call.JSON"));
        assert!(!is_candidate(".json"));
    }
}
