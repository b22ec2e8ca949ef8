//! The Webhooks page: what a hosted contact center's admin page shows
//! (subscriptions, send attempts, one attempt, Resend, Send Test Webhook),
//! rendered on the server from the control commands' typed responses.
//!
//! The listener (`crate::web`) authenticates the request and hands it over
//! as a [`PageRequest`]; this module owns everything below that: routing of
//! page paths, HTML, CSRF, and the actions.
//!
//! - `views`: the GET pages (`/`, `/attempts`, `/attempts/ID`), each from
//!   its command's `apply` (`status`, `attempts`, `show`);
//! - `actions`: the POSTs (`/actions/resend`, `/actions/resend-failed`,
//!   `/actions/test`), each through its command's `apply`, and the result
//!   pages (`/results/KEY`) they redirect to;
//! - `csrf`: the token every POST must carry; `html`: escaping and layout;
//!   `form`: query strings, form bodies and cookies.
//!
//! No script and no external asset: the page reads the same with
//! JavaScript off, and its Content-Security-Policy allows nothing else.

mod actions;
mod csrf;
mod form;
mod html;
mod views;

use std::sync::{Arc, OnceLock};

use crate::control::Handles;
use actions::{Action, Results};
use csrf::Csrf;

/// A request for the page, as the listener hands it over (already
/// authenticated).
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// `GET` or `POST` (others are answered 405 by the page).
    pub method: String,
    /// The path, e.g. `/`, `/attempts`, `/attempts/ID`, `/actions/resend`.
    pub path: String,
    /// The raw query string, without the `?`.
    pub query: String,
    /// The body of a POST (`application/x-www-form-urlencoded`), at most
    /// 64 KiB (the listener refuses larger ones).
    pub body: Vec<u8>,
    /// The raw `Cookie` header, when sent.
    pub cookie: Option<String>,
}

/// What the listener sends back.
#[derive(Debug, Clone)]
pub struct PageResponse {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra headers (e.g. `Set-Cookie`, `Location`).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The page's own state for the life of the process: the CSRF key and the
/// results of the last actions.
struct State {
    csrf: Csrf,
    results: Results,
}

static STATE: OnceLock<State> = OnceLock::new();

fn state() -> std::io::Result<&'static State> {
    if let Some(s) = STATE.get() {
        return Ok(s);
    }
    let key = csrf::random::<32>()?;
    Ok(STATE.get_or_init(|| State {
        csrf: Csrf::new(key),
        results: Results::default(),
    }))
}

/// A view's or action's answer, before the common headers.
pub(crate) struct Reply {
    status: u16,
    body: String,
    location: Option<String>,
    /// For a 405: the method the path answers.
    allow: Option<&'static str>,
}

impl Reply {
    fn html(status: u16, body: String) -> Reply {
        Reply {
            status,
            body,
            location: None,
            allow: None,
        }
    }

    /// A page that says what went wrong (`message` is text, escaped here).
    fn error(status: u16, title: &str, message: &str) -> Reply {
        let body = format!(
            "<h1>{}</h1>\n{}<p><a href=\"/\">Webhooks</a> · <a href=\"/attempts\">Send attempts</a></p>\n",
            html::esc(title),
            html::notice(Some(false), &html::esc(message))
        );
        Reply::html(status, html::layout(title, html::Nav::None, &body))
    }

    /// After a POST: see the result at `to` (303, so the browser GETs it
    /// and a reload does not send again).
    fn redirect(to: &str) -> Reply {
        Reply {
            status: 303,
            body: String::new(),
            location: Some(to.to_string()),
            allow: None,
        }
    }
}

/// What a path is, and the one method it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Index,
    Attempts,
    Show(&'a str),
    Result(&'a str),
    Action(Action),
}

impl Route<'_> {
    fn method(&self) -> &'static str {
        match self {
            Route::Action(_) => "POST",
            _ => "GET",
        }
    }
}

