//! The spool watcher: turns the kernel's events on `spool.dir` into hints
//! for the intake thread. It never reads, moves or judges a file; a missed
//! or wrong hint costs at most a wait for the next rescan.
//!
//! It uses inotify directly (the `inotify` crate, which notify is built
//! on) because notify 8.2 always adds OPEN, MODIFY and ATTRIB to a watch:
//! every file intake reads and moves out of the spool then came back as
//! several events for notify's thread to decode, allocate paths for and
//! drop (about a twelfth of the daemon's CPU in a backlog drain). Here the
//! watch asks for exactly what a finished file produces (`mask`), so a
//! drain of files already in the spool causes no events at all, and one
//! read of the kernel's queue becomes one message to intake.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::{is_candidate, SpoolMsg};

/// What the watch asks of the kernel: CLOSE_WRITE (a writer finished a file
/// in place) and MOVED_TO (the rename protocol), which are the only ways a
/// finished file appears; MOVE_SELF and DELETE_SELF, which concern the
/// directory itself, never a file in it. ONLYDIR refuses a spool that is
/// not a directory. The kernel always adds Q_OVERFLOW, IGNORED and UNMOUNT.
fn mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVE_SELF
        | WatchMask::DELETE_SELF
        | WatchMask::ONLYDIR
}

/// Bytes read from the kernel's queue at once: about 500 events of
/// 30-character names.
const EVENT_BUFFER: usize = 16 << 10;

/// The longest wait between tries to watch a spool directory again after
/// it went away.
const REWATCH_MAX: Duration = Duration::from_secs(30);

/// What one read of events asks of intake.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reaction {
    /// Candidate names that may be ready, in the order they came.
    hints: Vec<String>,
    /// The queue overflowed or the directory went: scan it all.
    rescan: bool,
    /// The watch is gone (directory removed, renamed away, unmounted).
    lost: bool,
}

impl Reaction {
    /// Adds one event. Pure, so that the rules have a table of tests.
    fn add(&mut self, mask: EventMask, name: Option<&OsStr>) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            self.rescan = true;
        } else if mask.intersects(
            EventMask::IGNORED | EventMask::MOVE_SELF | EventMask::DELETE_SELF | EventMask::UNMOUNT,
        ) {
            self.lost = true;
            self.rescan = true;
        } else if mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
            && !mask.contains(EventMask::ISDIR)
        {
            if let Some(name) = name.and_then(OsStr::to_str) {
                if is_candidate(name) {
                    self.hints.push(name.to_string());
                }
            }
        }
    }
}

