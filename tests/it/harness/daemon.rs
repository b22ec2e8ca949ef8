//! Running the real `cdrhook` binary: a throw-away directory with its config
//! (`TestDir`), the daemon process (`Daemon`), the CLI and raw control-socket
//! requests.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{wait_for, POLL_INTERVAL};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cdrhook");
/// How long `Daemon::start` waits for the control socket to answer.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a CLI invocation may take before the test fails.
pub const CLI_DEADLINE: Duration = Duration::from_secs(30);
/// Read/write timeout of a raw control-socket request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

// Linux signal numbers.
pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGKILL: i32 = 9;
pub const SIGUSR1: i32 = 10;
pub const SIGUSR2: i32 = 12;
pub const SIGTERM: i32 = 15;

unsafe extern "C" {
    // From the C library std already links; no libc crate needed.
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Environment variables from the test's own environment that must not
/// reach cdrhook (they would change what it does).
const SCRUBBED_ENV: &[&str] = &[
    "CDRHOOK_CONFIG",
    "RUST_LOG",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

// ---------------------------------------------------------------------------
// YAML helpers

/// `s` as a YAML double-quoted scalar (JSON strings are valid YAML).
pub fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("serialize a string")
}

fn yaml_path(path: &Path) -> String {
    yaml_str(
        path.to_str()
            .unwrap_or_else(|| panic!("non-UTF-8 path {}", path.display())),
    )
}

/// Removes blank lines at both ends and the indentation common to all
/// lines, so YAML fragments can be written indented in Rust source.
pub fn dedent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(first) = lines.iter().position(|l| !l.trim().is_empty()) else {
        return String::new();
    };
    let last = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .unwrap_or(first);
    let lines = &lines[first..=last];
    let common = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches(' ').len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| {
            if l.trim().is_empty() {
                ""
            } else {
                &l[common..]
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Indents every non-blank line of `text` by `n` spaces; ends with `\n`
/// unless `text` is empty.
pub fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("{pad}{l}\n")
            }
        })
        .collect()
}

/// The top-level entries of a dedented YAML mapping: (key, its lines).
fn entries(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let starts_entry = line
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace() && c != '-' && c != '#');
        if starts_entry || out.is_empty() {
            let key = if starts_entry {
                line.split(':')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .to_string()
            } else {
                String::new()
            };
            out.push((key, format!("{line}\n")));
        } else if let Some((_, block)) = out.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

/// The mapping `base` with the top-level keys of `extra` replaced or added
/// (both dedented first). Lets a test override one default without writing
/// a duplicate key.
pub fn merge_yaml(base: &str, extra: &str) -> String {
    let base = dedent(base);
    let extra = dedent(extra);
    let extra_entries = entries(&extra);
    let overridden: HashSet<&str> = extra_entries
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !k.is_empty())
        .collect();
    let mut out: String = entries(&base)
        .into_iter()
        .filter(|(k, _)| !overridden.contains(k.as_str()))
        .map(|(_, block)| block)
        .collect();
    for (_, block) in extra_entries {
        out.push_str(&block);
    }
    out
}

/// One subscription list item:
/// ```yaml
/// - name: "NAME"
///   endpoint: "ENDPOINT"
///   events: ["App.QueueWebhook"]
/// ```
pub fn subscription(name: &str, endpoint: &str, events: &[&str]) -> String {
    subscription_with(name, endpoint, events, "")
}

/// Like `subscription`, plus `extra` keys of the item (e.g.
/// `"secret: whsec_...\nactive: false"` or a `headers:` mapping).
pub fn subscription_with(name: &str, endpoint: &str, events: &[&str], extra: &str) -> String {
    let events = serde_json::to_string(events).expect("serialize events");
    format!(
        "- name: {}\n  endpoint: {}\n  events: {events}\n{}",
        yaml_str(name),
        yaml_str(endpoint),
        indent(&dedent(extra), 2)
    )
}

// ---------------------------------------------------------------------------
// TestDir and its config

