//! Binding the listener (`http.listen`): a Unix socket created with mode
//! 0660 (replacing a stale file, refusing to start beside a daemon that
//! answers on it), or a TCP port. The daemon binds it at start-up, before
//! anything else runs, so a mistake stops the start with a clear message.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::config::{HttpConfig, HttpListen};

/// Why the listener cannot be bound; the daemon does not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("http.listen {}: exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("http.listen {}: another process answers on it", .0.display())]
    InUse(PathBuf),
    #[error("http.listen {}: removing the stale socket: {source}", path.display())]
    Stale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("http.listen {}: {source}", path.display())]
    Unix {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("http.listen {addr}: {source}")]
    Tcp {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("http.listen {0} is a TCP address but no http.token_file is set; refusing to start")]
    NoToken(std::net::SocketAddr),
}

/// A bound listener.
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Where it listens, for the log (a TCP port 0 shows the port chosen).
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => a.to_string(),
                Err(e) => format!("a TCP port ({e})"),
            },
        }
    }

    /// The socket file to remove at exit, if any.
    pub fn socket_path(&self) -> Option<&Path> {
        match self {
            Listener::Unix(_, p) => Some(p),
            Listener::Tcp(_) => None,
        }
    }
}

/// Binds `http.listen`. Must run inside the tokio runtime.
pub fn bind(cfg: &HttpConfig) -> Result<Listener, BindError> {
    match &cfg.listen {
        HttpListen::Tcp(addr) => {
            // The config refuses this already; the listener never runs
            // open on TCP whatever built its config.
            if cfg.token.is_none() {
                return Err(BindError::NoToken(*addr));
            }
            let tcp = |source| BindError::Tcp {
                addr: *addr,
                source,
            };
            let std = std::net::TcpListener::bind(addr).map_err(tcp)?;
            std.set_nonblocking(true).map_err(tcp)?;
            Ok(Listener::Tcp(TcpListener::from_std(std).map_err(tcp)?))
        }
        HttpListen::Unix(path) => bind_unix(path).map(|l| Listener::Unix(l, path.clone())),
    }
}

fn bind_unix(path: &Path) -> Result<UnixListener, BindError> {
    let unix = |source| BindError::Unix {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_path_buf()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(|source| BindError::Stale {
            path: path.to_path_buf(),
            source,
        })?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(unix)?;
    }
    // As the control socket: created under a tight umask so that nobody
    // else can connect in between, then set to exactly 0660.
    // SAFETY: umask only swaps the process's file creation mask.
    let old = unsafe { libc::umask(0o117) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(unix)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(unix)?;
    Ok(listener)
}
