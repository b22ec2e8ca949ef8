//! Delivery: getting each journaled delivery to its subscription's endpoint,
//! with retries. The only module that does network I/O.
//!
//! Each subscription (by name) has one worker task. The order of its
//! deliveries (pending, retrying, requested, the failing gate and its probe,
//! held while the subscription is out of service) is decided by a pure state
//! machine, [`queue::Queue`], and the wait after a failure by
//! [`schedule`]; this module is the shell around them: it feeds the queue
//! messages, ended attempts and its timer, and runs the hand-offs the queue
//! returns on tokio's blocking pool, at most `delivery.concurrency` at a time
//! per worker, so a slow endpoint only ever ties up its own worker.
//!
//! No queue holds a CDR body: queues hold delivery ids, and each attempt
//! loads its body from the journal just before sending it and drops it
//! right after, so bodies in memory are bounded by the attempts in flight.

pub mod http;
pub mod oauth;
pub mod queue;
mod resolve;
pub mod route;
pub mod schedule;
pub mod sign;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::live::{DeliverySettings, LiveConfig};
use crate::config::Subscription;
use crate::journal::{Attempt, DeliveryId, EndpointHold, Journal, State, Trigger};
use crate::locks::lock;
use crate::time::now_ms;

use queue::{Found, Job, Next, Note, Outcome, Queue, Requested, SubView, Verdict};

/// What delivery needs from the rest of the daemon.
pub struct Context {
    pub journal: Arc<Journal>,
    /// The config snapshot in force: delivery settings and the agent built
    /// for them, published together by a reload.
    pub live: Arc<LiveConfig>,
    /// Called with in-flight files whose deliveries have all ended.
    pub files_finished: Box<dyn Fn(Vec<String>) + Send + Sync>,
    /// The OAuth2 tokens of subscriptions with `auth`.
    pub tokens: oauth::Tokens,
}

impl Context {
    fn settings(&self) -> DeliverySettings {
        self.live.delivery()
    }
    fn agent(&self) -> ureq::Agent {
        self.live.snapshot().agent.clone()
    }
}

/// The result of a requested (one-shot) attempt.
pub type OnceResult = Result<Attempt, OnceError>;

/// Why a requested attempt gave no attempt record to show.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OnceError {
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("subscription {0} is inactive or not in the config")]
    NotInService(String),
    #[error("delivery d{0} had already ended")]
    AlreadyEnded(DeliveryId),
    /// The attempt could not be made or journaled (the message says why).
    #[error("{0}")]
    NotMade(String),
}

enum Msg {
    /// Deliveries to queue: `None` = pending now, `Some(ms)` = retry at.
    Enqueue(Vec<(DeliveryId, Option<u64>)>),
    /// The subscription's new definition; `None` = removed from the config.
    Subscription(Option<Arc<Subscription>>),
    /// One attempt now, outside the schedule and not retried; joins the
    /// request already queued for that delivery, if any.
    Once {
        id: DeliveryId,
        trigger: Trigger,
        reply: Option<oneshot::Sender<OnceResult>>,
    },
    /// Settings changed (concurrency): look at the queue again.
    Wake,
    /// Open deliveries found in the journal (at start-up, or when it was
    /// reopened: then `skip_held`, queue those the worker does not already
    /// hold). `tests` are open test webhooks, ended as failed.
    Resume {
        items: Vec<Found>,
        tests: Vec<DeliveryId>,
        skip_held: bool,
    },
    /// The endpoint asked (`Retry-After`, journaled before a restart) for
    /// no automatic attempt before then.
    EndpointHeld(u64),
}

/// Routes work to the per-subscription workers, creating them as needed.
pub struct Dispatcher {
    ctx: Arc<Context>,
    runtime: tokio::runtime::Handle,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Msg>>>,
    tasks: Mutex<JoinSet<()>>,
    stop: watch::Sender<bool>,
}

impl Dispatcher {
    pub fn new(ctx: Arc<Context>, runtime: tokio::runtime::Handle) -> Dispatcher {
        Dispatcher {
            ctx,
            runtime,
            workers: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            stop: watch::channel(false).0,
        }
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn send(&self, name: &str, msg: Msg) {
        let mut workers = lock(&self.workers);
        let tx = workers.entry(name.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let worker = Worker::new(name.to_string(), self.ctx.clone());
            let stop = self.stop.subscribe();
            let _guard = self.runtime.enter();
            lock(&self.tasks).spawn_on(worker.run(rx, stop), &self.runtime);
            tx
        });
        // A closed worker means we are shutting down; what it would have sent
        // stays open in the journal for the next start.
        let _ = tx.send(msg);
    }

