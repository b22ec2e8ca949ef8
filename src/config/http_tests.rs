//! The `http` block (contract §9): listen addresses, the token file, the
//! refusals with their positions, and restart-only changes.

use super::*;
use std::os::unix::fs::PermissionsExt;

const CONFIG: &str = "/etc/cdrhook/config.yaml";

fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    parse(text, &dir.join("config.yaml"), &|_| None)
}

fn token_dir(token: &str, mode: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("http.token");
    std::fs::write(&path, token).expect("write token");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    dir
}

#[track_caller]
fn refused_at(text: &str, dir: &Path, line: usize, column: usize) -> String {
    match parse_in(dir, text) {
        Err(ConfigError::Invalid {
            line: l,
            column: c,
            message,
            ..
        }) => {
            assert_eq!((l, c), (line, column), "{message}");
            message
        }
        other => panic!("expected a positioned refusal, got {other:?}"),
    }
}

#[test]
fn http_is_off_unless_configured() {
    let c = parse("subscriptions:\n", Path::new(CONFIG), &|_| None).expect("valid");
    assert_eq!(c.http, None);
    let c = parse("http: ~\nsubscriptions:\n", Path::new(CONFIG), &|_| None).expect("valid");
    assert_eq!(c.http, None);
}

#[test]
fn listen_addresses_are_read() {
    let dir = token_dir("s3cret-token\n", 0o600);
    let d = dir.path();
    for (listen, want) in [
        (
            "unix:/run/cdrhook/http.sock",
            HttpListen::Unix(PathBuf::from("/run/cdrhook/http.sock")),
        ),
        // Relative to the config's directory, like every path.
        (
            "unix:run/http.sock",
            HttpListen::Unix(d.join("run/http.sock")),
        ),
        (
            "127.0.0.1:9787",
            HttpListen::Tcp("127.0.0.1:9787".parse().expect("addr")),
        ),
        (
            "\"[::1]:9787\"",
            HttpListen::Tcp("[::1]:9787".parse().expect("addr")),
        ),
        (
            "0.0.0.0:9787",
            HttpListen::Tcp("0.0.0.0:9787".parse().expect("addr")),
        ),
    ] {
        let text = format!("http:\n  listen: {listen}\n  token_file: http.token\nsubscriptions:\n");
        let c = parse_in(d, &text).unwrap_or_else(|e| panic!("{listen}: {e}"));
        assert!(!format!("{:?}", c.http).contains("s3cret"));
        let http = c.http.expect("http");
        assert_eq!(http.listen, want, "{listen}");
        assert_eq!(http.token_file, Some(d.join("http.token")));
        let token = http.token.expect("token");
        // Trimmed, and never shown.
        assert_eq!(token.expose(), "s3cret-token");
        assert_eq!(token.to_string(), "***");
    }
}

#[test]
fn a_unix_socket_needs_no_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let c = parse_in(
        dir.path(),
        "http:\n  listen: unix:/run/cdrhook/http.sock\nsubscriptions:\n",
    )
    .expect("valid");
    assert_eq!(c.http.expect("http").token, None);
}

#[test]
fn refusals_name_the_line_and_column() {
    let dir = token_dir("a-token", 0o600);
    let d = dir.path();
    // TCP without a token file: refused at the block.
    let m = refused_at("http:\n  listen: 127.0.0.1:9787\nsubscriptions:\n", d, 2, 3);
    assert!(m.contains("http.token_file is required"), "{m}");
    // Not an address.
    let m = refused_at(
        "http:\n  listen: localhost:9787\n  token_file: t\nsubscriptions:\n",
        d,
        2,
        11,
    );
    assert!(m.contains("not a listen address"), "{m}");
    refused_at("http:\n  listen: \"unix:\"\nsubscriptions:\n", d, 2, 11);
    refused_at("http:\n  listen: 127.0.0.1\nsubscriptions:\n", d, 2, 11);
    // A missing or empty token file.
    let m = refused_at(
        "http:\n  listen: 127.0.0.1:9787\n  token_file: nope.token\nsubscriptions:\n",
        d,
        3,
        15,
    );
    assert!(m.contains("cannot read http.token_file"), "{m}");
    std::fs::write(d.join("empty.token"), " \n").expect("write");
    let m = refused_at(
        "http:\n  listen: 127.0.0.1:9787\n  token_file: empty.token\nsubscriptions:\n",
        d,
        3,
        15,
    );
    assert!(m.contains("is empty"), "{m}");
    // Unknown keys, and no listen.
    refused_at(
        "http:\n  listen: unix:/x.sock\n  port: 80\nsubscriptions:\n",
        d,
        3,
        3,
    );
    let m = refused_at("http:\n  token_file: http.token\nsubscriptions:\n", d, 2, 3);
    assert!(m.contains("listen"), "{m}");
}

#[test]
fn the_control_socket_is_not_the_http_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    match parse_in(
        dir.path(),
        "control:\n  socket: /run/c.sock\nhttp:\n  listen: unix:/run/c.sock\nsubscriptions:\n",
    ) {
        Err(e @ ConfigError::Unpositioned { .. }) => {
            assert!(e.to_string().contains("control socket"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_token_file_others_can_read_is_warned_about() {
    let dir = token_dir("tok-tok-tok", 0o644);
    let c = parse_in(
        dir.path(),
        "http:\n  listen: 127.0.0.1:0\n  token_file: http.token\nsubscriptions:\n",
    )
    .expect("valid");
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("http.token_file") && w.contains("chmod o-r")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn http_changes_need_a_restart() {
    let dir = token_dir("one-token", 0o600);
    let d = dir.path();
    std::fs::write(d.join("other.token"), "two-token").expect("write");
    let c = |text: &str| parse_in(d, text).expect("valid");
    let off = c("subscriptions:\n");
    let unix = c("http:\n  listen: unix:/run/h.sock\nsubscriptions:\n");
    let tcp = c("http:\n  listen: 127.0.0.1:9787\n  token_file: http.token\nsubscriptions:\n");
    let tcp2 = c("http:\n  listen: 127.0.0.1:9787\n  token_file: other.token\nsubscriptions:\n");
    assert_eq!(off.restart_required(&off), Vec::<&str>::new());
    assert_eq!(off.restart_required(&unix), ["http.listen"]);
    assert_eq!(
        unix.restart_required(&tcp),
        ["http.listen", "http.token_file"]
    );
    assert_eq!(tcp.restart_required(&tcp2), ["http.token_file"]);
    assert_eq!(tcp.restart_required(&tcp), Vec::<&str>::new());
}
