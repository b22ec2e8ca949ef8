//! Signals (SPEC §6), through one mechanism: signal-hook's iterator on a
//! thread of its own. SIGTERM and SIGINT complete the daemon's shutdown
//! future (once); SIGHUP, SIGUSR1 and SIGUSR2 become [`Signal`]s the run
//! loop hands to [`handle`], which only starts their work (off the runtime,
//! in `control::cmd::lane`) and returns at once.

use std::future::Future;
use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use tokio::sync::{mpsc, oneshot};

use crate::control::cmd::{lane, resend, status};
use crate::control::Handles;

/// Operator requests that arrive as signals (SPEC §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Reload,
    ResendFailed,
    LogStatus,
}

/// The signal handlers could not be installed; the daemon does not start.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("cannot install signal handlers: {0}")]
    Install(std::io::Error),
    #[error("cannot start the signal thread: {0}")]
    Thread(std::io::Error),
}

/// Installs the handlers and starts the signal thread. Returns the operator
/// signals, and the shutdown future that SIGTERM or SIGINT completes: the
/// two arguments `daemon::run` takes.
pub fn install() -> Result<
    (
        mpsc::UnboundedReceiver<Signal>,
        impl Future<Output = ()> + Send + 'static,
    ),
    SignalError,
> {
    let (signal_tx, signal_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut signals =
        signal_hook::iterator::Signals::new([SIGHUP, SIGUSR1, SIGUSR2, SIGTERM, SIGINT])
            .map_err(SignalError::Install)?;
    std::thread::Builder::new()
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
        })
        .map_err(SignalError::Thread)?;
    Ok((signal_rx, async {
        let _ = stop_rx.await;
    }))
}

/// Signals only start work: it runs off the runtime (`lane`), and the run
/// loop goes on at once.
pub fn handle(h: &Arc<Handles>, signal: Signal) {
    let h = h.clone();
    match signal {
        Signal::Reload => {
            log::info!("SIGHUP: reloading the config");
            tokio::spawn(async move {
                let _ = lane::reload(&h, |h| h.reload(true)).await;
            });
        }
        Signal::ResendFailed => resend::on_signal(&h),
        Signal::LogStatus => {
            tokio::spawn(async move {
                if let Ok(s) = lane::light(&h, status::collect).await {
                    for line in status::render(&s).lines() {
                        log::info!("status: {line}");
                    }
                }
            });
        }
    }
}
