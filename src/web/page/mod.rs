//! The Webhooks page: what a hosted contact center's admin page shows
//! (subscriptions, send attempts, one attempt, Resend, Send Test Webhook),
//! rendered on the server from the control commands' typed responses.
//!
//! The listener (`crate::web`) authenticates the request and hands it over
//! as a [`PageRequest`]; this module owns everything below that: routing of
//! page paths, HTML, CSRF, and the actions.

use std::sync::Arc;

use crate::control::Handles;

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

/// Answers one page request.
pub async fn handle(_h: &Arc<Handles>, req: PageRequest) -> PageResponse {
    PageResponse {
        status: 404,
        content_type: "text/plain; charset=utf-8",
        headers: Vec::new(),
        body: format!("no page at {}\n", req.path),
    }
}
