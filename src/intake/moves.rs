//! Every move of a file cdrhook makes: from the spool into `.inflight/`,
//! from `.inflight/` to the archive (or deleted) once its deliveries have
//! ended, and to `rejected_dir` with its reason. Each is a rename that never
//! replaces an existing name (renameat2 `RENAME_NOREPLACE`, with link and
//! copy fallbacks). This file decides nothing about when a file moves: the
//! intake thread and the delivery threads call it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::lock;
use super::parse::Rejection;
use super::take_in::Spool;
use crate::config::{AfterIngest, SpoolConfig};
use crate::journal::IngestFile;
use crate::time::{now_ms, rfc3339};

/// The in-flight directory's name inside `spool.dir`. Its leading dot keeps
/// it out of the phone system's way and out of our own `*.json` scan.
pub const INFLIGHT: &str = ".inflight";

pub fn inflight_dir(spool: &SpoolConfig) -> PathBuf {
    spool.dir.join(INFLIGHT)
}

impl Spool {
    /// Creates the directories cdrhook owns. Called before the daemon says
    /// it is ready, so that a permissions problem stops the start with a
    /// clear message.
    pub fn prepare(spool: &SpoolConfig) -> io::Result<()> {
        fs::create_dir_all(&spool.dir).map_err(|e| {
            io::Error::new(e.kind(), format!("spool.dir {}: {e}", spool.dir.display()))
        })?;
        let inflight = inflight_dir(spool);
        fs::create_dir_all(&inflight)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", inflight.display())))?;
        Ok(())
    }
}

/// Moves a journaled file from the spool into `.inflight/`, unless the
/// phone system renamed a new file over its name since it was read.
/// Returns whether it moved.
pub(super) fn into_inflight(
    spool: &SpoolConfig,
    inflight: &Path,
    name: &str,
    file: &IngestFile,
) -> bool {
    let from = spool.dir.join(name);
    // The phone system may have renamed a new file over this name
    // since it was read: that one is not journaled, so it stays for
    // the next scan instead of going into `.inflight/` under the wrong
    // content's name.
    let same = match (fs::symlink_metadata(&from), file.identity) {
        (Ok(m), Some((dev, ino))) => m.dev() == dev && m.ino() == ino,
        (Ok(_), None) => true,
        (Err(_), _) => false,
    };
    if !same {
        log::info!("spool: {name} was replaced after it was read; taking in the new one next");
        return false;
    }
    let to = inflight.join(&file.inflight_name);
    let mut moved = fs::rename(&from, &to);
    if moved
        .as_ref()
        .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        && !inflight.is_dir()
    {
        // The spool was removed and made again (by an operator, or a
        // package's clean-up) and `.inflight/` with it: make it again.
        log::warn!("spool: {INFLIGHT} was missing; making it again");
        moved = fs::create_dir_all(inflight).and_then(|_| fs::rename(&from, &to));
    }
    if let Err(e) = moved {
        // Journaled already, so nothing is lost: the next scan finds
        // the file again, and the journal recognises its CDRs.
        log::error!("spool: {name}: cannot move into {INFLIGHT}: {e}");
        return false;
    }
    true
}

/// An in-flight file whose deliveries have all ended leaves: deleted, or
/// moved to the archive under its original name. Called from the delivery
/// threads, right where the last delivery ends.
///
/// Two threads may finish the same file at once (two subscriptions' last
/// deliveries ending together, or a duplicate file racing its original):
/// exactly one of them moves it, the other finds it gone. Each try to
/// archive is an atomic rename that cannot replace, so with renameat2 the
/// source can only move once; the fallbacks (link + unlink, copy) are two
/// steps, so archiving holds `FINISHING` to keep a second thread from
/// linking the same source under the next free name in between.
pub fn finish_file(spool: &SpoolConfig, inflight_name: &str) {
    finish_file_via(MoveWay::Renameat2, spool, inflight_name)
}

