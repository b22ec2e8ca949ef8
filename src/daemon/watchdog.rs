//! systemd's watchdog (`WatchdogSec=`): a thread of its own pings
//! `WATCHDOG=1`, and only while the tokio runtime still runs a trivial
//! heartbeat task. Nothing a command or a delivery does can delay the ping
//! (it is not on the runtime), but a runtime that stopped running tasks
//! stops the pings, and systemd restarts the daemon.
//!
//! The thread wakes every quarter of the interval, asks the runtime for a
//! heartbeat (a task that notes the time it ran), and pings if the last
//! heartbeat ran within half the interval. A runtime that hangs is
//! therefore restarted at most one and a half intervals later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The watchdog interval systemd asks for, if any: `WATCHDOG_USEC`, unless
/// `WATCHDOG_PID` names another process (as `sd_watchdog_enabled` reads
/// them: a missing `WATCHDOG_PID` means this process).
pub fn interval_from_env() -> Option<Duration> {
    interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn interval(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        None => {}
        Some(Ok(p)) if p == me => {}
        Some(_) => return None,
    }
    Some(Duration::from_micros(usec))
}

/// How often the thread wakes, and how recent a heartbeat must be for a
/// ping, for a watchdog interval.
fn timings(interval: Duration) -> (Duration, Duration) {
    (interval / 4, interval / 2)
}

/// Whether to ping: the last heartbeat ran `age` ago.
fn should_ping(age: Duration, fresh: Duration) -> bool {
    age <= fresh
}

/// Starts the watchdog thread if systemd asked for one. It stops once
/// `stop` turns true (the daemon is stopping and has said STOPPING=1).
pub fn start(runtime: tokio::runtime::Handle, stop: watch::Receiver<bool>) {
    let Some(interval) = interval_from_env() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || run(interval, runtime, stop));
    if let Err(e) = spawned {
        log::error!("watchdog: cannot start its thread ({e}); systemd will restart the daemon");
    }
}

fn run(interval: Duration, runtime: tokio::runtime::Handle, stop: watch::Receiver<bool>) {
    let (every, fresh) = timings(interval);
    let base = Instant::now();
    // When the last heartbeat ran, in ms since `base`.
    let alive = Arc::new(AtomicU64::new(0));
    let mut withheld = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let beat = alive.clone();
        runtime.spawn(async move {
            beat.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
        });
        let age = base
            .elapsed()
            .saturating_sub(Duration::from_millis(alive.load(Ordering::Relaxed)));
        if should_ping(age, fresh) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            if withheld {
                log::warn!("watchdog: the runtime answers again; pinging systemd again");
                withheld = false;
            }
        } else if !withheld {
            log::error!(
                "watchdog: the runtime has not run a task for {}; not pinging systemd, which restarts the daemon if this lasts",
                humantime::format_duration(Duration::from_millis(age.as_millis() as u64))
            );
            withheld = true;
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_read_as_systemd_does() {
        let s = |us: u64| Some(Duration::from_micros(us));
        for (usec, pid, want) in [
            (Some("2000000"), None, s(2_000_000)),
            (Some("2000000"), Some("42"), s(2_000_000)),
            (Some(" 500000 "), Some("42"), s(500_000)),
            (Some("2000000"), Some("43"), None),
            (Some("2000000"), Some("x"), None),
            (Some("0"), None, None),
            (Some("soon"), None, None),
            (None, Some("42"), None),
        ] {
            assert_eq!(interval(usec, pid, 42), want, "{usec:?} {pid:?}");
        }
    }

    #[test]
    fn pings_come_well_inside_the_interval_and_stop_for_a_hung_runtime() {
        let interval = Duration::from_secs(2);
        let (every, fresh) = timings(interval);
        assert_eq!(every, Duration::from_millis(500));
        // A ping every `every` while healthy; a hung runtime stops them
        // after `fresh`, and systemd acts one interval after the last.
        assert_eq!(fresh, interval / 2);
        for (age_ms, ping) in [(0, true), (500, true), (1000, true), (1001, false)] {
            assert_eq!(
                should_ping(Duration::from_millis(age_ms), fresh),
                ping,
                "{age_ms} ms"
            );
        }
    }
}
