//! Routing: which subscriptions get a delivery of a CDR. A pure function of
//! the config snapshot and the CDR, used by intake before it journals a
//! batch (the journal stores what it is told and knows no config).
//!
//! A subscription gets a delivery when it is active, lists the CDR's event
//! type and, if it has a `filter`, the CDR matches it (the rule is
//! `config::Filter::matches`). A CDR a filter excludes is still journaled;
//! intake tells the journal which filters excluded it
//! (`journal::Routing::unmatched`), which counts it for that subscription
//! (`unmatched`, persisted with the other counts), and `replay` applies the
//! same rule ([`passes`]).

use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::cdr::Cdr;
use crate::config::{Filter, Subscription};

/// Where a CDR goes: the subscriptions that get a delivery, and those that
/// want its event type but whose filter excludes it. Config order, each
/// name once.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routed {
    pub to: Vec<String>,
    pub filtered_out: Vec<String>,
}

/// The names of the active subscriptions that want the CDR's event type
/// and whose filter (if any) it matches, in config order, each once.
pub fn subscriptions_for<'a>(
    subs: impl IntoIterator<Item = &'a Subscription>,
    cdr: &Cdr,
) -> Vec<String> {
    route(subs, cdr).to
}

/// As [`subscriptions_for`], and the subscriptions whose filter kept the
/// CDR from them.
pub fn route<'a>(subs: impl IntoIterator<Item = &'a Subscription>, cdr: &Cdr) -> Routed {
    let mut wanting: Vec<&Subscription> = Vec::new();
    for s in subs {
        if s.active && s.wants(cdr.event_type) && wanting.iter().all(|w| w.name != s.name) {
            wanting.push(s);
        }
    }
    // The body is read once, for the properties the filters name, and only
    // when some subscription that wants the CDR has a filter.
    let mut names: Vec<&str> = Vec::new();
    for f in wanting.iter().filter_map(|s| s.filter.as_ref()) {
        names.extend(f.names());
    }
    let props = (!names.is_empty()).then(|| Props::read(&cdr.body, &names));
    let mut out = Routed::default();
    for s in wanting {
        let passes = match (&s.filter, &props) {
            (Some(f), Some(p)) => p.matches(f),
            _ => true,
        };
        if passes {
            out.to.push(s.name.clone());
        } else {
            out.filtered_out.push(s.name.clone());
        }
    }
    out
}

/// Whether a journaled CDR's body passes a subscription's filter (true
/// without one). For `replay`, which checks the event type itself.
pub fn passes(sub: &Subscription, body: &[u8]) -> bool {
    match &sub.filter {
        None => true,
        Some(f) => Props::read(body, &f.names().collect::<Vec<_>>()).matches(f),
    }
}

/// The top-level properties of a CDR that some filter names, and only
/// those: the rest of the body is skipped unparsed.
struct Props(HashMap<String, serde_json::Value>);

impl Props {
    /// A body that is not a JSON object (intake never journals one) has
    /// no properties, so it matches no filter.
    fn read(body: &[u8], names: &[&str]) -> Props {
        let mut de = serde_json::Deserializer::from_slice(body);
        Props(Wanted(names).deserialize(&mut de).unwrap_or_default())
    }

    fn matches(&self, f: &Filter) -> bool {
        f.matches(|name| self.0.get(name))
    }
}

