//! The optional HTTP side door (contract §9): `/healthz`, `/readyz`,
//! `/metrics` and the Webhooks page, on a Unix socket or a loopback TCP
//! port. Off unless `http.listen` is configured.
//!
//! - `bind`: the listener (a Unix socket with mode 0660, or TCP);
//! - `server`: hyper's HTTP/1 server on the daemon's runtime, the routes
//!   that are not the page, the 64 KiB body limit, and the hand-over to the
//!   page;
//! - `auth`: the bearer token, the login form's session cookie;
//! - `probes`: what the metrics and the health checks read from the
//!   running daemon (no journal walk per scrape);
//! - `page/`: the Webhooks page (server-rendered HTML, its actions go
//!   through the control commands in `crate::control::cmd`).
//!
//! Like `control`, it sits after config, intake, journal and delivery and
//! may use them and `control` (the same [`crate::control::Handles`]); it
//! never depends on `crate::daemon`.

mod auth;
mod bind;
pub mod page;
mod probes;
mod server;

pub use bind::{bind, BindError, Listener};
pub use server::{serve, MAX_BODY};