    /// Brings the workers in line with a (re)loaded config. Subscriptions no
    /// longer listed keep their worker, holding its queue, in case the name
    /// comes back.
    pub fn apply_subscriptions(&self, subs: &[Subscription]) {
        let listed: Vec<String> = subs.iter().map(|s| s.name.clone()).collect();
        self.ctx.tokens.retain(subs);
        for sub in subs {
            self.send(&sub.name, Msg::Subscription(Some(Arc::new(sub.clone()))));
        }
        let known: Vec<String> = lock(&self.workers).keys().cloned().collect();
        for name in known.iter().filter(|n| !listed.contains(n)) {
            self.send(name, Msg::Subscription(None));
        }
        for name in &known {
            self.send(name, Msg::Wake);
        }
    }

    pub fn enqueue(&self, sub: &str, items: Vec<(DeliveryId, Option<u64>)>) {
        if !items.is_empty() {
            self.send(sub, Msg::Enqueue(items));
        }
    }

    /// Hands open deliveries found in the journal to their workers: pending
    /// ones in order, retrying ones at their persisted time. With
    /// `skip_held`, a worker skips deliveries it already holds (queued or in
    /// flight): after the journal was reopened, not at start-up. An open
    /// test webhook is never resumed (a test is one attempt): it is ended
    /// as failed, unless its attempt is running here.
    pub fn resume(&self, open: Vec<crate::journal::OpenDelivery>, skip_held: bool) {
        type Open = (Vec<Found>, Vec<DeliveryId>);
        let mut by_sub: BTreeMap<String, Open> = BTreeMap::new();
        for d in open {
            let (items, tests) = by_sub.entry(d.subscription).or_default();
            if d.origin == Trigger::Test {
                tests.push(d.id);
            } else {
                items.push(Found {
                    id: d.id,
                    retry_at: d.retry_at_ms,
                    hold_until: d.hold_until_ms,
                });
            }
        }
        for (sub, (items, tests)) in by_sub {
            self.send(
                &sub,
                Msg::Resume {
                    items,
                    tests,
                    skip_held,
                },
            );
        }
    }

    /// Gives each subscription back the endpoint-wide `Retry-After` its
    /// endpoint answered before a restart (`Journal::endpoint_holds`):
    /// nothing is sent there before it ends. A hold is dropped if the
    /// subscription's URL changed meanwhile (or it is gone from the config):
    /// a corrected URL is tried at once, as on a reload. Call it before
    /// [`Dispatcher::resume`], so that no resumed delivery goes out first.
    pub fn restore_endpoint_holds(&self, holds: Vec<(String, EndpointHold)>) {
        let config = self.ctx.live.get();
        for (name, hold) in holds {
            let same_url = config
                .subscriptions
                .iter()
                .find(|s| s.name == name)
                .is_some_and(|s| endpoint_fingerprint(s.endpoint.expose()) == hold.endpoint);
            if same_url {
                self.send(&name, Msg::EndpointHeld(hold.until_ms));
            } else {
                self.ctx.journal.release_endpoint(&name);
            }
        }
    }

    /// One attempt now. The request is queued before this returns; the
    /// future resolves with its result.
    pub fn once(
        &self,
        sub: &str,
        id: DeliveryId,
        trigger: Trigger,
    ) -> impl std::future::Future<Output = OnceResult> {
        let (tx, rx) = oneshot::channel();
        self.send(
            sub,
            Msg::Once {
                id,
                trigger,
                reply: Some(tx),
            },
        );
        async move { rx.await.unwrap_or(Err(OnceError::ShuttingDown)) }
    }

    /// One attempt as soon as the worker can; does not wait.
    pub fn once_later(&self, sub: &str, id: DeliveryId, trigger: Trigger) {
        self.send(
            sub,
            Msg::Once {
                id,
                trigger,
                reply: None,
            },
        );
    }

    /// Stops starting attempts, lets those in flight finish (each is bounded
    /// by `delivery.timeout`), and returns when every worker has stopped or
    /// `grace` has passed.
    /// Stops every worker; waits at most `grace` for attempts in flight.
    /// Returns whether they all finished (none may still write).
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let _ = self.stop.send(true);
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            log::warn!("shutdown: attempts still in flight after {grace:?}; they will be retried at the next start");
            return false;
        }
        true
    }
}

