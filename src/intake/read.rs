//! Reading one spool file: opened without following a link, bounded by
//! `max_file_size`, and judged: parsed, rejected, to look at later (still
//! being written), failed (try again), or gone. It reads only; moving the
//! file is `moves`' job.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::moves::inflight_name;
use super::parse::{parse_file, Rejection};
use crate::config::SpoolConfig;
use crate::journal::IngestFile;

/// A file that fails to parse but was modified this recently may still be
/// being written in place: look again later instead of rejecting it.
pub const SETTLE: Duration = Duration::from_secs(2);

pub(super) enum Taken {
    Parsed(IngestFile),
    Rejected(Rejection),
    Later(Instant),
    /// A read error other than permissions (I/O error, too many open
    /// files): try again after `SETTLE`.
    Failed(io::Error),
    Gone,
}

/// A read buffer grown past this by a large file is given back after it,
/// so that one recording CDR does not keep megabytes for the daemon's life.
const KEEP_BUFFER: usize = 1 << 20;

/// Opens without following a link and reads at most `max` bytes; a file
/// that is larger, or not a regular file, is a rejection, not a read.
pub(super) fn read_limited(
    path: &Path,
    max: u64,
) -> io::Result<(fs::Metadata, Result<Vec<u8>, Rejection>)> {
    let mut bytes = Vec::new();
    let (meta, read) = read_limited_into(path, max, &mut bytes)?;
    Ok((meta, read.map(|()| bytes)))
}

/// `read_limited` into `bytes` (cleared first), so that the intake thread
/// reads every file into one buffer instead of allocating one per file.
pub(super) fn read_limited_into(
    path: &Path,
    max: u64,
    bytes: &mut Vec<u8>,
) -> io::Result<(fs::Metadata, Result<(), Rejection>)> {
    bytes.clear();
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let kind = kind_of(&meta);
        return Ok((meta, Err(Rejection::NotRegularFile(kind))));
    }
    if meta.len() > max {
        let size = meta.len();
        return Ok((meta, Err(Rejection::TooLarge { size, max })));
    }
    bytes.reserve(meta.len() as usize);
    file.take(max.saturating_add(1)).read_to_end(bytes)?;
    if bytes.len() as u64 > max {
        let size = bytes.len() as u64;
        return Ok((meta, Err(Rejection::TooLarge { size, max })));
    }
    Ok((meta, Ok(())))
}

fn kind_of(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
    .to_string()
}

/// Reads and judges the spool file `name`, using `buffer` for its bytes.
pub(super) fn read_candidate(spool: &SpoolConfig, name: &str, buffer: &mut Vec<u8>) -> Taken {
    let taken = judge(spool, name, buffer);
    if buffer.capacity() > KEEP_BUFFER {
        *buffer = Vec::new();
    }
    taken
}

fn judge(spool: &SpoolConfig, name: &str, bytes: &mut Vec<u8>) -> Taken {
    let path = spool.dir.join(name);
    // O_NOFOLLOW: a symbolic link is refused by open itself, never read
    // through; fstat on the open file then judges what it is.
    let (meta, read) = match read_limited_into(&path, spool.max_file_size, bytes) {
        Ok(ok) => ok,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Taken::Gone,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Taken::Rejected(Rejection::NotRegularFile("a symbolic link".to_string()))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return unreadable(&path, e),
        Err(e) => return Taken::Failed(e),
    };
    let result = read.and_then(|()| {
        parse_file(bytes).map(|cdrs| IngestFile {
            inflight_name: inflight_name(name, bytes, &cdrs),
            cdrs,
            identity: Some((meta.dev(), meta.ino())),
        })
    });
    match (result, fresh_until(&meta)) {
        (Ok(file), _) => Taken::Parsed(file),
        // A file modified moments ago may be a writer mid-way: look again.
        (Err(_), Some(at)) if meta.is_file() => Taken::Later(at),
        (Err(why), _) => Taken::Rejected(why),
    }
}

/// Until when a file modified moments ago may still be being written (None
/// once it has not changed for `SETTLE`).
fn fresh_until(meta: &fs::Metadata) -> Option<Instant> {
    meta.modified()
        .ok()
        .and_then(|m| m.checked_add(SETTLE))
        .and_then(|until| until.duration_since(SystemTime::now()).ok())
        .map(|left| Instant::now() + left)
}

/// A file we may not open (the writer's umask left no read access for our
/// group): rejected with the cause and the fix once it has settled, so that
/// a writer that sets the mode after writing is not rejected. `lstat` needs
/// no access to the file, only to the directory.
fn unreadable(path: &Path, error: io::Error) -> Taken {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Taken::Gone,
        Err(_) => return Taken::Failed(error),
    };
    if let Some(at) = fresh_until(&meta) {
        return Taken::Later(at);
    }
    // Drop " (os error 13)": the reason is for an operator.
    let text = error.to_string();
    let error = text.split(" (os error").next().unwrap_or(&text).to_string();
    Taken::Rejected(Rejection::Unreadable {
        error,
        mode: meta.mode(),
        owner_uid: meta.uid(),
        group_gid: meta.gid(),
        // SAFETY: geteuid cannot fail and touches no memory of ours.
        reader_uid: unsafe { libc::geteuid() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_limited_refuses_links_and_large_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("t.json");
        fs::write(&target, b"{\"QueueId\":1}").expect("write");
        let link = dir.path().join("l.json");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = read_limited(&link, 100).expect_err("O_NOFOLLOW refuses a link");
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert!(matches!(
            read_limited(&target, 3).expect("io ok").1,
            Err(Rejection::TooLarge { .. })
        ));
    }
}
