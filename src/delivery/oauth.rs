//! OAuth2 client credentials (contract §10): one access token per
//! subscription with `auth`, fetched before its first request, cached,
//! renewed ahead of its expiry and once more after a 401, and sent as
//! `Authorization: Bearer`.
//!
//! This module owns the token cache ([`Tokens`]) and the token request.
//! When to fetch is a pure rule of the cached state and the time
//! ([`TokenState::decide`], clock passed in, table-tested):
//!
//! - no token, or an expired one: fetch, unless a fetch failed lately and
//!   its backoff (1 s, doubling, at most 30 s) has not run out: then the
//!   attempt fails at once with that failure, without asking again;
//! - a token past its renewal time ([`renew_at`]: a tenth of its lifetime
//!   before it expires, at least 60 s, at most half the lifetime) but not
//!   expired: fetch, and keep using the old one if that fails;
//! - after a 401 from the endpoint, the token that got it is dropped and the
//!   request is sent once more with a new one, within the same attempt; a
//!   401 to that one too is an endpoint failure (an error, not a refusal of
//!   one CDR), so the other deliveries wait behind the retry rather than
//!   each fetch a token to be refused with.
//!
//! The whole attempt, token requests included, keeps within
//! `delivery.timeout` (each request gets what is left of it), as an attempt
//! without `auth` does: shutdown waits that long for attempts in flight.
//!
//! A failing token request (no connection, a non-2xx status, a body that is
//! no token) is a failed attempt whose error names the token URL (as shown:
//! a `${VAR}` URL as written) and the status; the endpoint is never called
//! without a token. Such an attempt is an endpoint failure for the queue, so
//! it is retried on the schedule and holds the subscription's new deliveries
//! behind its probe like a down endpoint does.
//!
//! Tokens and client secrets stay in memory: the token request goes
//! through the daemon's one agent (no redirects, a bounded read of the
//! answer), what the token endpoint sends back is scrubbed of the client
//! secret before it goes into an error, and the bearer header is masked in
//! the journal like every credential header. A fetch for a subscription
//! runs one at a time (a second attempt waits for it and uses its token,
//! or, while a still valid token is being renewed, goes with that one);
//! `status` reads the state without waiting for a fetch.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use crate::config::{OAuth2, Subscription};
use crate::locks::lock;
use crate::redact::{Redactor, MASK};
use crate::time::now_ms;

use super::http::{self, Outcome, Outgoing};

/// The lifetime assumed when the token endpoint gives no `expires_in`
/// (README): an hour, the usual default; a 401 renews it earlier.
pub const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);
/// The renewal margin before expiry: a tenth of the lifetime, at least this.
const MIN_MARGIN: Duration = Duration::from_secs(60);
/// Backoff after a failed token request: doubling from 1 s up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest lifetime taken from `expires_in` (a year), so arithmetic on it
/// cannot overflow.
const MAX_LIFETIME_S: u64 = 365 * 24 * 3600;
/// How much of the token endpoint's answer is read: a token response is a
/// few KiB at most (a JWT), past this it is refused.
const TOKEN_BODY_LIMIT: u64 = 64 * 1024;
/// How much of a provider's error description goes into an attempt's error.
const DESCRIPTION_LIMIT: usize = 200;

/// A cached access token. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    value: String,
    pub obtained_ms: u64,
    pub expires_ms: u64,
    pub renew_ms: u64,
    /// The token endpoint gave no usable `expires_in`: the lifetime is
    /// [`ASSUMED_LIFETIME`].
    pub lifetime_assumed: bool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &MASK)
            .field("obtained_ms", &self.obtained_ms)
            .field("expires_ms", &self.expires_ms)
            .field("renew_ms", &self.renew_ms)
            .finish()
    }
}

