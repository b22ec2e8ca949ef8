//! cdrhook's integration tests: one test binary (one build and one link for
//! the whole suite), one module per theme, all on the harness in `harness/`.
//!
//! Each test runs the real `cdrhook` binary against real HTTP receivers on
//! 127.0.0.1 and real directories. Run one theme with
//! `cargo test --test it spool::`, one test with its full path, e.g.
//! `cargo test --test it delivery::retry_after_is_honoured_up_to_twice_the_step -- --exact`.

mod harness;

mod auth;
mod control;
mod crash;
mod delivery;
mod faults;
mod filters;
mod fuzz_regressions;
mod harness_selftest;
mod intake;
mod operator_load;
mod reload;
mod secrets;
mod spool;
mod web;
mod web_page;
