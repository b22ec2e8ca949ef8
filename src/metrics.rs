//! The live counters behind `/metrics` (contract §9), and the exposition.
//!
//! A helper like `time` and `logging`: it names no stage, and the stages
//! record into it with one call at the one place each event happens:
//!
//! - `intake` counts the CDRs a journal ingest took in (new ones only: a
//!   CDR taken in twice is counted once) and each rejected file, by reason;
//! - `delivery` counts each attempt made, by subscription and outcome, and
//!   its duration;
//! - `config::live` counts refused reloads.
//!
//! What the daemon already keeps live (the journal's per-subscription
//! counts, the config's load time, the journal's size, the spool's
//! directories) is not duplicated here: the listener reads it at scrape
//! time into [`Gauges`] and [`render`] writes both out. Nothing here scans
//! the journal.
//!
//! The format is OpenMetrics text (what Prometheus asks for first and
//! parses natively), written by the `prometheus-client` crate.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::locks::lock;

/// The content type [`render`]'s text is served with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Attempt-duration buckets (seconds): from a fast LAN endpoint to the
/// largest `delivery.timeout` anyone sets.
const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The outcome of an attempt, as `cdrhook_attempts_total{outcome}` names
/// it (contract §9). `delivery::http` tells which one an attempt had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Success,
    Http4xx,
    Http5xx,
    Timeout,
    Connect,
    Redirect,
    Other,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 7] = [
        AttemptOutcome::Success,
        AttemptOutcome::Http4xx,
        AttemptOutcome::Http5xx,
        AttemptOutcome::Timeout,
        AttemptOutcome::Connect,
        AttemptOutcome::Redirect,
        AttemptOutcome::Other,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            AttemptOutcome::Success => "success",
            AttemptOutcome::Http4xx => "http_4xx",
            AttemptOutcome::Http5xx => "http_5xx",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Connect => "connect",
            AttemptOutcome::Redirect => "redirect",
            AttemptOutcome::Other => "other",
        }
    }
}