impl Token {
    /// A token obtained at `now_ms`, valid for `lifetime` (`None`: not given).
    pub fn new(value: String, now_ms: u64, lifetime: Option<Duration>) -> Token {
        let assumed = lifetime.is_none();
        let lifetime = lifetime.unwrap_or(ASSUMED_LIFETIME);
        let ms = lifetime.as_millis() as u64;
        Token {
            value,
            obtained_ms: now_ms,
            expires_ms: now_ms + ms,
            renew_ms: renew_at(now_ms, lifetime),
            lifetime_assumed: assumed,
        }
    }
}

/// When a token obtained at `obtained_ms` and valid for `lifetime` is
/// renewed: `margin` before it expires, where the margin is a tenth of the
/// lifetime but at least 60 s, and never more than half the lifetime (a
/// 10 s token is renewed after 5 s, not fetched for every request).
pub fn renew_at(obtained_ms: u64, lifetime: Duration) -> u64 {
    let margin = (lifetime / 10).max(MIN_MARGIN).min(lifetime / 2);
    obtained_ms + (lifetime - margin).as_millis() as u64
}

/// The wait after the `failures`-th token request failed in a row.
pub fn backoff(failures: u32) -> Duration {
    let doubled =
        Duration::from_secs(1).saturating_mul(1u32 << failures.clamp(1, 16).saturating_sub(1));
    doubled.min(MAX_BACKOFF)
}

/// What to do before a request, given the cached state and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send with the cached token.
    Use,
    /// Fetch a new token; if that fails, send with the cached one (still
    /// valid).
    Renew,
    /// Fetch a token; if that fails, the attempt fails.
    Fetch,
    /// No usable token, and the last fetch failed less than its backoff ago:
    /// the attempt fails with that failure.
    Wait,
}

/// One subscription's token state, without I/O: the cached token, the last
/// failure and the backoff it set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenState {
    pub token: Option<Token>,
    /// Token requests failed in a row.
    pub failures: u32,
    /// No token request before then (after a failure).
    pub retry_at_ms: Option<u64>,
    /// The last failed token request: when, and its message.
    pub last_error: Option<(u64, String)>,
}

impl TokenState {
    /// The rule of the module docs.
    pub fn decide(&self, now_ms: u64) -> Decision {
        let backing_off = self.retry_at_ms.is_some_and(|at| now_ms < at);
        match &self.token {
            Some(t) if now_ms < t.renew_ms => Decision::Use,
            Some(t) if now_ms < t.expires_ms => {
                if backing_off {
                    Decision::Use
                } else {
                    Decision::Renew
                }
            }
            _ if backing_off => Decision::Wait,
            _ => Decision::Fetch,
        }
    }

    pub fn fetched(&mut self, token: Token) {
        self.token = Some(token);
        self.failures = 0;
        self.retry_at_ms = None;
    }

    pub fn failed(&mut self, message: String, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        self.retry_at_ms = Some(now_ms + backoff(self.failures).as_millis() as u64);
        self.last_error = Some((now_ms, message));
    }

    /// The endpoint answered 401 to `used`: drop it, unless another request
    /// has already put a newer token in its place.
    pub fn unauthorized(&mut self, used: &str) {
        if self.token.as_ref().is_some_and(|t| t.value == used) {
            self.token = None;
        }
    }

    /// The token to send now, if one is valid.
    fn valid(&self, now_ms: u64) -> Option<String> {
        self.token
            .as_ref()
            .filter(|t| now_ms < t.expires_ms)
            .map(|t| t.value.clone())
    }
}

/// One subscription's slot: the `auth` it was made for (a changed `auth`
/// gets a new slot, so its token is dropped), its state, and the lock that
/// makes fetches one at a time.
struct Slot {
    auth: Arc<OAuth2>,
    state: Mutex<TokenState>,
    fetching: Mutex<()>,
}

/// The token cache of every subscription with `auth`, by name.
#[derive(Default)]
pub struct Tokens {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// What `status` shows of a subscription's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenView {
    pub valid_until_ms: Option<u64>,
    pub lifetime_assumed: bool,
    pub last_error: Option<(u64, String)>,
}