fn finish_file_via(way: MoveWay, spool: &SpoolConfig, inflight_name: &str) {
    let path = inflight_dir(spool).join(inflight_name);
    let original = original_name(inflight_name);
    let result = match spool.after_ingest {
        AfterIngest::Delete => fs::remove_file(&path),
        AfterIngest::Archive => {
            let _one_at_a_time = lock(&FINISHING);
            fs::create_dir_all(&spool.archive_dir)
                .and_then(|_| move_no_clobber_via(way, &path, &spool.archive_dir, original))
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => log::debug!("spool: {original} done"),
        // Already gone: finished twice, and the other call moved it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::debug!("spool: {original} was already finished by another thread")
        }
        Err(e) => log::error!("spool: {inflight_name}: cannot remove from {INFLIGHT}: {e}"),
    }
}

/// Held while a finished file is archived (see `finish_file`).
static FINISHING: Mutex<()> = Mutex::new(());

/// `<16 hex of the file's SHA-256>-<original name>`: the same file always
/// gets the same name (so a re-take after a crash is idempotent), and two
/// files that reuse a name do not collide.
pub(super) fn inflight_name(original: &str, bytes: &[u8], cdrs: &[super::parse::Cdr]) -> String {
    let mut name = String::with_capacity(17 + original.len());
    match cdrs {
        // A single object's id is already the hash of the file's bytes.
        [only] if only.body.len() == bytes.len() && only.id.len() >= 20 => {
            name.push_str(&only.id[4..20]);
        }
        _ => {
            super::parse::push_hex(&mut name, &Sha256::digest(bytes)[..8]);
        }
    }
    name.push('-');
    // Keep within NAME_MAX with the prefix added.
    let mut cut = original.len().min(200);
    while !original.is_char_boundary(cut) {
        cut -= 1;
    }
    name.push_str(&original[original.len() - cut..]);
    name
}

pub(super) fn original_name(inflight_name: &str) -> &str {
    match inflight_name.split_once('-') {
        Some((hash, rest)) if hash.len() == 16 => rest,
        _ => inflight_name,
    }
}

/// Moves a file that cannot be taken in to `rejected_dir`, with
/// `NAME.reason` beside it. If even that fails, it stays in the spool.
pub(super) fn reject(
    spool: &SpoolConfig,
    rejections: &Rejections,
    name: &str,
    why: &Rejection,
) -> io::Result<PathBuf> {
    reject_from(spool, rejections, &spool.dir.join(name), name, why)
}

/// Rejects the file at `from` (in the spool, or in `.inflight/` at
/// recovery) under the name `name`: logs it, counts it for `status`, and
/// moves it with its reason into `rejected_dir`. Returns where it went.
pub(super) fn reject_from(
    spool: &SpoolConfig,
    rejections: &Rejections,
    from: &Path,
    name: &str,
    why: &Rejection,
) -> io::Result<PathBuf> {
    log::warn!("rejected {name}: {why}");
    let text = format!(
        "file: {name}\nrejected: {}\nreason: {why}\n",
        rfc3339(now_ms())
    );
    let result = fs::create_dir_all(&spool.rejected_dir)
        .and_then(|_| place_rejected(from, &spool.rejected_dir, name, &text));
    let stays = match &result {
        Ok(to) => {
            log::debug!("spool: {name} is now {}", to.display());
            None
        }
        Err(e) => {
            let stays = format!(
                "cannot move it to {}: {e}; it stays where it is, and is not tried again until it changes",
                spool.rejected_dir.display()
            );
            log::error!("spool: {name}: {stays}");
            Some(stays)
        }
    };
    rejections.note(name, why, stays);
    result
}

/// Puts `from` into `dir` under `name` (or `name.1`, …) with its reason
/// beside it. The reason is complete on disk before the file appears, so
/// whoever sees `NAME.json` in the rejected directory can read why; each
/// name is claimed by creating its `.reason` exclusively, and the file
/// itself never replaces anything (`rename_noreplace`).
fn place_rejected(from: &Path, dir: &Path, name: &str, text: &str) -> io::Result<PathBuf> {
    for n in 0..MAX_SUFFIX {
        let to = numbered(dir, name, n);
        if fs::symlink_metadata(&to).is_ok() {
            continue;
        }
        let reason = reason_path(&to);
        let mut file = match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&reason)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let placed = file
            .write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .and_then(|_| rename_noreplace(from, &to));
        match placed {
            Ok(()) => return Ok(to),
            Err(e) => {
                let _ = fs::remove_file(&reason);
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
        }
    }
    Err(no_free_name(dir, name))
}