/// A temporary directory for one daemon: `spool/`, `archive/`, `rejected/`
/// (created), `journal/` (left to the daemon), `control.sock`,
/// `config.yaml` and one `daemon-N.log` per daemon started.
///
/// Removed on drop; when the test panics and `CDRHOOK_TEST_KEEP` is set it
/// is kept and its path printed.
pub struct TestDir {
    tmp: TempDir,
    starts: AtomicUsize,
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl TestDir {
    pub fn new() -> TestDir {
        let builder = || {
            let mut b = tempfile::Builder::new();
            b.prefix("cdrhook-");
            b
        };
        let mut tmp = builder().tempdir().expect("create a temp dir");
        // A Unix socket path must fit in 108 bytes.
        if tmp.path().join("control.sock").as_os_str().len() > 100 {
            tmp = builder()
                .tempdir_in("/tmp")
                .expect("create a temp dir in /tmp");
        }
        for sub in ["spool", "archive", "rejected"] {
            let path = tmp.path().join(sub);
            fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        }
        TestDir {
            tmp,
            starts: AtomicUsize::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
    pub fn spool(&self) -> PathBuf {
        self.path().join("spool")
    }
    pub fn journal(&self) -> PathBuf {
        self.path().join("journal")
    }
    pub fn socket(&self) -> PathBuf {
        self.path().join("control.sock")
    }
    pub fn config_path(&self) -> PathBuf {
        self.path().join("config.yaml")
    }
    pub fn archive(&self) -> PathBuf {
        self.path().join("archive")
    }
    pub fn rejected(&self) -> PathBuf {
        self.path().join("rejected")
    }

    /// A config builder with the harness defaults; `.write()` it.
    pub fn config(&self) -> ConfigBuilder<'_> {
        ConfigBuilder {
            dir: self,
            subscriptions: String::new(),
            spool: String::new(),
            journal: String::new(),
            delivery: None,
            delivery_extra: String::new(),
        }
    }

    /// Writes the config: harness defaults, these subscription list items
    /// (e.g. from `subscription(...)`, or YAML starting with `- name:`;
    /// "" for none) and, if given, this whole `delivery` mapping instead of
    /// the default one (its body, e.g. `"timeout: 1s\nretry_schedule: [100ms]"`).
    pub fn write_config(&self, subscriptions_yaml: &str, delivery_yaml: Option<&str>) {
        let mut config = self.config().subscriptions(subscriptions_yaml);
        if let Some(delivery) = delivery_yaml {
            config = config.delivery(delivery);
        }
        config.write();
    }

    /// Replaces config.yaml with `yaml` as is, atomically (temp file +
    /// rename, as most editors do).
    pub fn write_raw_config(&self, yaml: &str) {
        let tmp = self.path().join(".config.yaml.tmp");
        fs::write(&tmp, yaml).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
        fs::rename(&tmp, self.config_path())
            .unwrap_or_else(|e| panic!("rename {} to config.yaml: {e}", tmp.display()));
    }

    /// Rewrites config.yaml with `yaml` in place (truncate + write, same
    /// inode).
    pub fn write_raw_config_in_place(&self, yaml: &str) {
        let path = self.config_path();
        fs::write(&path, yaml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Drops a file into this spool (see `harness::drop_file`).
    pub fn drop_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        super::drop_file(&self.spool(), name, bytes)
    }

    /// Names of the `*.json` files directly in the spool, sorted.
    pub fn spool_json_files(&self) -> Vec<String> {
        files_in(&self.spool())
            .into_iter()
            .filter(|n| n.ends_with(".json"))
            .collect()
    }

    /// Names of the files in `rejected/`, sorted.
    pub fn rejected_files(&self) -> Vec<String> {
        files_in(&self.rejected())
    }

    /// Names of the files in `archive/`, sorted.
    pub fn archive_files(&self) -> Vec<String> {
        files_in(&self.archive())
    }

    /// Runs `cdrhook ARGS --socket <control.sock>` (no daemon needed).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        cli_with_socket(&self.socket(), args)
    }

    /// Runs `cdrhook ARGS --json --socket <control.sock>`, asserts exit 0 and
    /// parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        cli_json_with_socket(&self.socket(), args)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            if std::env::var_os("CDRHOOK_TEST_KEEP").is_some() {
                self.tmp.disable_cleanup(true);
                eprintln!("test dir kept: {}", self.path().display());
            } else {
                eprintln!(
                    "test dir {} removed; set CDRHOOK_TEST_KEEP=1 to keep it",
                    self.path().display()
                );
            }
        }
    }
}

