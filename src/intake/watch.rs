//! The spool watcher: turns the kernel's events on `spool.dir` into hints
//! for the intake thread. It never reads, moves or judges a file; a missed
//! or wrong hint costs at most a wait for the next rescan.

use std::path::Path;
use std::sync::mpsc;

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use super::{is_candidate, SpoolMsg};

/// Starts watching the spool directory; events become hints on `tx`.
pub fn watch(dir: &Path, tx: mpsc::Sender<SpoolMsg>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let event = match res {
            Ok(event) => event,
            Err(e) => {
                log::warn!("spool watcher: {e}; rescanning");
                let _ = tx.send(SpoolMsg::Rescan);
                return;
            }
        };
        if event.need_rescan() {
            log::info!("spool watcher overflowed; rescanning the spool");
            let _ = tx.send(SpoolMsg::Rescan);
            return;
        }
        let path = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => event.paths.first(),
            EventKind::Modify(ModifyKind::Name(RenameMode::To))
            | EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.last(),
            _ => None,
        };
        if let Some(name) = path.and_then(|p| p.file_name()).and_then(|n| n.to_str()) {
            if is_candidate(name) {
                let _ = tx.send(SpoolMsg::Hint(name.to_string()));
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
