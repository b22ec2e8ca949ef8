//! `cdrhook reload` (and SIGHUP): read the config file again now.

use serde_json::{json, Value};

use super::cell;
use crate::server::Daemon;

pub fn apply(d: &Daemon) -> Result<Value, String> {
    // The answer describes the version this reload put in force, not
    // whatever a reload running right after it left.
    let snapshot = d.reload(true)?;
    Ok(json!({
        "ok": true,
        "path": d.live.path().display().to_string(),
        "subscriptions": snapshot.config.subscriptions.len(),
        "restart_required": snapshot.status.restart_required,
        "warnings": snapshot.config.warnings,
    }))
}

pub fn render(v: &Value) -> String {
    let mut out = format!(
        "reloaded {}: {} subscription(s) in force\n",
        cell(&v["path"]),
        cell(&v["subscriptions"])
    );
    if let Some(keys) = v["restart_required"].as_array().filter(|k| !k.is_empty()) {
        let keys: Vec<String> = keys.iter().map(cell).collect();
        out.push_str(&format!(
            "changed but waiting for a restart: {}\n",
            keys.join(", ")
        ));
    }
    for w in v["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("WARNING: {}\n", cell(w)));
    }
    out
}