/// The running watcher. Dropping it stops its thread.
pub struct SpoolWatch {
    /// An eventfd the watcher's thread polls beside inotify: written once
    /// to tell it to stop.
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Drop for SpoolWatch {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an fd we own.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts watching the spool directory; events become messages on `tx`.
/// Fails (and the daemon runs on rescans alone) if inotify is unavailable
/// or the directory cannot be watched.
pub fn watch(dir: &Path, tx: mpsc::Sender<SpoolMsg>) -> io::Result<SpoolWatch> {
    let inotify = Inotify::init()?;
    let wd = inotify.watches().add(dir, mask())?;
    // SAFETY: eventfd takes no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let wake = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut watcher = Watcher {
        inotify,
        wd,
        dir: dir.to_path_buf(),
        wake: wake.as_raw_fd(),
        tx,
    };
    let thread = std::thread::Builder::new()
        .name("spool-watch".into())
        .spawn(move || watcher.run())?;
    Ok(SpoolWatch {
        wake,
        thread: Some(thread),
    })
}

struct Watcher {
    inotify: Inotify,
    /// The current watch; events of an earlier one are ignored.
    wd: WatchDescriptor,
    dir: PathBuf,
    /// Borrowed from `SpoolWatch`, which joins this thread before closing it.
    wake: RawFd,
    tx: mpsc::Sender<SpoolMsg>,
}

enum Ready {
    Events,
    Stop,
    Timeout,
}

impl Watcher {
    fn run(&mut self) {
        let mut buffer = vec![0u8; EVENT_BUFFER];
        loop {
            match self.wait(None) {
                Ready::Stop => return,
                Ready::Timeout => continue,
                Ready::Events => {}
            }
            let mut reaction = Reaction::default();
            let mut failed = false;
            match self.inotify.read_events(&mut buffer) {
                Ok(events) => {
                    for event in events {
                        if event.wd == self.wd || event.mask.contains(EventMask::Q_OVERFLOW) {
                            reaction.add(event.mask, event.name);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    log::warn!("spool watcher: {e}; rescanning");
                    reaction.rescan = true;
                    failed = true;
                    // Do not spin on an error that stays.
                    if matches!(self.wait(Some(Duration::from_secs(1))), Ready::Stop) {
                        return;
                    }
                }
            }
            if reaction.rescan && !reaction.lost && !failed {
                log::info!("spool watcher overflowed; rescanning the spool");
            }
            if !reaction.hints.is_empty() && self.tx.send(SpoolMsg::Hints(reaction.hints)).is_err()
            {
                return;
            }
            if reaction.rescan && self.tx.send(SpoolMsg::Rescan).is_err() {
                return;
            }
            if reaction.lost && !self.rewatch() {
                return;
            }
        }
    }

    /// The directory was removed, renamed away or unmounted: try to watch
    /// `spool.dir` again, at growing intervals, and rescan once it is back.
    /// Meanwhile the rescans (which log that the directory is missing) are
    /// all there is. Returns false when told to stop.
    fn rewatch(&mut self) -> bool {
        let _ = self.inotify.watches().remove(self.wd.clone());
        log::warn!(
            "spool watcher: {} was removed or moved; watching it again once it is back",
            self.dir.display()
        );
        let mut wait = Duration::from_secs(1);
        loop {
            match self.inotify.watches().add(&self.dir, mask()) {
                Ok(wd) => {
                    self.wd = wd;
                    log::info!("spool watcher: watching {} again", self.dir.display());
                    return self.tx.send(SpoolMsg::Rescan).is_ok();
                }
                Err(e) => log::debug!("spool watcher: {}: {e}", self.dir.display()),
            }
            if matches!(self.wait(Some(wait)), Ready::Stop) {
                return false;
            }
            wait = (wait * 2).min(REWATCH_MAX);
        }
    }

    /// Waits for inotify events or the stop signal (which wins); with
    /// `timeout`, for the stop signal alone (a queue still holding the old
    /// watch's events must not cut a pause short).
    fn wait(&self, timeout: Option<Duration>) -> Ready {
        let mut fds = [
            libc::pollfd {
                fd: self.wake,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: `fds` is a live array of two pollfd for the whole call.
        let count = if timeout.is_some() { 1 } else { 2 };
        let n = unsafe { libc::poll(fds.as_mut_ptr(), count, ms) };
        if n < 0 {
            // EINTR: go round again.
            return Ready::Timeout;
        }
        if fds[0].revents != 0 {
            Ready::Stop
        } else if fds[1].revents != 0 {
            Ready::Events
        } else {
            Ready::Timeout
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_candidates_become_hints_and_overflow_or_loss_rescans() {
        let m = |bits: &[EventMask]| bits.iter().fold(EventMask::empty(), |a, b| a | *b);
        use EventMask as E;
        // (event bits, name, hints, rescan, lost)
        type Case<'a> = (&'a [EventMask], Option<&'a str>, &'a [&'a str], bool, bool);
        let cases: &[Case] = &[
            (&[E::CLOSE_WRITE], Some("a.json"), &["a.json"], false, false),
            (&[E::MOVED_TO], Some("b.json"), &["b.json"], false, false),
            (&[E::MOVED_TO], Some(".b.json"), &[], false, false),
            (&[E::CLOSE_WRITE], Some("a.json.tmp"), &[], false, false),
            (&[E::MOVED_TO, E::ISDIR], Some("d.json"), &[], false, false),
            (&[E::MOVED_TO], None, &[], false, false),
            (&[E::Q_OVERFLOW], None, &[], true, false),
            (&[E::IGNORED], None, &[], true, true),
            (&[E::DELETE_SELF], None, &[], true, true),
            (&[E::MOVE_SELF], None, &[], true, true),
            (&[E::UNMOUNT], None, &[], true, true),
        ];
        for (bits, name, hints, rescan, lost) in cases {
            let mut r = Reaction::default();
            r.add(m(bits), name.map(OsStr::new));
            assert_eq!(
                r,
                Reaction {
                    hints: hints.iter().map(|s| s.to_string()).collect(),
                    rescan: *rescan,
                    lost: *lost,
                },
                "{bits:?} {name:?}"
            );
        }
    }

    fn recv(rx: &mpsc::Receiver<SpoolMsg>) -> SpoolMsg {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a message from the watcher")
    }

    #[test]
    fn a_renamed_file_is_one_hint_and_intake_reads_cause_no_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = mpsc::channel();
        let watch = watch(dir.path(), tx).expect("watch");
        let tmp = dir.path().join("x.json.tmp");
        std::fs::write(&tmp, b"{}").expect("write");
        std::fs::rename(&tmp, dir.path().join("x.json")).expect("rename");
        match recv(&rx) {
            SpoolMsg::Hints(names) => assert_eq!(names, ["x.json"]),
            _ => panic!("expected a hint"),
        }
        // What intake does to a file (read, move out) must produce nothing;
        // a later drop then comes as the very next message.
        std::fs::read(dir.path().join("x.json")).expect("read");
        std::fs::rename(dir.path().join("x.json"), dir.path().join(".gone")).expect("mv");
        std::fs::write(dir.path().join("y.json"), b"{}").expect("write");
        match recv(&rx) {
            SpoolMsg::Hints(names) => assert_eq!(names, ["y.json"]),
            _ => panic!("expected only y.json"),
        }
        drop(watch);
        assert!(
            matches!(
                rx.recv_timeout(Duration::from_secs(10)),
                Err(mpsc::RecvTimeoutError::Disconnected)
            ),
            "dropping the watch ends its thread"
        );
    }

    #[test]
    fn a_spool_removed_and_made_again_is_watched_again() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("spool");
        std::fs::create_dir(&dir).expect("mkdir");
        let (tx, rx) = mpsc::channel();
        let _watch = watch(&dir, tx).expect("watch");
        std::fs::remove_dir(&dir).expect("rmdir");
        assert!(matches!(recv(&rx), SpoolMsg::Rescan), "loss rescans");
        std::fs::create_dir(&dir).expect("mkdir again");
        assert!(
            matches!(recv(&rx), SpoolMsg::Rescan),
            "watched again, rescans"
        );
        std::fs::write(dir.join("z.json"), b"{}").expect("write");
        match recv(&rx) {
            SpoolMsg::Hints(names) => assert_eq!(names, ["z.json"]),
            _ => panic!("expected z.json"),
        }
    }
}
