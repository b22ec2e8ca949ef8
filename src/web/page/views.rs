//! The page's views (GET): the subscriptions (`/`, what `cdrhook status`
//! gives, plus each subscription's extra headers), the send-attempt history
//! (`/attempts`, `cdrhook attempts` with its filters as query parameters and
//! paging), one attempt or delivery in full (`/attempts/ID`, `cdrhook
//! show`). Each renders the typed response of the control command it names,
//! obtained by running that command's own `apply`/`stream` with the
//! daemon's handles, so the page and the CLI cannot disagree.

use std::sync::Arc;

use super::html::{self, action_button, cli_hint, esc, id_link, opt, result_cell, Nav};
use super::{form, Reply};
use crate::config::EventType;
use crate::control::cmd::attempts::{Attempts, DEFAULT_LIMIT};
use crate::control::cmd::show::{Show, ShowResponse};
use crate::control::cmd::status::{Status, StatusResponse};
use crate::control::cmd::{local_time, AttemptView, CmdError};
use crate::control::protocol;
use crate::control::Handles;
use crate::redact::{is_credential_header, MASK};

/// The most attempts one page of `/attempts` lists.
pub const MAX_PAGE: usize = 500;

/// The status a command's error is answered with.
pub fn error_status(e: &CmdError) -> u16 {
    match e {
        CmdError::Refused(_) | CmdError::BadId(_) | CmdError::BadTime(_) => 400,
        CmdError::Lane(_) | CmdError::Journal(_) => 503,
        _ => 500,
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A time as the CLI shows it (local), with the RFC 3339 form on hover.
fn time(t: Option<&str>) -> String {
    match t {
        Some(t) => format!(
            "<span title=\"{}\">{}</span>",
            esc(t),
            esc(&local_time(Some(t)))
        ),
        None => "-".to_string(),
    }
}

/// `/`: the subscriptions, as `cdrhook status` gives them.
pub async fn index(h: &Arc<Handles>, token: &str) -> Reply {
    let status = match Status::default().apply(h).await {
        Ok(s) => s,
        Err(e) => return Reply::error(error_status(&e), "Webhooks", &e.to_string()),
    };
    Reply::html(
        200,
        html::layout(
            "Webhooks",
            Nav::Subscriptions,
            &index_body(h, &status, token),
        ),
    )
}

fn index_body(h: &Handles, v: &StatusResponse, token: &str) -> String {
    let mut out = String::from("<h1>Webhooks</h1>\n");
    out.push_str(&cli_hint(&args(&["cdrhook", "status"])));
    let c = &v.config;
    if let Some(e) = &c.error {
        out.push_str(&html::notice(
            Some(false),
            &format!(
                "<b>The last reload of the config was refused</b> at {}: {}<br>The version loaded before stays in force.",
                time(c.refused_at.as_deref()),
                esc(e)
            ),
        ));
    }
    if !v.journal.available {
        out.push_str(&html::notice(
            Some(false),
            "<b>The journal is unavailable</b> after an I/O error (disk full?): files wait in the spool; it is reopened by itself once it can be written.",
        ));
    }
    for w in &c.warnings {
        out.push_str(&html::notice(Some(false), &format!("Warning: {}", esc(w))));
    }
    let up = humantime::format_duration(std::time::Duration::from_secs(v.uptime_s));
    out.push_str("<dl class=\"kv\">\n");
    let mut kv =
        |k: &str, val: String| out.push_str(&format!("<dt>{}</dt><dd>{val}</dd>\n", esc(k)));
    kv(
        "Daemon",
        format!(
            "cdrhook {} (pid {}), up {}",
            esc(&v.version),
            v.pid,
            esc(&up.to_string())
        ),
    );
    kv(
        "Config",
        format!(
            "<code>{}</code>, loaded {}",
            esc(&c.path),
            time(Some(&c.loaded))
        ),
    );
    if !c.restart_required.is_empty() {
        kv("Waiting for a restart", esc(&c.restart_required.join(", ")));
    }
    kv(
        "Spool",
        format!(
            "<code>{}</code>: {} waiting, {} in flight, {} rejected since start",
            esc(&v.spool.dir),
            v.spool.backlog,
            v.spool.in_flight,
            v.spool.rejected
        ),
    );
    if let Some(r) = &v.spool.last_rejection {
        kv(
            "Last rejected file",
            format!(
                "<code>{}</code> at {}: {}",
                esc(&r.file),
                time(Some(&r.time)),
                esc(&r.reason)
            ),
        );
    }
    kv(
        "Journal",
        format!(
            "<code>{}</code> ({} MiB)",
            esc(&v.journal.path),
            v.journal.size_bytes >> 20
        ),
    );
    out.push_str("</dl>\n<h2>Subscriptions</h2>\n");

    // The extra headers and the signing secret are the config's, shown
    // through the one masking rule (`Sensitive::shown`, and the header-name
    // rule again, as `show` does).
    let cfg = h.config();
    let test = EventType::Test.as_str();
    let rows: Vec<Vec<String>> = v
        .subscriptions
        .iter()
        .map(|s| {
            let sub = cfg.subscriptions.iter().find(|c| c.name == s.name && s.in_config);
            let headers = sub
                .map(|c| {
                    c.headers
                        .iter()
                        .map(|hd| {
                            let shown = if is_credential_header(&hd.name) {
                                MASK
                            } else {
                                hd.value.shown()
                            };
                            format!("<code>{}: {}</code>", esc(&hd.name), esc(shown))
                        })
                        .collect::<Vec<_>>()
                        .join("<br>")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".to_string());
            let signing = match sub {
                Some(c) if c.secret.is_some() => format!("whsec_{MASK}"),
                Some(_) => "none".to_string(),
                None => "-".to_string(),
            };
            let name = if s.in_config {
                esc(&s.name)
            } else {
                format!("{}<br><span class=\"muted\">removed from the config</span>", esc(&s.name))
            };
            let active = match (s.in_config, s.active) {
                (false, _) => "-".to_string(),
                (true, true) => "<span class=\"ok\">active</span>".to_string(),
                (true, false) => "<span class=\"fail\">inactive</span>".to_string(),
            };
            let last_failure = match (&s.last_failure, &s.last_error) {
                (Some(t), Some(e)) => format!("{}<br><span class=\"muted\">{}</span>", time(Some(t)), esc(e)),
                (t, _) => time(t.as_deref()),
            };
            let mut actions = format!(
                "<a href=\"/attempts?{}\">View send attempts</a>",
                esc(&form::query(&[("subscription", s.name.clone())]))
            );
            if s.in_config && s.active {
                actions.push_str("<br>");
                let failed = s.dead + s.retrying;
                if failed == 0 {
                    actions.push_str(
                        "<button type=\"button\" disabled title=\"no dead or retrying deliveries\">Resend all failed (0)</button>",
                    );
                } else {
                    actions.push_str(&action_button(
                        "/actions/resend-failed",
                        &[("subscription", &s.name)],
                        &format!("Resend all failed ({failed})"),
                        token,
                        &format!("cdrhook resend --failed --subscription {}", s.name),
                    ));
                }
                if s.events.iter().any(|e| e == test) {
                    actions.push(' ');
                    actions.push_str(&action_button(
                        "/actions/test",
                        &[("subscription", &s.name)],
                        "Send Test Webhook",
                        token,
                        &format!("cdrhook test --subscription {}", s.name),
                    ));
                } else {
                    actions.push_str("<br><span class=\"muted\">no test webhook: App.TestWebhook is not in its events</span>");
                }
            }
            vec![
                name,
                opt(s.endpoint.as_ref()),
                active,
                events_cell(s, sub),
                headers,
                signing,
                s.pending.to_string(),
                s.retrying.to_string(),
                s.dead.to_string(),
                s.delivered.to_string(),
                s.held.to_string(),
                time(s.last_success.as_deref()),
                last_failure,
                actions,
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("<p>No subscriptions in the config.</p>\n");
    } else {
        out.push_str(&html::table(
            &[
                "Name",
                "Endpoint",
                "Active",
                "Events",
                "Extra headers",
                "Signing secret",
                "Pending",
                "Retrying",
                "Dead",
                "Delivered",
                "Held",
                "Last success",
                "Last failure",
                "",
            ],
            &rows,
            "subscriptions",
        ));
    }
    out
}

/// A subscription's events, and its filter with the CDRs it left out
/// (`unmatched` of `cdrhook status`) when it has one.
fn events_cell(
    s: &crate::control::cmd::status::SubscriptionState,
    sub: Option<&crate::config::Subscription>,
) -> String {
    let mut out = if s.events.is_empty() {
        "-".to_string()
    } else {
        esc(&s.events.join(", "))
    };
    if let Some(f) = sub.and_then(|c| c.filter.as_ref()) {
        out.push_str(&format!(
            "<br><span class=\"muted\">filter: <code>{}</code><br>{} unmatched</span>",
            esc(&f.to_string()),
            s.unmatched
        ));
    }
    out
}

/// The filters of `/attempts`, as query parameters named like the CLI's
/// options (`subscription`, `failed`, `call_id`, `event_type`, `since`,
/// `limit`) and the paging cursor `before`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filters {
    pub subscription: Option<String>,
    pub failed: bool,
    pub call_id: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<String>,
    pub limit: usize,
    pub before: Option<String>,
}

impl Filters {
    /// Reads the query string; a bad value is a message for the operator.
    pub fn parse(query: &str) -> Result<Filters, String> {
        let q = form::decode(query);
        let get = |k: &str| form::get(&q, k).map(str::to_string);
        let limit = match form::get(&q, "limit") {
            None => DEFAULT_LIMIT,
            Some(t) => match t.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => return Err(format!("limit: {t:?} is not a number from 1 to {MAX_PAGE}")),
            },
        };
        let event_type = get("event_type");
        if let Some(t) = &event_type {
            if EventType::parse(t).is_none() {
                return Err(format!(
                    "event_type: {t:?} is not one of {}",
                    EventType::ALL.map(|e| e.as_str()).join(", ")
                ));
            }
        }
        Ok(Filters {
            subscription: get("subscription"),
            failed: matches!(form::get(&q, "failed"), Some("1" | "on" | "true" | "yes")),
            call_id: get("call_id"),
            event_type,
            since: get("since"),
            limit,
            before: get("before"),
        })
    }

    /// The same filters as a query string, with another `before`.
    pub fn query(&self, before: Option<&str>) -> String {
        let mut p: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &self.subscription {
            p.push(("subscription", s.clone()));
        }
        if self.failed {
            p.push(("failed", "1".into()));
        }
        if let Some(s) = &self.call_id {
            p.push(("call_id", s.clone()));
        }
        if let Some(s) = &self.event_type {
            p.push(("event_type", s.clone()));
        }
        if let Some(s) = &self.since {
            p.push(("since", s.clone()));
        }
        if self.limit != DEFAULT_LIMIT {
            p.push(("limit", self.limit.to_string()));
        }
        if let Some(b) = before {
            p.push(("before", b.to_string()));
        }
        form::query(&p)
    }

    /// The `cdrhook attempts` line that lists the same (paging aside).
    pub fn cli(&self) -> Vec<String> {
        let mut a = args(&["cdrhook", "attempts"]);
        let mut opt = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                a.push(k.to_string());
                a.push(v.clone());
            }
        };
        opt("--subscription", &self.subscription);
        opt("--call-id", &self.call_id);
        opt("--event-type", &self.event_type);
        opt("--since", &self.since);
        if self.failed {
            a.push("--failed".into());
        }
        if self.limit != DEFAULT_LIMIT {
            a.push("--limit".into());
            a.push(self.limit.to_string());
        }
        a
    }
}

/// Runs `attempts` exactly as the control socket does (its `stream`, into
/// memory) and reads back its typed answer. One more than `limit` is asked
/// for, to know whether an older page exists.
async fn list(h: &Arc<Handles>, f: &Filters) -> Result<Vec<AttemptView>, String> {
    let cmd = Attempts {
        subscription: f.subscription.clone(),
        failed: f.failed,
        call_id: f.call_id.clone(),
        event_type: f.event_type.clone(),
        since: f.since.clone(),
        limit: Some(f.limit + 1),
        before: f.before.clone(),
    };
    let mut buf = Vec::new();
    cmd.stream(h, &mut buf).await.map_err(|e| e.to_string())?;
    let r: protocol::Response =
        serde_json::from_slice(&buf).map_err(|e| format!("internal: {e}"))?;
    match (r.ok, r.result) {
        (true, Some(v)) => serde_json::from_value(v).map_err(|e| format!("internal: {e}")),
        _ => Err(r.error.unwrap_or_else(|| "no answer".into())),
    }
}

/// `/attempts`: the history with the CLI's filters, newest first, a page
/// at a time.
pub async fn attempts(h: &Arc<Handles>, query: &str, token: &str) -> Reply {
    let (filters, problem) = match Filters::parse(query) {
        Ok(f) => (f, None),
        Err(e) => (
            Filters {
                limit: DEFAULT_LIMIT,
                ..Filters::default()
            },
            Some(e),
        ),
    };
    let listed = match &problem {
        Some(e) => Err(e.clone()),
        None => list(h, &filters).await,
    };
    let mut out = String::from("<h1>Send attempts</h1>\n");
    out.push_str(&cli_hint(&filters.cli()));
    out.push_str(&filter_form(h, &filters));
    let status = match listed {
        Err(e) => {
            out.push_str(&html::notice(Some(false), &esc(&e)));
            400
        }
        Ok(mut list) => {
            let more = list.len() > filters.limit;
            list.truncate(filters.limit);
            out.push_str(&attempt_rows(&list, token));
            out.push_str("<div class=\"paging\">");
            if filters.before.is_some() {
                out.push_str(&format!(
                    "<a href=\"/attempts?{}\">« Newest</a>",
                    esc(&filters.query(None))
                ));
            }
            if let (true, Some(last)) = (more, list.last().and_then(|a| a.id.as_ref())) {
                out.push_str(&format!(
                    "<a href=\"/attempts?{}\" rel=\"next\">Older »</a>",
                    esc(&filters.query(Some(last)))
                ));
            }
            out.push_str("</div>\n");
            200
        }
    };
    Reply::html(status, html::layout("Send attempts", Nav::Attempts, &out))
}

fn filter_form(h: &Handles, f: &Filters) -> String {
    let cfg = h.config();
    let mut names: Vec<&str> = cfg.subscriptions.iter().map(|s| s.name.as_str()).collect();
    if let Some(s) = f.subscription.as_deref().filter(|s| !names.contains(s)) {
        names.push(s);
    }
    let select = |name: &str, options: &[&str], current: Option<&str>| {
        let mut s = format!("<select name=\"{name}\"><option value=\"\">any</option>");
        for o in options {
            s.push_str(&format!(
                "<option{}>{}</option>",
                if Some(*o) == current { " selected" } else { "" },
                esc(o)
            ));
        }
        s.push_str("</select>");
        s
    };
    let events = EventType::ALL.map(|e| e.as_str());
    let text = |name: &str, v: &Option<String>, hint: &str| {
        format!(
            "<input name=\"{name}\" value=\"{}\" placeholder=\"{}\">",
            esc(v.as_deref().unwrap_or("")),
            esc(hint)
        )
    };
    format!(
        "<form class=\"filters\" method=\"get\" action=\"/attempts\">\
         <label>Subscription {}</label>\
         <label>Event type {}</label>\
         <label>Call ID {}</label>\
         <label>Since {}</label>\
         <label>Per page <input name=\"limit\" type=\"number\" min=\"1\" max=\"{MAX_PAGE}\" value=\"{}\"></label>\
         <label><span><input type=\"checkbox\" name=\"failed\" value=\"1\"{}> Failed only</span></label>\
         <button type=\"submit\">Filter</button> <a href=\"/attempts\">Clear</a></form>\n",
        select("subscription", &names, f.subscription.as_deref()),
        select("event_type", &events, f.event_type.as_deref()),
        text("call_id", &f.call_id, "CallId"),
        text("since", &f.since, "2h or RFC 3339"),
        f.limit,
        if f.failed { " checked" } else { "" },
    )
}

/// The attempts table (the CLI's columns, and a Resend button per row).
fn attempt_rows(list: &[AttemptView], token: &str) -> String {
    if list.is_empty() {
        return "<p>No attempts match.</p>\n".to_string();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let resend = match &a.id {
                Some(id) => action_button(
                    "/actions/resend",
                    &[("id", id)],
                    "Resend",
                    token,
                    &format!("cdrhook resend {id}"),
                ),
                None => String::new(),
            };
            vec![
                a.id.as_deref().map_or_else(|| "-".to_string(), id_link),
                time(a.time.as_deref()),
                esc(&a.subscription),
                esc(&a.event_type),
                opt(a.call_id.as_ref()),
                opt(a.attempt),
                result_cell(a.status, a.error.as_deref()),
                format!("{}ms", opt(a.duration_ms)),
                opt(a.trigger.as_ref()),
                id_link(&a.delivery_id),
                resend,
            ]
        })
        .collect();
    html::table(
        &[
            "Attempt",
            "Time",
            "Subscription",
            "Event",
            "Call ID",
            "#",
            "Result",
            "Duration",
            "Trigger",
            "Delivery",
            "",
        ],
        &rows,
        "attempts",
    )
}

/// `/attempts/ID`: one attempt or delivery in full, as `cdrhook show ID`.
pub async fn show(h: &Arc<Handles>, id: &str, token: &str) -> Reply {
    let title = format!("Attempt {id}");
    match (Show { id: id.to_string() }).apply(h).await {
        Ok(v) => Reply::html(
            200,
            html::layout(&title, Nav::Attempts, &show_body(id, &v, token)),
        ),
        Err(e @ (CmdError::Refused(_) | CmdError::BadId(_))) => {
            Reply::error(404, &title, &e.to_string())
        }
        Err(e) => Reply::error(error_status(&e), &title, &e.to_string()),
    }
}

fn show_body(id: &str, v: &ShowResponse, token: &str) -> String {
    let a = &v.attempt;
    let d = &v.delivery;
    let mut out = match &a.id {
        Some(aid) => format!("<h1>Attempt {} of delivery {}</h1>\n", esc(aid), esc(&d.id)),
        None => format!("<h1>Delivery {} (not attempted yet)</h1>\n", esc(&d.id)),
    };
    out.push_str(&cli_hint(&args(&["cdrhook", "show", id])));
    out.push_str("<p>");
    out.push_str(&action_button(
        "/actions/resend",
        &[("id", id)],
        "Resend",
        token,
        &format!("cdrhook resend {id}"),
    ));
    out.push_str(" <span class=\"muted\">sends this CDR to its subscription again now, as one attempt</span></p>\n");
    out.push_str("<dl class=\"kv\">\n");
    let mut kv =
        |k: &str, val: String| out.push_str(&format!("<dt>{}</dt><dd>{val}</dd>\n", esc(k)));
    kv(
        "Delivery",
        format!(
            "{} · {} · {} attempt(s)",
            esc(&d.id),
            esc(&d.state.to_uppercase()),
            d.attempts
        ),
    );
    kv(
        "Subscription",
        format!(
            "<a href=\"/attempts?{}\">{}</a>",
            esc(&form::query(&[("subscription", a.subscription.clone())])),
            esc(&a.subscription)
        ),
    );
    kv("Event", esc(&a.event_type));
    kv("Call ID", opt(a.call_id.as_ref()));
    kv("webhook-id", format!("<code>{}</code>", esc(&a.webhook_id)));
    kv("Created", time(Some(&d.created)));
    if let Some(t) = &d.next_attempt {
        kv("Next attempt", time(Some(t)));
    }
    if let Some(t) = &d.ended {
        kv("Ended", time(Some(t)));
    }
    kv("Origin", esc(&d.origin));
    if a.id.is_some() {
        kv(
            "Attempt",
            format!("#{} ({})", opt(a.attempt), opt(a.trigger.as_ref())),
        );
        kv("Time", time(a.time.as_deref()));
        kv("Result", result_cell(a.status, a.error.as_deref()));
        kv("Duration", format!("{}ms", opt(a.duration_ms)));
    }
    out.push_str("</dl>\n");
    for (title, headers) in [
        ("Request headers", &v.request_headers),
        ("Response headers", &v.response_headers),
    ] {
        if let Some(hs) = headers.as_ref().filter(|hs| !hs.is_empty()) {
            out.push_str(&format!("<h2>{title}</h2>\n"));
            let rows: Vec<Vec<String>> = hs
                .iter()
                .map(|(k, val)| {
                    vec![
                        format!("<code>{}</code>", esc(k)),
                        format!("<code>{}</code>", esc(val)),
                    ]
                })
                .collect();
            out.push_str(&html::table(&["Name", "Value"], &rows, "headers"));
        }
    }
    if let Some(body) = &v.response_body {
        out.push_str("<h2>Response body <span class=\"muted\">(first 4 KiB)</span></h2>\n");
        out.push_str(&format!("<pre class=\"response\">{}</pre>\n", esc(body)));
    }
    if !d.history.is_empty() {
        out.push_str("<h2>History of the delivery</h2>\n");
        let rows: Vec<Vec<String>> = d
            .history
            .iter()
            .map(|h| {
                vec![
                    h.id.as_deref().map_or_else(|| "-".to_string(), id_link),
                    time(h.time.as_deref()),
                    opt(h.attempt),
                    opt(h.trigger.as_ref()),
                    result_cell(h.status, h.error.as_deref()),
                    format!("{}ms", opt(h.duration_ms)),
                ]
            })
            .collect();
        out.push_str(&html::table(
            &["Attempt", "Time", "#", "Trigger", "Result", "Duration"],
            &rows,
            "history",
        ));
    }
    out.push_str("<h2>CDR</h2>\n");
    out.push_str(&format!(
        "<pre class=\"cdr\">{}</pre>\n",
        esc(&serde_json::to_string_pretty(&v.cdr).unwrap_or_default())
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_the_query_and_say_the_same_as_the_cli() {
        // (query, the `cdrhook attempts` line, the query it links back to)
        for (query, cli, back) in [
            ("", "cdrhook attempts", ""),
            (
                "subscription=my+crm&failed=1&limit=10",
                "cdrhook attempts --subscription 'my crm' --failed --limit 10",
                "subscription=my%20crm&failed=1&limit=10",
            ),
            (
                "call_id=c-1&event_type=App.QueueWebhook&since=2h&failed=",
                "cdrhook attempts --call-id c-1 --event-type App.QueueWebhook --since 2h",
                "call_id=c-1&event_type=App.QueueWebhook&since=2h",
            ),
            ("subscription=&call_id=+&before=a9", "cdrhook attempts", ""),
        ] {
            let f = Filters::parse(query).unwrap_or_else(|e| panic!("{query}: {e}"));
            assert_eq!(html::shell_line(&f.cli()), cli, "{query}");
            assert_eq!(f.query(None), back, "{query}");
        }
        let paged = Filters::parse("subscription=crm&before=a9").expect("parse");
        assert_eq!(paged.before.as_deref(), Some("a9"));
        assert_eq!(paged.query(Some("a5")), "subscription=crm&before=a5");
        for bad in ["limit=0", "limit=501", "limit=-1", "event_type=App.Nope"] {
            assert!(Filters::parse(bad).is_err(), "{bad}");
        }
    }
}
