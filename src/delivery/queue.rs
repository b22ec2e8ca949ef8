//! One subscription's delivery queue, as a pure state machine: which
//! delivery's attempt starts next, and when.
//!
//! It owns the order and nothing else: no tokio, no I/O, no clock (every
//! call that needs the time gets `now` in Unix milliseconds), and its
//! randomness (the jitter of retries) comes from a seeded generator. The
//! worker in `mod.rs` feeds it events (deliveries queued, an attempt ended,
//! the subscription changed, a timer fired) and starts the attempts it
//! returns. It holds delivery ids only, never a CDR body.
//!
//! The rules, each with a unit test below:
//! - Requested attempts (resend, replay of a known delivery, test) go ahead
//!   of everything else, in the order asked, even while the endpoint is
//!   failing; a request for a delivery whose requested attempt is already
//!   queued (not started) joins it: one attempt answers both.
//! - Then retries that are due, earliest first, then pending deliveries in
//!   the order they came, in batches shared between the free slots.
//! - At most `limit` hand-offs run at once, and one delivery has at most one
//!   attempt running: a delivery that is busy waits for its attempt to end.
//! - An endpoint failure (no answer, 5xx, 408, 429, a redirect) closes the
//!   gate: no new delivery starts; one probe at a time goes, when the
//!   earliest retry is due (or, with no retry left, the oldest pending one).
//! - A `Retry-After` on a failing answer, to any attempt, holds the whole
//!   endpoint: no automatic probe starts before it runs out (RFC 9110 means
//!   the header for the service, not for one request).
//! - The first answer that is not an endpoint failure (a 2xx, or a 4xx
//!   refusing one CDR) opens the gate and releases what waited: retries go
//!   now, except those the endpoint asked to stay away (`Retry-After`) whose
//!   hold has not run out. A changed endpoint URL also opens the gate, and
//!   releases everything (the old URL's `Retry-After` says nothing about
//!   the new one).
//! - While the subscription is inactive or removed, nothing starts; the
//!   queue is held as it is until the subscription is active again.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use crate::journal::{DeliveryId, Trigger};

/// Unix milliseconds.
pub type Ms = u64;

/// At most this many deliveries go to one hand-off (one blocking thread)
/// while a backlog drains: one hand-off per attempt would cost more in
/// thread wake-ups than the attempt itself on a fast endpoint. Bodies are
/// loaded one attempt at a time inside a hand-off, so this bounds a count
/// of ids, not of bytes held.
pub const MAX_BATCH: usize = 16;

/// What the queue needs to know of its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubView {
    pub active: bool,
    pub endpoint: String,
}

/// One attempt to make. `replies` are the operators waiting for it (empty
/// for an automatic attempt or a request nobody waits for).
#[derive(Debug)]
pub struct Job<R> {
    pub id: DeliveryId,
    pub trigger: Trigger,
    /// For the jitter of this attempt's retry, if it fails.
    pub random: u64,
    pub replies: Vec<R>,
}

/// What the endpoint's answer says about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx.
    Delivered,
    /// A 4xx other than 408/429: the endpoint answers, it refuses this CDR.
    Refused,
    /// No answer, 5xx, 408, 429, a redirect: the endpoint is unwell.
    EndpointFailing,
}

/// An open delivery found in the journal, to queue again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub id: DeliveryId,
    /// `None`: pending, due now; `Some`: retrying, due then.
    pub retry_at: Option<Ms>,
    /// Held by its endpoint's `Retry-After` until then (see [`Next`]).
    pub hold_until: Option<Ms>,
}

/// What became of the delivery, as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered or dead.
    Ended,
    /// Retrying at `at`; `hold_until`: not before then, even on a release.
    Retry { at: Ms, hold_until: Option<Ms> },
    /// Unchanged by this attempt (a failed requested attempt).
    Unchanged,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The delivery had already ended; nothing was sent.
    AlreadyEnded,
    /// The endpoint was tried.
    Sent { verdict: Verdict, next: Next },
    /// The attempt could not be made or journaled; `retry_at`: try again
    /// then (a journal hiccup), or leave it to whoever finds it open.
    NotMade { retry_at: Option<Ms> },
}

/// What the worker may want to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The gate closed.
    EndpointFailing,
    /// The gate opened again after an answer.
    EndpointRecovered,
    /// The subscription went out of service: its queue is held.
    Held { queued: usize, removed: bool },
}

/// Whether a request was taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Requested<R> {
    Queued,
    /// Joined the request already queued for that delivery.
    Joined,
    /// The subscription is inactive or removed: refused, reply handed back.
    Refused(Option<R>),
}

#[derive(Debug)]
struct Request {
    id: DeliveryId,
    trigger: Trigger,
}

#[derive(Debug)]
pub struct Queue<R> {
    sub: Option<SubView>,
    ready: VecDeque<DeliveryId>,
    /// (due ms, id), with `retry_at` as its reverse index.
    retry: BTreeSet<(Ms, DeliveryId)>,
    retry_at: HashMap<DeliveryId, Ms>,
    /// Retrying deliveries whose endpoint asked them to stay away until
    /// then (`Retry-After`): a release does not send them before.
    hold_until: HashMap<DeliveryId, Ms>,
    /// Requested attempts not started, in the order asked; each id at
    /// most once.
    requests: VecDeque<Request>,
    /// The operators waiting on each queued request, keyed by delivery: the
    /// index that makes joining a request O(1), however many are queued (a
    /// `resend --failed` of 100,000 deliveries queues 100,000).
    request_replies: HashMap<DeliveryId, Vec<R>>,
    /// While failing: no automatic probe before then (the endpoint's
    /// `Retry-After`, to whichever attempt it answered). 0: none.
    gate_hold_until: Ms,
    /// Deliveries with an attempt handed off and not ended.
    in_flight: HashSet<DeliveryId>,
    /// Hand-offs running (each takes one of `limit` slots).
    running: usize,
    failing: bool,
    rng: u64,
}