/// Names of the entries of `dir`, sorted (empty if it does not exist).
pub fn files_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Builds config.yaml (SPEC §2) for a `TestDir`. Defaults:
/// ```yaml
/// spool: {dir, rejected_dir, archive_dir: <absolute paths>, rescan_interval: 1s}
/// journal: {path: <dir>/journal}
/// control: {socket: <dir>/control.sock}
/// delivery: {timeout: 2s, retry_schedule: [200ms, 400ms, 800ms]}
/// ```
/// Fragments are YAML mapping bodies, may be indented (they are dedented).
pub struct ConfigBuilder<'a> {
    dir: &'a TestDir,
    subscriptions: String,
    spool: String,
    journal: String,
    delivery: Option<String>,
    delivery_extra: String,
}

impl ConfigBuilder<'_> {
    /// Subscription list items (`- name: ...`), e.g. from `subscription()`
    /// joined together. Empty: `subscriptions: []`.
    pub fn subscriptions(mut self, yaml: &str) -> Self {
        self.subscriptions = yaml.to_string();
        self
    }

    /// Keys of `spool:` set or overridden over the defaults, e.g.
    /// `"after_ingest: archive\nmax_file_size: 1KiB"`.
    pub fn spool(mut self, yaml: &str) -> Self {
        self.spool = yaml.to_string();
        self
    }

    /// Keys of `journal:` set or overridden over the defaults, e.g.
    /// `"retention: 1s"`.
    pub fn journal(mut self, yaml: &str) -> Self {
        self.journal = yaml.to_string();
        self
    }

    /// The whole `delivery:` mapping body, replacing the harness default;
    /// "" leaves the key out (the daemon's own defaults apply).
    pub fn delivery(mut self, yaml: &str) -> Self {
        self.delivery = Some(yaml.to_string());
        self
    }

    /// Keys of `delivery:` set or overridden over the harness default (or
    /// over what `.delivery()` gave), e.g. `"concurrency: 1"`.
    pub fn delivery_extra(mut self, yaml: &str) -> Self {
        self.delivery_extra = yaml.to_string();
        self
    }

    /// The config text.
    pub fn render(&self) -> String {
        let dir = self.dir;
        let spool_defaults = format!(
            "dir: {}\nrejected_dir: {}\narchive_dir: {}\nrescan_interval: 1s\n",
            yaml_path(&dir.spool()),
            yaml_path(&dir.rejected()),
            yaml_path(&dir.archive()),
        );
        let journal_defaults = format!("path: {}\n", yaml_path(&dir.journal()));
        let control = format!("socket: {}\n", yaml_path(&dir.socket()));
        let delivery_base = self
            .delivery
            .clone()
            .unwrap_or_else(|| "timeout: 2s\nretry_schedule: [200ms, 400ms, 800ms]\n".to_string());

        let mut out = String::new();
        for (name, body) in [
            ("spool", merge_yaml(&spool_defaults, &self.spool)),
            ("journal", merge_yaml(&journal_defaults, &self.journal)),
            ("control", control),
            ("delivery", merge_yaml(&delivery_base, &self.delivery_extra)),
        ] {
            if !body.trim().is_empty() {
                out.push_str(name);
                out.push_str(":\n");
                out.push_str(&indent(&body, 2));
            }
        }
        let subscriptions = dedent(&self.subscriptions);
        if subscriptions.is_empty() {
            out.push_str("subscriptions: []\n");
        } else {
            out.push_str("subscriptions:\n");
            out.push_str(&indent(&subscriptions, 2));
        }
        out
    }

    /// Writes config.yaml atomically (temp file + rename); returns the text.
    pub fn write(self) -> String {
        let text = self.render();
        self.dir.write_raw_config(&text);
        text
    }

    /// Writes config.yaml in place (same inode); returns the text.
    pub fn write_in_place(self) -> String {
        let text = self.render();
        self.dir.write_raw_config_in_place(&text);
        text
    }
}

