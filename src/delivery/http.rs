//! One HTTP attempt: the request contract §4 fixes, sent with the daemon's one
//! ureq agent, and what comes back, trimmed to what the journal keeps.
//!
//! An [`Outcome`] leaves this module masked by the rule in
//! [`crate::redact`]: credential headers are `***`, and everything the
//! network sent back (error text, response headers and body) is scrubbed of
//! the subscription's secret values, so what is journaled or logged from it
//! needs no further care.

use std::io::Read;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::config::live::AgentError;
use crate::config::{DeliveryConfig, Subscription};
use crate::metrics::AttemptOutcome;
use crate::redact::{is_credential_header, MASK};

use super::sign::signature;

pub const USER_AGENT: &str = concat!("cdrhook/", env!("CARGO_PKG_VERSION"));

/// How much of a response body the journal keeps.
pub const KEPT_BODY: usize = 4096;
/// How much we read at most: reading a body to its end lets ureq reuse the
/// connection; past this we drop the connection instead of reading on.
const READ_LIMIT: u64 = 64 * 1024;

/// Builds the daemon's agent: global timeout, no redirects, statuses as
/// values, the system's roots plus `ca_file`, and up to `idle_per_host`
/// kept-alive connections per host (`config::live::idle_per_host`).
pub fn build_agent(cfg: &DeliveryConfig, idle_per_host: usize) -> Result<ureq::Agent, AgentError> {
    let mut roots: Vec<Certificate<'static>> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|source| AgentError::CaFileUnreadable {
            path: path.clone(),
            source,
        })?;
        let before = roots.len();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(PemItem::Certificate(c)) => roots.push(c.to_owned()),
                Ok(_) => {}
                Err(e) => {
                    return Err(AgentError::CaFileInvalid {
                        path: path.clone(),
                        message: e.to_string(),
                    })
                }
            }
        }
        if roots.len() == before {
            return Err(AgentError::CaFileEmpty { path: path.clone() });
        }
    }
    // A box without a system bundle still verifies public endpoints against
    // the bundled Mozilla roots rather than failing every https request.
    let root_certs = if roots.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::new_with_certs(&roots)
    };
    let tls = TlsConfig::builder().root_certs(root_certs).build();
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(cfg.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(USER_AGENT)
        .tls_config(tls)
        .max_idle_connections_per_host(idle_per_host.max(1))
        .max_idle_connections(idle_per_host.max(10))
        .build();
    Ok(ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        super::resolve::CachingResolver::default(),
    ))
}

pub struct Outgoing<'a> {
    pub sub: &'a Subscription,
    pub webhook_id: &'a str,
    pub event_type: &'a str,
    pub attempt: u32,
    pub body: &'a [u8],
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub time_ms: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
    /// As sent, with secrets masked.
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Option<String>,
    /// The raw `Retry-After` header, if any: `schedule` decides what it
    /// means (and on which statuses).
    pub retry_after: Option<String>,
    /// What kind of failure it was when no answer came (the metric's
    /// outcome; the text is in `error`).
    pub transport: Option<Transport>,
}

/// A request that got no answer, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Timeout,
    /// No connection: refused, reset, unreachable, or the host not found.
    Connect,
    /// TLS, protocol or anything else.
    Other,
}

impl Transport {
    fn of(e: &ureq::Error) -> Transport {
        match e {
            ureq::Error::Timeout(_) => Transport::Timeout,
            ureq::Error::Io(_) | ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => {
                Transport::Connect
            }
            _ => Transport::Other,
        }
    }
}

impl Outcome {
    /// The outcome label of `cdrhook_attempts_total` (contract §9): the
    /// status class when an answer came (a redirect is not followed), else
    /// the kind of transport failure.
    pub fn class(&self) -> AttemptOutcome {
        match self.status {
            Some(200..=299) if self.error.is_none() => AttemptOutcome::Success,
            Some(300..=399) => AttemptOutcome::Redirect,
            Some(400..=499) => AttemptOutcome::Http4xx,
            Some(500..=599) => AttemptOutcome::Http5xx,
            Some(_) => AttemptOutcome::Other,
            None => match self.transport {
                Some(Transport::Timeout) => AttemptOutcome::Timeout,
                Some(Transport::Connect) => AttemptOutcome::Connect,
                Some(Transport::Other) | None => AttemptOutcome::Other,
            },
        }
    }

