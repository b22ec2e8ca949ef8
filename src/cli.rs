//! The command line (contract §5): `cdrhook run` starts the daemon; every other
//! subcommand but `check-config` asks the running daemon over the control
//! socket and prints a table, or one JSON document with `--json`. Each
//! subcommand becomes one typed command of `control::cmd`, and its answer
//! is read into that command's response type: the table and the JSON come
//! from the same type the daemon sent.
//!
//! Exit codes: 0 success, 1 the daemon reports an error (or a send failed),
//! 2 bad usage, 3 no daemon answers.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::{self, EventType};
use crate::control::client::{self, ClientError, Reply};
use crate::control::cmd::attempts::{self, Attempts};
use crate::control::cmd::reload::Reload;
use crate::control::cmd::replay::Replay;
use crate::control::cmd::resend::{Resend, ResendFailed};
use crate::control::cmd::show::Show;
use crate::control::cmd::status::Status;
use crate::control::cmd::test::Test;
use crate::control::cmd::{self, BadId, Command as ControlCommand};
use crate::control::protocol;
use crate::logging;
use crate::time::{now_ms, parse_since, rfc3339, BadTime};

pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_NO_DAEMON: i32 = 3;

const DEFAULT_SOCKET: &str = "/run/cdrhook/control.sock";

#[derive(Debug, Parser)]
#[command(
    name = "cdrhook",
    version,
    about = "Delivers contact-center CDR files from a spool directory to webhook subscriptions",
    long_about = "cdrhook takes each CDR file the phone system drops into the spool directory, \
journals it, and POSTs it to every webhook subscription that wants its event type, retrying \
failures. `cdrhook run` is the daemon; the other commands talk to it over its control socket.\n\n\
Exit codes: 0 success, 1 the daemon reported an error or a send failed, 2 bad usage, \
3 no daemon answers on the control socket.",
    after_help = "TIME is RFC 3339 (2026-11-21T08:00:00Z) or a duration back from now (30m, 2h, 7d).\n\
IDs are attempt ids (a123) or delivery ids (d45), as `cdrhook attempts` shows them."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Print one JSON document instead of a table
    #[arg(long, global = true)]
    pub json: bool,

    /// The daemon's control socket [default: control.socket from the config, else /run/cdrhook/control.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The config file [default: /etc/cdrhook/config.yaml]
    #[arg(long, global = true, env = "CDRHOOK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (what systemd starts)
    Run,
    /// Validate a config file without a daemon; errors show line and column
    CheckConfig {
        /// The file to check [default: --config, else /etc/cdrhook/config.yaml]
        path: Option<PathBuf>,
    },
    /// Version, uptime, config state, spool backlog and per-subscription counts
    Status,
    /// The attempt history, newest first
    Attempts {
        /// Only this subscription's attempts
        #[arg(long, value_name = "NAME")]
        subscription: Option<String>,
        /// Only attempts that did not get a 2xx
        #[arg(long)]
        failed: bool,
        /// Only attempts for this call (the CDR's CallId)
        #[arg(long, value_name = "ID")]
        call_id: Option<String>,
        /// Only this event type, e.g. App.QueueWebhook
        #[arg(long, value_name = "T")]
        event_type: Option<String>,
        /// Only attempts at or after TIME
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// At most N attempts
        #[arg(long, value_name = "N", default_value_t = attempts::DEFAULT_LIMIT)]
        limit: usize,
    },
    /// One attempt or delivery in full: headers (secrets masked), response, the CDR
    Show {
        /// An attempt id (a123) or delivery id (d45)
        id: String,
    },
    /// Send deliveries again now: the named ones (and wait for the result), or all failed ones
    Resend {
        /// Attempt or delivery ids; each delivery gets one attempt now, even if it had succeeded
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        ids: Vec<String>,
        /// Every dead or retrying delivery (one attempt each, queued)
        #[arg(long)]
        failed: bool,
        /// With --failed: only this subscription's
        #[arg(long, value_name = "NAME", requires = "failed")]
        subscription: Option<String>,
        /// With --failed: only deliveries created at or after TIME
        #[arg(long, value_name = "TIME", requires = "failed")]
        since: Option<String>,
    },
    /// Send every CDR journaled since TIME that a subscription wants to it (backfill)
    Replay {
        /// The subscription to backfill
        #[arg(long, value_name = "NAME")]
        subscription: String,
        /// From this time on
        #[arg(long, value_name = "TIME")]
        since: String,
    },
    /// Send the test webhook (App.TestWebhook) now and print each result
    Test {
        /// Only to this subscription (it must list App.TestWebhook or "*")
        #[arg(long, value_name = "NAME")]
        subscription: Option<String>,
    },
    /// Reload the config file now (as SIGHUP does)
    Reload,
}