impl<R> Queue<R> {
    pub fn new(seed: u64) -> Queue<R> {
        Queue {
            sub: None,
            ready: VecDeque::new(),
            retry: BTreeSet::new(),
            retry_at: HashMap::new(),
            hold_until: HashMap::new(),
            requests: VecDeque::new(),
            request_replies: HashMap::new(),
            gate_hold_until: 0,
            in_flight: HashSet::new(),
            running: 0,
            failing: false,
            // xorshift must not start at 0.
            rng: seed | 1,
        }
    }

    pub fn active(&self) -> bool {
        self.sub.as_ref().is_some_and(|s| s.active)
    }

    pub fn failing(&self) -> bool {
        self.failing
    }

    /// Hand-offs running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Deliveries waiting (pending or retrying), not counting requests.
    pub fn queued(&self) -> usize {
        self.ready.len() + self.retry.len()
    }

    /// Deliveries to queue: `None` = pending, in this order; `Some(ms)` =
    /// retrying, due then.
    pub fn enqueue(&mut self, items: impl IntoIterator<Item = (DeliveryId, Option<Ms>)>) {
        for (id, retry_at) in items {
            self.queue_found(Found {
                id,
                retry_at,
                hold_until: None,
            });
        }
    }

    fn queue_found(&mut self, f: Found) {
        match f.retry_at {
            None => self.ready.push_back(f.id),
            Some(at) => self.schedule_retry(f.id, at, f.hold_until),
        }
    }

    /// Open deliveries found in the journal. With `skip_held` (the journal
    /// was reopened while running) those already held, queued or in
    /// flight, are skipped. `tests` are open test webhooks: a test is one
    /// attempt and never resumed, so those not in flight here are returned
    /// for the worker to end as failed. Returns (queued, tests to end).
    /// A retrying delivery keeps the hold its endpoint's `Retry-After` put
    /// on it before the restart.
    pub fn resume(
        &mut self,
        items: Vec<Found>,
        tests: Vec<DeliveryId>,
        skip_held: bool,
    ) -> (usize, Vec<DeliveryId>) {
        let held = self.held_ids();
        let new: Vec<Found> = items
            .into_iter()
            .filter(|f| !(skip_held && held.contains(&f.id)))
            .collect();
        let queued = new.len();
        for f in new {
            self.queue_found(f);
        }
        let tests = tests.into_iter().filter(|id| !held.contains(id)).collect();
        (queued, tests)
    }

    fn held_ids(&self) -> HashSet<DeliveryId> {
        let mut held: HashSet<DeliveryId> = self.ready.iter().copied().collect();
        held.extend(self.retry_at.keys().copied());
        held.extend(self.in_flight.iter().copied());
        held.extend(self.request_replies.keys().copied());
        held
    }

    /// One requested attempt, outside the schedule and never retried. A
    /// request for a delivery already queued for one (not yet started)
    /// joins it, so SIGUSR1 ten times in a row queues each delivery once.
    pub fn request(&mut self, id: DeliveryId, trigger: Trigger, reply: Option<R>) -> Requested<R> {
        if !self.active() {
            return Requested::Refused(reply);
        }
        if let Some(waiting) = self.request_replies.get_mut(&id) {
            waiting.extend(reply);
            return Requested::Joined;
        }
        self.request_replies.insert(id, reply.into_iter().collect());
        self.requests.push_back(Request { id, trigger });
        Requested::Queued
    }

    /// The subscription's new definition; `None` = removed from the config.
    pub fn set_subscription(&mut self, sub: Option<SubView>) -> Option<Note> {
        let was_active = self.active();
        let new_endpoint = match (&self.sub, &sub) {
            (Some(old), Some(new)) => old.endpoint != new.endpoint,
            _ => false,
        };
        self.sub = sub;
        if new_endpoint && self.failing {
            // A corrected URL is tried now, not at the old retry time.
            self.failing = false;
            self.hold_until.clear();
            self.release(0);
        }
        (was_active && !self.active()).then(|| Note::Held {
            queued: self.queued(),
            removed: self.sub.is_none(),
        })
    }

    /// The hand-offs to start now, each a list of attempts to make one
    /// after the other, with at most `limit` hand-offs running.
    pub fn dispatch(&mut self, now: Ms, limit: usize) -> Vec<Vec<Job<R>>> {
        let mut out = Vec::new();
        if !self.active() {
            return out;
        }
        let limit = limit.max(1);
        // A delivery already in flight is not started again until that
        // attempt ends: two attempts would race on its journal record.
        let mut busy_requests = VecDeque::new();
        let mut busy_auto = Vec::new();
        while self.running < limit {
            if let Some(req) = self.requests.pop_front() {
                if self.in_flight.contains(&req.id) {
                    busy_requests.push_back(req);
                } else {
                    let replies = self.request_replies.remove(&req.id).unwrap_or_default();
                    let job = self.job(req.id, req.trigger, replies);
                    out.push(self.hand_off(vec![job]));
                }
                continue;
            }
            if self.failing {
                // One probe at a time, not before the endpoint's
                // `Retry-After`; the queue waits behind the retry.
                let probe = if self.running > 0 || now < self.gate_hold_until {
                    None
                } else if let Some(id) = self.pop_due_retry(now) {
                    Some(id)
                } else if self.retry.is_empty() {
                    self.ready.pop_front()
                } else {
                    None
                };
                match probe {
                    Some(id) if self.in_flight.contains(&id) => busy_auto.push(id),
                    Some(id) => {
                        let job = self.job(id, Trigger::Auto, Vec::new());
                        out.push(self.hand_off(vec![job]));
                    }
                    None => break,
                }
                continue;
            }
            if let Some(id) = self.pop_due_retry(now) {
                if self.in_flight.contains(&id) {
                    busy_auto.push(id);
                } else {
                    let job = self.job(id, Trigger::Auto, Vec::new());
                    out.push(self.hand_off(vec![job]));
                }
                continue;
            }
            if self.ready.is_empty() {
                break;
            }
            // Share the backlog between the free slots, a batch each.
            let free = limit - self.running;
            let size = self.ready.len().div_ceil(free).clamp(1, MAX_BATCH);
            let ids: Vec<DeliveryId> = self.ready.drain(..size).collect();
            let mut jobs = Vec::with_capacity(size);
            for id in ids {
                if self.in_flight.contains(&id) {
                    busy_auto.push(id);
                } else {
                    jobs.push(self.job(id, Trigger::Auto, Vec::new()));
                }
            }
            if !jobs.is_empty() {
                out.push(self.hand_off(jobs));
            }
        }
        // Back to the front, in order, for when their attempt ends. Pushed
        // onto the queue's own buffer: moving the whole queue into a new
        // one copied (and, for a replay of 100,000 resends, allocated and
        // freed a block of) every queued request at each dispatch.
        for req in busy_requests.into_iter().rev() {
            self.requests.push_front(req);
        }
        for id in busy_auto.into_iter().rev() {
            self.ready.push_front(id);
        }
        out
    }