/// What `status` shows about rejected files: how many since start, and the
/// last one. Shared between the spool thread and the control commands.
#[derive(Debug, Default)]
pub struct Rejections(Mutex<RejectionSummary>);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RejectionSummary {
    /// Files rejected since the daemon started.
    pub count: u64,
    pub last: Option<LastRejection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRejection {
    pub file: String,
    pub reason: String,
    pub time_ms: u64,
    /// Set when the file could not be moved to `rejected_dir`: why, and
    /// that it stays where it is.
    pub not_moved: Option<String>,
}

impl Rejections {
    pub fn summary(&self) -> RejectionSummary {
        lock(&self.0).clone()
    }

    fn note(&self, file: &str, why: &Rejection, not_moved: Option<String>) {
        crate::metrics::file_rejected(why.kind());
        let mut s = lock(&self.0);
        s.count += 1;
        s.last = Some(LastRejection {
            file: file.to_string(),
            reason: why.to_string(),
            time_ms: now_ms(),
            not_moved,
        });
    }
}

fn reason_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".reason");
    PathBuf::from(s)
}

/// Moves `from` to `dir/name`, or `dir/name.1`, `.2`, … if taken, and
/// returns where it went. An existing name is never replaced, even when
/// something else creates it at the same moment: each try is one
/// `rename_noreplace`, which fails instead of replacing.
#[cfg(test)]
fn move_no_clobber(from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    move_no_clobber_via(MoveWay::Renameat2, from, dir, name)
}

fn move_no_clobber_via(way: MoveWay, from: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0..MAX_SUFFIX {
        let to = numbered(dir, name, n);
        // A name whose `.reason` exists belongs to a rejected file (when
        // archive and rejected are one directory): leave it to that file.
        if fs::symlink_metadata(reason_path(&to)).is_ok() {
            continue;
        }
        match rename_noreplace_from(way, from, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(no_free_name(dir, name))
}

/// Suffixes tried before giving up on a name (`NAME.1` … `NAME.9999`): a
/// directory holding that many copies of one name needs an operator.
const MAX_SUFFIX: u32 = 10_000;

fn numbered(dir: &Path, name: &str, n: u32) -> PathBuf {
    if n == 0 {
        dir.join(name)
    } else {
        dir.join(format!("{name}.{n}"))
    }
}

fn no_free_name(dir: &Path, name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{name} and {name}.1 to {name}.{} all exist in {}",
            MAX_SUFFIX - 1,
            dir.display()
        ),
    )
}

/// How `rename_noreplace` moves a file; each step falls back to the next
/// where the file system or the kernel refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoveWay {
    /// `renameat2(RENAME_NOREPLACE)`: atomic, never replaces, needs no
    /// access to the file itself (Linux 3.15+, ext4, xfs, btrfs, tmpfs…).
    Renameat2,
    /// A hard link, then unlink of the old name: never replaces (link fails
    /// on an existing name), but `fs.protected_hardlinks=1` refuses it for
    /// a file owned by another user that we cannot also write.
    Link,
    /// An exclusive create + copy + fsync + unlink: works across file
    /// systems, needs to read the file.
    Copy,
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of ever
/// replacing `to`. The result is the same whichever way it takes: either
/// the file is at `to` and gone from `from`, or nothing changed.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    rename_noreplace_from(MoveWay::Renameat2, from, to)
}

