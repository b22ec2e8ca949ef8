//! The journal's unit tests: real sled databases in temporary directories.

use super::queries::bisect;
use super::*;
use crate::cdr::parse_file;
use crate::config::Subscription;
use crate::time::now_ms;
use std::path::Path;
use std::time::Duration;

/// The routing the daemon does (`delivery::route`), for these tests.
fn route_to<'a>(subs: &'a [&'a Subscription]) -> impl Fn(&Cdr) -> Vec<String> + 'a {
    move |cdr| crate::delivery::route::subscriptions_for(subs.iter().copied(), cdr)
}

fn sub(name: &str) -> Subscription {
    let yaml = format!(
        "subscriptions:\n  - name: {name}\n    endpoint: http://127.0.0.1:1/x\n    events: [\"*\"]\n"
    );
    let cfg =
        crate::config::parse(&yaml, Path::new("/tmp/c.yaml"), &|_| None).expect("test config");
    cfg.subscriptions[0].clone()
}

fn file(name: &str, body: &str) -> IngestFile {
    IngestFile {
        inflight_name: format!("x-{name}"),
        cdrs: parse_file(body.as_bytes()).expect("cdr"),
        identity: None,
    }
}

/// Opens what was just closed: sled's I/O threads can hold a dropped
/// database's file lock for a moment, so while `locked` says an error is
/// that, `open` is tried again until a deadline; any other outcome is
/// returned.
fn after_close<T, E>(
    open: impl Fn() -> std::result::Result<T, E>,
    locked: impl Fn(&E) -> bool,
) -> std::result::Result<T, E> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Err(e) if locked(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The journal at `path`, just closed.
fn open_after_close(path: &Path) -> Result<Journal> {
    after_close(
        || Journal::open(path, CACHE_BYTES),
        |e| {
            matches!(
                e,
                JournalError::Sled {
                    context: "open",
                    ..
                }
            )
        },
    )
}

/// The raw database at `path`, just closed.
fn sled_after_close(path: &Path) -> sled::Db {
    after_close(
        || sled::open(path),
        |e| matches!(e, sled::Error::Io(e) if e.to_string().contains("could not acquire lock")),
    )
    .expect("sled")
}

/// A journal opened as the daemon opens it.
fn open_at(path: &Path) -> Journal {
    Journal::open(path, CACHE_BYTES).expect("open")
}

fn reopen(path: &Path) -> Journal {
    open_after_close(path).expect("reopen")
}

fn open_tmp() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().expect("tempdir");
    let j = open_at(&dir.path().join("j"));
    (dir, j)
}

fn finish(j: &Journal, id: DeliveryId, state: State) -> Vec<String> {
    let mut d = j.delivery(id).expect("read").expect("exists");
    d.state = state;
    d.attempts += 1;
    d.ended_ms = Some(now_ms());
    let status = if state == State::Delivered { 200 } else { 500 };
    let a = attempt_for(j, &d, status, Trigger::Auto);
    j.record_attempt(&d, &a).expect("record")
}

/// An attempt on `d` with this status, numbered `d.attempts`.
fn attempt_for(j: &Journal, d: &Delivery, status: u16, trigger: Trigger) -> Attempt {
    Attempt {
        id: j.next_id().expect("id"),
        delivery_id: d.id,
        time_ms: now_ms(),
        subscription: d.subscription.clone(),
        event_type: d.event_type.clone(),
        call_id: d.call_id.clone(),
        webhook_id: d.cdr_id.clone(),
        attempt: d.attempts,
        status: Some(status),
        error: None,
        duration_ms: 1,
        trigger,
        request_headers: vec![],
        response_headers: vec![],
        response_body: None,
    }
}

#[test]
fn ingest_is_idempotent_per_cdr() {
    let (_d, j) = open_tmp();
    let (a, b) = (sub("a"), sub("b"));
    let subs = [&a, &b];
    let f1 = file("one.json", r#"{"QueueId":"q","CallId":"1"}"#);
    let out = j
        .ingest(std::slice::from_ref(&f1), &route_to(&subs))
        .expect("ingest");
    assert_eq!(out.new_deliveries.len(), 2);
    assert_eq!(out.new_cdrs, 1);
    let again = j.ingest(&[f1], &route_to(&subs)).expect("again");
    assert!(again.new_deliveries.is_empty());
    assert_eq!(again.known_cdrs, 1);
    assert_eq!(j.counts()["a"].pending, 1);
}

#[test]
fn open_deliveries_are_found_at_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = sub("a");
    {
        let j = open_at(&dir.path().join("j"));
        let out = j
            .ingest(
                &[
                    file("1.json", r#"{"QueueId":"1"}"#),
                    file("2.json", r#"{"QueueId":"2"}"#),
                ],
                &route_to(&[&a]),
            )
            .expect("ingest");
        finish(&j, out.new_deliveries[0].1, State::Delivered);
        j.flush().expect("flush");
    }
    let j = reopen(&dir.path().join("j"));
    let open = j.take_open_deliveries();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].subscription, "a");
    assert!(j.take_open_deliveries().is_empty(), "handed over once");
}

#[test]
fn file_finishes_only_when_every_delivery_ended() {
    let (_d, j) = open_tmp();
    let (a, b) = (sub("a"), sub("b"));
    let out = j
        .ingest(&[file("f.json", r#"{"IvrId":"i"}"#)], &route_to(&[&a, &b]))
        .expect("ingest");
    assert!(out.finished_files.is_empty());
    let ids: Vec<_> = out.new_deliveries.iter().map(|(_, id)| *id).collect();
    assert!(finish(&j, ids[0], State::Delivered).is_empty());
    assert_eq!(
        finish(&j, ids[1], State::Dead),
        vec!["x-f.json".to_string()]
    );
    let c = j.counts();
    assert_eq!((c["a"].delivered, c["b"].dead, c["b"].pending), (1, 1, 0));
    assert_eq!(j.failed_deliveries(None, None).expect("failed").len(), 1);
}

#[test]
fn an_array_file_finishes_with_its_last_cdr() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let out = j
        .ingest(
            &[file("arr.json", r#"[{"QueueId":"1"},{"QueueId":"2"}]"#)],
            &route_to(&[&a]),
        )
        .expect("ingest");
    assert_eq!(out.new_deliveries.len(), 2);
    assert!(finish(&j, out.new_deliveries[0].1, State::Delivered).is_empty());
    assert_eq!(
        finish(&j, out.new_deliveries[1].1, State::Delivered),
        vec!["x-arr.json".to_string()]
    );
}

#[test]
fn a_known_cdr_in_a_new_file_finishes_that_file_at_once() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let body = r#"{"QueueId":"1"}"#;
    let out = j
        .ingest(&[file("1.json", body)], &route_to(&[&a]))
        .expect("ingest");
    finish(&j, out.new_deliveries[0].1, State::Delivered);
    let again = j
        .ingest(&[file("2.json", body)], &route_to(&[&a]))
        .expect("again");
    assert_eq!(again.finished_files, vec!["x-2.json".to_string()]);
    assert!(j
        .cdrs_finished_by_ids(&file("3.json", body).cdrs)
        .expect("check"));
}

#[test]
fn unmatched_cdr_is_journaled_and_its_file_finished() {
    let (_d, j) = open_tmp();
    let out = j
        .ingest(&[file("u.json", r#"{"QueueId":"q"}"#)], &route_to(&[]))
        .expect("ingest");
    assert_eq!(out.unmatched_cdrs, 1);
    assert_eq!(out.finished_files, vec!["x-u.json".to_string()]);
    assert_eq!(j.cdrs_since(0).expect("since").len(), 1);
}

#[test]
fn unmatched_counts_survive_a_reopen_and_a_record_without_them_reads_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j");
    // What intake's routing says of every CDR here: `a` gets it, `f`'s
    // filter excluded it (named twice: counted once per CDR).
    let route = |_: &Cdr| Routing {
        to: vec!["a".into()],
        unmatched: vec!["f".into(), "f".into()],
    };
    let (one, two) = (
        r#"{"QueueId":"q","CallId":"1"}"#,
        r#"{"QueueId":"q","CallId":"2"}"#,
    );
    {
        let j = open_at(&path);
        // The same CDR twice in one batch is one CDR, counted once.
        let files = [
            file("1.json", one),
            file("2.json", two),
            file("3.json", one),
        ];
        j.ingest_routed(&files, &route).expect("ingest");
        // A CDR journaled before is not routed, so not counted again.
        j.ingest_routed(&[file("4.json", two)], &route)
            .expect("again");
        let c = j.counts();
        assert_eq!((c["f"].unmatched, c["a"].unmatched), (2, 0));
        assert_eq!(c["f"].pending, 0, "no delivery for f");
        j.close_clean().expect("close clean");
    }
    {
        // A clean stop keeps them; then a stop without the mark (a crash
        // after an ingest) keeps the last flushed value.
        let j = reopen(&path);
        assert_eq!(j.counts()["f"].unmatched, 2);
        j.ingest_routed(&[file("5.json", r#"{"QueueId":"q","CallId":"3"}"#)], &route)
            .expect("ingest");
        assert_eq!(j.counts()["f"].unmatched, 3);
    }
    let j = reopen(&path);
    assert_eq!(j.counts()["f"].unmatched, 3, "after an unclean stop");
    // A counts record written before the field existed (a format-3
    // journal of an earlier cdrhook) reads it as 0, the rest unchanged.
    let f = lock(&j.books).by_name["f"];
    let mut old = records::CountsRec {
        delivered: 5,
        ..Default::default()
    }
    .encode();
    assert_eq!(old.pop(), Some(0), "unmatched is the last byte");
    j.close_clean().expect("close clean");
    let h = j.h().expect("open");
    h.tree
        .insert(records::counts_key(f), old)
        .expect("write an old record");
    j.flush().expect("flush");
    drop((h, j));
    let c = &reopen(&path).counts()["f"];
    assert_eq!((c.delivered, c.unmatched), (5, 0));
}

#[test]
fn replay_creates_a_delivery_once() {
    let (_d, j) = open_tmp();
    j.ingest(&[file("u.json", r#"{"QueueId":"q"}"#)], &route_to(&[]))
        .expect("ingest");
    let meta = j.cdrs_since(0).expect("since").remove(0);
    let (d, created) = j
        .ensure_delivery(&meta, "new", Trigger::Replay)
        .expect("ensure");
    assert!(created);
    let (again, created) = j
        .ensure_delivery(&meta, "new", Trigger::Replay)
        .expect("ensure");
    assert!(!created);
    assert_eq!(d.id, again.id);
    assert_eq!(j.counts()["new"].pending, 1);
}

#[test]
fn an_open_test_webhook_is_found_at_open_and_can_be_ended_without_an_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal");
    let id = {
        let j = Journal::open(&path, 1 << 20).expect("open");
        let meta = j
            .put_cdr(&Cdr {
                id: "t1".into(),
                event_type: crate::model::EventType::Test,
                call_id: None,
                body: b"{}".to_vec(),
            })
            .expect("put");
        let (d, _) = j
            .ensure_delivery(&meta, "crm", Trigger::Test)
            .expect("ensure");
        j.flush().expect("flush");
        d.id
    };
    let j = reopen(&path);
    let open = j.take_open_deliveries();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].origin, Trigger::Test);
    let files = j.end_delivery(id, "restarted").expect("end");
    assert_eq!(files, Some(vec![]), "a test CDR came in no file");
    let d = j.delivery(id).expect("read").expect("kept");
    assert_eq!((d.state, d.attempts), (State::Dead, 0));
    assert_eq!(d.last_error.as_deref(), Some("restarted"));
    let c = &j.counts()["crm"];
    assert_eq!((c.pending, c.dead), (0, 1));
    assert_eq!(c.last_error.as_deref(), Some("restarted"));
    assert_eq!(
        j.end_delivery(id, "again").expect("end"),
        None,
        "ended once"
    );
}

#[test]
fn prune_keeps_open_deliveries_and_removes_ended_ones() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let out = j
        .ingest(
            &[
                file("1.json", r#"{"QueueId":"1"}"#),
                file("2.json", r#"{"QueueId":"2"}"#),
            ],
            &route_to(&[&a]),
        )
        .expect("ingest");
    finish(&j, out.new_deliveries[0].1, State::Delivered);
    let stats = j.prune(now_ms() + 1000, 100).expect("prune");
    assert_eq!(
        stats,
        PruneStats {
            cdrs: 1,
            deliveries: 1,
            attempts: 1
        }
    );
    assert!(j.delivery(out.new_deliveries[1].1).expect("read").is_some());
    assert_eq!(j.counts()["a"].pending, 1);
    assert_eq!(j.counts()["a"].delivered, 0);
    assert_eq!(j.cdrs_since(0).expect("since").len(), 1);
}

#[test]
fn attempts_are_listed_newest_first_with_filters() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let out = j
        .ingest(
            &[
                file("1.json", r#"{"QueueId":"1","CallId":"c1"}"#),
                file("2.json", r#"{"QueueId":"2","CallId":"c2"}"#),
            ],
            &route_to(&[&a]),
        )
        .expect("ingest");
    finish(&j, out.new_deliveries[0].1, State::Delivered);
    finish(&j, out.new_deliveries[1].1, State::Dead);
    let all = j
        .attempts(&AttemptFilter {
            limit: 10,
            ..Default::default()
        })
        .expect("list");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].call_id.as_deref(), Some("c2"));
    let failed = j
        .attempts(&AttemptFilter {
            failed: true,
            limit: 10,
            ..Default::default()
        })
        .expect("failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status, Some(500));
    let d = j
        .delivery(out.new_deliveries[1].1)
        .expect("read")
        .expect("d");
    assert_eq!(j.attempts_of(&d).expect("of").len(), 1);
}

#[test]
fn the_same_cdr_twice_in_one_array_is_one_cdr() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let out = j
        .ingest(
            &[file("dup.json", r#"[{"QueueId":"1"},{"QueueId":"1"}]"#)],
            &route_to(&[&a]),
        )
        .expect("ingest");
    assert_eq!(out.new_deliveries.len(), 1);
    assert_eq!(out.new_cdrs, 1);
    assert_eq!(
        finish(&j, out.new_deliveries[0].1, State::Delivered),
        vec!["x-dup.json".to_string()]
    );
}

#[test]
fn a_stale_copy_never_reopens_an_ended_delivery() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let out = j
        .ingest(&[file("1.json", r#"{"QueueId":"1"}"#)], &route_to(&[&a]))
        .expect("ingest");
    let id = out.new_deliveries[0].1;
    let mut stale = j.delivery(id).expect("read").expect("d");
    finish(&j, id, State::Delivered);
    // A failed resend that read the delivery before it was delivered.
    stale.state = State::Retrying;
    stale.next_at_ms = Some(now_ms() + 1000);
    stale.attempts = 2;
    let attempt = attempt_for(&j, &stale, 500, Trigger::Resend);
    j.record_attempt(&stale, &attempt).expect("record");
    let d = j.delivery(id).expect("read").expect("d");
    assert_eq!(d.state, State::Delivered);
    assert_eq!(
        j.attempts_of(&d).expect("of").len(),
        2,
        "both attempts in the history"
    );
    assert_eq!(j.counts()["a"].retrying, 0);
}

#[test]
fn a_pruned_sibling_does_not_hold_its_file_back() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let out = j
        .ingest(
            &[file("arr.json", r#"[{"QueueId":"1"},{"QueueId":"2"}]"#)],
            &route_to(&[&a]),
        )
        .expect("ingest");
    finish(&j, out.new_deliveries[0].1, State::Delivered);
    let stats = j.prune(now_ms() + 1000, 100).expect("prune");
    assert_eq!(stats.cdrs, 1, "the ended one is pruned, the open one kept");
    assert_eq!(
        finish(&j, out.new_deliveries[1].1, State::Delivered),
        vec!["x-arr.json".to_string()]
    );
}

#[test]
fn prune_steps_over_open_cdrs_from_pass_to_pass() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let out = j
        .ingest(
            &[
                file("1.json", r#"{"QueueId":"1"}"#),
                file("2.json", r#"{"QueueId":"2"}"#),
                file("3.json", r#"{"QueueId":"3"}"#),
            ],
            &route_to(&[&a]),
        )
        .expect("ingest");
    // The oldest stays open; the two after it end.
    finish(&j, out.new_deliveries[1].1, State::Delivered);
    finish(&j, out.new_deliveries[2].1, State::Delivered);
    let cutoff = now_ms() + 1000;
    let first = j.prune(cutoff, 1).expect("pass 1");
    assert_eq!(first.cdrs, 0, "pass 1 sees only the open one");
    let second = j.prune(cutoff, 1).expect("pass 2");
    assert_eq!(second.cdrs, 1, "pass 2 goes on after it");
    let third = j.prune(cutoff, 1).expect("pass 3");
    assert_eq!(third.cdrs, 1);
    assert_eq!(
        j.cdrs_since(0).expect("since").len(),
        1,
        "the open one stays"
    );
}

#[test]
fn bisection_probes_strictly_between_and_stops_when_adjacent() {
    for (lo, hi, want) in [
        (0, 1, None),
        (5, 5, None),
        (5, 6, None),
        (5, 7, Some(6)),
        (0, 10, Some(5)),
        (10, 0, None),
        (u64::MAX - 2, u64::MAX, Some(u64::MAX - 1)),
    ] {
        assert_eq!(bisect(lo, hi), want, "{lo}..{hi}");
    }
}

/// `n` one-CDR files, each its own ingest batch, for subscription `a`.
fn ingest_n(j: &Journal, a: &Subscription, n: usize) -> Vec<DeliveryId> {
    (0..n)
        .map(|i| {
            let body = format!(r#"{{"QueueId":"{i}","CallId":"c{i}"}}"#);
            let out = j
                .ingest(&[file(&format!("{i}.json"), &body)], &route_to(&[a]))
                .expect("ingest");
            out.new_deliveries[0].1
        })
        .collect()
}

#[test]
fn a_walk_since_a_time_starts_at_the_first_cdr_received_then() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    assert_eq!(j.cdr_range_since(0).expect("empty"), None);
    ingest_n(&j, &a, 7);
    std::thread::sleep(Duration::from_millis(5));
    let cut = now_ms();
    std::thread::sleep(Duration::from_millis(5));
    for i in 0..5 {
        let body = format!(r#"{{"QueueId":"late{i}"}}"#);
        j.ingest(&[file(&format!("l{i}.json"), &body)], &route_to(&[&a]))
            .expect("ingest");
    }
    let metas = j.cdrs_since(cut).expect("since");
    assert_eq!(metas.len(), 5, "only the ones after the cut");
    assert!(metas.iter().all(|m| m.received_ms >= cut));
    assert!(
        metas.windows(2).all(|w| w[0].seq < w[1].seq),
        "oldest first"
    );
    assert_eq!(j.cdrs_since(0).expect("all").len(), 12);
    assert!(j.cdrs_since(now_ms() + 1000).expect("none").is_empty());
    // CDRs taken in after the walk began are not part of it.
    let (from, to) = j.cdr_range_since(cut).expect("range").expect("some");
    j.ingest(
        &[file("new.json", r#"{"QueueId":"new"}"#)],
        &route_to(&[&a]),
    )
    .expect("ingest");
    let page = j.cdrs_page(from, to, 100).expect("page");
    assert_eq!((page.items.len(), page.next), (5, None));
}

#[test]
fn pages_resume_where_the_last_one_stopped() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let ids = ingest_n(&j, &a, 5);
    for (i, &id) in ids.iter().enumerate() {
        finish(
            &j,
            id,
            if i % 2 == 0 {
                State::Dead
            } else {
                State::Delivered
            },
        );
    }
    // Two of every five deliveries looked at per page: three pages.
    let (mut failed, mut from, mut pages) = (Vec::new(), Some(0), 0);
    while let Some(start) = from {
        let page = j
            .failed_deliveries_page(None, None, start, 2)
            .expect("page");
        failed.extend(page.items.iter().map(|d| d.id));
        from = page.next;
        pages += 1;
    }
    assert_eq!(failed, vec![ids[0], ids[2], ids[4]]);
    assert_eq!(pages, 3);
    // Attempts: newest first, page by page, the same as in one go.
    let all = j
        .attempts(&AttemptFilter::default())
        .expect("all")
        .iter()
        .map(|a| a.delivery_id)
        .collect::<Vec<_>>();
    assert_eq!(all, ids.iter().rev().copied().collect::<Vec<_>>());
    let first = j
        .attempts_page(&AttemptFilter::default(), None, 2, 100)
        .expect("page");
    let second = j
        .attempts_page(&AttemptFilter::default(), first.next, 2, 100)
        .expect("page");
    let paged: Vec<_> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|a| a.delivery_id)
        .collect();
    assert_eq!(paged, all[..4].to_vec());
    // A filter that matches nothing still stops after `max_examined`.
    let none = AttemptFilter {
        call_id: Some("nobody".into()),
        ..Default::default()
    };
    let page = j.attempts_page(&none, None, 10, 3).expect("page");
    assert!(page.items.is_empty());
    assert!(page.next.is_some(), "more to look at");
    assert!(j.attempts(&none).expect("all").is_empty());
    let limited = j
        .attempts(&AttemptFilter {
            limit: 3,
            ..Default::default()
        })
        .expect("limited");
    assert_eq!(limited.len(), 3);
}

#[test]
fn counts_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = sub("a");
    {
        let j = open_at(&dir.path().join("j"));
        let out = j
            .ingest(&[file("1.json", r#"{"QueueId":"1"}"#)], &route_to(&[&a]))
            .expect("ingest");
        finish(&j, out.new_deliveries[0].1, State::Delivered);
        j.flush().expect("flush");
    }
    let j = reopen(&dir.path().join("j"));
    let c = &j.counts()["a"];
    assert_eq!(c.delivered, 1);
    assert!(c.last_success_ms.is_some());
}

/// The raw tree of a journal, for tests that look at keys.
fn keys_of(j: &Journal, kind: u8) -> usize {
    j.h().expect("open").tree.scan_prefix([kind]).count()
}

#[test]
fn the_same_cdr_in_two_files_of_one_batch_is_one_cdr() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let body = r#"{"QueueId":"same"}"#;
    let out = j
        .ingest(
            &[file("1.json", body), file("2.json", body)],
            &route_to(&[&a]),
        )
        .expect("ingest");
    assert_eq!((out.new_cdrs, out.known_cdrs), (1, 1));
    assert_eq!(out.new_deliveries.len(), 1);
    assert!(out.finished_files.is_empty(), "both wait for the delivery");
    let mut files = finish(&j, out.new_deliveries[0].1, State::Delivered);
    files.sort();
    assert_eq!(files, vec!["x-1.json".to_string(), "x-2.json".to_string()]);
}

#[test]
fn large_bodies_are_stored_in_chunks_read_back_whole_and_pruned() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let text = "t".repeat(3 * records::BODY_CHUNK);
    let body = format!(r#"{{"RecordingFileName":"r.wav","Transcription":"{text}"}}"#);
    let out = j
        .ingest(&[file("big.json", &body)], &route_to(&[&a]))
        .expect("ingest");
    assert_eq!(
        keys_of(&j, records::K_BODY),
        4,
        "12 KiB and a bit: 4 chunks"
    );
    let d = j
        .delivery(out.new_deliveries[0].1)
        .expect("read")
        .expect("d");
    let stored = j.cdr_by_seq(d.cdr_seq).expect("read").expect("cdr");
    assert_eq!(stored.body, body.as_bytes());
    finish(&j, d.id, State::Delivered);
    let stats = j.prune(now_ms() + 1000, 100).expect("prune");
    assert_eq!(stats.cdrs, 1);
    for kind in [
        records::K_BODY,
        records::K_CDR,
        records::K_CDR_ID,
        records::K_DELIVERY,
        records::K_ATTEMPT,
        records::K_ATTEMPTS_OF,
        records::K_OPEN,
    ] {
        assert_eq!(keys_of(&j, kind), 0, "{} left after pruning", kind as char);
    }
}

#[test]
fn start_up_reads_the_counts_and_the_open_index_not_every_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j");
    let a = sub("a");
    let open_id = {
        let j = open_at(&path);
        let ids = ingest_n(&j, &a, 3);
        finish(&j, ids[0], State::Delivered);
        finish(&j, ids[1], State::Dead);
        // Damage the ended deliveries' records: a start-up that read them
        // would fail.
        let h = j.h().expect("open");
        for id in &ids[..2] {
            h.tree
                .insert(records::key(records::K_DELIVERY, *id), &[0xff][..])
                .expect("damage");
        }
        // A pending count left wrong (a crash between an attempt's writes)
        // is counted again from the open index.
        let wrong = records::CountsRec {
            pending: 99,
            delivered: 1,
            dead: 1,
            ..Default::default()
        };
        // A clean stop: the next open trusts delivered and dead (the
        // damage goes in after it, over the counts it wrote).
        j.close_clean().expect("close clean");
        h.tree
            .insert(records::counts_key(0), wrong.encode())
            .expect("damage");
        j.flush().expect("flush");
        ids[2]
    };
    let j = reopen(&path);
    let c = &j.counts()["a"];
    assert_eq!((c.pending, c.delivered, c.dead), (1, 1, 1));
    let open = j.take_open_deliveries();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].id, open[0].subscription.as_str()), (open_id, "a"));
}

#[test]
fn after_a_crash_delivered_and_dead_are_counted_again_from_the_deliveries() {
    // (stopped cleanly, (pending, delivered, dead) after the reopen)
    for (clean, want) in [(false, (1, 1, 1)), (true, (1, 7, 7))] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let a = sub("a");
        {
            let j = open_at(&path);
            let ids = ingest_n(&j, &a, 3);
            finish(&j, ids[0], State::Delivered);
            finish(&j, ids[1], State::Dead);
            if clean {
                j.close_clean().expect("close clean");
            } else {
                j.flush().expect("flush");
            }
            // What a crash can leave: counts on disk that disagree with
            // the delivery records (they are written at each flush, not
            // with each attempt).
            let wrong = records::CountsRec {
                pending: 1,
                delivered: 7,
                dead: 7,
                ..Default::default()
            };
            j.h()
                .expect("open")
                .tree
                .insert(records::counts_key(0), wrong.encode())
                .expect("damage");
            j.flush().expect("flush");
        }
        let j = reopen(&path);
        let c = &j.counts()["a"];
        assert_eq!(
            (c.pending, c.delivered, c.dead),
            want,
            "clean stop: {clean}"
        );
        // Open takes the mark away: a crash from now on is counted again.
        assert_eq!(keys_of(&j, records::K_CLEAN), 0, "clean stop: {clean}");
    }
}

#[test]
fn after_a_crash_an_open_index_entry_of_an_ended_delivery_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j");
    let a = sub("a");
    let ended = {
        let j = open_at(&path);
        let ids = ingest_n(&j, &a, 2);
        // Both open long enough to be indexed.
        j.flush_index(true).expect("index");
        let h = j.h().expect("open");
        // The open-index entry of ids[0] as it was before its attempt...
        let entry = h
            .tree
            .get(records::key(records::K_OPEN, ids[0]))
            .expect("read")
            .expect("indexed");
        finish(&j, ids[0], State::Delivered);
        // ...put back: the crash fell after the delivery's record was
        // written and before its index entry was removed.
        h.tree
            .insert(records::key(records::K_OPEN, ids[0]), entry)
            .expect("damage");
        j.flush().expect("flush");
        ids[0]
    };
    let j = reopen(&path);
    let open: Vec<DeliveryId> = j.take_open_deliveries().iter().map(|o| o.id).collect();
    assert!(
        !open.contains(&ended),
        "an ended delivery is not resumed: {open:?}"
    );
    assert_eq!(open.len(), 1);
    let c = &j.counts()["a"];
    assert_eq!((c.pending, c.delivered), (1, 1));
    assert_eq!(keys_of(&j, records::K_OPEN), 1, "the stale entry is gone");
}

#[test]
fn writes_that_are_not_flushed_at_once_are_announced() {
    let (_d, j) = open_tmp();
    let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = told.clone();
    j.set_on_write(move || {
        t.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let a = sub("a");
    let ids = ingest_n(&j, &a, 1);
    assert_eq!(
        told.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "ingest flushes"
    );
    finish(&j, ids[0], State::Delivered);
    assert!(told.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[test]
fn a_journal_of_a_newer_format_is_refused_naming_its_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j");
    drop(open_at(&path));
    {
        let db = sled_after_close(&path);
        let tree = db.open_tree(records::TREE).expect("tree");
        tree.insert([records::K_VERSION], &[records::FORMAT_VERSION + 1])
            .expect("write");
        db.flush().expect("flush");
    }
    let err = open_after_close(&path).err().expect("refused").to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("newer cdrhook"), "{err}");
}

#[test]
fn a_format_1_journal_is_migrated_at_open() {
    use serde_json::json;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j");
    let id1 = "cdr_0123456789abcdef0123456789abcdef";
    {
        let db = sled_after_close(&path);
        let t = |n: &str| db.open_tree(n).expect("tree");
        let (cdrs, cdr_ids, deliveries, attempts, sub_last) = (
            t("cdrs"),
            t("cdr_ids"),
            t("deliveries"),
            t("attempts"),
            t("sub_last"),
        );
        let cdr = |seq: u64, id: &str, dlv: u64, body: &str| {
            let meta = json!({"id": id, "seq": seq, "event_type": "App.QueueWebhook",
                "call_id": "c1", "received_ms": 1000 + seq, "deliveries": [["crm", dlv]],
                "files": [{"name": format!("f{seq}.json"), "cdrs": [seq]}]});
            let mut v = serde_json::to_vec(&meta).expect("json");
            v.push(b'\n');
            v.extend_from_slice(body.as_bytes());
            cdrs.insert(seq.to_be_bytes(), v).expect("insert");
            cdr_ids
                .insert(id.as_bytes(), &seq.to_be_bytes())
                .expect("insert");
        };
        cdr(1, id1, 2, r#"{"QueueId":"1"}"#);
        cdr(4, "cdr_other", 5, r#"{"QueueId":"2"}"#);
        let delivery = |id: u64, seq: u64, state: &str, attempt_ids: Vec<u64>| {
            let d = json!({"id": id, "cdr_id": "x", "cdr_seq": seq, "subscription": "crm",
                "event_type": "App.QueueWebhook", "call_id": "c1", "state": state,
                "attempts": attempt_ids.len(), "failures": 1, "next_at_ms": 99,
                "created_ms": 7, "ended_ms": null, "origin": "auto", "last_status": 503,
                "last_error": null, "attempt_ids": attempt_ids});
            deliveries
                .insert(id.to_be_bytes(), serde_json::to_vec(&d).expect("json"))
                .expect("insert");
        };
        delivery(2, 1, "delivered", vec![3]);
        delivery(5, 4, "retrying", vec![]);
        // An open delivery whose CDR never reached the disk.
        delivery(8, 7, "pending", vec![]);
        let a = json!({"id": 3, "delivery_id": 2, "time_ms": 50, "subscription": "crm",
            "event_type": "App.QueueWebhook", "call_id": "c1", "webhook_id": id1,
            "attempt": 1, "status": 204, "error": null, "duration_ms": 4, "trigger": "auto",
            "request_headers": [["webhook-id", id1]], "response_headers": [],
            "response_body": null});
        attempts
            .insert(3u64.to_be_bytes(), serde_json::to_vec(&a).expect("json"))
            .expect("insert");
        let last = json!({"pending": 0, "retrying": 0, "dead": 0, "delivered": 0,
            "last_success_ms": 50, "last_failure_ms": 40, "last_error": "HTTP 503"});
        sub_last
            .insert("crm", serde_json::to_vec(&last).expect("json"))
            .expect("insert");
        db.flush().expect("flush");
    }
    {
        let j = reopen(&path);
        let c = &j.counts()["crm"];
        assert_eq!((c.delivered, c.retrying, c.pending), (1, 1, 0));
        assert_eq!(
            (c.last_success_ms, c.last_error.as_deref()),
            (Some(50), Some("HTTP 503"))
        );
        let open = j.take_open_deliveries();
        assert_eq!(open.len(), 1, "the orphan is dropped");
        assert_eq!((open[0].id, open[0].retry_at_ms), (5, Some(99)));
        let d = j.delivery(2).expect("read").expect("d");
        assert_eq!((d.cdr_id.as_str(), d.state), (id1, State::Delivered));
        let history = j.attempts_of(&d).expect("attempts");
        assert_eq!(history.len(), 1);
        assert_eq!(
            history[0].request_headers,
            vec![("webhook-id".into(), id1.into())]
        );
        assert_eq!(history[0].status, Some(204));
        let stored = j.cdr(id1).expect("read").expect("cdr");
        assert_eq!(stored.body, br#"{"QueueId":"1"}"#);
    }
    let db = sled_after_close(&path);
    let names: Vec<_> = db.tree_names();
    assert!(
        !names
            .iter()
            .any(|n| &n[..] == b"deliveries" || &n[..] == b"cdrs"),
        "the format-1 trees are dropped"
    );
}

#[test]
fn a_format_2_journal_is_moved_into_a_tree_per_kind_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j");
    let a = sub("a");
    // A journal as this code writes it, then put back as format 2 had it:
    // every key in one tree, `journal.v2`, with version 2.
    let (ids, cdr_id) = {
        let j = open_at(&path);
        let ids = ingest_n(&j, &a, 3);
        finish(&j, ids[0], State::Delivered);
        let cdr_id = j.delivery(ids[0]).expect("read").expect("d").cdr_id;
        j.close_clean().expect("close clean");
        (ids, cdr_id)
    };
    {
        let db = sled_after_close(&path);
        let v2 = db.open_tree(records::TREE_V2).expect("tree");
        for name in db.tree_names() {
            if !name.starts_with(b"journal.v3") {
                continue;
            }
            let t = db.open_tree(&name).expect("tree");
            for item in t.iter() {
                let (k, v) = item.expect("item");
                v2.insert(k, v).expect("copy");
            }
            db.drop_tree(&name).expect("drop");
        }
        v2.insert([records::K_VERSION], &[2u8]).expect("version");
        db.flush().expect("flush");
    }
    let j = reopen(&path);
    let c = &j.counts()["a"];
    assert_eq!((c.pending, c.delivered), (2, 1));
    let open: Vec<DeliveryId> = j.take_open_deliveries().iter().map(|o| o.id).collect();
    assert_eq!(open, ids[1..]);
    let d = j.delivery(ids[0]).expect("read").expect("d");
    assert_eq!(d.state, State::Delivered);
    assert_eq!(j.attempts_of(&d).expect("attempts").len(), 1);
    let stored = j.cdr(&cdr_id).expect("read").expect("cdr");
    assert!(!stored.body.is_empty());
    assert_eq!(keys_of(&j, records::K_CDR), 3);
    // The bodies are in their records, as this code wrote them.
    assert_eq!(keys_of(&j, records::K_BODY), 0);
    let h = j.h().expect("open");
    assert_eq!(h.tree.of(records::K_CDR).len(), 3, "CDRs in their own tree");
    assert_eq!(h.tree.of(records::K_DELIVERY).len(), 3);
    let version = h.tree.get([records::K_VERSION]).expect("read");
    assert_eq!(version.as_deref(), Some(&[records::FORMAT_VERSION][..]));
    drop(h);
    drop(j);
    let db = sled_after_close(&path);
    assert!(
        !db.tree_names()
            .iter()
            .any(|n| &n[..] == records::TREE_V2.as_bytes()),
        "the format-2 tree is dropped"
    );
}

#[test]
fn after_a_crash_what_an_ingest_cut_short_before_the_content_id_left_is_dropped() {
    // Below the index mark a cut ingest leaves open-index entries (ids
    // handed out before the mark moved past them); above it, only the
    // delivery records, which start-up reads from the mark on.
    for indexed in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let a = sub("a");
        let kept = {
            let j = open_at(&path);
            let ids = ingest_n(&j, &a, 1);
            if indexed {
                j.flush_index(true).expect("index");
            }
            // What an ingest cut short between its trees leaves (bodies,
            // deliveries and open index are written before the CDR
            // records): a delivery whose CDR has no record.
            let h = j.h().expect("open");
            let d = records::DeliveryRec::new_pending(999_999, 0, Trigger::Auto, now_ms());
            let o = records::OpenRec {
                sub: 0,
                state: State::Pending,
                origin: Trigger::Auto,
                next_at_ms: 0,
                hold_until_ms: None,
            };
            let put_delivery = |id: u64, d: &records::DeliveryRec| {
                h.tree
                    .insert(records::key(records::K_DELIVERY, id), d.encode())
                    .expect("damage");
                if indexed {
                    h.tree
                        .insert(records::key(records::K_OPEN, id), o.encode())
                        .expect("damage");
                }
            };
            put_delivery(999_998, &d);
            // And one cut short after the CDR's record, before its content
            // id: the CDR is not known, its file is taken in again as a new
            // CDR.
            let c = records::CdrRec {
                id: "cdr_0123456789abcdef0123456789abcdef".into(),
                event_type: "App.QueueWebhook".into(),
                call_id: None,
                received_ms: now_ms(),
                body_len: 2,
                deliveries: vec![888_887],
                files: vec![],
                // As format 3 wrote it: the body in a chunk.
                body: None,
            };
            h.tree
                .insert(records::body_key(888_888, 0), &b"{}"[..])
                .expect("damage");
            put_delivery(888_887, &{
                let mut d2 = d.clone();
                d2.cdr_seq = 888_888;
                d2
            });
            h.tree
                .insert(records::key(records::K_CDR, 888_888), c.encode())
                .expect("damage");
            if indexed {
                h.tree
                    .insert([records::K_INDEXED], &1_000_000u64.to_be_bytes())
                    .expect("damage");
            }
            j.flush().expect("flush");
            ids[0]
        };
        let j = reopen(&path);
        let open: Vec<DeliveryId> = j.take_open_deliveries().iter().map(|o| o.id).collect();
        assert_eq!(
            open,
            [kept],
            "the orphans are not resumed (indexed: {indexed})"
        );
        assert_eq!(j.counts()["a"].pending, 1);
        assert_eq!(keys_of(&j, records::K_OPEN), usize::from(indexed));
        assert_eq!(keys_of(&j, records::K_DELIVERY), 1);
        assert_eq!(
            keys_of(&j, records::K_CDR),
            1,
            "the unknown CDR's record is dropped (indexed: {indexed})"
        );
        // The kept CDR's body is in its record.
        assert_eq!(keys_of(&j, records::K_BODY), 0, "and its body");
    }
}

#[test]
fn counts_kept_in_memory_are_on_disk_after_a_clean_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j");
    let a = sub("a");
    {
        let j = open_at(&path);
        let ids = ingest_n(&j, &a, 3);
        finish(&j, ids[0], State::Delivered);
        finish(&j, ids[1], State::Dead);
        // No flush between the attempts and the stop: the stop writes them.
        j.close_clean().expect("close clean");
    }
    let j = reopen(&path);
    let c = &j.counts()["a"];
    // A clean open trusts delivered and dead on disk (no recount).
    assert_eq!((c.pending, c.delivered, c.dead), (1, 1, 1));
    assert!(c.last_success_ms.is_some() && c.last_failure_ms.is_some());
}

/// The open index's entries, by delivery id.
fn indexed(j: &Journal) -> Vec<DeliveryId> {
    let h = j.h().expect("open");
    h.tree
        .scan_prefix([records::K_OPEN])
        .map(|item| records::key_id(&item.expect("read").0))
        .collect()
}

fn mark(j: &Journal) -> Option<u64> {
    open_index::read_mark(&j.h().expect("open")).expect("read")
}

#[test]
fn a_delivery_that_ends_soon_never_gets_an_index_entry_and_a_clean_stop_indexes_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j");
    let a = sub("a");
    let ids = {
        let j = open_at(&path);
        let ids = ingest_n(&j, &a, 3);
        finish(&j, ids[0], State::Delivered);
        j.flush().expect("flush");
        assert!(
            indexed(&j).is_empty(),
            "nothing is due within half a minute"
        );
        // The file of the delivered CDR is finished; the others are not
        // (the notes say, not the index).
        assert!(finish(&j, ids[1], State::Dead).contains(&"x-1.json".to_string()));
        j.close_clean().expect("close clean");
        assert_eq!(indexed(&j), [ids[2]], "a clean stop indexes what is open");
        assert!(mark(&j).is_some_and(|m| m > ids[2]));
        ids
    };
    let j = reopen(&path);
    let open: Vec<DeliveryId> = j.take_open_deliveries().iter().map(|o| o.id).collect();
    assert_eq!(open, [ids[2]]);
    let c = &j.counts()["a"];
    assert_eq!((c.pending, c.delivered, c.dead), (1, 1, 1));
}

#[test]
fn after_a_crash_the_deliveries_above_the_mark_are_resumed_from_their_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j");
    let a = sub("a");
    let (ids, retry_at) = {
        let j = open_at(&path);
        // One indexed before the others are created: below the mark.
        let old = j
            .ingest(
                &[file("old.json", r#"{"QueueId":"old"}"#)],
                &route_to(&[&a]),
            )
            .expect("ingest")
            .new_deliveries[0]
            .1;
        j.flush_index(true).expect("index");
        let mut ids = vec![old];
        ids.extend(ingest_n(&j, &a, 3));
        finish(&j, ids[1], State::Delivered);
        // One retrying, with when its retry is due.
        let mut d = j.delivery(ids[2]).expect("read").expect("d");
        d.state = State::Retrying;
        d.attempts = 1;
        d.failures = 1;
        d.next_at_ms = Some(now_ms() + 60_000);
        let at = attempt_for(&j, &d, 503, Trigger::Auto);
        j.record_attempt(&d, &at).expect("record");
        // No clean stop: what the last flush wrote is all there is.
        j.flush().expect("flush");
        assert_eq!(indexed(&j), [ids[0]]);
        (ids, d.next_at_ms)
    };
    let j = reopen(&path);
    let open = j.take_open_deliveries();
    let got: Vec<(DeliveryId, Option<u64>)> = open.iter().map(|o| (o.id, o.retry_at_ms)).collect();
    assert_eq!(got, [(ids[0], None), (ids[2], retry_at), (ids[3], None)]);
    let c = &j.counts()["a"];
    assert_eq!((c.pending, c.retrying, c.delivered), (2, 1, 1));
    // Still above the mark: ending them touches no index entry.
    finish(&j, ids[3], State::Delivered);
    assert_eq!(indexed(&j), [ids[0]]);
    assert!(!j.is_open(&j.h().expect("open"), ids[3]).expect("read"));
    assert!(j.is_open(&j.h().expect("open"), ids[2]).expect("read"));
}

#[test]
fn a_format_3_journal_is_format_4_with_every_open_delivery_indexed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("j");
    let a = sub("a");
    let ids = {
        let j = open_at(&path);
        let ids = ingest_n(&j, &a, 2);
        j.close_clean().expect("close clean");
        // As format 3 left it: every open delivery indexed, no mark.
        let h = j.h().expect("open");
        h.tree.remove([records::K_INDEXED]).expect("damage");
        h.tree
            .insert([records::K_VERSION], &[3u8][..])
            .expect("damage");
        // A record above where the mark was that the index does not name
        // (format 3 never left one): without a mark it is not read.
        h.tree
            .remove(records::key(records::K_OPEN, ids[1]))
            .expect("damage");
        h.db.flush().expect("flush");
        ids
    };
    let j = reopen(&path);
    let open: Vec<DeliveryId> = j.take_open_deliveries().iter().map(|o| o.id).collect();
    assert_eq!(open, [ids[0]], "no delivery record is read without a mark");
    let h = j.h().expect("open");
    let version = h.tree.get([records::K_VERSION]).expect("read");
    assert_eq!(version.as_deref(), Some(&[records::FORMAT_VERSION][..]));
    assert!(
        mark(&j).is_some_and(|m| m > ids[1]),
        "the mark is written at open"
    );
}

#[test]
fn a_small_body_is_kept_in_its_record_and_one_in_a_chunk_is_still_read() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let ids = ingest_n(&j, &a, 1);
    assert_eq!(keys_of(&j, records::K_BODY), 0, "no chunk for a small body");
    let (d, body) = j
        .delivery_with_body(ids[0], true)
        .expect("read")
        .expect("delivery");
    let want = body.expect("body");
    assert_eq!(want, br#"{"QueueId":"0","CallId":"c0"}"#);
    // As format 3 wrote it: the record without the body, the body in one
    // chunk.
    let h = j.h().expect("open");
    let key = records::key(records::K_CDR, d.cdr_seq);
    let mut rec =
        records::CdrRec::decode(&h.tree.get(key).expect("read").expect("c")).expect("decode");
    rec.body = None;
    h.tree.insert(key, rec.encode()).expect("rewrite");
    h.tree
        .insert(records::body_key(d.cdr_seq, 0), &want[..])
        .expect("chunk");
    let stored = j.cdr_by_seq(d.cdr_seq).expect("read").expect("cdr");
    assert_eq!(stored.body, want);
}

#[test]
fn a_deliverys_attempts_are_a_chain_in_their_records_and_format_3_ones_are_still_listed() {
    let (_d, j) = open_tmp();
    let a = sub("a");
    let ids = ingest_n(&j, &a, 1);
    let id = ids[0];
    // A format-3 attempt: its record without chain or detail, its detail
    // in `h`, listed in `x`.
    let d = j.delivery(id).expect("read").expect("d");
    let old_id = j.next_id().expect("id");
    let h = j.h().expect("open");
    let old = records::AttemptRec {
        delivery_id: id,
        cdr_seq: d.cdr_seq,
        sub: 0,
        event_type: d.event_type.clone(),
        webhook_id: d.cdr_id.clone(),
        call_id: d.call_id.clone(),
        time_ms: now_ms(),
        attempt: 1,
        status: Some(503),
        duration_ms: 1,
        trigger: Trigger::Auto,
        error: None,
        prev: 0,
        detail: None,
    };
    let bytes = old.encode();
    h.tree
        .insert(
            records::key(records::K_ATTEMPT, old_id),
            &bytes[..bytes.len() - 8],
        )
        .expect("format-3 attempt");
    let ctx = records::HeaderContext {
        webhook_id: &old.webhook_id,
        event_type: &old.event_type,
        attempt: 1,
        time_ms: old.time_ms,
    };
    let detail = records::AttemptDetail {
        request_headers: vec![("x-old".into(), "1".into())],
        ..Default::default()
    };
    h.tree
        .insert(records::key(records::K_DETAIL, old_id), detail.encode(&ctx))
        .expect("format-3 detail");
    h.tree
        .insert(records::key2(records::K_ATTEMPTS_OF, id, old_id), &[][..])
        .expect("format-3 index");
    // Two attempts of this version: a 503, then a 204 with headers.
    let mut d = j.delivery(id).expect("read").expect("d");
    d.attempts = 2;
    d.state = State::Retrying;
    let first = attempt_for(&j, &d, 503, Trigger::Auto);
    j.record_attempt(&d, &first).expect("record");
    d.attempts = 3;
    d.state = State::Delivered;
    d.ended_ms = Some(now_ms());
    let mut last = attempt_for(&j, &d, 204, Trigger::Auto);
    last.response_headers = vec![("server".into(), "nginx".into())];
    j.record_attempt(&d, &last).expect("record");
    assert_eq!(keys_of(&j, records::K_ATTEMPTS_OF), 1, "no new `x` entry");
    assert_eq!(keys_of(&j, records::K_DETAIL), 1, "no new `h` record");
    let got = j.attempts_of(&d).expect("attempts");
    let seen: Vec<(u64, Option<u16>)> = got.iter().map(|a| (a.id, a.status)).collect();
    assert_eq!(
        seen,
        [
            (old_id, Some(503)),
            (first.id, Some(503)),
            (last.id, Some(204))
        ]
    );
    assert_eq!(
        got[0].request_headers,
        [("x-old".to_string(), "1".to_string())]
    );
    assert_eq!(got[2].response_headers, last.response_headers);
    assert_eq!(j.attempt(last.id).expect("read"), Some(last.clone()));
    // Retention takes every one of them, and the format-3 records.
    let stats = j.prune(now_ms() + 1000, 100).expect("prune");
    assert_eq!((stats.cdrs, stats.attempts), (1, 3));
    for kind in [
        records::K_ATTEMPT,
        records::K_DETAIL,
        records::K_ATTEMPTS_OF,
    ] {
        assert_eq!(keys_of(&j, kind), 0, "{} left", kind as char);
    }
}

/// Issue 8: a `Retry-After` hold is journaled with its delivery, and a
/// restart finds it, from the delivery's record after a crash and from the
/// open index after a clean stop; an attempt without one clears it.
#[test]
fn a_retry_after_hold_survives_a_crash_and_a_clean_stop() {
    for clean in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let a = sub("a");
        let (held, cleared, until) = {
            let j = open_at(&path);
            let ids = ingest_n(&j, &a, 2);
            let until = now_ms() + 90_000;
            for (id, hold) in [(ids[0], Some(until)), (ids[1], Some(until)), (ids[1], None)] {
                let mut d = j.delivery(id).expect("read").expect("d");
                d.state = State::Retrying;
                d.attempts += 1;
                d.failures += 1;
                d.next_at_ms = Some(until);
                d.hold_until_ms = hold;
                let at = attempt_for(&j, &d, 503, Trigger::Auto);
                j.record_attempt(&d, &at).expect("record");
            }
            let d = j.delivery(ids[0]).expect("read").expect("d");
            assert_eq!(d.hold_until_ms, Some(until), "read back");
            if clean {
                j.close_clean().expect("close clean");
                assert_eq!(indexed(&j), ids, "from the index");
            } else {
                j.flush().expect("flush");
                assert!(indexed(&j).is_empty(), "from the records");
            }
            (ids[0], ids[1], until)
        };
        let j = reopen(&path);
        let open = j.take_open_deliveries();
        let got: Vec<(DeliveryId, Option<u64>, Option<u64>)> = open
            .iter()
            .map(|o| (o.id, o.retry_at_ms, o.hold_until_ms))
            .collect();
        assert_eq!(
            got,
            [
                (held, Some(until), Some(until)),
                (cleared, Some(until), None)
            ],
            "clean stop: {clean}"
        );
    }
}

/// An endpoint-wide `Retry-After` is journaled with its subscription's
/// counts: only raised, cleared by an answering endpoint, and found again
/// after a clean stop and after a crash that followed a flush. One that has
/// ended is not handed back.
#[test]
fn an_endpoint_hold_is_raised_cleared_and_survives_a_restart() {
    for clean in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let now = now_ms();
        let hold = |until_ms, endpoint| EndpointHold { until_ms, endpoint };
        {
            let j = open_at(&path);
            j.hold_endpoint("a", hold(now + 60_000, 7)).expect("hold a");
            // An earlier time for the same endpoint does not shorten it.
            j.hold_endpoint("a", hold(now + 1_000, 7)).expect("hold a");
            // Another endpoint (the URL changed) replaces it.
            j.hold_endpoint("b", hold(now + 90_000, 1)).expect("hold b");
            j.hold_endpoint("b", hold(now + 30_000, 2)).expect("hold b");
            // An answer ends it; one already over is not handed back.
            j.hold_endpoint("c", hold(now + 60_000, 3)).expect("hold c");
            j.release_endpoint("c");
            j.hold_endpoint("d", hold(now.saturating_sub(1), 4))
                .expect("hold d");
            j.release_endpoint("unknown");
            assert_eq!(
                j.endpoint_holds(now),
                [
                    ("a".to_string(), hold(now + 60_000, 7)),
                    ("b".to_string(), hold(now + 30_000, 2)),
                ],
                "before the restart"
            );
            if clean {
                j.close_clean().expect("close clean");
            } else {
                j.flush().expect("flush");
            }
        }
        let j = reopen(&path);
        assert_eq!(
            j.endpoint_holds(now),
            [
                ("a".to_string(), hold(now + 60_000, 7)),
                ("b".to_string(), hold(now + 30_000, 2)),
            ],
            "clean stop: {clean}"
        );
        assert!(
            j.endpoint_holds(now + 60_000).is_empty(),
            "both have ended by then"
        );
        // Releasing the last hold lets releases skip the lock; a new hold
        // must still be released.
        for name in ["a", "b", "d"] {
            j.release_endpoint(name);
        }
        assert!(j.endpoint_holds(0).is_empty(), "all released");
        j.hold_endpoint("a", hold(now + 5_000, 7)).expect("hold a");
        assert_eq!(j.endpoint_holds(now).len(), 1, "held again");
        j.release_endpoint("a");
        assert!(j.endpoint_holds(0).is_empty(), "released again");
    }
}