/// What a blocking thread hands back: the attempts it made, and the jobs of
/// its hand-off it did not start (the endpoint began failing, or the
/// subscription changed, or the daemon is stopping), in their queue order.
struct Batch {
    done: Vec<Done>,
    unstarted: Vec<Job<Reply>>,
}

/// A reply channel for an operator waiting on a requested attempt.
type Reply = oneshot::Sender<OnceResult>;

/// What a finished attempt tells the worker.
struct Done {
    id: DeliveryId,
    trigger: Trigger,
    /// `Ok(None)`: the delivery ended meanwhile, nothing was sent.
    result: Result<Option<Finished>, AttemptError>,
    replies: Vec<Reply>,
}

struct Finished {
    attempt: Attempt,
    state: State,
    next_at_ms: Option<u64>,
    endpoint_failing: bool,
    /// Not before then, even when the queue is released: the endpoint's
    /// `Retry-After`.
    hold_until_ms: Option<u64>,
    /// A failing answer's `Retry-After`, to an attempt of any trigger: no
    /// automatic probe of the endpoint before then.
    endpoint_hold_until_ms: Option<u64>,
    /// The answer's `Retry-After` could not be read (it is ignored).
    bad_retry_after: Option<schedule::BadRetryAfter>,
}

/// The I/O shell around one subscription's [`Queue`]: it feeds the queue
/// its events (messages, ended attempts, its own timer) and runs the
/// hand-offs the queue returns on tokio's blocking pool.
struct Worker {
    name: String,
    ctx: Arc<Context>,
    sub: Option<Arc<Subscription>>,
    queue: Queue<Reply>,
    in_flight: JoinSet<Batch>,
    /// Bumped when the subscription changes (inactive, removed, edited) or
    /// the daemon stops: a running batch ends after its current attempt and
    /// hands the rest back, so nothing goes out on a stale definition.
    epoch: Arc<AtomicU64>,
    /// An unreadable `Retry-After` is worth one warning per subscription,
    /// not one per attempt of an endpoint that always sends it.
    warned_bad_retry_after: bool,
}

