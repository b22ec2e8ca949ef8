//! `cdrhook reload` (and SIGHUP): read the config file again now.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{lane, CmdError, Command};
use crate::control::protocol::Request;
use crate::control::Handles;

/// The request: `{"cmd":"reload"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reload {}

/// SPEC §5 `reload --json`: the version this reload put in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadResponse {
    pub ok: bool,
    pub path: String,
    /// How many subscriptions are in force.
    pub subscriptions: usize,
    pub restart_required: Vec<String>,
    pub warnings: Vec<String>,
}

impl From<Reload> for Request {
    fn from(c: Reload) -> Request {
        Request::Reload(c)
    }
}

impl Command for Reload {
    type Response = ReloadResponse;

    fn render(v: &ReloadResponse) -> String {
        let mut out = format!(
            "reloaded {}: {} subscription(s) in force\n",
            v.path, v.subscriptions
        );
        if !v.restart_required.is_empty() {
            out.push_str(&format!(
                "changed but waiting for a restart: {}\n",
                v.restart_required.join(", ")
            ));
        }
        for w in &v.warnings {
            out.push_str(&format!("WARNING: {w}\n"));
        }
        out
    }

    fn succeeded(v: &ReloadResponse) -> bool {
        v.ok
    }
}

impl Reload {
    pub async fn apply(self, h: &Arc<Handles>) -> Result<ReloadResponse, CmdError> {
        lane::reload(h, reload).await?
    }
}

fn reload(h: &Handles) -> Result<ReloadResponse, CmdError> {
    // The answer describes the version this reload put in force, not
    // whatever a reload running right after it left.
    let snapshot = h.reload(true)?;
    Ok(ReloadResponse {
        ok: true,
        path: h.live.path().display().to_string(),
        subscriptions: snapshot.config.subscriptions.len(),
        restart_required: snapshot
            .status
            .restart_required
            .iter()
            .map(|k| k.to_string())
            .collect(),
        warnings: snapshot.config.warnings.clone(),
    })
}