    /// When `dispatch` should be called again if nothing else happens:
    /// when the earliest retry is due. `None` while nothing can start
    /// (inactive, every slot busy, the one probe in flight), since the end
    /// of an attempt is an event anyway; a due retry that cannot start must
    /// not spin the worker.
    pub fn next_wakeup(&self, limit: usize) -> Option<Ms> {
        if !self.active() || self.running >= limit.max(1) || (self.failing && self.running > 0) {
            return None;
        }
        let retry = self.retry.first().map(|&(at, _)| at);
        if !self.failing || self.gate_hold_until == 0 {
            return retry;
        }
        // The probe waits for the endpoint's hold too; with no retry left it
        // is the oldest pending delivery, due when the hold runs out.
        match retry {
            Some(at) => Some(at.max(self.gate_hold_until)),
            None if !self.ready.is_empty() => Some(self.gate_hold_until),
            None => None,
        }
    }

    /// The endpoint's `Retry-After` journaled before a restart: the queue
    /// starts failing, its first probe not before `until`, and waits behind
    /// it as after the failing answer itself.
    pub fn endpoint_held(&mut self, until: Ms) {
        self.failing = true;
        self.gate_hold_until = self.gate_hold_until.max(until);
    }

    /// The endpoint answered an attempt (of any trigger) with a failure and a
    /// `Retry-After` asking it to be left alone until `until`: while the gate
    /// is closed, no automatic probe starts before then. Operator requests
    /// still go: the operator asked for them.
    pub fn endpoint_asked_to_wait(&mut self, until: Ms) {
        if self.failing {
            self.gate_hold_until = self.gate_hold_until.max(until);
        }
    }

    /// One attempt of a hand-off ended.
    pub fn attempt_ended(
        &mut self,
        id: DeliveryId,
        trigger: Trigger,
        outcome: Outcome,
        now: Ms,
    ) -> Option<Note> {
        self.in_flight.remove(&id);
        let mut note = None;
        match outcome {
            Outcome::AlreadyEnded => {}
            Outcome::Sent { verdict, next } => {
                match verdict {
                    // A 2xx, or a 4xx refusing one CDR: the endpoint answers.
                    Verdict::Delivered | Verdict::Refused => {
                        if self.failing {
                            self.failing = false;
                            self.release(now);
                            note = Some(Note::EndpointRecovered);
                        }
                    }
                    Verdict::EndpointFailing => {
                        if !self.failing {
                            self.failing = true;
                            self.gate_hold_until = 0;
                            note = Some(Note::EndpointFailing);
                        }
                    }
                }
                match next {
                    Next::Retry { at, hold_until } if trigger == Trigger::Auto => {
                        self.schedule_retry(id, at, hold_until)
                    }
                    Next::Ended => self.unschedule(id),
                    _ => {}
                }
            }
            Outcome::NotMade { retry_at } => {
                if let (Some(at), Trigger::Auto) = (retry_at, trigger) {
                    self.schedule_retry(id, at, None);
                }
            }
        }
        note
    }

    /// A hand-off ended; `unstarted` are the jobs it did not get to (the
    /// endpoint began failing, the subscription changed, the daemon is
    /// stopping): back to the front of their queue, in order.
    pub fn hand_off_ended(&mut self, unstarted: Vec<Job<R>>) {
        self.running = self.running.saturating_sub(1);
        for job in unstarted.into_iter().rev() {
            self.in_flight.remove(&job.id);
            if job.trigger == Trigger::Auto && job.replies.is_empty() {
                self.ready.push_front(job.id);
            } else if let Some(waiting) = self.request_replies.get_mut(&job.id) {
                // Asked again meanwhile: one request answers both.
                waiting.extend(job.replies);
            } else {
                self.request_replies.insert(job.id, job.replies);
                self.requests.push_front(Request {
                    id: job.id,
                    trigger: job.trigger,
                });
            }
        }
    }

    /// Every reply still waiting (the daemon is stopping).
    pub fn drain_replies(&mut self) -> Vec<R> {
        let mut replies = Vec::new();
        for request in self.requests.drain(..) {
            replies.extend(self.request_replies.remove(&request.id).unwrap_or_default());
        }
        replies
    }

    fn job(&mut self, id: DeliveryId, trigger: Trigger, replies: Vec<R>) -> Job<R> {
        Job {
            id,
            trigger,
            random: self.next_random(),
            replies,
        }
    }

    fn hand_off(&mut self, jobs: Vec<Job<R>>) -> Vec<Job<R>> {
        self.running += 1;
        self.in_flight.extend(jobs.iter().map(|j| j.id));
        jobs
    }