impl Tokens {
    fn slot(&self, name: &str, auth: &Arc<OAuth2>) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        match slots.get(name) {
            Some(slot) if *slot.auth == **auth => slot.clone(),
            _ => {
                let slot = Arc::new(Slot {
                    auth: auth.clone(),
                    state: Mutex::new(TokenState::default()),
                    fetching: Mutex::new(()),
                });
                slots.insert(name.to_string(), slot.clone());
                slot
            }
        }
    }

    /// Drops the tokens of subscriptions whose `auth` changed or went away
    /// (a reload): the next request fetches a new one.
    pub fn retain(&self, subs: &[Subscription]) {
        lock(&self.slots).retain(|name, slot| {
            subs.iter()
                .any(|s| &s.name == name && s.auth.as_deref() == Some(&*slot.auth))
        });
    }

    /// The token state of `sub`, for `status`; `None` without `auth`. Never
    /// waits for a fetch in progress.
    pub fn view(&self, sub: &Subscription) -> Option<TokenView> {
        let auth = sub.auth.as_ref()?;
        let slot = lock(&self.slots).get(&sub.name).cloned();
        let state = match slot {
            Some(slot) if *slot.auth == **auth => lock(&slot.state).clone(),
            _ => TokenState::default(),
        };
        let now = now_ms();
        let token = state.token.filter(|t| now < t.expires_ms);
        Some(TokenView {
            valid_until_ms: token.as_ref().map(|t| t.expires_ms),
            lifetime_assumed: token.is_some_and(|t| t.lifetime_assumed),
            last_error: state.last_error,
        })
    }
}

/// Sends one attempt of `out`, with a token when its subscription has
/// `auth` (else it is [`http::send`]). Never panics: a token that cannot be
/// had is an [`Outcome`] with an error naming the token URL.
pub fn send(tokens: &Tokens, agent: &ureq::Agent, out: &Outgoing) -> Outcome {
    let Some(auth) = &out.sub.auth else {
        return http::send(agent, out);
    };
    let started = Instant::now();
    let time_ms = now_ms();
    // The whole attempt (token, request, and after a 401 a new token and the
    // request again) keeps within `delivery.timeout`, like an attempt
    // without `auth`: shutdown waits that long for attempts in flight.
    let budget = Budget(
        agent
            .config()
            .timeouts()
            .global
            // A timeout too large to add (a config can say so) is none.
            .and_then(|timeout| started.checked_add(timeout)),
    );
    let slot = tokens.slot(&out.sub.name, auth);
    let token = match token(&slot, agent, &out.sub.name, &out.sub.redactor, budget) {
        Ok(token) => token,
        Err(message) => return token_failure(message, time_ms, started),
    };
    let Some(left) = budget.left() else {
        let message = "the attempt's timeout ran out while waiting for a token".to_string();
        return token_failure(message, time_ms, started);
    };
    let mut outcome = http::send_with(agent, out, Some(&token), left);
    if outcome.status == Some(401) {
        lock(&slot.state).unauthorized(&token);
        let renewed = self::token(&slot, agent, &out.sub.name, &out.sub.redactor, budget).and_then(
            |renewed| match budget.left() {
                Some(left) => Ok((renewed, left)),
                None => Err("the attempt's timeout ran out before it could send again".to_string()),
            },
        );
        match renewed {
            Ok((renewed, left)) => {
                log::info!(
                    "subscription {}: the endpoint answered 401; sending again with a new token",
                    out.sub.name
                );
                outcome = http::send_with(agent, out, Some(&renewed), left);
                if outcome.status == Some(401) {
                    // A token fetched just now is refused too: the endpoint
                    // refuses this client (permissions, scope, audience),
                    // not this CDR. Said as an error, the attempt is an
                    // endpoint failure, so the subscription's other
                    // deliveries wait behind its retry instead of each
                    // asking the token endpoint for a token of its own.
                    outcome.error = Some(
                        "HTTP 401 from the endpoint, with a new token too: it refuses this \
                         client's tokens (check the application's permissions there, and \
                         scope/audience)"
                            .to_string(),
                    );
                }
            }
            Err(message) => {
                outcome.error = Some(format!(
                    "HTTP 401 from the endpoint, and no new token: {message}"
                ));
            }
        }
    }
    outcome.duration = started.elapsed();
    outcome
}

