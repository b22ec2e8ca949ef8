//! HTML: escaping, the layout every page shares (inline CSS, no script, no
//! external asset), and the few pieces views are built of. Pure functions.
//!
//! Everything that did not come from this file is escaped with [`esc`]:
//! CDR fields, header values, response bodies, errors and subscription
//! names are input.

use super::csrf;
use super::form;

/// Escapes text for an HTML element's content or a quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An optional value as a table cell's text (escaped), `-` when absent.
pub fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| esc(&v.to_string()))
}

/// A command line as an operator would type it, each argument quoted for
/// the shell when it needs it (not yet escaped for HTML).
pub fn shell_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b'-' | b'_' | b'.' | b'/' | b':' | b'=')
                });
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The line under a heading that names the CLI command giving the same.
pub fn cli_hint(args: &[String]) -> String {
    format!(
        "<p class=\"cli\">On the appliance: <code>{}</code></p>\n",
        esc(&shell_line(args))
    )
}

/// Which navigation entry is the current page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Subscriptions,
    Attempts,
    None,
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#cfe0ff;text-decoration:none}header a.on{color:#fff;font-weight:600}
header .brand{font-weight:700;color:#fff}
main{padding:1em 1.2em;max-width:110em}
h1{font-size:1.3em;margin:.2em 0 .4em}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #d8dce3;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}
td.num{text-align:right}
code,pre{font:12px/1.4 ui-monospace,monospace}
pre{background:#fff;border:1px solid #d8dce3;padding:.6em;overflow:auto;white-space:pre-wrap;word-break:break-all}
.ok{color:#116329;font-weight:600}.fail{color:#b3261e;font-weight:600}.muted{color:#6b7280}
.cli{color:#6b7280;margin:.2em 0 .8em}
.notice{border:1px solid #d8dce3;background:#fff;padding:.6em .8em;margin:.6em 0}
.notice.bad{border-color:#b3261e;background:#fdecea}.notice.good{border-color:#116329;background:#e9f6ec}
form.inline{display:inline;margin:0}
button{font:inherit;padding:.15em .6em;cursor:pointer}
form.filters{background:#fff;border:1px solid #d8dce3;padding:.6em;margin-bottom:.8em;display:flex;flex-wrap:wrap;gap:.8em;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:.9em}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;background:#fff;border:1px solid #d8dce3;padding:.6em}
dl.kv dt{font-weight:600}dl.kv dd{margin:0}
.paging{margin:.6em 0;display:flex;gap:1em}
";

/// A whole page: `title` and `body` (already HTML).
pub fn layout(title: &str, nav: Nav, body: &str) -> String {
    let link = |href: &str, text: &str, on: bool| {
        format!(
            "<a href=\"{href}\"{}>{text}</a>",
            if on { " class=\"on\"" } else { "" }
        )
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} · cdrhook</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header><span class=\"brand\">cdrhook</span>{}{}</header>\n<main>\n{body}</main>\n</body>\n</html>\n",
        esc(title),
        link("/", "Webhooks", nav == Nav::Subscriptions),
        link("/attempts", "Send attempts", nav == Nav::Attempts),
    )
}

/// A POST button: a small form with the CSRF token and hidden fields.
pub fn action_button(
    path: &str,
    fields: &[(&str, &str)],
    label: &str,
    token: &str,
    title: &str,
) -> String {
    let mut out = format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\">\
         <input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(path),
        csrf::FIELD,
        esc(token)
    );
    for (name, value) in fields {
        out.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(name),
            esc(value)
        ));
    }
    out.push_str(&format!(
        "<button type=\"submit\" title=\"{}\">{}</button></form>",
        esc(title),
        esc(label)
    ));
    out
}

/// A link to one attempt or delivery (`a12`, `d7`).
pub fn id_link(id: &str) -> String {
    format!("<a href=\"/attempts/{}\">{}</a>", form::encode(id), esc(id))
}

/// A table from a header row and rows of cells (already HTML).
pub fn table(headers: &[&str], rows: &[Vec<String>], class: &str) -> String {
    let mut out = format!("<table class=\"{class}\">\n<thead><tr>");
    for h in headers {
        out.push_str(&format!("<th>{}</th>", esc(h)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for c in row {
            out.push_str(&format!("<td>{c}</td>"));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    out
}

/// A notice box; `good` picks its colour (None: neutral). `html` is HTML.
pub fn notice(good: Option<bool>, html: &str) -> String {
    let class = match good {
        Some(true) => "notice good",
        Some(false) => "notice bad",
        None => "notice",
    };
    format!("<div class=\"{class}\">{html}</div>\n")
}

/// An attempt's result as the CLI's RESULT column says it, coloured.
pub fn result_cell(status: Option<u16>, error: Option<&str>) -> String {
    let ok = error.is_none() && status.is_some_and(|s| (200..300).contains(&s));
    let text = crate::control::cmd::result_text(status, error);
    format!(
        "<span class=\"{}\">{}</span>",
        if ok { "ok" } else { "fail" },
        esc(&text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        for (text, want) in [
            ("plain", "plain"),
            (
                "<script>alert(1)</script>",
                "&lt;script&gt;alert(1)&lt;/script&gt;",
            ),
            ("a&b", "a&amp;b"),
            ("\"quoted\" 'single'", "&quot;quoted&quot; &#39;single&#39;"),
            ("é ☎", "é ☎"),
        ] {
            assert_eq!(esc(text), want, "{text}");
        }
    }

    #[test]
    fn shell_lines_quote_what_needs_it() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (line, want) in [
            (args(&["cdrhook", "status"]), "cdrhook status"),
            (
                args(&["cdrhook", "attempts", "--subscription", "my crm"]),
                "cdrhook attempts --subscription 'my crm'",
            ),
            (args(&["x", "it's"]), r"x 'it'\''s'"),
            (args(&["x", ""]), "x ''"),
            (args(&["x", "$(rm)"]), "x '$(rm)'"),
        ] {
            assert_eq!(shell_line(&line), want);
        }
    }

    #[test]
    fn a_button_escapes_its_fields_and_carries_the_token() {
        let b = action_button(
            "/actions/resend",
            &[("id", "a1\"><x")],
            "Resend",
            "tok",
            "t",
        );
        assert!(b.contains("name=\"csrf\" value=\"tok\""), "{b}");
        assert!(b.contains("value=\"a1&quot;&gt;&lt;x\""), "{b}");
        assert!(b.contains("method=\"post\""), "{b}");
    }
}
