//! The control socket: a Unix stream socket (mode 0660) that the command
//! line talks to. This module owns the socket file (binding, refusing to
//! start beside a live daemon, removing a stale one), the connection loop
//! and the 64 KiB request limit; what each request does lives in `cmd`.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Why the control socket cannot be bound; the daemon does not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("control.socket {} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("another cdrhook is already running: it answers on {}", .0.display())]
    AlreadyRunning(PathBuf),
    #[error("removing stale socket {}: {source}", path.display())]
    Stale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control.socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

use super::cmd;
use super::protocol;
use super::Handles;
use crate::shutdown::Shutdown;

/// Binds the control socket. A socket file that a live daemon answers on
/// means another cdrhook runs with this config: refuse. One nobody answers
/// on is a leftover from a crash: replace it.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_path_buf()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|e| BindError::Stale {
            path: path.to_path_buf(),
            source: e,
        })?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| BindError::Dir {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    // The socket is created with the process umask; tighten it first so
    // there is no moment where others could connect, then set 0660 exactly.
    // SAFETY: umask only swaps the process's file creation mask.
    let old = unsafe { libc::umask(0o117) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(|e| BindError::Bind {
        path: path.to_path_buf(),
        source: e,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|e| {
        BindError::Bind {
            path: path.to_path_buf(),
            source: e,
        }
    })?;
    Ok(listener)
}

/// Accepts connections until shutdown; each serves requests line by line.
pub async fn serve(listener: UnixListener, h: Arc<Handles>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let h = h.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, h, shutdown).await {
                            log::debug!("control: connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    log::warn!("control: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn connection(
    stream: UnixStream,
    h: Arc<Handles>,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let n = tokio::select! {
            _ = shutdown.recv() => return Ok(()),
            n = read_line_limited(&mut reader, &mut line) => n?,
        };
        if n == 0 {
            return Ok(());
        }
        if line.len() > protocol::MAX_REQUEST {
            let refused = protocol::error(protocol::ParseError::TooLarge.to_string());
            cmd::write_line(&mut write, &refused).await?;
            // The rest of an oversized line is not worth reading.
            return Ok(());
        }
        match protocol::parse(&line) {
            Ok(request) => cmd::respond(&h, request, &mut write).await?,
            Err(e) => cmd::write_line(&mut write, &protocol::error(e.to_string())).await?,
        }
    }
}

/// Reads one line (without its newline) but stops buffering past the limit;
/// returns bytes consumed, 0 at end of stream.
async fn read_line_limited(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(consumed);
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if line.len() <= protocol::MAX_REQUEST {
                    line.extend_from_slice(&buf[..i]);
                }
                reader.consume(i + 1);
                return Ok(consumed + i + 1);
            }
            None => {
                let n = buf.len();
                if line.len() <= protocol::MAX_REQUEST {
                    line.extend_from_slice(buf);
                }
                reader.consume(n);
                consumed += n;
                if line.len() > protocol::MAX_REQUEST {
                    return Ok(consumed);
                }
            }
        }
    }
}
