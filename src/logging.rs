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
            builder.parse_filters(&cap_wire_dumps(&spec));
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
    if stderr_is_journal() {
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

/// Crates that dump what goes over the wire at trace level: request
/// headers (`Authorization`, an OAuth2 token), the token request's form
/// body (a client secret). Never above debug, whatever `RUST_LOG` says.
const WIRE_CRATES: [&str; 3] = ["ureq", "ureq_proto", "rustls"];

/// `spec` (a `RUST_LOG` value) with each of [`WIRE_CRATES`] held at debug
/// where the spec would let it trace. env_logger applies the directive of
/// the longest matching module name, else the bare level; a name without a
/// level means trace.
fn cap_wire_dumps(spec: &str) -> String {
    // A `/regex` suffix filters messages, not levels.
    let directives = spec.split('/').next().unwrap_or("");
    let mut out = spec.to_string();
    let parsed: Vec<(Option<&str>, &str)> = directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| match d.split_once('=') {
            Some((module, level)) => (Some(module.trim()), level.trim()),
            None if d.parse::<LevelFilter>().is_ok() => (None, d),
            None => (Some(d), "trace"),
        })
        .collect();
    for krate in WIRE_CRATES {
        let mut best: Option<(usize, &str)> = None;
        for (module, level) in &parsed {
            let len = match module {
                None => 0,
                Some(m) if *m == krate || krate.starts_with(&format!("{m}::")) => m.len(),
                Some(_) => continue,
            };
            if best.is_none_or(|(l, _)| len >= l) {
                best = Some((len, level));
            }
        }
        let traces = best
            .and_then(|(_, level)| level.parse::<LevelFilter>().ok())
            .is_some_and(|level| level > LevelFilter::Debug);
        if traces {
            match out.find('/') {
                Some(at) => out.insert_str(at, &format!(",{krate}=debug")),
                None => out.push_str(&format!(",{krate}=debug")),
            }
        }
    }
    out
}

/// Whether stderr is a stream to the systemd journal: systemd sets
/// `JOURNAL_STREAM=DEVICE:INODE` for a service whose output goes there, and
/// a child whose stderr was redirected elsewhere still inherits the
/// variable, so it only counts when it names stderr itself.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let stderr = std::io::stderr();
    let meta = stderr
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata());
    match (value.to_str(), meta) {
        (Some(value), Ok(m)) => names_stream(value, m.dev(), m.ino()),
        _ => false,
    }
}

/// Whether a `JOURNAL_STREAM` value ("DEVICE:INODE", both decimal) names
/// the file with this device and inode.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    match value.split_once(':') {
        Some((d, i)) => d.parse() == Ok(dev) && i.parse() == Ok(ino),
        None => false,
    }
}

/// Prints an error for the user on stderr, "cdrhook: " first. Under the
/// journal (a command run by the unit, such as ExecReload's `cdrhook
/// reload`, or a daemon that cannot start) each line carries the `err`
/// priority, so that `journalctl -p err` shows it and it is not filed as
/// information.
pub fn eprint_error(message: &str) {
    let prefix = if stderr_is_journal() { "<3>" } else { "" };
    for (i, line) in message.lines().enumerate() {
        let lead = if i == 0 { "cdrhook: " } else { "" };
        eprintln!("{prefix}{lead}{line}");
    }
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

#[cfg(test)]
mod tests {
    use super::names_stream;

    #[test]
    fn journal_stream_must_name_stderr() {
        let table = [
            ("8:1234", 8, 1234, true),
            ("8:1234", 8, 1235, false), // another file on the same device
            ("9:1234", 8, 1234, false),
            ("", 8, 1234, false),
            ("8", 8, 1234, false),
            ("8:1234:5", 8, 1234, false),
            ("x:1234", 8, 1234, false),
            (" 8:1234", 8, 1234, false),
        ];
        for (value, dev, ino, want) in table {
            assert_eq!(names_stream(value, dev, ino), want, "{value:?}");
        }
    }
}

#[cfg(test)]
mod wire_tests {
    use super::cap_wire_dumps;

    #[test]
    fn the_wire_crates_never_trace() {
        for (spec, want) in [
            ("info", "info"),
            ("debug", "debug"),
            ("warn,cdrhook=debug", "warn,cdrhook=debug"),
            ("trace", "trace,ureq=debug,ureq_proto=debug,rustls=debug"),
            ("warn,ureq=trace", "warn,ureq=trace,ureq=debug"),
            ("ureq", "ureq,ureq=debug"),
            (
                "trace,ureq=info",
                "trace,ureq=info,ureq_proto=debug,rustls=debug",
            ),
            ("cdrhook=trace", "cdrhook=trace"),
            (
                "trace/token",
                "trace,ureq=debug,ureq_proto=debug,rustls=debug/token",
            ),
        ] {
            assert_eq!(cap_wire_dumps(spec), want, "{spec}");
        }
    }

    #[test]
    fn env_logger_takes_the_cap() {
        // The appended directive wins over the user's for the same module.
        let mut b = env_logger::Builder::new();
        b.parse_filters(&cap_wire_dumps("warn,ureq=trace"));
        let logger = b.build();
        let at = |level, target| {
            log::Log::enabled(
                &logger,
                &log::Metadata::builder().level(level).target(target).build(),
            )
        };
        assert!(at(log::Level::Debug, "ureq::unversioned"));
        assert!(!at(log::Level::Trace, "ureq::unversioned"));
        assert!(!at(log::Level::Info, "cdrhook"));
    }
}
