//! cdrhook: delivers contact-center CDR files from a spool directory to
//! webhook subscriptions, durably. See ARCHITECTURE.md for the map.
//!
//! Modules in pipeline order; each uses only those before it (and the
//! helpers at the end): `config` → `intake` → `journal` →
//! `delivery` → `control` → `web` → `daemon`; `cli` is the front. Helpers:
//! `redact`, `time`, `logging`, `locks`, `shutdown`, `metrics`.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod delivery;
pub mod intake;
pub mod journal;
pub mod locks;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod redact;
pub mod shutdown;
pub mod time;
pub mod web;

/// The parser kept at its old path for the journal, the fuzzer and the tests.
pub use intake::parse as cdr;

use std::path::Path;

/// glibc gives each thread that allocates concurrently its own arena, up to
/// eight per core, and each keeps its freed memory: with the delivery
/// threads that multiplies the resident size. One arena keeps a 100,000-file
/// drain under 64 MiB (contract §8) for a few percent of throughput
/// (BENCHMARKS.md).
///
/// The mmap threshold is fixed at 512 KiB: left dynamic, glibc raises it
/// to the size of the first large block freed, so after the first 2 MB
/// recording CDR every body, read buffer and request of that size comes
/// from the heap, whose holes are not given back; a backlog of 200 such
/// CDRs peaked at 73 MiB instead of 43 MiB. At glibc's initial 128 KiB,
/// sled's larger leaves and buffers were each an mmap and a munmap (12 %
/// more CPU per CDR with three subscriptions); 512 KiB keeps the 43 MiB
/// and costs nothing measurable; 1 MiB let large CDRs reach 76–81 MiB
/// (BENCHMARKS.md, "Where main stands" and "Large CDRs").
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before the
    // runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 10);
    }
}

/// `cdrhook run`: the daemon in the foreground, with signals wired to it.
/// Returns the process exit code.
pub fn run_daemon(config_path: &Path) -> i32 {
    logging::init();
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_name("cdrhook")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logging::eprint_error(&format!("cannot start the runtime: {e}"));
            return cli::EXIT_ERROR;
        }
    };
    let (signals, shutdown) = match daemon::signals::install() {
        Ok(s) => s,
        Err(e) => {
            logging::eprint_error(&e.to_string());
            return cli::EXIT_ERROR;
        }
    };
    let result = runtime.block_on(daemon::run(config_path, signals, shutdown));
    // Blocking threads still in a request past the grace period are not
    // waited for: their deliveries are open in the journal.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => cli::EXIT_OK,
        Err(e) => {
            // Under the journal the logged line is the message, at err; a
            // second copy on stderr would only repeat it.
            log::error!("{e}");
            if !logging::stderr_is_journal() {
                eprintln!("cdrhook: {e}");
            }
            cli::EXIT_ERROR
        }
    }
}

/// The dependency rule (ARCHITECTURE.md), checked on the source: a stage
/// uses only the stages before it, and nothing uses the daemon.
#[cfg(test)]
mod layering {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`, with its text up to its unit tests.
    fn sources(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let entries = std::fs::read_dir(dir).expect("read src");
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path.file_name().is_some_and(|n| n != "tests.rs")
            {
                let text = std::fs::read_to_string(&path).expect("read source");
                let code = match text.find("#[cfg(test)]") {
                    Some(at) => text[..at].to_string(),
                    None => text,
                };
                // Doc comments may name any module.
                let code: String = code
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                out.push((path, code));
            }
        }
    }

    #[test]
    fn dependencies_point_one_way() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(files.len() > 20, "found {} files", files.len());
        // (files under this prefix, may not name these modules)
        let rules: &[(&str, &[&str])] = &[
            (
                "config",
                &[
                    "cdr", "spool", "intake", "journal", "delivery", "control", "daemon", "cli",
                ],
            ),
            (
                "model",
                &[
                    "config", "intake", "journal", "delivery", "control", "daemon", "cli",
                ],
            ),
            // The journal stores what it is told: no config, no routing,
            // no spool. It knows the parsed CDR type (`crate::cdr`).
            (
                "journal",
                &["config", "delivery", "intake", "control", "daemon", "cli"],
            ),
            ("delivery", &["intake", "control", "daemon", "cli"]),
            ("intake", &["control", "daemon", "cli"]),
            ("control", &["web", "daemon", "cli"]),
            // The HTTP side door uses control's handles and commands.
            ("web", &["daemon", "cli"]),
            ("cli", &["daemon"]),
            // The live counters: a helper every stage records into.
            (
                "metrics",
                &[
                    "config", "intake", "journal", "delivery", "control", "web", "daemon", "cli",
                ],
            ),
        ];
        let mut broken = Vec::new();
        for (path, code) in &files {
            let rel = path.strip_prefix(&src).expect("under src");
            let first = rel.components().next().expect("a component");
            let module = first.as_os_str().to_string_lossy();
            let module = module.trim_end_matches(".rs");
            for (owner, forbidden) in rules {
                if module != *owner {
                    continue;
                }
                for f in *forbidden {
                    if code.contains(&format!("crate::{f}::"))
                        || code.contains(&format!("crate::{f};"))
                        || code.contains(&format!("crate::{{{f}"))
                    {
                        broken.push(format!("{} uses crate::{f}", rel.display()));
                    }
                }
            }
        }
        assert!(broken.is_empty(), "{broken:#?}");
    }
}
