//! Delivery: getting each journaled delivery to its subscription's endpoint,
//! with retries. The only module that does network I/O.
//!
//! Each subscription (by name) has one worker task that owns its queue:
//! pending deliveries in order, retrying ones by due time, and operator
//! requests (resend, replay, test) ahead of both. HTTP runs on tokio's
//! blocking pool, at most `delivery.concurrency` at a time per worker, so a
//! slow endpoint only ever ties up its own worker.
//!
//! While an endpoint is failing (no answer, 5xx, 429, 408, a redirect), its
//! worker stops starting new deliveries and sends one probe at a time, when
//! the earliest retry is due; the first success releases the queue. A 4xx is
//! the receiver refusing one CDR: that delivery retries on its own schedule
//! without holding back the others.

pub mod http;
mod resolve;
pub mod sign;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::Subscription;
use crate::journal::{Attempt, DeliveryId, Journal, State, Trigger};
use crate::reload::{DeliverySettings, LiveConfig};
use crate::time::now_ms;

/// What delivery needs from the rest of the daemon.
pub struct Context {
    pub journal: Arc<Journal>,
    /// The config snapshot in force: delivery settings and the agent built
    /// for them, published together by a reload.
    pub live: Arc<LiveConfig>,
    /// Called with in-flight files whose deliveries have all ended.
    pub files_finished: Box<dyn Fn(Vec<String>) + Send + Sync>,
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
pub type OnceResult = Result<Attempt, String>;

enum Msg {
    /// Deliveries to queue: `None` = pending now, `Some(ms)` = retry at.
    Enqueue(Vec<(DeliveryId, Option<u64>)>),
    /// The subscription's new definition; `None` = removed from the config.
    Subscription(Option<Arc<Subscription>>),
    /// One attempt now, outside the schedule and not retried.
    Once {
        id: DeliveryId,
        trigger: Trigger,
        reply: Option<oneshot::Sender<OnceResult>>,
    },
    /// Settings changed (concurrency): look at the queue again.
    Wake,
    /// Open deliveries found when the journal was reopened: queue those
    /// the worker does not already hold.
    Requeue(Vec<(DeliveryId, Option<u64>)>),
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
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let tx = workers.entry(name.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let worker = Worker::new(name.to_string(), self.ctx.clone());
            let stop = self.stop.subscribe();
            let _guard = self.runtime.enter();
            self.tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .spawn_on(worker.run(rx, stop), &self.runtime);
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
        for sub in subs {
            self.send(&sub.name, Msg::Subscription(Some(Arc::new(sub.clone()))));
        }
        let known: Vec<String> = self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
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
    /// flight): after the journal was reopened, not at start-up.
    pub fn resume(&self, open: Vec<crate::journal::OpenDelivery>, skip_held: bool) {
        let mut by_sub: BTreeMap<String, Vec<(DeliveryId, Option<u64>)>> = BTreeMap::new();
        for d in open {
            by_sub
                .entry(d.subscription)
                .or_default()
                .push((d.id, d.retry_at_ms));
        }
        for (sub, items) in by_sub {
            if skip_held {
                self.send(&sub, Msg::Requeue(items));
            } else {
                self.enqueue(&sub, items);
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
        async move {
            rx.await
                .unwrap_or_else(|_| Err("the daemon is shutting down".to_string()))
        }
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
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            log::warn!("shutdown: attempts still in flight after {grace:?}; they will be retried at the next start");
        }
    }
}

/// At most this many deliveries go to one blocking thread in one hand-off
/// while a backlog drains: one hand-off per attempt would cost more in
/// thread wake-ups than the attempt itself on a fast endpoint.
const MAX_BATCH: usize = 16;

/// What a blocking thread hands back: the attempts it made, and the
/// deliveries of its batch it did not start (the endpoint began failing, or
/// the daemon is stopping), in their queue order.
struct Batch {
    done: Vec<Done>,
    unstarted: Vec<DeliveryId>,
}

/// What a finished attempt tells the worker.
struct Done {
    id: DeliveryId,
    trigger: Trigger,
    /// `Ok(None)`: the delivery ended meanwhile, nothing was sent.
    result: Result<Option<Finished>, AttemptError>,
    reply: Option<oneshot::Sender<OnceResult>>,
}

struct Finished {
    attempt: Attempt,
    state: State,
    next_at_ms: Option<u64>,
    endpoint_failing: bool,
    /// The next attempt waits for the endpoint's `Retry-After`.
    retry_after: bool,
}

struct Worker {
    name: String,
    ctx: Arc<Context>,
    sub: Option<Arc<Subscription>>,
    ready: VecDeque<DeliveryId>,
    /// (due ms, id), with `retry_at` as its reverse index.
    retry: BTreeSet<(u64, DeliveryId)>,
    retry_at: HashMap<DeliveryId, u64>,
    /// Retrying deliveries whose wait an endpoint's `Retry-After` asked
    /// for: a release does not send them before it.
    pinned: HashSet<DeliveryId>,
    requests: VecDeque<(DeliveryId, Trigger, Option<oneshot::Sender<OnceResult>>)>,
    in_flight: JoinSet<Batch>,
    /// Bumped when the subscription changes (inactive, removed, edited) or
    /// the daemon stops: a running batch ends after its current attempt and
    /// hands the rest back, so nothing goes out on a stale definition.
    epoch: Arc<AtomicU64>,
    /// The deliveries of `in_flight`.
    in_flight_ids: HashSet<DeliveryId>,
    failing: bool,
    rng: u64,
}

impl Worker {
    fn new(name: String, ctx: Arc<Context>) -> Worker {
        let seed = now_ms() ^ (name.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Worker {
            name,
            ctx,
            sub: None,
            ready: VecDeque::new(),
            retry: BTreeSet::new(),
            retry_at: HashMap::new(),
            pinned: HashSet::new(),
            requests: VecDeque::new(),
            in_flight: JoinSet::new(),
            epoch: Arc::new(AtomicU64::new(0)),
            in_flight_ids: HashSet::new(),
            failing: false,
            rng: seed | 1,
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>, mut stop: watch::Receiver<bool>) {
        let mut stopping = false;
        loop {
            if !stopping {
                self.dispatch();
            } else if self.in_flight.is_empty() {
                break;
            }
            let due = if stopping { None } else { self.next_wakeup() };
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
                            for id in batch.unstarted.into_iter().rev() {
                                self.in_flight_ids.remove(&id);
                                self.ready.push_front(id);
                            }
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
        for (_, _, reply) in self.requests.drain(..) {
            if let Some(reply) = reply {
                let _ = reply.send(Err("the daemon is shutting down".to_string()));
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Enqueue(items) => {
                for (id, at) in items {
                    match at {
                        None => self.ready.push_back(id),
                        Some(at) => self.schedule_retry(id, at),
                    }
                }
            }
            Msg::Subscription(sub) => {
                let was_active = self.active();
                if self.sub != sub {
                    self.epoch.fetch_add(1, Ordering::SeqCst);
                }
                let new_endpoint = match (&self.sub, &sub) {
                    (Some(old), Some(new)) => old.endpoint != new.endpoint,
                    _ => false,
                };
                self.sub = sub;
                if new_endpoint && self.failing {
                    // A corrected URL is tried now, not at the old retry time.
                    self.failing = false;
                    self.release();
                }
                if was_active && !self.active() {
                    log::info!(
                        "subscription {}: {}; its {} queued deliveries are held",
                        self.name,
                        if self.sub.is_none() {
                            "removed"
                        } else {
                            "inactive"
                        },
                        self.ready.len() + self.retry.len()
                    );
                }
            }
            Msg::Once { id, trigger, reply } => {
                if !self.active() {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(format!(
                            "subscription {} is inactive or not in the config",
                            self.name
                        )));
                    }
                    return;
                }
                self.requests.push_back((id, trigger, reply));
            }
            Msg::Wake => {}
            Msg::Requeue(items) => {
                let mut held: HashSet<DeliveryId> = self.ready.iter().copied().collect();
                held.extend(self.retry_at.keys().copied());
                held.extend(self.in_flight_ids.iter().copied());
                held.extend(self.requests.iter().map(|(id, _, _)| *id));
                let new: Vec<_> = items
                    .into_iter()
                    .filter(|(id, _)| !held.contains(id))
                    .collect();
                if !new.is_empty() {
                    log::info!(
                        "subscription {}: {} deliveries queued again",
                        self.name,
                        new.len()
                    );
                }
                self.handle(Msg::Enqueue(new));
            }
        }
    }

    fn active(&self) -> bool {
        self.sub.as_ref().is_some_and(|s| s.active)
    }

    fn schedule_retry(&mut self, id: DeliveryId, at: u64) {
        if let Some(old) = self.retry_at.insert(id, at) {
            self.retry.remove(&(old, id));
        }
        self.retry.insert((at, id));
    }

    fn unschedule(&mut self, id: DeliveryId) {
        self.pinned.remove(&id);
        if let Some(at) = self.retry_at.remove(&id) {
            self.retry.remove(&(at, id));
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        if !self.active() {
            return None;
        }
        // A due retry that cannot start yet (all slots busy, or the one
        // probe of a failing endpoint in flight) must not spin the loop:
        // the end of an attempt wakes it anyway.
        let limit = self.ctx.settings().concurrency.max(1);
        if self.in_flight.len() >= limit || (self.failing && !self.in_flight.is_empty()) {
            return None;
        }
        let (at, _) = self.retry.first()?;
        let wait = at.saturating_sub(now_ms());
        Some(Instant::now() + Duration::from_millis(wait))
    }

    fn pop_due_retry(&mut self) -> Option<DeliveryId> {
        let &(at, id) = self.retry.first()?;
        if at > now_ms() {
            return None;
        }
        self.unschedule(id);
        Some(id)
    }

    fn dispatch(&mut self) {
        let Some(sub) = self.sub.clone().filter(|s| s.active) else {
            return;
        };
        let limit = self.ctx.settings().concurrency.max(1);
        // A delivery already in flight is not started again until that
        // attempt ends: two attempts would race on its journal record.
        let mut busy_requests = VecDeque::new();
        let mut busy_auto = Vec::new();
        while self.in_flight.len() < limit {
            if let Some((id, trigger, reply)) = self.requests.pop_front() {
                if self.in_flight_ids.contains(&id) {
                    busy_requests.push_back((id, trigger, reply));
                } else {
                    self.start(&sub, vec![(id, trigger, reply)]);
                }
                continue;
            }
            if self.failing {
                // One probe at a time; the queue waits behind the retry.
                let probe = if !self.in_flight.is_empty() {
                    None
                } else if let Some(id) = self.pop_due_retry() {
                    Some(id)
                } else if self.retry.is_empty() {
                    self.ready.pop_front()
                } else {
                    None
                };
                match probe {
                    Some(id) if self.in_flight_ids.contains(&id) => busy_auto.push(id),
                    Some(id) => self.start(&sub, vec![(id, Trigger::Auto, None)]),
                    None => break,
                }
                continue;
            }
            if let Some(id) = self.pop_due_retry() {
                if self.in_flight_ids.contains(&id) {
                    busy_auto.push(id);
                } else {
                    self.start(&sub, vec![(id, Trigger::Auto, None)]);
                }
                continue;
            }
            if self.ready.is_empty() {
                break;
            }
            // Share the backlog between the free slots, a batch each.
            let free = limit - self.in_flight.len();
            let size = self.ready.len().div_ceil(free).clamp(1, MAX_BATCH);
            let mut jobs = Vec::with_capacity(size);
            for id in self.ready.drain(..size) {
                if self.in_flight_ids.contains(&id) {
                    busy_auto.push(id);
                } else {
                    jobs.push((id, Trigger::Auto, None));
                }
            }
            if !jobs.is_empty() {
                self.start(&sub, jobs);
            }
        }
        // Back to the front, in order, for when their attempt ends.
        busy_requests.append(&mut self.requests);
        self.requests = busy_requests;
        for id in busy_auto.into_iter().rev() {
            self.ready.push_front(id);
        }
    }

    /// Runs `jobs` one after the other on a blocking thread.
    #[allow(clippy::type_complexity)]
    fn start(
        &mut self,
        sub: &Arc<Subscription>,
        jobs: Vec<(DeliveryId, Trigger, Option<oneshot::Sender<OnceResult>>)>,
    ) {
        let ctx = self.ctx.clone();
        let sub = sub.clone();
        let epoch = self.epoch.clone();
        let started_in = epoch.load(Ordering::SeqCst);
        let mut jobs: Vec<_> = jobs
            .into_iter()
            .map(|job| (job, self.next_random()))
            .collect();
        self.in_flight_ids
            .extend(jobs.iter().map(|((id, _, _), _)| *id));
        self.in_flight.spawn_blocking(move || {
            let mut done = Vec::with_capacity(jobs.len());
            let mut rest = jobs.drain(..);
            for ((id, trigger, reply), jitter) in rest.by_ref() {
                let result = attempt(&ctx, &sub, id, trigger, jitter);
                // The endpoint started failing: the rest of the batch goes
                // back to the queue, behind the gate.
                let failing = matches!(&result, Ok(Some(f)) if f.endpoint_failing);
                done.push(Done {
                    id,
                    trigger,
                    result,
                    reply,
                });
                if failing || epoch.load(Ordering::SeqCst) != started_in {
                    break;
                }
            }
            let unstarted = rest.map(|((id, _, _), _)| id).collect();
            Batch { done, unstarted }
        });
    }

    fn complete(&mut self, done: Done) {
        let Done {
            id,
            trigger,
            result,
            reply,
        } = done;
        self.in_flight_ids.remove(&id);
        match &result {
            Ok(None) => {}
            Ok(Some(f)) => {
                // A 2xx, or a 4xx refusing one CDR, both show the endpoint
                // answers again: lift the gate.
                if f.attempt.succeeded() || !f.endpoint_failing {
                    if self.failing {
                        log::info!("subscription {}: endpoint recovered", self.name);
                        self.release();
                    }
                    self.failing = false;
                } else if f.endpoint_failing && !self.failing {
                    self.failing = true;
                    log::warn!(
                        "subscription {}: endpoint failing ({}); new deliveries wait behind its retry",
                        self.name,
                        f.attempt.error.clone().unwrap_or_else(|| format!(
                            "HTTP {}",
                            f.attempt.status.unwrap_or(0)
                        ))
                    );
                }
                match (f.state, f.next_at_ms) {
                    (State::Retrying, Some(at)) if trigger == Trigger::Auto => {
                        self.schedule_retry(id, at);
                        if f.retry_after {
                            self.pinned.insert(id);
                        } else {
                            self.pinned.remove(&id);
                        }
                    }
                    (State::Delivered | State::Dead, _) => self.unschedule(id),
                    _ => {}
                }
            }
            Err(e) => {
                log::error!("subscription {}: delivery d{id}: {}", self.name, e.message);
                // The journal failed. If it is broken (a full disk), the
                // delivery stays open in it and is queued again when the
                // spool reopens it; if that has happened already, retry.
                if e.journal && trigger == Trigger::Auto && !self.ctx.journal.is_broken() {
                    self.schedule_retry(id, now_ms() + 1000);
                }
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(match result {
                Ok(Some(f)) => Ok(f.attempt),
                Ok(None) => Err(format!("delivery d{id} had already ended")),
                Err(e) => Err(e.message),
            });
        }
    }

    /// The endpoint answers again: what waited behind the failure goes now,
    /// in due order, instead of at each one's (possibly hours away) retry;
    /// except a delivery the endpoint told when to come back (`Retry-After`),
    /// which keeps its time.
    fn release(&mut self) {
        let waiting: Vec<(u64, DeliveryId)> = self
            .retry
            .iter()
            .filter(|(_, id)| !self.pinned.contains(id))
            .copied()
            .collect();
        for (at, id) in &waiting {
            self.retry.remove(&(*at, *id));
            self.retry_at.remove(id);
        }
        for (_, id) in waiting.into_iter().rev() {
            self.ready.push_front(id);
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: jitter needs spread, not cryptographic quality.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The wait before the next automatic attempt after `failures` failures, or
/// `None` when the schedule is used up. Jitter spreads a backlog's retries
/// over ±20% of the step; `Retry-After` is honoured up to twice the step.
pub fn next_wait(
    schedule: &[Duration],
    failures: u32,
    retry_after: Option<Duration>,
    random: u64,
) -> Option<Duration> {
    let step = *schedule.get(failures.checked_sub(1)? as usize)?;
    if let Some(asked) = retry_after {
        return Some(asked.min(step * 2));
    }
    let spread = step.as_millis() as u64 * 2 / 5; // 40% wide, centred
    let offset = if spread == 0 {
        0
    } else {
        random % (spread + 1)
    };
    let base = step.as_millis() as u64 - spread / 2;
    Some(Duration::from_millis(base + offset))
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
    let Some(mut d) = journal.delivery(id).map_err(journal_failed)? else {
        return Err(AttemptError::gone(format!(
            "delivery d{id} is not in the journal"
        )));
    };
    if trigger == Trigger::Auto && !d.state.is_open() {
        // Ended meanwhile (a resend succeeded): nothing to do.
        return Ok(None);
    }
    let Some(cdr) = journal.cdr_by_seq(d.cdr_seq).map_err(journal_failed)? else {
        return Err(AttemptError::gone(format!(
            "CDR {} of d{id} is not in the journal",
            d.cdr_id
        )));
    };
    let number = d.attempts + 1;
    let outcome = http::send(
        &ctx.agent(),
        &http::Outgoing {
            sub,
            webhook_id: &d.cdr_id,
            event_type: &d.event_type,
            attempt: number,
            body: &cdr.body,
        },
    );
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
    if ok {
        d.state = State::Delivered;
        d.next_at_ms = None;
        d.ended_ms = Some(now);
    } else if trigger == Trigger::Auto {
        d.failures += 1;
        let schedule = &ctx.settings().retry_schedule;
        match next_wait(schedule, d.failures, outcome.retry_after, random) {
            Some(wait) => {
                d.state = State::Retrying;
                d.next_at_ms = Some(now + wait.as_millis() as u64);
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
    if !finished_files.is_empty() {
        (ctx.files_finished)(finished_files);
    }
    Ok(Some(Finished {
        endpoint_failing: !ok && outcome.endpoint_failing(),
        retry_after: d.state == State::Retrying && outcome.retry_after.is_some(),
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

fn describe_failure(o: &http::Outcome) -> String {
    match (&o.error, o.status) {
        (Some(e), _) => e.clone(),
        (None, Some(s)) => format!("HTTP {s}"),
        (None, None) => "no response".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_followed_then_used_up() {
        let s = [Duration::from_secs(5), Duration::from_secs(60)];
        let first = next_wait(&s, 1, None, 0).expect("step 1");
        assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(6));
        let second = next_wait(&s, 2, None, u64::MAX).expect("step 2");
        assert!(second >= Duration::from_secs(48) && second <= Duration::from_secs(72));
        assert_eq!(next_wait(&s, 3, None, 0), None);
        assert_eq!(next_wait(&[], 1, None, 0), None);
    }

    #[test]
    fn jitter_spreads_waits() {
        let s = [Duration::from_secs(100)];
        let waits: BTreeSet<_> = (0..50u64)
            .map(|r| next_wait(&s, 1, None, r * 7919).expect("wait"))
            .collect();
        assert!(waits.len() > 10, "jitter gives different waits");
    }

    #[test]
    fn retry_after_is_honoured_up_to_twice_the_step() {
        let s = [Duration::from_secs(10)];
        assert_eq!(
            next_wait(&s, 1, Some(Duration::from_secs(3)), 0),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            next_wait(&s, 1, Some(Duration::from_secs(3600)), 0),
            Some(Duration::from_secs(20))
        );
    }
}
