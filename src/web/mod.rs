//! The optional HTTP side door (contract §9): `/healthz`, `/readyz`,
//! `/metrics` and the Webhooks page, on a Unix socket or a loopback TCP
//! port. Off unless `http.listen` is configured.
//!
//! - `page/`: the Webhooks page (server-rendered HTML, its actions go
//!   through the control commands in `crate::control::cmd`).
//!
//! Like `control`, it sits after config, intake, journal and delivery and
//! may use them and `control` (the same [`crate::control::Handles`]); it
//! never depends on `crate::daemon`.

pub mod page;
