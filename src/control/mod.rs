//! The control side door: the Unix socket an operator's `cdrhook` command
//! talks to, and what the daemon does for each command.
//!
//! - `socket`: binding (refusing a second daemon, replacing a stale file),
//!   the connection loop, the 64 KiB request limit;
//! - `protocol`: the typed line protocol (SPEC §7), shared with the CLI;
//! - `client`: the command line's side;
//! - `cmd/`: one file per command (request type, response type, `apply`,
//!   `render`) and `lane.rs`, where their blocking work runs.
//!
//! Control sits after config, intake (spool), journal and delivery in the
//! pipeline and may use them; it never depends on `crate::daemon`. A
//! command is applied with [`Handles`], the few parts it acts on.

pub mod client;
pub mod cmd;
mod handles;
pub mod protocol;
pub mod socket;

pub use handles::{Handles, SpoolHandle};
pub use socket::{bind, serve, BindError};
