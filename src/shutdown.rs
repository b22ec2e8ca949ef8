//! The shutdown signal, as a value that every long-running task holds.
//!
//! `run` takes any future as its shutdown trigger (SIGTERM in the binary, a
//! oneshot in tests) and fans it out through a watch channel.

use tokio::sync::watch;

/// Held by a task; `recv` completes once shutdown has begun.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new(rx: watch::Receiver<bool>) -> Shutdown {
        Shutdown { rx }
    }

    pub async fn recv(&mut self) {
        // A dropped sender means the daemon is going away: treat as shutdown.
        let _ = self.rx.wait_for(|stop| *stop).await;
    }
}
