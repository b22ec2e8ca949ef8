//! Routing: which subscriptions get a delivery of a CDR. A pure function of
//! the config snapshot and the CDR, used by intake before it journals a
//! batch (the journal stores what it is told and knows no config).

use crate::cdr::Cdr;
use crate::config::Subscription;

/// The names of the active subscriptions that want the CDR's event type,
/// in config order, each once.
pub fn subscriptions_for<'a>(
    subs: impl IntoIterator<Item = &'a Subscription>,
    cdr: &Cdr,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in subs {
        if s.active && s.wants(cdr.event_type) && !out.contains(&s.name) {
            out.push(s.name.clone());
        }
    }
    out
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
        Cdr {
            id: "cdr_x".into(),
            event_type: t,
            call_id: None,
            body: b"{}".to_vec(),
        }
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