/// Parses the arguments and runs the command; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    EXIT_OK
                }
                _ => EXIT_USAGE,
            };
        }
    };
    if !matches!(cli.command, Command::Run) {
        // `cdrhook attempts | head` should end quietly, not panic on EPIPE.
        // SAFETY: restores the default disposition of one signal.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    match cli.command {
        Command::Run => crate::run_daemon(&config_path),
        Command::CheckConfig { ref path } => {
            check_config(path.as_deref().unwrap_or(&config_path), cli.json)
        }
        _ => match run_command(&cli, &config_path) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("cdrhook: {e}");
                EXIT_USAGE
            }
        },
    }
}

fn since_arg(text: &str) -> Result<String, BadTime> {
    parse_since(text, now_ms()).map(rfc3339)
}

/// A command line the daemon should not even be asked (exit code 2).
#[derive(Debug, thiserror::Error)]
enum UsageError {
    #[error(transparent)]
    Time(#[from] BadTime),
    #[error(transparent)]
    Id(#[from] BadId),
    #[error("--event-type {0:?}: expected one of {1}")]
    EventType(String, String),
}

/// Builds the command's request, checks what can be checked here, asks the
/// daemon and prints the typed answer; returns the exit code.
fn run_command(cli: &Cli, config_path: &Path) -> Result<i32, UsageError> {
    match &cli.command {
        Command::Status => ask(cli, config_path, Status {}),
        Command::Attempts {
            subscription,
            failed,
            call_id,
            event_type,
            since,
            limit,
        } => {
            if let Some(t) = event_type {
                if EventType::parse(t).is_none() {
                    return Err(UsageError::EventType(
                        t.clone(),
                        EventType::ALL.map(|e| e.as_str()).join(", "),
                    ));
                }
            }
            ask(
                cli,
                config_path,
                Attempts {
                    subscription: subscription.clone(),
                    failed: *failed,
                    call_id: call_id.clone(),
                    event_type: event_type.clone(),
                    since: since.as_deref().map(since_arg).transpose()?,
                    limit: Some(*limit),
                    before: None,
                },
            )
        }
        Command::Show { id } => {
            cmd::parse_id(id)?;
            ask(cli, config_path, Show { id: id.clone() })
        }
        Command::Resend {
            ids,
            failed,
            subscription,
            since,
        } => {
            if *failed {
                ask(
                    cli,
                    config_path,
                    ResendFailed {
                        subscription: subscription.clone(),
                        since: since.as_deref().map(since_arg).transpose()?,
                    },
                )
            } else {
                for id in ids {
                    cmd::parse_id(id)?;
                }
                ask(cli, config_path, Resend { ids: ids.clone() })
            }
        }
        Command::Replay {
            subscription,
            since,
        } => ask(
            cli,
            config_path,
            Replay {
                subscription: subscription.clone(),
                since: since_arg(since)?,
            },
        ),
        Command::Test { subscription } => ask(
            cli,
            config_path,
            Test {
                subscription: subscription.clone(),
            },
        ),
        Command::Reload => ask(cli, config_path, Reload {}),
        // Handled in `main`.
        Command::Run | Command::CheckConfig { .. } => Ok(EXIT_USAGE),
    }
}

/// `--socket`, else `control.socket` read leniently from the config (so an
/// operator's shell without the daemon's `${VAR}`s still finds it).
fn socket_path(cli: &Cli, config_path: &Path) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    let from_config = std::fs::read_to_string(config_path)
        .ok()
        .and_then(|text| serde_yaml::from_str::<serde_yaml::Value>(&text).ok())
        .and_then(|v| v.get("control")?.get("socket")?.as_str().map(PathBuf::from))
        .map(|p| match config_path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        });
    from_config.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Asks the daemon; prints its answer (the table, or with `--json` the
/// response type as JSON); returns the exit code.
fn ask<C: ControlCommand>(cli: &Cli, config_path: &Path, command: C) -> Result<i32, UsageError> {
    Ok(exchange(cli, config_path, command))
}

fn exchange<C: ControlCommand>(cli: &Cli, config_path: &Path, command: C) -> i32 {
    let socket = socket_path(cli, config_path);
    let response = match client::call(&socket, command) {
        Ok(Reply::Ok(r)) => r,
        Ok(Reply::Refused(message)) => {
            if cli.json {
                println!("{}", protocol::error(message));
            } else {
                logging::eprint_error(&message);
            }
            return EXIT_ERROR;
        }
        Err(e @ ClientError::NoDaemon { .. }) => {
            // The socket is 0660 in a 0750 directory: for a user outside
            // group cdrhook, the daemon is there but out of reach.
            let denied = UnixStream::connect(&socket)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
            let hint = if denied {
                "(only root and members of group cdrhook may use the control socket: \
                 `usermod -aG cdrhook USER`, then log in again)"
            } else {
                "(is the daemon running? `systemctl status cdrhook`; or give --socket / --config)"
            };
            logging::eprint_error(&format!("{e}\n{hint}"));
            return EXIT_NO_DAEMON;
        }
        Err(e) => {
            logging::eprint_error(&e.to_string());
            return EXIT_ERROR;
        }
    };
    if cli.json {
        // Through a `Value`: keys in sorted order, as the daemon sends them.
        let v = serde_json::to_value(&response).unwrap_or(Value::Null);
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", C::render(&response));
    }
    if C::succeeded(&response) {
        EXIT_OK
    } else {
        EXIT_ERROR
    }
}

fn check_config(path: &Path, json: bool) -> i32 {
    match config::load(path) {
        Ok(cfg) => {
            if json {
                let subs: Vec<Value> = cfg
                    .subscriptions
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name,
                            "active": s.active,
                            "endpoint": s.endpoint,
                            "events": s.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
                            // The effective routing: null, or property -> values.
                            "filter": s.filter.as_ref().map(|f| f.to_json()),
                            // Contract §10: null, or the keys (secret masked).
                            "auth": s.auth.as_ref().map(|a| a.to_json()),
                            "tls": s.tls.as_ref().map(|t| t.to_json()),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "path": path.display().to_string(), "error": null, "subscriptions": subs, "warnings": cfg.warnings})
                );
            } else {
                println!(
                    "{}: OK, {} subscription(s)",
                    path.display(),
                    cfg.subscriptions.len()
                );
                for s in &cfg.subscriptions {
                    println!(
                        "  {} -> {} ({}; {})",
                        s.name,
                        s.endpoint,
                        if s.active { "active" } else { "inactive" },
                        s.events
                            .iter()
                            .map(|e| e.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    // The effective routing: which CDRs of those events it gets.
                    match &s.filter {
                        Some(f) => println!("      filter: {f} (all must match)"),
                        None => println!("      filter: none (every CDR of these events)"),
                    }
                    // How it authenticates, when it does (never the secret).
                    if let Some(a) = &s.auth {
                        println!("      auth: {a}");
                    }
                    if let Some(t) = &s.tls {
                        println!("      tls: {t}");
                    }
                }
                // Like ssh with a loose key: said, but not refused.
                for w in &cfg.warnings {
                    eprintln!("warning: {w}");
                }
            }
            EXIT_OK
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "path": path.display().to_string(), "error": e.to_string()})
                );
            } else {
                eprintln!("{e}");
            }
            EXIT_ERROR
        }
    }
}
