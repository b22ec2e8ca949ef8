//! Intake: the spool watch survives its directory going away.

use std::fs;
use std::time::Duration;

use crate::harness::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// The spool directory (and `.inflight/` inside it) removed and made again
/// while the daemon runs, with a rescan interval far beyond the test: only
/// a watcher that watches the new directory finds the file, and only an
/// intake that makes `.inflight/` again can take it in.
#[test]
fn a_spool_removed_and_made_again_is_watched_and_taken_in_from_again() {
    let receiver = Receiver::start();
    let dir = TestDir::new();
    dir.config()
        .subscriptions(&subscription("all", &receiver.url("/all"), &["*"]))
        .spool("rescan_interval: 1h")
        .write();
    let mut daemon = Daemon::start(&dir);
    dir.drop_file("before.json", &make_cdr(1));
    receiver.wait_for_requests("/all", 1, DEADLINE);
    wait_for(DEADLINE, "before.json to leave .inflight/", || {
        fs::read_dir(dir.spool().join(".inflight")).is_ok_and(|d| d.count() == 0)
    });

    fs::remove_dir_all(dir.spool()).expect("remove the spool");
    daemon.wait_log(DEADLINE, "was removed or moved");
    fs::create_dir(dir.spool()).expect("make the spool again");
    daemon.wait_log(DEADLINE, "spool watcher: watching");
    dir.drop_file("after.json", &make_cdr(2));
    let got = receiver.wait_for_requests("/all", 2, DEADLINE);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].body, make_cdr(2), "the new file's CDR");
    wait_for(
        DEADLINE,
        "after.json to leave the spool and .inflight/",
        || {
            !dir.spool().join("after.json").exists()
                && fs::read_dir(dir.spool().join(".inflight")).is_ok_and(|d| d.count() == 0)
        },
    );
    assert!(daemon.is_running());
}