/// The delivery states of `cdrhook_deliveries{state}` (contract §9).
pub const STATES: [&str; 5] = ["pending", "retrying", "dead", "held", "delivered"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubLabel {
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    subscription: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    subscription: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhereLabel {
    r#where: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// One registry and its metrics. The daemon has one ([`global`]); unit
/// tests make their own.
pub struct Metrics {
    registry: Registry,
    cdrs_ingested: Counter,
    files_rejected: Family<ReasonLabel, Counter>,
    attempts: Family<OutcomeLabels, Counter>,
    attempt_duration: Family<SubLabel, Histogram, fn() -> Histogram>,
    reload_failures: Counter,
    // Set at scrape time from `Gauges`, under `scrape`.
    deliveries: Family<StateLabels, Gauge>,
    oldest_age: Family<SubLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// A counter, but the journal keeps it (across restarts): set from
    /// `Gauges::unmatched` at each scrape like the gauges.
    cdrs_unmatched: Family<SubLabel, Counter>,
    spool_files: Family<WhereLabel, Gauge>,
    config_loaded: Gauge<f64, std::sync::atomic::AtomicU64>,
    journal_bytes: Gauge,
    /// One scrape at a time sets the gauges and encodes them.
    scrape: Mutex<()>,
}

/// What a scrape reads from the daemon's live state (see the module doc).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// (subscription, state, count), states from [`STATES`].
    pub deliveries: Vec<(String, &'static str, u64)>,
    /// (subscription, seconds since its oldest open delivery was created;
    /// 0 when it has none).
    pub oldest_age_s: Vec<(String, f64)>,
    /// (subscription, CDRs its filter excluded): the journal's count.
    pub unmatched: Vec<(String, u64)>,
    pub spool_waiting: u64,
    pub spool_inflight: u64,
    /// When the config in force was loaded (ms since the epoch).
    pub config_loaded_ms: u64,
    pub journal_bytes: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            cdrs_ingested: Counter::default(),
            files_rejected: Family::default(),
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(duration_histogram as fn() -> _),
            reload_failures: Counter::default(),
            deliveries: Family::default(),
            oldest_age: Family::default(),
            cdrs_unmatched: Family::default(),
            spool_files: Family::default(),
            config_loaded: Gauge::default(),
            journal_bytes: Gauge::default(),
            scrape: Mutex::new(()),
        };
        let r = &mut m.registry;
        // prometheus-client adds `_total` to counters.
        r.register(
            "cdrhook_cdrs_ingested",
            "CDRs taken into the journal (each distinct CDR once)",
            m.cdrs_ingested.clone(),
        );
        r.register(
            "cdrhook_cdrs_unmatched",
            "CDRs a subscription's filter excluded (journaled: kept across restarts)",
            m.cdrs_unmatched.clone(),
        );
        r.register(
            "cdrhook_files_rejected",
            "Spool files moved to the rejected directory, by reason",
            m.files_rejected.clone(),
        );
        r.register(
            "cdrhook_attempts",
            "Delivery attempts made, by subscription and outcome",
            m.attempts.clone(),
        );
        r.register(
            "cdrhook_attempt_duration_seconds",
            "Duration of delivery attempts, connect to last byte",
            m.attempt_duration.clone(),
        );
        r.register(
            "cdrhook_config_reload_failures",
            "Config reloads refused (the previous version stayed in force)",
            m.reload_failures.clone(),
        );
        r.register(
            "cdrhook_config_last_load_timestamp_seconds",
            "When the config in force was loaded (Unix time)",
            m.config_loaded.clone(),
        );
        r.register(
            "cdrhook_deliveries",
            "Deliveries in the journal, by subscription and state (held: open deliveries of an inactive or removed subscription)",
            m.deliveries.clone(),
        );
        r.register(
            "cdrhook_oldest_undelivered_age_seconds",
            "Age of the oldest open (pending, retrying or held) delivery, by subscription; 0 when none",
            m.oldest_age.clone(),
        );
        r.register(
            "cdrhook_spool_files",
            "Files waiting in the spool directory and in flight (.inflight/)",
            m.spool_files.clone(),
        );
        r.register(
            "cdrhook_journal_bytes",
            "The journal's size on disk",
            m.journal_bytes.clone(),
        );
        m
    }

    pub fn cdrs_ingested(&self, n: u64) {
        self.cdrs_ingested.inc_by(n);
    }

    pub fn file_rejected(&self, reason: &str) {
        self.files_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn attempt(&self, subscription: &str, outcome: AttemptOutcome, took: Duration) {
        self.attempts
            .get_or_create(&OutcomeLabels {
                subscription: subscription.to_string(),
                outcome: outcome.label().to_string(),
            })
            .inc();
        self.attempt_duration
            .get_or_create(&SubLabel {
                subscription: subscription.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn reload_refused(&self) {
        self.reload_failures.inc();
    }

    /// The exposition: the counters, and the gauges set from `g`.
    pub fn render(&self, g: &Gauges) -> String {
        let _one = lock(&self.scrape);
        // Label sets of subscriptions gone from the journal and config go.
        self.deliveries.clear();
        self.oldest_age.clear();
        self.cdrs_unmatched.clear();
        for (sub, state, n) in &g.deliveries {
            self.deliveries
                .get_or_create(&StateLabels {
                    subscription: sub.clone(),
                    state: (*state).to_string(),
                })
                .set(*n as i64);
        }
        for (sub, age) in &g.oldest_age_s {
            self.oldest_age
                .get_or_create(&SubLabel {
                    subscription: sub.clone(),
                })
                .set(*age);
        }
        for (sub, n) in &g.unmatched {
            self.cdrs_unmatched
                .get_or_create(&SubLabel {
                    subscription: sub.clone(),
                })
                .inc_by(*n);
        }
        for (place, n) in [("waiting", g.spool_waiting), ("inflight", g.spool_inflight)] {
            self.spool_files
                .get_or_create(&WhereLabel {
                    r#where: place.to_string(),
                })
                .set(n as i64);
        }
        self.config_loaded.set(g.config_loaded_ms as f64 / 1000.0);
        self.journal_bytes.set(g.journal_bytes as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The daemon's one set of metrics.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

/// Counts new CDRs journaled.
pub fn cdrs_ingested(n: usize) {
    global().cdrs_ingested(n as u64);
}

/// Counts one rejected file; `reason` is a short label
/// (`intake::parse::Rejection::kind`).
pub fn file_rejected(reason: &str) {
    global().file_rejected(reason);
}

/// Counts one attempt made (whatever became of its journaling).
pub fn attempt(subscription: &str, outcome: AttemptOutcome, took: Duration) {
    global().attempt(subscription, outcome, took);
}

/// Counts one refused config reload.
pub fn reload_refused() {
    global().reload_refused();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_of_the_contract() {
        let m = Metrics::new();
        m.cdrs_ingested(3);
        m.file_rejected("invalid_json");
        m.attempt("crm", AttemptOutcome::Success, Duration::from_millis(20));
        m.attempt("crm", AttemptOutcome::Http5xx, Duration::from_millis(3));
        m.reload_refused();
        let text = m.render(&Gauges {
            deliveries: vec![
                ("crm".into(), "retrying", 1),
                ("crm".into(), "delivered", 1),
            ],
            oldest_age_s: vec![("crm".into(), 12.5)],
            unmatched: vec![("crm".into(), 7)],
            spool_waiting: 4,
            spool_inflight: 2,
            config_loaded_ms: 1_700_000_000_500,
            journal_bytes: 4096,
        });
        for line in [
            "cdrhook_cdrs_ingested_total 3",
            "cdrhook_files_rejected_total{reason=\"invalid_json\"} 1",
            "cdrhook_attempts_total{subscription=\"crm\",outcome=\"success\"} 1",
            "cdrhook_attempts_total{subscription=\"crm\",outcome=\"http_5xx\"} 1",
            "cdrhook_attempt_duration_seconds_count{subscription=\"crm\"} 2",
            "cdrhook_attempt_duration_seconds_bucket{le=\"0.005\",subscription=\"crm\"} 1",
            "cdrhook_config_reload_failures_total 1",
            "cdrhook_config_last_load_timestamp_seconds 1700000000.5",
            "cdrhook_deliveries{subscription=\"crm\",state=\"retrying\"} 1",
            "cdrhook_deliveries{subscription=\"crm\",state=\"delivered\"} 1",
            "cdrhook_oldest_undelivered_age_seconds{subscription=\"crm\"} 12.5",
            "cdrhook_cdrs_unmatched_total{subscription=\"crm\"} 7",
            "# TYPE cdrhook_cdrs_unmatched counter",
            "cdrhook_spool_files{where=\"waiting\"} 4",
            "cdrhook_spool_files{where=\"inflight\"} 2",
            "cdrhook_journal_bytes 4096",
            "# TYPE cdrhook_attempt_duration_seconds histogram",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from:\n{text}"
            );
        }
        // A subscription gone from the next scrape loses its gauges.
        let text = m.render(&Gauges::default());
        assert!(!text.contains("cdrhook_deliveries{"), "{text}");
        assert!(!text.contains("cdrhook_cdrs_unmatched_total{"), "{text}");
    }
}
