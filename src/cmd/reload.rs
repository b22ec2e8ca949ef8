//! `cdrhook reload` (and SIGHUP): read the config file again now.

use serde_json::{json, Value};

use super::cell;
use crate::server::Daemon;

pub fn apply(d: &Daemon) -> Result<Value, String> {
    d.reload(true)?;
    let status = d.live.status();
    Ok(json!({
        "ok": true,
        "path": d.live.path().display().to_string(),
        "subscriptions": d.config().subscriptions.len(),
        "restart_required": status.restart_required,
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
    out
}