fn rename_noreplace_from(way: MoveWay, from: &Path, to: &Path) -> io::Result<()> {
    match way {
        MoveWay::Renameat2 => match renameat2_noreplace(from, to) {
            // EINVAL: the file system does not support the flag; ENOSYS:
            // the kernel (or a seccomp filter) lacks the call.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                rename_noreplace_from(MoveWay::Link, from, to)
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                rename_noreplace_from(MoveWay::Copy, from, to)
            }
            other => other,
        },
        MoveWay::Link => match fs::hard_link(from, to) {
            Ok(()) => remove_or_undo(from, to),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                ) =>
            {
                Err(e)
            }
            // EPERM (protected_hardlinks), EXDEV, a file system without
            // hard links: copy.
            Err(_) => rename_noreplace_from(MoveWay::Copy, from, to),
        },
        MoveWay::Copy => copy_noreplace(from, to),
    }
}

fn renameat2_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // The raw system call rather than glibc's wrapper, which only exists
    // from glibc 2.28 on.
    // SAFETY: both pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Copies a regular file to a name created exclusively, syncs it, and only
/// then removes the original; a copy that fails half-way is removed.
fn copy_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(from)?;
    if !src.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", from.display()),
        ));
    }
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let copied = io::copy(&mut src, &mut dst).and_then(|_| dst.sync_all());
    if let Err(e) = copied {
        let _ = fs::remove_file(to);
        return Err(e);
    }
    remove_or_undo(from, to)
}