    fn schedule_retry(&mut self, id: DeliveryId, at: Ms, hold_until: Option<Ms>) {
        if let Some(old) = self.retry_at.insert(id, at) {
            self.retry.remove(&(old, id));
        }
        self.retry.insert((at, id));
        match hold_until {
            Some(until) => self.hold_until.insert(id, until),
            None => self.hold_until.remove(&id),
        };
    }

    fn unschedule(&mut self, id: DeliveryId) {
        self.hold_until.remove(&id);
        if let Some(at) = self.retry_at.remove(&id) {
            self.retry.remove(&(at, id));
        }
    }

    fn pop_due_retry(&mut self, now: Ms) -> Option<DeliveryId> {
        let &(at, id) = self.retry.first()?;
        if at > now {
            return None;
        }
        self.unschedule(id);
        Some(id)
    }

    /// The endpoint answers again: what waited behind the failure goes now,
    /// in due order, instead of at each one's (possibly hours away) retry;
    /// except a delivery the endpoint told to stay away until later than
    /// `now`, which keeps its time.
    fn release(&mut self, now: Ms) {
        self.gate_hold_until = 0;
        let waiting: Vec<(Ms, DeliveryId)> = self
            .retry
            .iter()
            .filter(|(_, id)| self.hold_until.get(id).is_none_or(|&until| until <= now))
            .copied()
            .collect();
        for &(_, id) in &waiting {
            self.unschedule(id);
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 4;
    const A: Trigger = Trigger::Auto;

    fn active(endpoint: &str) -> Option<SubView> {
        Some(SubView {
            active: true,
            endpoint: endpoint.to_string(),
        })
    }

    /// A queue with an active subscription; replies are plain tags.
    fn queue() -> Queue<&'static str> {
        let mut q = Queue::new(42);
        q.set_subscription(active("http://crm/"));
        q
    }

    /// The (id, trigger) of every job started, hand-off by hand-off.
    fn started(handoffs: &[Vec<Job<&'static str>>]) -> Vec<Vec<(DeliveryId, Trigger)>> {
        handoffs
            .iter()
            .map(|h| h.iter().map(|j| (j.id, j.trigger)).collect())
            .collect()
    }

    fn ids(handoffs: &[Vec<Job<&'static str>>]) -> Vec<DeliveryId> {
        handoffs.iter().flatten().map(|j| j.id).collect()
    }

    /// Ends every job of `handoffs` with `outcome` (per id) and the
    /// hand-offs themselves.
    fn finish(
        q: &mut Queue<&'static str>,
        handoffs: Vec<Vec<Job<&'static str>>>,
        now: Ms,
        outcome: impl Fn(DeliveryId) -> Outcome,
    ) -> Vec<Note> {
        let mut notes = Vec::new();
        for h in handoffs {
            for j in &h {
                notes.extend(q.attempt_ended(j.id, j.trigger, outcome(j.id), now));
            }
            q.hand_off_ended(Vec::new());
        }
        notes
    }

    fn found(items: &[(DeliveryId, Option<Ms>)]) -> Vec<Found> {
        items
            .iter()
            .map(|&(id, retry_at)| Found {
                id,
                retry_at,
                hold_until: None,
            })
            .collect()
    }

    fn delivered(_: DeliveryId) -> Outcome {
        Outcome::Sent {
            verdict: Verdict::Delivered,
            next: Next::Ended,
        }
    }

    fn failed_until(at: Ms) -> impl Fn(DeliveryId) -> Outcome {
        move |_| Outcome::Sent {
            verdict: Verdict::EndpointFailing,
            next: Next::Retry {
                at,
                hold_until: None,
            },
        }
    }

    #[test]
    fn pending_deliveries_go_in_order_in_batches_shared_between_slots() {
        // (queued, limit, expected hand-off sizes)
        let table: [(u64, usize, Vec<usize>); 5] = [
            (1, 4, vec![1]),
            (4, 4, vec![1, 1, 1, 1]),
            (10, 4, vec![3, 3, 2, 2]),
            (100, 1, vec![16]),
            (200, 4, vec![16, 16, 16, 16]),
        ];
        for (n, limit, sizes) in table {
            let mut q = queue();
            q.enqueue((1..=n).map(|id| (id, None)));
            let h = q.dispatch(0, limit);
            assert_eq!(
                h.iter().map(Vec::len).collect::<Vec<_>>(),
                sizes,
                "{n} queued, limit {limit}"
            );
            let got = ids(&h);
            let want: Vec<u64> = (1..=got.len() as u64).collect();
            assert_eq!(got, want, "in order");
            assert_eq!(q.running(), h.len());
            assert!(q.dispatch(0, limit).is_empty(), "every slot is taken");
        }
    }

    #[test]
    fn retries_go_when_due_earliest_first_before_pending_ones() {
        let mut q = queue();
        q.enqueue([(1, Some(5_000)), (2, Some(3_000)), (3, None)]);
        // At 1s only the pending one can go.
        let h = q.dispatch(1_000, 1);
        assert_eq!(ids(&h), [3]);
        assert_eq!(q.next_wakeup(1), None, "the slot is busy");
        finish(&mut q, h, 1_000, delivered);
        assert_eq!(q.next_wakeup(1), Some(3_000));
        assert!(q.dispatch(2_999, 1).is_empty(), "not due yet");
        let h = q.dispatch(3_000, 1);
        assert_eq!(ids(&h), [2]);
        finish(&mut q, h, 3_000, delivered);
        let h = q.dispatch(9_000, 1);
        assert_eq!(ids(&h), [1]);
        // A due retry goes before older pending ones.
        let mut q = queue();
        q.enqueue([(1, None), (2, Some(0))]);
        assert_eq!(ids(&q.dispatch(10, 1)), [2]);
    }

    #[test]
    fn jitter_randomness_is_seeded_and_spread() {
        let randoms = |seed| {
            let mut q: Queue<()> = Queue::new(seed);
            q.set_subscription(active("x"));
            q.enqueue((1..=8).map(|id| (id, None)));
            q.dispatch(0, 8)
                .into_iter()
                .flatten()
                .map(|j| j.random)
                .collect::<Vec<_>>()
        };
        assert_eq!(randoms(7), randoms(7), "the same seed, the same jitter");
        assert_ne!(randoms(7), randoms(8));
        let distinct: HashSet<u64> = randoms(7).into_iter().collect();
        assert_eq!(distinct.len(), 8, "each attempt gets its own number");
    }

    #[test]
    fn a_failure_closes_the_gate_and_one_probe_goes_when_the_earliest_retry_is_due() {
        let mut q = queue();
        q.enqueue([(1, None)]);
        let h = q.dispatch(0, LIMIT);
        let notes = finish(&mut q, h, 100, failed_until(5_000));
        assert_eq!(notes, [Note::EndpointFailing]);
        assert!(q.failing());
        // New deliveries wait behind the retry.
        q.enqueue([(2, None), (3, None)]);
        assert!(q.dispatch(4_999, LIMIT).is_empty(), "the gate is closed");
        assert_eq!(q.next_wakeup(LIMIT), Some(5_000));
        // The probe is the retry, alone.
        let h = q.dispatch(5_000, LIMIT);
        assert_eq!(started(&h), [vec![(1, A)]]);
        assert_eq!(q.next_wakeup(LIMIT), None, "one probe at a time");
        assert!(q.dispatch(60_000, LIMIT).is_empty(), "one probe at a time");
        // It fails again: the next probe is that retry again, not 2 or 3.
        finish(&mut q, h, 5_100, failed_until(20_000));
        assert!(q.dispatch(19_999, LIMIT).is_empty());
        assert_eq!(ids(&q.dispatch(20_000, LIMIT)), [1]);
    }

    #[test]
    fn a_retry_after_holds_the_whole_endpoint_not_only_its_delivery() {
        // (hold asked, earliest retry due, when the probe may go)
        let table: [(Ms, Ms, Ms); 3] = [
            (30_000, 1_000, 30_000), // a later hold wins over an earlier retry
            (500, 1_000, 1_000),     // an earlier hold changes nothing
            (0, 1_000, 1_000),       // none asked
        ];
        for (hold, due, probe_at) in table {
            let mut q = queue();
            q.enqueue([(1, None), (2, None)]);
            let h = q.dispatch(0, 1);
            assert_eq!(ids(&h), [1, 2]);
            // 1 fails with a retry due at `due`; 2's answer asks for `hold`.
            finish(&mut q, h, 100, failed_until(due));
            if hold > 0 {
                q.endpoint_asked_to_wait(hold);
            }
            assert_eq!(q.next_wakeup(1), Some(probe_at), "hold {hold}");
            assert!(q.dispatch(probe_at - 1, 1).is_empty(), "hold {hold}");
            assert_eq!(q.dispatch(probe_at, 1).len(), 1, "hold {hold}");
        }
    }

    #[test]
    fn a_hold_with_no_retry_left_delays_the_pending_probe_and_ends_on_release() {
        let mut q = queue();
        q.enqueue([(1, None)]);
        let h = q.dispatch(0, LIMIT);
        // 1 dies on a failing answer that asks to wait until 9,000.
        finish(&mut q, h, 0, |_| Outcome::Sent {
            verdict: Verdict::EndpointFailing,
            next: Next::Ended,
        });
        q.endpoint_asked_to_wait(9_000);
        q.enqueue([(2, None)]);
        assert!(q.dispatch(8_999, LIMIT).is_empty());
        assert_eq!(q.next_wakeup(LIMIT), Some(9_000));
        let h = q.dispatch(9_000, LIMIT);
        assert_eq!(ids(&h), [2]);
        // Success opens the gate; a later failure starts without the old hold.
        finish(&mut q, h, 9_100, delivered);
        q.enqueue([(3, None)]);
        let h = q.dispatch(9_100, LIMIT);
        finish(&mut q, h, 9_200, failed_until(10_000));
        assert_eq!(q.next_wakeup(LIMIT), Some(10_000));
    }

    #[test]
    fn a_hold_asked_while_the_endpoint_answers_is_ignored() {
        let mut q = queue();
        q.endpoint_asked_to_wait(50_000);
        q.enqueue([(1, None)]);
        assert_eq!(ids(&q.dispatch(0, LIMIT)), [1]);
    }

    #[test]
    fn a_hundred_thousand_requests_queue_once_each() {
        let mut q = queue();
        let n: DeliveryId = 100_000;
        for round in 0..3 {
            for id in 1..=n {
                let got = q.request(id, Trigger::Resend, None);
                let want = if round == 0 {
                    Requested::Queued
                } else {
                    Requested::Joined
                };
                assert_eq!(got, want, "round {round}, d{id}");
            }
        }
        let mut started = 0;
        loop {
            let h = q.dispatch(0, LIMIT);
            if h.is_empty() {
                break;
            }
            started += h.iter().map(Vec::len).sum::<usize>();
            finish(&mut q, h, 0, delivered);
        }
        assert_eq!(started, n as usize, "each delivery once");
    }

    #[test]
    fn with_no_retry_left_the_oldest_pending_delivery_is_the_probe() {
        let mut q = queue();
        q.enqueue([(1, None)]);
        let h = q.dispatch(0, LIMIT);
        finish(&mut q, h, 0, failed_until(5_000));
        q.enqueue([(2, None), (3, None)]);
        let h = q.dispatch(5_000, LIMIT);
        // 1 dies on its last step.
        let notes = finish(&mut q, h, 5_000, |_| Outcome::Sent {
            verdict: Verdict::EndpointFailing,
            next: Next::Ended,
        });
        assert!(notes.is_empty(), "still failing, nothing new to say");
        let h = q.dispatch(5_000, LIMIT);
        assert_eq!(started(&h), [vec![(2, A)]], "one probe, the oldest pending");
        // That probe's own failure schedules it on its step, like any retry:
        // the next one is not sent before.
        finish(&mut q, h, 5_000, failed_until(10_000));
        assert!(q.dispatch(9_999, LIMIT).is_empty());
        assert_eq!(ids(&q.dispatch(10_000, LIMIT)), [2]);
    }

    #[test]
    fn success_releases_the_queue_at_once_in_due_order() {
        let mut q = queue();
        q.enqueue([(1, None), (2, None)]);
        let h = q.dispatch(0, 1);
        finish(&mut q, h, 0, |id| Outcome::Sent {
            verdict: Verdict::EndpointFailing,
            next: Next::Retry {
                at: 1_000 * id,
                hold_until: None,
            },
        });
        // Both failed (retrying at 1s and 2s); 3 and a far-away retry wait.
        q.enqueue([(3, None), (4, Some(90_000_000))]);
        let h = q.dispatch(1_000, 1);
        assert_eq!(ids(&h), [1]);
        let notes = finish(&mut q, h, 1_100, delivered);
        assert_eq!(notes, [Note::EndpointRecovered]);
        assert!(!q.failing());
        // Everything goes now, due order first, far-away retries included.
        let h = q.dispatch(1_100, 1);
        assert_eq!(ids(&h), [2, 4, 3]);
    }

    #[test]
    fn a_4xx_does_not_gate_and_releases_the_gate() {
        let refused = |at| {
            move |_| Outcome::Sent {
                verdict: Verdict::Refused,
                next: Next::Retry {
                    at,
                    hold_until: None,
                },
            }
        };
        // Not failing: a refusal closes nothing.
        let mut q = queue();
        q.enqueue([(1, None)]);
        let h = q.dispatch(0, 1);
        assert!(finish(&mut q, h, 0, refused(60_000)).is_empty());
        assert!(!q.failing());
        q.enqueue([(2, None), (3, None)]);
        assert_eq!(ids(&q.dispatch(1, 1)), [2, 3], "the others go at once");
        // Failing: a refusal of the probe opens the gate; the refused one
        // keeps its own retry time.
        let mut q = queue();
        q.enqueue([(1, None)]);
        let h = q.dispatch(0, 1);
        finish(&mut q, h, 0, failed_until(1_000));
        q.enqueue([(2, None), (3, None)]);
        let h = q.dispatch(1_000, 1);
        assert_eq!(ids(&h), [1]);
        let notes = finish(&mut q, h, 1_000, refused(61_000));
        assert_eq!(notes, [Note::EndpointRecovered]);
        assert_eq!(ids(&q.dispatch(1_000, 1)), [2, 3]);
        assert_eq!(q.next_wakeup(9), Some(61_000));
    }

    /// After the release at `now`: delivery 2 (retrying at 50,000, held
    /// until `hold_until`) went with the others, or kept its time.
    fn after_release(q: &mut Queue<&'static str>, now: Ms, hold_until: Option<Ms>, released: bool) {
        let next = ids(&q.dispatch(now, 1));
        if released {
            assert_eq!(next, [2], "hold {hold_until:?} at {now}");
        } else {
            assert!(next.is_empty(), "hold {hold_until:?} at {now}");
            assert_eq!(q.next_wakeup(1), Some(50_000), "keeps its time");
        }
    }

    /// Issue 8 item 1: a `Retry-After` holds a delivery across a release
    /// until the time the endpoint asked, and no longer.
    #[test]
    fn retry_after_holds_a_delivery_across_a_release_until_its_hold_runs_out() {
        // (hold_until, release at, released with the others?)
        let table = [
            (None, 2_000, true),
            (Some(1_500), 2_000, true),
            (Some(2_000), 2_000, true),
            (Some(2_001), 2_000, false),
            (Some(30_000), 2_000, false),
        ];
        for (hold_until, now, released) in table {
            let mut q = queue();
            q.enqueue([(1, None), (2, None)]);
            let h = q.dispatch(0, 1);
            finish(&mut q, h, 0, |id| Outcome::Sent {
                verdict: Verdict::EndpointFailing,
                next: Next::Retry {
                    at: if id == 1 { 1_000 } else { 50_000 },
                    hold_until: if id == 2 { hold_until } else { None },
                },
            });
            let h = q.dispatch(1_000, 1);
            assert_eq!(ids(&h), [1]);
            finish(&mut q, h, now, delivered);
            after_release(&mut q, now, hold_until, released);
        }
    }

    /// Issue 8: the hold is journaled with the delivery, so a delivery
    /// resumed after a restart keeps it across a release too.
    #[test]
    fn a_resumed_delivery_keeps_its_retry_after_hold_across_a_release() {
        // (hold_until as journaled, release at, released with the others?)
        let table = [
            (None, 2_000, true),
            (Some(2_000), 2_000, true),
            (Some(2_001), 2_000, false),
            (Some(30_000), 2_000, false),
        ];
        for (hold_until, now, released) in table {
            let mut q = queue();
            let resumed = Found {
                id: 2,
                retry_at: Some(50_000),
                hold_until,
            };
            assert_eq!(q.resume(vec![resumed], vec![], false), (1, vec![]));
            // After the restart the endpoint fails once, then recovers.
            q.enqueue([(1, None)]);
            let h = q.dispatch(0, 1);
            finish(&mut q, h, 0, failed_until(1_000));
            let h = q.dispatch(1_000, 1);
            assert_eq!(ids(&h), [1], "the probe");
            finish(&mut q, h, now, delivered);
            after_release(&mut q, now, hold_until, released);
        }
    }

    /// Issue 8: the endpoint-wide `Retry-After` journaled before a restart
    /// gates the new queue: nothing goes out before it ends, then one probe
    /// (a due retry first, else the oldest pending delivery), and its
    /// success releases the rest.
    #[test]
    fn an_endpoint_hold_from_before_a_restart_gates_the_queue_until_it_ends() {
        const HOLD: Ms = 5_000;
        // (a resumed retry of delivery 7 due at, first probe at, the probe)
        let table = [
            (None, HOLD, 1),
            (Some(3_000), HOLD, 7),
            // The queue waits behind a retry due after the hold, as it
            // does after the failing answer itself.
            (Some(9_000), 9_000, 7),
        ];
        for (retry_at, probe_at, probe) in table {
            let mut q = queue();
            q.endpoint_held(HOLD);
            let retrying = retry_at.map(|at| Found {
                id: 7,
                retry_at: Some(at),
                hold_until: None,
            });
            q.resume(retrying.into_iter().collect(), vec![], false);
            q.enqueue([(1, None), (2, None)]);
            assert!(q.failing(), "{retry_at:?}");
            assert_eq!(q.next_wakeup(4), Some(probe_at), "{retry_at:?}");
            assert!(q.dispatch(0, 4).is_empty(), "nothing at start-up");
            assert!(q.dispatch(probe_at - 1, 4).is_empty(), "nor before");
            let h = q.dispatch(probe_at, 4);
            assert_eq!(ids(&h), [probe], "one probe: {retry_at:?}");
            assert!(q.dispatch(probe_at, 4).is_empty(), "one at a time");
            finish(&mut q, h, probe_at, delivered);
            assert!(!q.failing(), "its success opens the gate");
            let mut rest = ids(&q.dispatch(probe_at, 4));
            rest.sort_unstable();
            let mut want: Vec<DeliveryId> = [1, 2, 7]
                .into_iter()
                .filter(|&id| id != probe && (id != 7 || retry_at.is_some()))
                .collect();
            want.sort_unstable();
            assert_eq!(rest, want, "released: {retry_at:?}");
        }
    }

    #[test]
    fn a_changed_endpoint_url_opens_the_gate_and_releases_everything() {
        let mut q = queue();
        q.enqueue([(1, None)]);
        let h = q.dispatch(0, 1);
        finish(&mut q, h, 0, |_| Outcome::Sent {
            verdict: Verdict::EndpointFailing,
            next: Next::Retry {
                at: 60_000,
                hold_until: Some(60_000),
            },
        });
        q.enqueue([(2, None)]);
        // The same URL (another key changed): still gated.
        assert_eq!(q.set_subscription(active("http://crm/")), None);
        assert!(q.dispatch(10, 1).is_empty());
        assert_eq!(q.set_subscription(active("http://crm2/")), None);
        assert!(!q.failing());
        assert_eq!(ids(&q.dispatch(10, 1)), [1, 2]);
    }

    #[test]
    fn an_inactive_or_removed_subscription_holds_its_queue() {
        for removed in [false, true] {
            let mut q = queue();
            q.enqueue([(1, None), (2, Some(1_000))]);
            let sub = (!removed).then(|| SubView {
                active: false,
                endpoint: "http://crm/".into(),
            });
            assert_eq!(
                q.set_subscription(sub),
                Some(Note::Held { queued: 2, removed })
            );
            assert!(q.dispatch(5_000, LIMIT).is_empty(), "held");
            assert_eq!(q.next_wakeup(LIMIT), None, "no timer while held");
            assert!(matches!(
                q.request(1, Trigger::Resend, Some("op")),
                Requested::Refused(Some("op"))
            ));
            // Back under the same name: everything goes, nothing lost.
            assert_eq!(q.set_subscription(active("http://crm/")), None);
            let mut got = ids(&q.dispatch(5_000, LIMIT));
            got.sort_unstable();
            assert_eq!(got, [1, 2]);
        }
    }

    #[test]
    fn requests_go_first_even_while_the_endpoint_is_failing() {
        let mut q = queue();
        q.enqueue([(1, None)]);
        let h = q.dispatch(0, 2);
        finish(&mut q, h, 0, failed_until(60_000));
        q.enqueue([(2, None)]);
        q.request(7, Trigger::Replay, None);
        q.request(8, Trigger::Resend, Some("op"));
        q.request(9, Trigger::Test, Some("test"));
        let h = q.dispatch(1_000, 2);
        assert_eq!(
            started(&h),
            [vec![(7, Trigger::Replay)], vec![(8, Trigger::Resend)]]
        );
        assert_eq!(h[1][0].replies, ["op"]);
        // Slots full; the test is next, still ahead of the queue.
        finish(&mut q, h, 1_000, |_| Outcome::Sent {
            verdict: Verdict::EndpointFailing,
            next: Next::Unchanged,
        });
        let h = q.dispatch(1_000, 2);
        assert_eq!(started(&h), [vec![(9, Trigger::Test)]]);
        // A failed requested attempt is never rescheduled.
        finish(&mut q, h, 1_000, |_| Outcome::Sent {
            verdict: Verdict::EndpointFailing,
            next: Next::Unchanged,
        });
        assert_eq!(q.next_wakeup(2), Some(60_000));
        assert_eq!(q.queued(), 2, "1 retrying, 2 pending; 7, 8, 9 gone");
        // Requests also go ahead of pending deliveries when not failing.
        let mut q = queue();
        q.enqueue([(1, None), (2, None)]);
        q.request(3, Trigger::Resend, None);
        assert_eq!(started(&q.dispatch(0, 1)), [vec![(3, Trigger::Resend)]]);
    }

    #[test]
    fn a_requested_attempt_that_ends_a_retrying_delivery_unschedules_it() {
        let mut q = queue();
        q.enqueue([(1, Some(60_000))]);
        q.request(1, Trigger::Resend, None);
        let h = q.dispatch(0, 1);
        finish(&mut q, h, 0, delivered);
        assert_eq!(q.next_wakeup(1), None);
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn one_attempt_per_delivery_at_a_time() {
        let mut q = queue();
        q.enqueue([(1, None)]);
        let first = q.dispatch(0, LIMIT);
        assert_eq!(ids(&first), [1]);
        // A resend of it waits for its attempt to end, and the slot is
        // not lost meanwhile for the others.
        q.request(1, Trigger::Resend, Some("op"));
        q.enqueue([(2, None)]);
        let h = q.dispatch(0, LIMIT);
        assert_eq!(ids(&h), [2]);
        finish(&mut q, h, 0, delivered);
        assert!(q.dispatch(0, LIMIT).is_empty(), "1 is still in flight");
        finish(&mut q, first, 0, failed_until(0));
        // Now the resend; the (due) retry of 1 must not run beside it.
        let h = q.dispatch(0, LIMIT);
        assert_eq!(started(&h), [vec![(1, Trigger::Resend)]]);
        assert!(
            q.dispatch(0, LIMIT).is_empty(),
            "the retry waits for the resend"
        );
    }

    /// Issue 8 item 3: SIGUSR1 ten times in a row queues each delivery once.
    #[test]
    fn requests_for_deliveries_in_flight_wait_at_the_front_in_order() {
        let mut q = queue();
        q.request(1, Trigger::Resend, None);
        q.request(2, Trigger::Resend, None);
        let running = q.dispatch(0, LIMIT);
        for id in [1, 2, 3] {
            assert_eq!(q.request(id, Trigger::Replay, None), Requested::Queued);
        }
        let h = q.dispatch(0, LIMIT);
        assert_eq!(started(&h), [vec![(3, Trigger::Replay)]], "1, 2 busy");
        q.request(4, Trigger::Replay, None);
        finish(&mut q, running, 0, delivered);
        finish(&mut q, h, 0, delivered);
        let h = q.dispatch(0, LIMIT);
        assert_eq!(
            started(&h),
            [
                vec![(1, Trigger::Replay)],
                vec![(2, Trigger::Replay)],
                vec![(4, Trigger::Replay)]
            ]
        );
    }

    #[test]
    fn a_request_for_a_delivery_already_queued_for_one_joins_it() {
        let mut q = queue();
        // (id, trigger, reply, expected)
        let table: [(u64, Trigger, Option<&str>, Requested<&str>); 5] = [
            (1, Trigger::Resend, None, Requested::Queued),
            (1, Trigger::Resend, None, Requested::Joined),
            (1, Trigger::Resend, Some("cli"), Requested::Joined),
            (2, Trigger::Replay, None, Requested::Queued),
            (1, Trigger::Replay, None, Requested::Joined),
        ];
        for (id, trigger, reply, want) in table {
            assert_eq!(q.request(id, trigger, reply), want, "d{id} {trigger:?}");
        }
        for _ in 0..10 {
            q.request(1, Trigger::Resend, None);
        }
        let h = q.dispatch(0, LIMIT);
        assert_eq!(
            started(&h),
            [vec![(1, Trigger::Resend)], vec![(2, Trigger::Replay)]]
        );
        assert_eq!(
            h[0][0].replies,
            ["cli"],
            "the one waiting gets the one attempt"
        );
        // Once started, a new request is a new attempt (queued once more).
        assert_eq!(q.request(1, Trigger::Resend, None), Requested::Queued);
        assert_eq!(q.request(1, Trigger::Resend, None), Requested::Joined);
    }

    #[test]
    fn unstarted_jobs_of_a_hand_off_go_back_to_the_front_in_order() {
        let mut q = queue();
        q.enqueue((1..=5).map(|id| (id, None)));
        let mut h = q.dispatch(0, 1);
        let mut jobs = h.remove(0);
        assert_eq!(jobs.len(), 5);
        let first = jobs.remove(0);
        // The first failed: the rest come back unstarted.
        q.attempt_ended(first.id, first.trigger, failed_until(10_000)(1), 0);
        q.hand_off_ended(jobs);
        assert!(q.dispatch(9_999, 1).is_empty(), "gated");
        let h = q.dispatch(10_000, 1);
        assert_eq!(ids(&h), [1]);
        finish(&mut q, h, 10_000, delivered);
        assert_eq!(ids(&q.dispatch(10_000, 1)), [2, 3, 4, 5]);
    }

    #[test]
    fn resume_skips_what_is_held_and_returns_open_tests_to_end() {
        let mut q = queue();
        q.enqueue([(1, None)]);
        q.request(2, Trigger::Test, Some("op"));
        let h = q.dispatch(0, 1);
        assert_eq!(ids(&h), [2], "the test is in flight");
        // Start-up: nothing held, every open test is ended.
        let mut fresh = queue();
        assert_eq!(
            fresh.resume(found(&[(1, None), (3, Some(5))]), vec![9], false),
            (2, vec![9])
        );
        // After a journal reopen: skip what is held; a test in flight is
        // left to its attempt.
        assert_eq!(
            q.resume(found(&[(1, None), (3, Some(5))]), vec![2, 4], true),
            (1, vec![4])
        );
    }

    #[test]
    fn a_journal_hiccup_retries_an_automatic_attempt_only() {
        let mut q = queue();
        q.enqueue([(1, None)]);
        q.request(2, Trigger::Resend, None);
        let h = q.dispatch(0, LIMIT);
        finish(&mut q, h, 0, |_| Outcome::NotMade {
            retry_at: Some(1_000),
        });
        assert!(!q.failing(), "not the endpoint's fault");
        assert_eq!(q.queued(), 1);
        assert_eq!(ids(&q.dispatch(1_000, LIMIT)), [1]);
    }

    #[test]
    fn stopping_hands_back_every_waiting_reply() {
        let mut q = queue();
        q.request(1, Trigger::Resend, Some("a"));
        q.request(1, Trigger::Resend, Some("b"));
        q.request(2, Trigger::Test, Some("c"));
        assert_eq!(q.drain_replies(), ["a", "b", "c"]);
    }
}