// ---------------------------------------------------------------------------
// CLI

/// What a CLI invocation did.
#[derive(Clone, Debug)]
pub struct CliOutput {
    /// The exit code; -1 if killed by a signal.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Panics (showing the output) unless the exit code is `code`.
    #[track_caller]
    pub fn assert_status(&self, code: i32) -> &Self {
        assert_eq!(
            self.status, code,
            "expected exit code {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        );
        self
    }

    /// Stdout parsed as JSON (panics showing the output if it is not).
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}); exit {}\nstdout:\n{}\nstderr:\n{}",
                self.status, self.stdout, self.stderr
            )
        })
    }
}

/// A `Command` for the binary under test, with variables that would change
/// its behaviour (`CDRHOOK_CONFIG`, `RUST_LOG`, systemd's) removed.
pub fn cdrhook_command() -> Command {
    let mut cmd = Command::new(BIN);
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cdrhook ARGS` exactly (e.g. `check-config PATH`).
pub fn cdrhook(args: &[&str]) -> CliOutput {
    let mut cmd = cdrhook_command();
    cmd.args(args);
    run_command(cmd, CLI_DEADLINE)
}

fn cli_with_socket(socket: &Path, args: &[&str]) -> CliOutput {
    let mut cmd = cdrhook_command();
    cmd.args(args).arg("--socket").arg(socket);
    run_command(cmd, CLI_DEADLINE)
}

#[track_caller]
fn cli_json_with_socket(socket: &Path, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let out = cli_with_socket(socket, &args);
    out.assert_status(0);
    out.json()
}

/// Runs `cmd` (stdin empty, output captured); kills it and panics if it
/// takes longer than `deadline`.
pub fn run_command(mut cmd: Command, deadline: Duration) -> CliOutput {
    let description = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {description}: {e}"));
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = stdout.join().unwrap_or_default();
                let stderr = stderr.join().unwrap_or_default();
                panic!(
                    "{description} did not finish within {deadline:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
                );
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("wait for {description}: {e}"),
        }
    };
    CliOutput {
        status: status.code().unwrap_or(-1),
        stdout: stdout.join().expect("stdout reader thread"),
        stderr: stderr.join().expect("stderr reader thread"),
    }
}

// ---------------------------------------------------------------------------
// Control socket

/// Connects to `socket`, writes `bytes` as they are, and reads one line
/// back (without its `\n`). `Ok(None)` if the peer closed without a line.
/// A write error (the peer may refuse a huge request and close) is returned
/// only if no line can be read after it.
pub fn control_request_raw(
    socket: &Path,
    bytes: &[u8],
    timeout: Duration,
) -> io::Result<Option<String>> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let written = stream.write_all(bytes).and_then(|()| stream.flush());
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let read = reader.read_until(b'\n', &mut line);
    match (read, written) {
        (Ok(0), Err(e)) | (Err(_), Err(e)) => Err(e),
        (Ok(0), Ok(())) => Ok(None),
        (Ok(_), _) => {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            Ok(Some(String::from_utf8_lossy(&line).into_owned()))
        }
        (Err(e), Ok(())) => Err(e),
    }
}

/// One request/response round trip: writes `line` (a `\n` is added if
/// missing), returns the response line. Errors if no line comes back.
pub fn control_request(socket: &Path, line: &str) -> io::Result<String> {
    let mut bytes = line.as_bytes().to_vec();
    if !line.ends_with('\n') {
        bytes.push(b'\n');
    }
    control_request_raw(socket, &bytes, REQUEST_TIMEOUT)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without answering",
        )
    })
}

/// True if the control socket answers a status request with JSON.
fn socket_answers(socket: &Path) -> bool {
    matches!(
        control_request_raw(socket, b"{\"cmd\":\"status\"}\n", Duration::from_secs(2)),
        Ok(Some(line)) if serde_json::from_str::<serde_json::Value>(&line).is_ok()
    )
}

// ---------------------------------------------------------------------------
// Daemon

/// A running `cdrhook run`. Killed with SIGKILL on drop; if the test is
/// panicking, the tail of its log is printed first.
pub struct Daemon {
    child: Child,
    exited: Option<ExitStatus>,
    log_path: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    /// Starts `cdrhook run --config <dir>/config.yaml` and waits (20 s) until
    /// its control socket answers. Panics with its log if it exits first.
    #[track_caller]
    pub fn start(dir: &TestDir) -> Daemon {
        Daemon::start_with_env(dir, &[])
    }

    /// `start`, with extra environment variables (e.g. for `${VAR}` in the
    /// config, or `RUST_LOG` to override `debug`).
    #[track_caller]
    pub fn start_with_env(dir: &TestDir, env: &[(&str, &str)]) -> Daemon {
        let mut daemon = Daemon::spawn(dir, env);
        daemon.wait_ready(START_DEADLINE);
        daemon
    }

    /// Spawns `cdrhook run --config <dir>/config.yaml` without waiting.
    pub fn spawn(dir: &TestDir, env: &[(&str, &str)]) -> Daemon {
        let config = dir.config_path();
        let config = config.to_str().expect("UTF-8 config path");
        Daemon::spawn_args(dir, &["run", "--config", config], env)
    }

    /// Spawns `cdrhook ARGS` as the daemon of `dir` (its log goes to a new
    /// `daemon-N.log` there; `RUST_LOG=debug` unless `env` sets it) without
    /// waiting.
    pub fn spawn_args(dir: &TestDir, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_args_as(dir, args, env, None)
    }

    /// `cdrhook run --config <dir>/config.yaml` as user `uid` and group
    /// `gid` (no supplementary groups), waiting until it answers. Needs
    /// root; the caller gives that user access to `dir`.
    #[track_caller]
    pub fn start_as(dir: &TestDir, uid: u32, gid: u32, env: &[(&str, &str)]) -> Daemon {
        let config = dir.config_path();
        let config = config.to_str().expect("UTF-8 config path");
        let mut daemon =
            Daemon::spawn_args_as(dir, &["run", "--config", config], env, Some((uid, gid)));
        daemon.wait_ready(START_DEADLINE);
        daemon
    }

    fn spawn_args_as(
        dir: &TestDir,
        args: &[&str],
        env: &[(&str, &str)],
        user: Option<(u32, u32)>,
    ) -> Daemon {
        let n = dir.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let log_path = dir.path().join(format!("daemon-{n}.log"));
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let log_err = log.try_clone().expect("clone the log file handle");
        let mut cmd = cdrhook_command();
        cmd.args(args)
            .env("RUST_LOG", "debug")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (key, value) in env {
            cmd.env(key, value);
        }
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BIN} {args:?}: {e}"));
        Daemon {
            child,
            exited: None,
            log_path,
            socket: dir.socket(),
        }
    }

    /// Waits until the control socket answers `{"cmd":"status"}` with any
    /// JSON line. Panics with the log if the process exits or `deadline`
    /// passes first.
    #[track_caller]
    pub fn wait_ready(&mut self, deadline: Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_exit() {
                panic!(
                    "cdrhook exited ({status}) before its control socket answered; log:\n{}",
                    self.log()
                );
            }
            if socket_answers(&self.socket) {
                return;
            }
            if start.elapsed() >= deadline {
                panic!(
                    "cdrhook's control socket {} did not answer within {deadline:?}; log:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Runs the daemon of `dir`, expecting it to fail to start: waits (20 s)
    /// for it to exit and returns its exit status and log.
    #[track_caller]
    pub fn start_expect_failure(dir: &TestDir) -> (ExitStatus, String) {
        Daemon::start_expect_failure_with_env(dir, &[])
    }

    /// `start_expect_failure` with extra environment variables.
    #[track_caller]
    pub fn start_expect_failure_with_env(
        dir: &TestDir,
        env: &[(&str, &str)],
    ) -> (ExitStatus, String) {
        let mut daemon = Daemon::spawn(dir, env);
        let status = daemon.wait_exit(START_DEADLINE);
        (status, daemon.log())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended (reaping it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait on cdrhook");
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits until the process exits. Panics with the log after `deadline`.
    #[track_caller]
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if start.elapsed() >= deadline {
                panic!(
                    "cdrhook (pid {}) still running after {deadline:?}; log:\n{}",
                    self.pid(),
                    self.log()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for killed cdrhook");
        self.exited = Some(status);
        status
    }

    /// Sends signal `sig` (e.g. `SIGHUP`). Panics if the process was already
    /// reaped (its pid could belong to someone else by now).
    #[track_caller]
    pub fn signal(&self, sig: i32) {
        if let Some(status) = self.exited {
            panic!("cannot send signal {sig}: cdrhook already exited ({status})");
        }
        let pid = i32::try_from(self.pid()).expect("pid fits in i32");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
        // unreaped child, so it cannot have been reused.
        if unsafe { kill(pid, sig) } != 0 {
            panic!("kill({pid}, {sig}) failed: {}", io::Error::last_os_error());
        }
    }

    #[track_caller]
    pub fn sigterm(&self) {
        self.signal(SIGTERM);
    }
    #[track_caller]
    pub fn sigint(&self) {
        self.signal(SIGINT);
    }
    #[track_caller]
    pub fn sighup(&self) {
        self.signal(SIGHUP);
    }
    #[track_caller]
    pub fn sigusr1(&self) {
        self.signal(SIGUSR1);
    }
    #[track_caller]
    pub fn sigusr2(&self) {
        self.signal(SIGUSR2);
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }

    /// Waits until the log contains `needle`.
    #[track_caller]
    pub fn wait_log(&self, deadline: Duration, needle: &str) {
        wait_for(
            deadline,
            &format!("daemon log to contain {needle:?}"),
            || self.log_contains(needle),
        );
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `cdrhook ARGS --socket <control.sock>`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        cli_with_socket(&self.socket, args)
    }

    /// Runs `cdrhook ARGS --json --socket <control.sock>`, asserts exit 0
    /// and parses stdout.
    #[track_caller]
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        cli_json_with_socket(&self.socket, args)
    }

    /// `cdrhook status --json`.
    #[track_caller]
    pub fn status(&self) -> serde_json::Value {
        self.cli_json(&["status"])
    }

    /// The entry of subscription `name` in `status.subscriptions`.
    #[track_caller]
    pub fn subscription_status(&self, name: &str) -> serde_json::Value {
        let status = self.status();
        status["subscriptions"]
            .as_array()
            .and_then(|subs| subs.iter().find(|s| s["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no subscription {name:?} in status: {status:#}"))
    }

    /// A counter (`pending`, `retrying`, `dead`, `delivered`) of subscription
    /// `name` from `status`.
    #[track_caller]
    pub fn counter(&self, name: &str, key: &str) -> u64 {
        let sub = self.subscription_status(name);
        sub[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key:?} of {name:?} is not a count: {sub:#}"))
    }

    /// Raw control-socket round trip: writes `line`, returns the response
    /// line. Panics (with the log) if there is none.
    #[track_caller]
    pub fn request(&self, line: &str) -> String {
        control_request(&self.socket, line).unwrap_or_else(|e| {
            panic!(
                "control request {line:?} failed: {e}; log tail:\n{}",
                self.log_tail(50)
            )
        })
    }

    /// `request` with a JSON value, the response parsed.
    #[track_caller]
    pub fn request_json(&self, request: &serde_json::Value) -> serde_json::Value {
        let line = self.request(&request.to_string());
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("control response is not JSON ({e}): {line}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- cdrhook log {} (last 200 lines) ----\n{}\n---- end of log ----",
                self.log_path.display(),
                self.log_tail(200)
            );
        }
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