/// Reads an object keeping the values of the keys named.
struct Wanted<'a>(&'a [&'a str]);

impl<'de> DeserializeSeed<'de> for Wanted<'_> {
    type Value = HashMap<String, serde_json::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Wanted<'_> {
    type Value = HashMap<String, serde_json::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CDR (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = HashMap::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if self.0.contains(&key.as_ref()) {
                // A key given twice: the last one counts, as in serde_json.
                out.insert(key.into_owned(), map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EventType;
    use std::path::Path;

    fn subs(yaml: &str) -> Vec<Subscription> {
        crate::config::parse(yaml, Path::new("/tmp/c.yaml"), &|_| None)
            .expect("test config")
            .subscriptions
    }

    fn cdr(t: EventType) -> Cdr {
        with_body(t, "{}")
    }

    fn with_body(t: EventType, body: &str) -> Cdr {
        Cdr {
            id: "cdr_x".into(),
            event_type: t,
            call_id: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_filter_decides_among_the_subscriptions_that_want_the_type() {
        let all = subs(
            "subscriptions:\n\
             - {name: sales, endpoint: 'http://127.0.0.1:1/a', events: ['*'], filter: {QueueName: [Sales, Support], CallDirection: Inbound}}\n\
             - {name: billing, endpoint: 'http://127.0.0.1:1/b', events: ['App.QueueWebhook'], filter: {QueueName: Billing}}\n\
             - {name: slow, endpoint: 'http://127.0.0.1:1/c', events: ['App.QueueWebhook'], filter: {MetServiceLevel: false}}\n\
             - {name: off, endpoint: 'http://127.0.0.1:1/d', events: ['*'], active: false, filter: {QueueName: Sales}}\n\
             - {name: all, endpoint: 'http://127.0.0.1:1/e', events: ['*']}\n",
        );
        // (event type, body, delivered to, filtered out)
        let cases: &[(EventType, &str, &[&str], &[&str])] = &[
            (
                EventType::Queue,
                r#"{"QueueName":"Sales","CallDirection":"Inbound","MetServiceLevel":true}"#,
                &["sales", "all"],
                &["billing", "slow"],
            ),
            (
                EventType::Queue,
                r#"{"QueueName":"Billing","CallDirection":"Inbound","MetServiceLevel":false}"#,
                &["billing", "slow", "all"],
                &["sales"],
            ),
            (
                EventType::Queue,
                r#"{"QueueName":"Support","CallDirection":"Outbound","Nested":{"QueueName":"x"}}"#,
                &["all"],
                &["sales", "billing", "slow"],
            ),
            // Only the subscriptions that want the type are counted out.
            (
                EventType::Ivr,
                r#"{"IvrName":"Main"}"#,
                &["all"],
                &["sales"],
            ),
            // Not an object: matches no filter.
            (EventType::Agent, "[1]", &["all"], &["sales"]),
        ];
        for (t, body, to, out) in cases {
            let r = route(&all, &with_body(*t, body));
            assert_eq!(r.to, *to, "{body}");
            assert_eq!(r.filtered_out, *out, "{body}");
            assert_eq!(subscriptions_for(&all, &with_body(*t, body)), *to);
        }
        assert!(passes(
            &all[0],
            br#"{"QueueName":"Sales","CallDirection":"Inbound"}"#
        ));
        assert!(!passes(&all[0], br#"{"QueueName":"Sales"}"#));
        assert!(passes(&all[4], b"{}"));
    }

    #[test]
    fn active_subscriptions_that_want_the_type_in_config_order() {
        let all = subs(
            "subscriptions:\n\
             - {name: crm, endpoint: 'http://127.0.0.1:1/a', events: ['App.QueueWebhook']}\n\
             - {name: off, endpoint: 'http://127.0.0.1:1/b', events: ['*'], active: false}\n\
             - {name: all, endpoint: 'http://127.0.0.1:1/c', events: ['*']}\n\
             - {name: ivr, endpoint: 'http://127.0.0.1:1/d', events: ['App.IvrWebhook']}\n",
        );
        for (t, want) in [
            (EventType::Queue, vec!["crm", "all"]),
            (EventType::Ivr, vec!["all", "ivr"]),
            (EventType::Agent, vec!["all"]),
            (EventType::Test, vec!["all"]),
        ] {
            assert_eq!(subscriptions_for(&all, &cdr(t)), want, "{t}");
        }
        assert!(subscriptions_for(&[], &cdr(EventType::Queue)).is_empty());
    }
}
