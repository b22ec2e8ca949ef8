//! Logging: env_logger, shaped for the systemd journal when run under it.
//!
//! `RUST_LOG` wins when set; otherwise the config's `log_level` (default
//! info) decides, and changes with a reload.

use std::io::Write;

use log::LevelFilter;

/// Sets up the logger once, at start-up.
pub fn init() {
    let mut builder = env_logger::Builder::new();
    match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            builder.parse_filters(&spec);
        }
        // Quiet the crates we use; our own level follows the config.
        _ => {
            builder
                .filter_level(LevelFilter::Trace)
                .filter_module("sled", LevelFilter::Warn)
                .filter_module("ureq", LevelFilter::Warn)
                .filter_module("ureq_proto", LevelFilter::Warn)
                .filter_module("rustls", LevelFilter::Warn)
                .filter_module("notify", LevelFilter::Warn);
            log::set_max_level(LevelFilter::Info);
        }
    }
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // journald stamps each line itself and reads `<N>` as the priority.
        builder.format(|buf, record| {
            let prio = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{prio}>{}", record.args())
        });
    }
    let _ = builder.try_init();
    if std::env::var("RUST_LOG").is_ok_and(|s| !s.is_empty()) {
        return;
    }
    log::set_max_level(LevelFilter::Info);
}

/// Applies the config's `log_level` unless `RUST_LOG` overrides it.
pub fn apply_level(level: Option<&str>) {
    if std::env::var("RUST_LOG").is_ok_and(|s| !s.is_empty()) {
        return;
    }
    let filter = match level.unwrap_or("info") {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => LevelFilter::Info,
    };
    log::set_max_level(filter);
}