/// The second half of a link or copy: remove the original, or, if that is
/// refused, the new name, so the file is never in both places.
fn remove_or_undo(from: &Path, to: &Path) -> io::Result<()> {
    fs::remove_file(from).inspect_err(|_| {
        let _ = fs::remove_file(to);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_names_are_stable_and_reversible() {
        let one = br#"{"QueueId":1}"#;
        let cdrs = crate::cdr::parse_file(one).expect("cdr");
        let a = inflight_name("x-1.json", one, &cdrs);
        let digest: String = Sha256::digest(one)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(a, format!("{digest}-x-1.json"), "same name either way");
        assert_eq!(a, inflight_name("x-1.json", one, &[]));
        assert_ne!(a, inflight_name("x-1.json", b"{ }", &[]));
        assert_eq!(original_name(&a), "x-1.json");
    }

    #[test]
    fn move_no_clobber_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        fs::create_dir(&out).expect("mkdir");
        let mut places = Vec::new();
        for content in [b"1", b"2"] {
            let src = dir.path().join("a.json");
            fs::write(&src, content).expect("write");
            places.push(move_no_clobber(&src, &out, "a.json").expect("move"));
            assert!(!src.exists());
        }
        assert_eq!(places[0], out.join("a.json"));
        assert_eq!(places[1], out.join("a.json.1"));
        assert_eq!(fs::read(&places[0]).expect("read"), b"1");
    }

    const WAYS: [MoveWay; 3] = [MoveWay::Renameat2, MoveWay::Link, MoveWay::Copy];

    #[test]
    fn rename_noreplace_never_replaces_whichever_way_it_takes() {
        for way in WAYS {
            let dir = tempfile::tempdir().expect("tempdir");
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            fs::write(&a, b"new").expect("write");
            fs::write(&b, b"old").expect("write");
            let err = rename_noreplace_from(way, &a, &b).expect_err("b exists");
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{way:?}");
            assert_eq!(fs::read(&a).expect("a"), b"new", "{way:?}: source kept");
            assert_eq!(fs::read(&b).expect("b"), b"old", "{way:?}: never replaced");

            let c = dir.path().join("c");
            rename_noreplace_from(way, &a, &c).expect("c is free");
            assert!(!a.exists(), "{way:?}: moved, not copied");
            assert_eq!(fs::read(&c).expect("c"), b"new", "{way:?}");

            let err = rename_noreplace_from(way, &a, &dir.path().join("d")).expect_err("gone");
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{way:?}");
        }
    }

    fn archive_spool(root: &Path) -> SpoolConfig {
        let spool = SpoolConfig {
            dir: root.join("spool"),
            archive_dir: root.join("archive"),
            rejected_dir: root.join("rejected"),
            after_ingest: AfterIngest::Archive,
            ..SpoolConfig::default()
        };
        fs::create_dir_all(inflight_dir(&spool)).expect("mkdir");
        spool
    }

    /// Several delivery threads finishing the same file at the same moment
    /// archive it once: without the no-replace rename (or, on the
    /// fallbacks, the lock) the loser linked the file again as `x.json.1`
    /// about once in 400 rounds here.
    #[test]
    fn concurrent_finish_of_one_file_archives_exactly_one_copy() {
        for way in WAYS {
            for round in 0..500 {
                let dir = tempfile::tempdir().expect("tempdir");
                let spool = archive_spool(dir.path());
                let name = "0123456789abcdef-x.json";
                fs::write(inflight_dir(&spool).join(name), b"{}").expect("write");
                let barrier = std::sync::Barrier::new(4);
                std::thread::scope(|s| {
                    for _ in 0..4 {
                        s.spawn(|| {
                            barrier.wait();
                            finish_file_via(way, &spool, name);
                        });
                    }
                });
                let archived: Vec<_> = fs::read_dir(&spool.archive_dir)
                    .expect("ls")
                    .filter_map(Result::ok)
                    .map(|e| e.file_name())
                    .collect();
                assert_eq!(archived, ["x.json"], "{way:?}, round {round}");
                assert!(!inflight_dir(&spool).join(name).exists());
            }
        }
    }

    #[test]
    fn archiving_never_replaces_an_earlier_file_of_the_same_name() {
        for way in WAYS {
            let dir = tempfile::tempdir().expect("tempdir");
            let spool = archive_spool(dir.path());
            fs::create_dir_all(&spool.archive_dir).expect("mkdir");
            fs::write(spool.archive_dir.join("x.json"), b"earlier").expect("write");
            fs::write(spool.archive_dir.join("x.json.1.reason"), b"rejected").expect("write");
            let name = "0123456789abcdef-x.json";
            fs::write(inflight_dir(&spool).join(name), b"later").expect("write");
            finish_file_via(way, &spool, name);
            let read = |n: &str| fs::read(spool.archive_dir.join(n)).expect(n);
            assert_eq!(read("x.json"), b"earlier", "{way:?}");
            assert!(!spool.archive_dir.join("x.json.1").exists(), "{way:?}");
            assert_eq!(read("x.json.2"), b"later", "{way:?}");
        }
    }

    #[test]
    fn a_rejected_file_never_replaces_one_of_the_same_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = archive_spool(dir.path());
        fs::create_dir_all(&spool.rejected_dir).expect("mkdir");
        // Cases: the name itself is taken; only its reason is (a rejection
        // of the same name half-way).
        fs::write(spool.rejected_dir.join("x.json"), b"first").expect("write");
        fs::write(spool.rejected_dir.join("x.json.1.reason"), b"claimed").expect("write");
        fs::write(spool.dir.join("x.json"), b"second").expect("write");
        let rejections = Rejections::default();
        let to = reject(&spool, &rejections, "x.json", &Rejection::Empty).expect("rejected");
        assert_eq!(to, spool.rejected_dir.join("x.json.2"));
        let read = |n: &str| fs::read(spool.rejected_dir.join(n)).expect(n);
        assert_eq!(read("x.json"), b"first");
        assert_eq!(read("x.json.1.reason"), b"claimed");
        assert_eq!(read("x.json.2"), b"second");
        assert!(String::from_utf8_lossy(&read("x.json.2.reason")).contains("empty"));
        let summary = rejections.summary();
        assert_eq!(summary.count, 1);
        let last = summary.last.expect("last");
        assert_eq!((last.file.as_str(), last.not_moved), ("x.json", None));
    }

    #[test]
    fn a_rejection_that_cannot_move_is_counted_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = archive_spool(dir.path());
        // rejected_dir cannot be created: a file is in its way.
        fs::write(dir.path().join("blocker"), b"").expect("write");
        spool.rejected_dir = dir.path().join("blocker").join("rejected");
        fs::write(spool.dir.join("x.json"), b"").expect("write");
        let rejections = Rejections::default();
        reject(&spool, &rejections, "x.json", &Rejection::Empty).expect_err("cannot move");
        assert!(spool.dir.join("x.json").exists(), "stays in the spool");
        let last = rejections.summary().last.expect("last");
        assert!(last
            .not_moved
            .is_some_and(|w| w.contains("stays where it is")));
    }
}