/// When an attempt must be over: `None` when the agent has no timeout.
#[derive(Debug, Clone, Copy)]
struct Budget(Option<Instant>);

impl Budget {
    /// The time left for the next request: `Some(None)` unbounded,
    /// `Some(Some(d))` at most `d`, `None` when it has run out.
    fn left(self) -> Option<Option<Duration>> {
        match self.0 {
            None => Some(None),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                (!left.is_zero()).then_some(Some(left))
            }
        }
    }
}

/// The token to send now: cached, or fetched (one fetch at a time per
/// subscription). `Err` is the attempt's error.
fn token(
    slot: &Slot,
    agent: &ureq::Agent,
    name: &str,
    redactor: &Redactor,
    budget: Budget,
) -> Result<String, String> {
    let (decision, cached) = {
        let state = lock(&slot.state);
        (state.decide(now_ms()), state.valid(now_ms()))
    };
    // One fetch at a time: whoever waited here finds the token the fetch
    // before it got, and decides again. But while a token still valid is
    // being renewed, the other requests go with it rather than wait for
    // the token endpoint (which may take up to the timeout to answer).
    let _fetching = match (decision, cached) {
        (Decision::Use, Some(t)) => return Ok(t),
        (Decision::Renew, Some(still_valid)) => match slot.fetching.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(still_valid),
        },
        _ => lock(&slot.fetching),
    };
    let now = now_ms();
    // Both under one lock: a 401 elsewhere may drop the token meanwhile.
    let (decision, cached) = {
        let state = lock(&slot.state);
        (state.decide(now), state.valid(now))
    };
    match (decision, cached) {
        (Decision::Use, Some(token)) => Ok(token),
        (Decision::Wait, _) => {
            let state = lock(&slot.state);
            let message = state
                .last_error
                .as_ref()
                .map_or("token request failed", |(_, m)| m.as_str());
            Err(format!(
                "{message}; not asked again before {}",
                crate::time::rfc3339(state.retry_at_ms.unwrap_or(now))
            ))
        }
        // Renew, Fetch (and Use without a token, which the rule never gives).
        _ => match fetch(agent, &slot.auth, redactor, budget) {
            Ok(fetched) => {
                // Its lifetime counts from when it was asked for: the
                // provider started it before its answer arrived.
                let token = Token::new(fetched.access_token, now, fetched.lifetime);
                let value = token.value.clone();
                let mut state = lock(&slot.state);
                if state.failures > 0 {
                    log::info!("subscription {name}: token request succeeded again");
                }
                log::debug!(
                    "subscription {name}: new token from {}, valid until {}{}",
                    slot.auth.token_url,
                    crate::time::rfc3339(token.expires_ms),
                    if token.lifetime_assumed {
                        " (no expires_in: assumed)"
                    } else {
                        ""
                    }
                );
                state.fetched(token);
                Ok(value)
            }
            Err(message) => {
                let mut state = lock(&slot.state);
                if state.failures == 0 {
                    log::warn!("subscription {name}: {message}");
                }
                state.failed(message.clone(), now_ms());
                match (decision, state.valid(now_ms())) {
                    (Decision::Renew, Some(still_valid)) => Ok(still_valid),
                    _ => Err(message),
                }
            }
        },
    }
}

/// An attempt that never reached the endpoint: no status, the token error.
fn token_failure(message: String, time_ms: u64, started: Instant) -> Outcome {
    Outcome {
        time_ms,
        status: None,
        error: Some(message),
        duration: started.elapsed(),
        request_headers: Vec::new(),
        response_headers: Vec::new(),
        response_body: None,
        retry_after: None,
        transport: None,
    }
}