    pub fn succeeded(&self) -> bool {
        self.error.is_none() && matches!(self.status, Some(200..=299))
    }

    /// Whether the failure says the endpoint itself is unwell (down, slow,
    /// overloaded, misrouted), as opposed to refusing this one CDR (a 4xx).
    /// Only the former holds back the subscription's queue.
    pub fn endpoint_failing(&self) -> bool {
        match self.status {
            _ if self.error.is_some() => true,
            Some(408) | Some(429) => true,
            Some(400..=499) => false,
            Some(200..=299) => false,
            _ => true,
        }
    }
}

/// Sends one attempt. Never panics and never returns early: every way it
/// can go wrong becomes an `Outcome` with an error, for the journal.
pub fn send(agent: &ureq::Agent, out: &Outgoing) -> Outcome {
    send_with(agent, out, None, None)
}

/// [`send`], with an OAuth2 access token as `Authorization: Bearer` (masked
/// like every credential header, and scrubbed from what comes back). A
/// subscription's `tls` client certificate goes with the request's own TLS
/// settings: ureq then neither takes nor returns a pooled connection for it,
/// so a connection made with one identity never carries another's request.
/// `timeout`, when given, replaces the agent's for this request (what is
/// left of an attempt that also asked for a token).
pub fn send_with(
    agent: &ureq::Agent,
    out: &Outgoing,
    bearer: Option<&str>,
    timeout: Option<Duration>,
) -> Outcome {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let timestamp = now.as_secs();
    let mut headers: Vec<(String, String, bool)> = vec![
        ("content-type".into(), "application/json".into(), false),
        ("user-agent".into(), USER_AGENT.into(), false),
        ("webhook-id".into(), out.webhook_id.into(), false),
        ("webhook-timestamp".into(), timestamp.to_string(), false),
        ("x-webhook-event".into(), out.event_type.into(), false),
        ("x-webhook-attempt".into(), out.attempt.to_string(), false),
    ];
    if let Some(secret) = &out.sub.secret {
        let sig = signature(secret.key(), out.webhook_id, timestamp, out.body);
        headers.push(("webhook-signature".into(), sig, false));
    }
    for h in &out.sub.headers {
        headers.push((h.name.clone(), h.value.expose().to_owned(), h.sensitive()));
    }
    if let Some(token) = bearer {
        headers.push(("authorization".into(), format!("Bearer {token}"), true));
    }

    let mut request = agent.post(out.sub.endpoint.expose());
    if let Some(tls) = &out.sub.tls {
        let roots = agent.config().tls_config().root_certs().clone();
        let config = TlsConfig::builder()
            .root_certs(roots)
            .client_cert(Some(tls.identity.clone()))
            .build();
        request = request.config().tls_config(config).build();
    }
    if let Some(timeout) = timeout {
        request = request.config().timeout_global(Some(timeout)).build();
    }
    for (name, value, _) in &headers {
        request = request.header(name.as_str(), value.as_str());
    }
    // Our own `webhook-signature` is masked by the same name rule.
    let masked = headers
        .into_iter()
        .map(|(n, v, sensitive)| {
            let v = if sensitive || is_credential_header(&n) {
                MASK.to_string()
            } else {
                v
            };
            (n, v)
        })
        .collect();

    let scrub = |text: String| match out.sub.redactor.scrub_with(&text, bearer) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(scrubbed) => scrubbed,
    };
    let started = Instant::now();
    let mut outcome = Outcome {
        time_ms: now.as_millis() as u64,
        status: None,
        error: None,
        duration: Duration::ZERO,
        request_headers: masked,
        response_headers: Vec::new(),
        response_body: None,
        retry_after: None,
        transport: None,
    };
    match request.send(out.body) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            outcome.status = Some(status);
            outcome.response_headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    let value = if is_credential_header(n.as_str()) {
                        MASK.to_string()
                    } else {
                        scrub(String::from_utf8_lossy(v.as_bytes()).into_owned())
                    };
                    (n.as_str().to_string(), value)
                })
                .collect();
            outcome.retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let mut body = Vec::new();
            let read = response
                .body_mut()
                .as_reader()
                .take(READ_LIMIT)
                .read_to_end(&mut body);
            if let Err(e) = read {
                // The status already came: the attempt's verdict stands, but a
                // success whose body was cut short by a timeout is still a
                // success only if the receiver's status says so.
                outcome.response_body = Some(format!("(body unreadable: {e})"));
            } else if !body.is_empty() {
                // Scrubbed before it is cut, so that a secret the receiver
                // echoed across the cut cannot leave a prefix behind.
                let text = scrub(String::from_utf8_lossy(&body).into_owned());
                outcome.response_body = Some(truncate_at_char(text, KEPT_BODY));
            }
            if (300..400).contains(&status) {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?");
                outcome.error = Some(scrub(format!(
                    "redirect {status} to {location} not followed: fix the endpoint URL"
                )));
            }
        }
        Err(e) => {
            outcome.error = Some(scrub(describe(&e)));
            outcome.transport = Some(Transport::of(&e));
        }
    }
    outcome.duration = started.elapsed();
    outcome
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate_at_char(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

pub(super) fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => format!("timeout: {e}"),
        ureq::Error::Io(io) => format!("connection failed: {io}"),
        ureq::Error::HostNotFound => "host not found".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Option<u16>, error: Option<&str>) -> Outcome {
        Outcome {
            time_ms: 0,
            status,
            error: error.map(str::to_string),
            duration: Duration::ZERO,
            request_headers: vec![],
            response_headers: vec![],
            response_body: None,
            retry_after: None,
            transport: None,
        }
    }

    #[test]
    fn the_metric_outcome_is_the_status_class_then_the_transport_failure() {
        use crate::metrics::AttemptOutcome::*;
        let failed = |t| Outcome {
            transport: Some(t),
            ..outcome(None, Some("(text)"))
        };
        for (o, want) in [
            (outcome(Some(200), None), Success),
            (outcome(Some(204), None), Success),
            (outcome(Some(200), Some("(body unreadable)")), Other),
            (
                outcome(Some(301), Some("redirect 301 to x not followed")),
                Redirect,
            ),
            (outcome(Some(308), None), Redirect),
            (outcome(Some(400), None), Http4xx),
            (outcome(Some(429), None), Http4xx),
            (outcome(Some(500), None), Http5xx),
            (outcome(Some(503), None), Http5xx),
            (outcome(Some(101), None), Other),
            (failed(Transport::Timeout), Timeout),
            (failed(Transport::Connect), Connect),
            (failed(Transport::Other), Other),
            // A token request that failed (delivery::oauth): no transport.
            (outcome(None, Some("token request to … failed")), Other),
        ] {
            assert_eq!(o.class(), want, "{:?} {:?}", o.status, o.transport);
        }
    }

    #[test]
    fn the_transport_failure_is_told_from_ureq_s_error() {
        assert_eq!(
            Transport::of(&ureq::Error::Timeout(ureq::Timeout::Global)),
            Transport::Timeout
        );
        assert_eq!(
            Transport::of(&ureq::Error::HostNotFound),
            Transport::Connect
        );
        assert_eq!(
            Transport::of(&ureq::Error::ConnectionFailed),
            Transport::Connect
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Transport::of(&ureq::Error::Io(refused)), Transport::Connect);
        assert_eq!(
            Transport::of(&ureq::Error::TooManyRedirects),
            Transport::Other
        );
    }

    #[test]
    fn only_2xx_succeeds() {
        assert!(outcome(Some(200), None).succeeded());
        assert!(outcome(Some(204), None).succeeded());
        assert!(!outcome(Some(302), Some("redirect")).succeeded());
        assert!(!outcome(Some(500), None).succeeded());
        assert!(!outcome(None, Some("timeout")).succeeded());
    }

    #[test]
    fn a_4xx_does_not_mark_the_endpoint_failing() {
        assert!(!outcome(Some(400), None).endpoint_failing());
        assert!(!outcome(Some(422), None).endpoint_failing());
        assert!(outcome(Some(429), None).endpoint_failing());
        assert!(outcome(Some(503), None).endpoint_failing());
        assert!(outcome(None, Some("refused")).endpoint_failing());
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_at_char("abcdef".into(), 4), "abcd");
        assert_eq!(truncate_at_char("ab".into(), 4), "ab");
        // "é" is two bytes: cutting inside it drops it whole.
        assert_eq!(truncate_at_char("abcé".into(), 4), "abc");
    }
}
