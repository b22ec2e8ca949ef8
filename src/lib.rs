//! cdrhook: delivers contact-center CDR files from a spool directory to
//! webhook subscriptions, durably. See ARCHITECTURE.md for the map.

pub mod cdr;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod control;
pub mod delivery;
pub mod journal;
pub mod logging;
pub mod model;
pub mod redact;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod spool;
pub mod time;
pub mod watchdog;

use std::path::Path;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use tokio::sync::{mpsc, oneshot};

use server::Signal;

/// glibc gives each thread that allocates concurrently its own arena, up to
/// eight per core, and each keeps its freed memory: with the delivery
/// threads that multiplies the resident size. One arena keeps a 100,000-file
/// drain under 64 MiB (SPEC §8) for a few percent of throughput
/// (BENCHMARKS.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before the
    // runtime starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
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
    let (signal_tx, signal_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut signals =
        match signal_hook::iterator::Signals::new([SIGHUP, SIGUSR1, SIGUSR2, SIGTERM, SIGINT]) {
            Ok(s) => s,
            Err(e) => {
                logging::eprint_error(&format!("cannot install signal handlers: {e}"));
                return cli::EXIT_ERROR;
            }
        };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut stop = Some(stop_tx);
            for signal in signals.forever() {
                let forwarded = match signal {
                    SIGHUP => Some(Signal::Reload),
                    SIGUSR1 => Some(Signal::ResendFailed),
                    SIGUSR2 => Some(Signal::LogStatus),
                    _ => {
                        if let Some(stop) = stop.take() {
                            log::info!("signal {signal}: shutting down");
                            let _ = stop.send(());
                        }
                        None
                    }
                };
                if let Some(s) = forwarded {
                    let _ = signal_tx.send(s);
                }
            }
        });
    if let Err(e) = spawned {
        logging::eprint_error(&format!("cannot start the signal thread: {e}"));
        return cli::EXIT_ERROR;
    }
    let result = runtime.block_on(server::run(config_path, signal_rx, async {
        let _ = stop_rx.await;
    }));
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