/// A token response, parsed.
#[derive(Debug, PartialEq, Eq)]
struct Fetched {
    access_token: String,
    /// `None`: no usable `expires_in`.
    lifetime: Option<Duration>,
}

/// The token request: a form POST through the one agent. `Err` is a message
/// that names the token URL (as shown) and, when one came, the status.
fn fetch(
    agent: &ureq::Agent,
    auth: &OAuth2,
    redactor: &Redactor,
    budget: Budget,
) -> Result<Fetched, String> {
    let url = auth.token_url.shown();
    let failed = |why: String| {
        let text = format!("token request to {url} failed: {why}");
        redactor.scrub(&text).into_owned()
    };
    let Some(left) = budget.left() else {
        return Err(failed(
            "not sent: the attempt's timeout ran out while waiting for another token request"
                .into(),
        ));
    };
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", auth.client_id.as_str()),
        ("client_secret", auth.client_secret.expose()),
    ];
    if let Some(scope) = &auth.scope {
        form.push(("scope", scope));
    }
    if let Some(audience) = &auth.audience {
        form.push(("audience", audience));
    }
    let body = form_encode(&form);
    let mut request = agent
        .post(auth.token_url.expose())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json");
    if let Some(left) = left {
        request = request.config().timeout_global(Some(left)).build();
    }
    let response = request.send(body.as_bytes());
    let mut response = match response {
        Ok(r) => r,
        Err(e) => return Err(failed(http::describe(&e))),
    };
    let status = response.status().as_u16();
    let mut bytes = Vec::new();
    let read = response
        .body_mut()
        .as_reader()
        .take(TOKEN_BODY_LIMIT + 1)
        .read_to_end(&mut bytes);
    if !(200..300).contains(&status) {
        let detail = provider_error(&bytes)
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        return Err(failed(format!("HTTP {status}{detail}")));
    }
    if let Err(e) = read {
        return Err(failed(format!(
            "HTTP {status}, the answer could not be read: {e}"
        )));
    }
    if bytes.len() as u64 > TOKEN_BODY_LIMIT {
        return Err(failed(format!(
            "HTTP {status}, but the answer is larger than {} KiB",
            TOKEN_BODY_LIMIT / 1024
        )));
    }
    parse_token_response(&bytes).map_err(|why| failed(format!("HTTP {status}, but {why}")))
}

/// Reads a token response (RFC 6749 §5.1). `expires_in` may be a number or
/// a numeric string (some providers send one); missing or unreadable, the
/// lifetime is assumed ([`ASSUMED_LIFETIME`]).
fn parse_token_response(bytes: &[u8]) -> Result<Fetched, String> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|_| "the answer is not a JSON token response".to_string())?;
    let access_token = match v.get("access_token").and_then(|t| t.as_str()) {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => return Err("the answer has no access_token".into()),
    };
    if access_token.chars().any(|c| c.is_control() || c == ' ') {
        return Err("the access_token holds characters a header cannot carry".into());
    }
    if let Some(kind) = v.get("token_type").and_then(|t| t.as_str()) {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(format!(
                "token_type is {:?}; only Bearer tokens are supported",
                kind.chars().take(40).collect::<String>()
            ));
        }
    }
    let seconds = match v.get("expires_in") {
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let lifetime = seconds
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs((s as u64).min(MAX_LIFETIME_S)));
    Ok(Fetched {
        access_token,
        lifetime,
    })
}

/// The provider's `error` and `error_description` from a refusal (RFC 6749
/// §5.2), cut short; `None` when the body is no such JSON.
fn provider_error(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let code = v.get("error")?.as_str()?;
    let text = match v.get("error_description").and_then(|d| d.as_str()) {
        Some(d) => format!("{code}: {d}"),
        None => code.to_string(),
    };
    let mut cut: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(DESCRIPTION_LIMIT)
        .collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    Some(cut)
}