/// The page's paths; `None` is a 404.
fn route(path: &str) -> Option<Route<'_>> {
    let one_segment = |rest: &str| !rest.is_empty() && !rest.contains('/');
    match path {
        "/" => Some(Route::Index),
        "/attempts" | "/attempts/" => Some(Route::Attempts),
        p => {
            if let Some(id) = p.strip_prefix("/attempts/").filter(|r| one_segment(r)) {
                Some(Route::Show(id))
            } else if let Some(key) = p.strip_prefix("/results/").filter(|r| one_segment(r)) {
                Some(Route::Result(key))
            } else {
                Action::of_path(p).map(Route::Action)
            }
        }
    }
}

/// Headers on every page: nothing but the page itself may run or load,
/// nothing is framed (the buttons cannot be clickjacked) or cached.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
];

/// Answers one page request.
pub async fn handle(h: &Arc<Handles>, req: PageRequest) -> PageResponse {
    let state = match state() {
        Ok(s) => s,
        Err(e) => {
            return finish(
                Reply::error(
                    500,
                    "Webhooks",
                    &format!("no random numbers for the CSRF key: {e}"),
                ),
                None,
            )
        }
    };
    // The browser's CSRF nonce, or a new one (sent with this answer).
    let sent = req
        .cookie
        .as_deref()
        .and_then(|c| form::cookie(c, csrf::COOKIE))
        .filter(|n| Csrf::is_nonce(n));
    let (nonce, new_cookie) = match sent {
        Some(n) => (n.to_string(), None),
        None => match Csrf::new_nonce() {
            Ok(n) => (n.clone(), Some(n)),
            Err(e) => {
                return finish(
                    Reply::error(
                        500,
                        "Webhooks",
                        &format!("no random numbers for a CSRF nonce: {e}"),
                    ),
                    None,
                )
            }
        },
    };
    let reply = answer(h, state, &req, &nonce, new_cookie.is_some()).await;
    finish(reply, new_cookie.as_deref())
}

async fn answer(
    h: &Arc<Handles>,
    state: &State,
    req: &PageRequest,
    nonce: &str,
    new_nonce: bool,
) -> Reply {
    let Some(route) = route(&req.path) else {
        return Reply::error(
            404,
            "Not found",
            &format!("There is no page at {}.", req.path),
        );
    };
    if req.method != route.method() {
        let r = Reply::error(
            405,
            "Method not allowed",
            &format!(
                "{} answers {} only, not {}.",
                req.path,
                route.method(),
                req.method
            ),
        );
        return Reply {
            allow: Some(route.method()),
            ..r
        };
    }
    let token = state.csrf.token(nonce);
    match route {
        Route::Index => views::index(h, &token).await,
        Route::Attempts => views::attempts(h, &req.query, &token).await,
        Route::Show(id) => views::show(h, id, &token).await,
        Route::Result(key) => actions::result_page(&state.results, key, nonce),
        Route::Action(action) => {
            let fields = form::decode(&String::from_utf8_lossy(&req.body));
            let valid = !new_nonce
                && form::get(&fields, csrf::FIELD).is_some_and(|t| state.csrf.verify(nonce, t));
            if !valid {
                return Reply::error(
                    403,
                    "Refused",
                    "The form's CSRF token is missing or does not match this browser's cookie \
                     (the daemon restarted since the page was loaded, or the form came from \
                     another site). Nothing was sent. Load the page again and retry.",
                );
            }
            actions::run(h, &state.results, nonce, action, &fields).await
        }
    }
}

fn finish(reply: Reply, new_cookie: Option<&str>) -> PageResponse {
    let mut headers: Vec<(String, String)> = SECURITY_HEADERS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(n) = new_cookie {
        headers.push((
            "Set-Cookie".into(),
            format!("{}={n}; Path=/; HttpOnly; SameSite=Strict", csrf::COOKIE),
        ));
    }
    if let Some(method) = reply.allow {
        headers.push(("Allow".into(), method.into()));
    }
    if let Some(to) = reply.location {
        headers.push(("Location".into(), to));
    }
    PageResponse {
        status: reply.status,
        content_type: "text/html; charset=utf-8",
        headers,
        body: reply.body,
    }
}

#[cfg(test)]
mod tests;
