//! The command line's side of the control socket: sends one command and
//! reads its typed response.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::cmd::Command;
use super::protocol::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon answers (exit code 3).
    #[error("no cdrhook daemon answers on {path}: {reason}")]
    NoDaemon { path: String, reason: String },
    #[error("control socket {path}: {reason}")]
    Protocol { path: String, reason: String },
}

/// What the daemon answered to a command.
pub enum Reply<T> {
    Ok(T),
    /// The daemon refused or failed the command; the message says why.
    Refused(String),
}

/// Sends one command and returns the daemon's typed answer.
pub fn call<C: Command>(socket: &Path, command: C) -> Result<Reply<C::Response>, ClientError> {
    let path = socket.display().to_string();
    let protocol = |reason: String| ClientError::Protocol {
        path: path.clone(),
        reason,
    };
    let response = exchange(socket, &command.into())?;
    match response {
        Response {
            ok: true, result, ..
        } => serde_json::from_value(result.unwrap_or(serde_json::Value::Null))
            .map(Reply::Ok)
            .map_err(|e| protocol(format!("bad response: {e}"))),
        Response { error, .. } => Ok(Reply::Refused(
            error.unwrap_or_else(|| "unknown error".to_string()),
        )),
    }
}

/// Sends one request line and reads one response line.
fn exchange(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let path = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|e| ClientError::NoDaemon {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let protocol = |reason: String| ClientError::Protocol {
        path: path.clone(),
        reason,
    };
    let mut line = serde_json::to_vec(request).map_err(|e| protocol(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| protocol(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let mut response = String::new();
    let n = reader
        .read_line(&mut response)
        .map_err(|e| protocol(e.to_string()))?;
    if n == 0 {
        return Err(ClientError::NoDaemon {
            path,
            reason: "the daemon closed the connection without answering".into(),
        });
    }
    if !response.ends_with('\n') {
        // A long answer (attempts) is written as it is read; the daemon
        // stops mid-way only on a journal error, which it logs.
        return Err(protocol(
            "the answer was cut off (the daemon's log says why)".into(),
        ));
    }
    serde_json::from_str(&response).map_err(|e| protocol(format!("bad response: {e}")))
}