/// `application/x-www-form-urlencoded`: unreserved bytes as they are, a
/// space as `+`, everything else `%XX`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn encode(out: &mut String, text: &str) {
        for b in text.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(&mut out, name);
        out.push('=');
        encode(&mut out, value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn renewal_is_a_tenth_before_expiry_at_least_a_minute_at_most_half() {
        // (lifetime s, renewed after s)
        for (lifetime, after) in [
            (3600, 3240), // a tenth: 360 s before
            (7200, 6480),
            (300, 240), // a minute before (a tenth would be 30 s)
            (120, 60),  // a minute = half
            (10, 5),    // half, not a minute
            (1, 0),     // 500 ms: renewed after 0.5 s
            (0, 0),
        ] {
            let got = renew_at(1_000_000, Duration::from_secs(lifetime));
            assert_eq!(
                got,
                1_000_000 + after * S + if lifetime == 1 { 500 } else { 0 },
                "lifetime {lifetime}"
            );
        }
    }

    #[test]
    fn backoff_doubles_from_a_second_up_to_thirty() {
        for (failures, secs) in [(0, 1), (1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (40, 30)] {
            assert_eq!(backoff(failures), Duration::from_secs(secs), "{failures}");
        }
    }

    fn token(obtained: u64, lifetime: u64) -> Token {
        Token::new(
            "tok".into(),
            obtained * S,
            Some(Duration::from_secs(lifetime)),
        )
    }

    #[test]
    fn decisions_follow_the_token_and_the_backoff() {
        // A 100 s token obtained at 0: renewed from 50 s (a minute would be
        // more than half), expires at 100 s.
        let fresh = TokenState {
            token: Some(token(0, 100)),
            ..TokenState::default()
        };
        let failed_at = |at: u64, failures: u32| TokenState {
            failures,
            retry_at_ms: Some(at * S + backoff(failures).as_millis() as u64),
            last_error: Some((at * S, "down".into())),
            ..TokenState::default()
        };
        let renew_failed = TokenState {
            token: Some(token(0, 100)),
            ..failed_at(60, 1)
        };
        // (state, now s, decision)
        let table: &[(&str, &TokenState, u64, Decision)] = &[
            (
                "none: fetch before the first request",
                &TokenState::default(),
                0,
                Decision::Fetch,
            ),
            ("fresh", &fresh, 10, Decision::Use),
            ("just before renewal", &fresh, 49, Decision::Use),
            ("renewal due", &fresh, 50, Decision::Renew),
            ("expired", &fresh, 100, Decision::Fetch),
            (
                "failed 0.5 s ago: wait",
                &failed_at(10, 1),
                10,
                Decision::Wait,
            ),
            ("backoff over", &failed_at(10, 1), 11, Decision::Fetch),
            ("third failure: 4 s", &failed_at(10, 3), 13, Decision::Wait),
            (
                "third failure, over",
                &failed_at(10, 3),
                14,
                Decision::Fetch,
            ),
            (
                "renewal failed: use the old one",
                &renew_failed,
                60,
                Decision::Use,
            ),
            (
                "renewal failed, backoff over",
                &renew_failed,
                61,
                Decision::Renew,
            ),
            (
                "renewal failed, then expired",
                &renew_failed,
                100,
                Decision::Fetch,
            ),
        ];
        for (what, state, now, want) in table {
            assert_eq!(state.decide(now * S), *want, "{what}");
        }
    }

    #[test]
    fn a_fetch_clears_the_backoff_and_a_401_drops_only_the_token_used() {
        let mut state = TokenState::default();
        state.failed("down".into(), 0);
        state.failed("down".into(), 1000);
        assert_eq!(state.failures, 2);
        assert_eq!(state.retry_at_ms, Some(3000));
        state.fetched(token(2, 100));
        assert_eq!((state.failures, state.retry_at_ms), (0, None));
        // The last error stays for `status`.
        assert_eq!(state.last_error, Some((1000, "down".into())));
        assert_eq!(state.decide(3 * S), Decision::Use);
        // A 401 to a token another request already replaced changes nothing.
        state.unauthorized("older");
        assert!(state.token.is_some());
        state.unauthorized("tok");
        assert_eq!(state.token, None);
        assert_eq!(state.decide(3 * S), Decision::Fetch);
    }

    #[test]
    fn token_responses() {
        let ok = |json: &str| parse_token_response(json.as_bytes());
        assert_eq!(
            ok(r#"{"access_token":"abc.def","token_type":"Bearer","expires_in":3599}"#),
            Ok(Fetched {
                access_token: "abc.def".into(),
                lifetime: Some(Duration::from_secs(3599))
            })
        );
        // expires_in as a string, token_type in any case.
        assert_eq!(
            ok(r#"{"access_token":"t","token_type":"bearer","expires_in":"120"}"#)
                .map(|f| f.lifetime),
            Ok(Some(Duration::from_secs(120)))
        );
        // Missing or unreadable expires_in: assumed.
        for json in [
            r#"{"access_token":"t"}"#,
            r#"{"access_token":"t","expires_in":"soon"}"#,
            r#"{"access_token":"t","expires_in":-5}"#,
        ] {
            assert_eq!(ok(json).map(|f| f.lifetime), Ok(None), "{json}");
        }
        for (json, why) in [
            ("not json", "not a JSON token response"),
            (r#"{"token":"t"}"#, "no access_token"),
            (r#"{"access_token":""}"#, "no access_token"),
            (
                r#"{"access_token":"a b"}"#,
                "characters a header cannot carry",
            ),
            (r#"{"access_token":"t","token_type":"mac"}"#, "only Bearer"),
        ] {
            let err = ok(json).err().unwrap_or_else(|| panic!("{json} accepted"));
            assert!(err.contains(why), "{json}: {err}");
        }
    }

    #[test]
    fn provider_errors_are_short_and_plain() {
        assert_eq!(
            provider_error(br#"{"error":"invalid_client","error_description":"bad secret"}"#),
            Some("invalid_client: bad secret".into())
        );
        assert_eq!(
            provider_error(br#"{"error":"invalid_scope"}"#),
            Some("invalid_scope".into())
        );
        assert_eq!(provider_error(b"<html>"), None);
        let long = format!(
            r#"{{"error":"x","error_description":"{}"}}"#,
            "y".repeat(500)
        );
        let cut = provider_error(long.as_bytes()).unwrap_or_default();
        assert!(cut.chars().count() <= DESCRIPTION_LIMIT + 1, "{cut}");
    }

    #[test]
    fn the_form_is_url_encoded() {
        assert_eq!(
            form_encode(&[
                ("grant_type", "client_credentials"),
                ("client_id", "id 1"),
                ("client_secret", "a+b/c=d&e%"),
                ("scope", "https://h/.default"),
            ]),
            "grant_type=client_credentials&client_id=id+1&client_secret=a%2Bb%2Fc%3Dd%26e%25\
             &scope=https%3A%2F%2Fh%2F.default"
        );
    }

    #[test]
    fn the_budget_is_what_is_left_of_the_attempt() {
        assert_eq!(Budget(None).left(), Some(None));
        let now = Instant::now();
        assert_eq!(Budget(Some(now)).left(), None);
        let left = Budget(Some(now + Duration::from_secs(10))).left();
        assert!(
            left.is_some_and(
                |l| l.is_some_and(|d| d <= Duration::from_secs(10) && d > Duration::from_secs(5))
            ),
            "{left:?}"
        );
    }

    #[test]
    fn a_token_never_shows_in_debug() {
        let t = Token::new("s3cr3t-token".into(), 0, None);
        assert!(t.lifetime_assumed);
        assert_eq!(t.expires_ms, ASSUMED_LIFETIME.as_millis() as u64);
        assert!(!format!("{t:?}").contains("s3cr3t"));
        let state = TokenState {
            token: Some(t),
            ..TokenState::default()
        };
        assert!(!format!("{state:?}").contains("s3cr3t"));
    }
}