impl Worker {
    fn new(name: String, ctx: Arc<Context>) -> Worker {
        let seed = now_ms() ^ (name.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Worker {
            name,
            ctx,
            sub: None,
            queue: Queue::new(seed),
            in_flight: JoinSet::new(),
            epoch: Arc::new(AtomicU64::new(0)),
            warned_bad_retry_after: false,
        }
    }

    fn limit(&self) -> usize {
        self.ctx.settings().concurrency.max(1)
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>, mut stop: watch::Receiver<bool>) {
        let mut stopping = false;
        loop {
            if !stopping {
                self.dispatch();
            } else if self.in_flight.is_empty() {
                break;
            }
            let due = if stopping {
                None
            } else {
                self.queue
                    .next_wakeup(self.limit())
                    .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(now_ms())))
            };
            tokio::select! {
                msg = rx.recv(), if !stopping => match msg {
                    Some(msg) => self.handle(msg),
                    None => stopping = true,
                },
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match joined {
                        Ok(batch) => {
                            for done in batch.done {
                                self.complete(done);
                            }
                            self.queue.hand_off_ended(batch.unstarted);
                        }
                        Err(e) => log::error!("{}: delivery task failed: {e}", self.name),
                    }
                }
                _ = sleep_until(due), if due.is_some() => {}
                changed = stop.changed(), if !stopping => {
                    if changed.is_err() || *stop.borrow() {
                        stopping = true;
                        self.epoch.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }
        for reply in self.queue.drain_replies() {
            let _ = reply.send(Err(OnceError::ShuttingDown));
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Enqueue(items) => self.queue.enqueue(items),
            Msg::Subscription(sub) => {
                if self.sub != sub {
                    self.epoch.fetch_add(1, Ordering::SeqCst);
                }
                let new_url = matches!((&self.sub, &sub), (Some(old), Some(new)) if old.endpoint != new.endpoint);
                if new_url {
                    // The queue tries a corrected URL at once; so does the
                    // next start.
                    self.ctx.journal.release_endpoint(&self.name);
                }
                let view = sub.as_ref().map(|s| SubView {
                    active: s.active,
                    endpoint: s.endpoint.expose().to_string(),
                });
                self.sub = sub;
                if let Some(Note::Held { queued, removed }) = self.queue.set_subscription(view) {
                    log::info!(
                        "subscription {}: {}; its {queued} queued deliveries are held",
                        self.name,
                        if removed { "removed" } else { "inactive" },
                    );
                }
            }
            Msg::Once { id, trigger, reply } => {
                if let Requested::Refused(Some(reply)) = self.queue.request(id, trigger, reply) {
                    let _ = reply.send(Err(OnceError::NotInService(self.name.clone())));
                }
            }
            Msg::Wake => {}
            Msg::EndpointHeld(until) => {
                self.queue.endpoint_held(until);
                log::info!(
                    "subscription {}: its endpoint asked (Retry-After) for no attempt before {}; held across the restart",
                    self.name,
                    crate::time::rfc3339(until)
                );
            }
            Msg::Resume {
                items,
                tests,
                skip_held,
            } => {
                let (queued, tests) = self.queue.resume(items, tests, skip_held);
                if skip_held && queued > 0 {
                    log::info!(
                        "subscription {}: {queued} deliveries queued again",
                        self.name
                    );
                }
                if !tests.is_empty() {
                    let ctx = self.ctx.clone();
                    // Detached: a daemon stopping meanwhile leaves them open
                    // for the next start, which ends them the same way.
                    tokio::task::spawn_blocking(move || end_interrupted_tests(&ctx, tests));
                }
            }
        }
    }

    fn dispatch(&mut self) {
        let Some(sub) = self.sub.clone() else {
            return;
        };
        for jobs in self.queue.dispatch(now_ms(), self.limit()) {
            self.start(&sub, jobs);
        }
    }

    /// Runs `jobs` one after the other on a blocking thread. Each attempt
    /// loads its CDR body itself, just before sending, and drops it after:
    /// a hand-off holds at most one body at a time, whatever its length.
    fn start(&mut self, sub: &Arc<Subscription>, jobs: Vec<Job<Reply>>) {
        let ctx = self.ctx.clone();
        let sub = sub.clone();
        let epoch = self.epoch.clone();
        let started_in = epoch.load(Ordering::SeqCst);
        self.in_flight.spawn_blocking(move || {
            let mut done = Vec::with_capacity(jobs.len());
            let mut rest = jobs.into_iter();
            for job in rest.by_ref() {
                let result = attempt(&ctx, &sub, job.id, job.trigger, job.random);
                // The endpoint started failing: the rest of the batch goes
                // back to the queue, behind the gate.
                let failing = matches!(&result, Ok(Some(f)) if f.endpoint_failing);
                done.push(Done {
                    id: job.id,
                    trigger: job.trigger,
                    result,
                    replies: job.replies,
                });
                if failing || epoch.load(Ordering::SeqCst) != started_in {
                    break;
                }
            }
            Batch {
                done,
                unstarted: rest.collect(),
            }
        });
    }

    fn complete(&mut self, done: Done) {
        let Done {
            id,
            trigger,
            result,
            replies,
        } = done;
        let now = now_ms();
        let outcome = match &result {
            Ok(None) => Outcome::AlreadyEnded,
            Ok(Some(f)) => Outcome::Sent {
                verdict: if f.attempt.succeeded() {
                    Verdict::Delivered
                } else if f.endpoint_failing {
                    Verdict::EndpointFailing
                } else {
                    Verdict::Refused
                },
                next: match (f.state, f.next_at_ms) {
                    (State::Retrying, Some(at)) => Next::Retry {
                        at,
                        hold_until: f.hold_until_ms,
                    },
                    (State::Delivered | State::Dead, _) => Next::Ended,
                    _ => Next::Unchanged,
                },
            },
            Err(e) => {
                log::error!("subscription {}: delivery d{id}: {}", self.name, e.message);
                // The journal failed. If it is broken (a full disk), the
                // delivery stays open in it and is queued again when the
                // spool reopens it; if that has happened already, retry.
                let retry = e.journal && !self.ctx.journal.is_broken();
                Outcome::NotMade {
                    retry_at: retry.then_some(now + 1000),
                }
            }
        };
        let note = self.queue.attempt_ended(id, trigger, outcome, now);
        if let Ok(Some(f)) = &result {
            if let Some(until) = f.endpoint_hold_until_ms.filter(|_| f.endpoint_failing) {
                self.queue.endpoint_asked_to_wait(until);
            }
            if let Some(bad) = &f.bad_retry_after {
                if !std::mem::replace(&mut self.warned_bad_retry_after, true) {
                    log::warn!(
                        "subscription {}: {bad}; waiting per retry_schedule (said once per subscription)",
                        self.name
                    );
                }
            }
        }
        match note {
            Some(Note::EndpointRecovered) => {
                log::info!("subscription {}: endpoint recovered", self.name)
            }
            Some(Note::EndpointFailing) => {
                if let Ok(Some(f)) = &result {
                    log::warn!(
                        "subscription {}: endpoint failing ({}); new deliveries wait behind its retry",
                        self.name,
                        f.attempt.error.clone().unwrap_or_else(|| format!(
                            "HTTP {}",
                            f.attempt.status.unwrap_or(0)
                        ))
                    );
                }
            }
            _ => {}
        }
        if replies.is_empty() {
            return;
        }
        let answer: OnceResult = match result {
            Ok(Some(f)) => Ok(f.attempt),
            Ok(None) => Err(OnceError::AlreadyEnded(id)),
            Err(e) => Err(OnceError::NotMade(e.message)),
        };
        for reply in replies {
            let _ = reply.send(answer.clone());
        }
    }
}

/// What a test webhook left open at start-up (or after the journal was
/// reopened, if no attempt of it is running) says: it is never resumed.
const TEST_INTERRUPTED: &str =
    "the daemon restarted before this test webhook finished; a test is not retried (run `cdrhook test` again)";

/// Ends open test webhooks as failed: a test is one attempt, asked for by
/// an operator who is no longer waiting for it.
fn end_interrupted_tests(ctx: &Context, tests: Vec<DeliveryId>) {
    for id in tests {
        match ctx.journal.end_delivery(id, TEST_INTERRUPTED) {
            Ok(Some(files)) => {
                log::warn!("test webhook d{id} ended as failed: {TEST_INTERRUPTED}");
                if !files.is_empty() {
                    (ctx.files_finished)(files);
                }
            }
            Ok(None) => {}
            Err(e) => log::error!("test webhook d{id}: could not end it: {e}"),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs one attempt on a blocking thread: load, send, journal.
fn attempt(
    ctx: &Context,
    sub: &Subscription,
    id: DeliveryId,
    trigger: Trigger,
    random: u64,
) -> Result<Option<Finished>, AttemptError> {
    let journal = &ctx.journal;
    // One read of the delivery, its CDR's record and its body.
    let auto = trigger == Trigger::Auto;
    let Some((mut d, body)) = journal
        .delivery_with_body(id, auto)
        .map_err(journal_failed)?
    else {
        return Err(AttemptError::gone(format!(
            "delivery d{id} is not in the journal"
        )));
    };
    if auto && !d.state.is_open() {
        // Ended meanwhile (a resend succeeded): nothing to do.
        return Ok(None);
    }
    let Some(body) = body else {
        return Err(AttemptError::gone(format!(
            "CDR {} of d{id} is not in the journal",
            d.cdr_id
        )));
    };
    let number = d.attempts + 1;
    let outcome = oauth::send(
        &ctx.tokens,
        &ctx.agent(),
        &http::Outgoing {
            sub,
            webhook_id: &d.cdr_id,
            event_type: &d.event_type,
            attempt: number,
            body: &body,
        },
    );
    // The body (up to `max_file_size`) is not held while journaling.
    drop(body);
    crate::metrics::attempt(&d.subscription, outcome.class(), outcome.duration);
    let ok = outcome.succeeded();
    let attempt_trigger = match (trigger, d.origin) {
        (Trigger::Auto, Trigger::Replay) => Trigger::Replay,
        (Trigger::Auto, Trigger::Test) => Trigger::Test,
        (t, _) => t,
    };
    let attempt = Attempt {
        id: journal.next_id().map_err(journal_failed)?,
        delivery_id: id,
        time_ms: outcome.time_ms,
        subscription: d.subscription.clone(),
        event_type: d.event_type.clone(),
        call_id: d.call_id.clone(),
        webhook_id: d.cdr_id.clone(),
        attempt: number,
        status: outcome.status,
        error: outcome.error.clone(),
        duration_ms: outcome.duration.as_millis() as u64,
        trigger: attempt_trigger,
        request_headers: outcome.request_headers.clone(),
        response_headers: outcome.response_headers.clone(),
        response_body: outcome.response_body.clone(),
    };
    d.attempts = number;
    d.last_status = outcome.status;
    d.last_error = outcome.error.clone();
    let now = now_ms();
    let endpoint_failing = !ok && outcome.endpoint_failing();
    let retry_schedule = &ctx.settings().retry_schedule;
    let (asked, bad_retry_after) = if ok {
        (None, None)
    } else {
        match schedule::retry_after(outcome.status, outcome.retry_after.as_deref(), now) {
            Ok(asked) => (asked, None),
            Err(bad) => (None, Some(bad)),
        }
    };
    // The endpoint-wide hold counts for at most twice the schedule's longest
    // step, as a delivery's own hold counts for at most twice its step.
    let endpoint_hold_until_ms = asked.filter(|a| !a.is_zero()).map(|a| {
        let longest = retry_schedule.iter().max().copied().unwrap_or_default();
        now + a.min(longest.saturating_mul(2)).as_millis() as u64
    });
    if ok {
        d.state = State::Delivered;
        d.next_at_ms = None;
        d.ended_ms = Some(now);
    } else if trigger == Trigger::Auto {
        d.failures += 1;
        match schedule::next_wait(retry_schedule, d.failures, asked, random) {
            Some(wait) => {
                d.state = State::Retrying;
                d.next_at_ms = Some(now + wait.wait.as_millis() as u64);
                // Journaled with the delivery, so a restart keeps it.
                d.hold_until_ms = wait.hold.map(|h| now + h.as_millis() as u64);
            }
            None => {
                d.state = State::Dead;
                d.next_at_ms = None;
                d.ended_ms = Some(now);
                log::warn!(
                    "delivery d{id} of {} (call {}) to {} is dead after {} attempts: {}",
                    d.cdr_id,
                    d.call_id.as_deref().unwrap_or("-"),
                    d.subscription,
                    d.attempts,
                    describe_failure(&outcome)
                );
            }
        }
    } else if trigger == Trigger::Test && d.state.is_open() {
        // A test webhook is one attempt: it ends either way.
        d.state = State::Dead;
        d.ended_ms = Some(now);
    }
    if !ok {
        log::debug!(
            "delivery d{id} to {} attempt {number} failed: {}",
            d.subscription,
            describe_failure(&outcome)
        );
    }
    let finished_files = journal
        .record_attempt(&d, &attempt)
        .map_err(journal_failed)?;
    // The endpoint-wide hold, journaled so that a restart keeps it. An
    // answer that is not a failure of the endpoint (2xx, a 4xx refusing
    // one CDR) ends it, as it ends the queue's.
    if endpoint_failing {
        if let Some(until_ms) = endpoint_hold_until_ms {
            let hold = EndpointHold {
                until_ms,
                endpoint: endpoint_fingerprint(sub.endpoint.expose()),
            };
            if let Err(e) = journal.hold_endpoint(&d.subscription, hold) {
                log::warn!(
                    "subscription {}: could not journal the endpoint's Retry-After (it holds until a restart): {e}",
                    d.subscription
                );
            }
        }
    } else {
        journal.release_endpoint(&d.subscription);
    }
    if !finished_files.is_empty() {
        (ctx.files_finished)(finished_files);
    }
    Ok(Some(Finished {
        endpoint_failing,
        // The queue takes it from an automatic attempt only.
        hold_until_ms: d.hold_until_ms.filter(|_| d.state == State::Retrying),
        endpoint_hold_until_ms,
        bad_retry_after,
        state: d.state,
        next_at_ms: d.next_at_ms,
        attempt,
    }))
}

/// Why an attempt could not be made or journaled.
struct AttemptError {
    message: String,
    /// The journal failed (as opposed to: the delivery is gone from it).
    journal: bool,
}

impl AttemptError {
    fn gone(message: String) -> AttemptError {
        AttemptError {
            message,
            journal: false,
        }
    }
}

fn journal_failed(e: crate::journal::JournalError) -> AttemptError {
    AttemptError {
        message: e.to_string(),
        journal: true,
    }
}

/// Which endpoint a journaled hold belongs to: the first 8 bytes of the
/// SHA-256 of the URL as sent (a URL may hold an expanded secret, which the
/// journal must not).
fn endpoint_fingerprint(url: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(url.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

fn describe_failure(o: &http::Outcome) -> String {
    match (&o.error, o.status) {
        (Some(e), _) => e.clone(),
        (None, Some(s)) => format!("HTTP {s}"),
        (None, None) => "no response".to_string(),
    }
}
