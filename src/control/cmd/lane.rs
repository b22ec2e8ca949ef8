//! Where the work of a command runs. Every journal read and every
//! file-system walk a command (or an operator's signal) does runs on
//! tokio's blocking pool, never on the two runtime threads that serve the
//! control socket, the delivery workers and the watchdog's heartbeat. There
//! are two lanes, each with its own bound, so a cheap command never queues
//! behind a heavy one:
//!
//! - **light**: `status`, `show`, `resend ID`, `test`, `reload`, SIGUSR2,
//!   SIGHUP: point reads, one directory listing, a config file. At most
//!   `LIGHT_AT_ONCE` at a time.
//! - **heavy**: `attempts`, `replay`, `resend --failed`, SIGUSR1: walks over
//!   the journal. They go one page at a time, and at most `HEAVY_AT_ONCE`
//!   pages (of all heavy commands together) run at once, so however many
//!   are asked for, they take one core at most and take turns page by page;
//!   a client that reads its answer slowly holds no slot while it does.
//!
//! Delivery's HTTP attempts use the same blocking pool (64 threads); the
//! two bounds keep commands to a few of them.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::control::Handles;

/// The blocking task running a command's work panicked or was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("internal: {0}")]
pub struct LaneError(String);

/// Pages of journal walks running at once, across every heavy command.
pub const HEAVY_AT_ONCE: usize = 1;

/// Light commands running at once.
pub const LIGHT_AT_ONCE: usize = 4;

static HEAVY: Semaphore = Semaphore::const_new(HEAVY_AT_ONCE);
static LIGHT: Semaphore = Semaphore::const_new(LIGHT_AT_ONCE);

/// Runs one step of a heavy command (one page of a walk) off the runtime.
pub async fn heavy<T, F>(h: &Arc<Handles>, f: F) -> Result<T, LaneError>
where
    T: Send + 'static,
    F: FnOnce(&Handles) -> T + Send + 'static,
{
    run(&HEAVY, h, f).await
}

/// Runs a light command's work off the runtime.
pub async fn light<T, F>(h: &Arc<Handles>, f: F) -> Result<T, LaneError>
where
    T: Send + 'static,
    F: FnOnce(&Handles) -> T + Send + 'static,
{
    run(&LIGHT, h, f).await
}

async fn run<T, F>(lane: &'static Semaphore, h: &Arc<Handles>, f: F) -> Result<T, LaneError>
where
    T: Send + 'static,
    F: FnOnce(&Handles) -> T + Send + 'static,
{
    // The semaphores are never closed.
    let permit = lane.acquire().await.map_err(|e| LaneError(e.to_string()))?;
    let h = h.clone();
    // The permit goes with the work: it bounds what runs, even if the
    // connection that asked for it is gone meanwhile.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(&h)
    })
    .await
    .map_err(|e| LaneError(e.to_string()))
}

static RELOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A reload (the file watcher, SIGHUP, `cdrhook reload`), in the light
/// lane, one at a time, in turn. Each reads the file when it runs, so the
/// last applies the file's latest text. A reload waiting for the one before
/// it holds no thread and no slot of the light lane, so a burst of reloads
/// never holds `status` back.
pub async fn reload<T, F>(h: &Arc<Handles>, f: F) -> Result<T, LaneError>
where
    T: Send + 'static,
    F: FnOnce(&Handles) -> T + Send + 'static,
{
    let _one = RELOAD.lock().await;
    light(h, f).await
}
