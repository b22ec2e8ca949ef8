//! Payload filters (`subscriptions[].filter`, contract §10): the filter's
//! shape and its validation with positions, the match rule, the table of
//! the properties each event type has, and the warning for a filter on a
//! property that no event type has.
//!
//! The rule, kept here in one place (`Filter::matches`, pure, with
//! table-driven tests; `delivery::route` applies it to a CDR's body):
//!
//! - a filter maps top-level CDR property names to a value or a list of
//!   values (a scalar is a list of one); a property matches when the CDR's
//!   value equals one of the listed values, and a CDR matches when every
//!   listed property matches. A CDR without the property does not match.
//! - Values compare by their JSON type and value: a YAML string matches a
//!   JSON string with exactly the same text (case-sensitive, no trimming);
//!   a YAML number matches a JSON number of the same numeric value (`30`
//!   matches `30` and `30.0`); `true`/`false` match the JSON booleans. A
//!   string never matches a number or a boolean, nor the other way round:
//!   `"30"` (quoted in the file) does not match the number `30`, and `30`
//!   does not match the string `"30"`. A JSON null, list or object never
//!   matches. YAML reads an unquoted `30`, `true` or `1.5` as a number or a
//!   boolean: quote a value to compare it as text.
//! - Refused, with line and column: an empty filter (`filter: {}` or
//!   `filter:` with nothing under it, which would otherwise silently send
//!   everything), a property without a value or with an empty list, a null,
//!   a list inside a list or a mapping as a value, an empty property name,
//!   a property given twice (by serde_yaml, without a position).

use super::*;

/// A subscription's filter: every property must match (and), each against
/// one of its values (or). Never empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// In file order, each name once.
    pub props: Vec<PropertyFilter>,
}

/// One property of a filter and the values it may have. Never empty.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyFilter {
    pub name: String,
    pub values: Vec<FilterValue>,
}

/// One value a property may have, typed as YAML read it.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
}

impl FilterValue {
    /// Whether a CDR's property value equals this one (see the module doc).
    pub fn matches(&self, v: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (self, v) {
            (FilterValue::Text(a), Value::String(b)) => a == b,
            (FilterValue::Bool(a), Value::Bool(b)) => a == b,
            (FilterValue::Number(a), Value::Number(b)) => same_number(a, b),
            _ => false,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            FilterValue::Text(s) => serde_json::Value::String(s.clone()),
            FilterValue::Number(n) => serde_json::Value::Number(n.clone()),
            FilterValue::Bool(b) => serde_json::Value::Bool(*b),
        }
    }
}

/// Numbers are equal when their values are: integers exactly, otherwise
/// as 64-bit floats (so `30` equals `30.0`).
fn same_number(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

impl Filter {
    /// The property names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.props.iter().map(|p| p.name.as_str())
    }

    /// Whether a CDR matches, given its top-level properties by name
    /// (`None`: the CDR has no such property).
    pub fn matches<'v>(&self, get: impl Fn(&str) -> Option<&'v serde_json::Value>) -> bool {
        self.props.iter().all(|p| match get(&p.name) {
            Some(v) => p.values.iter().any(|f| f.matches(v)),
            None => false,
        })
    }

    /// `{"Property": [values…]}`, for `check-config --json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.props
                .iter()
                .map(|p| {
                    let values = p.values.iter().map(FilterValue::to_json).collect();
                    (p.name.clone(), serde_json::Value::Array(values))
                })
                .collect(),
        )
    }
}

/// `QueueName: ["Sales", "Support"], CallDirection: "Inbound"`: strings
/// quoted, so a number and a string that look alike are told apart.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.props.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let values: Vec<String> = p.values.iter().map(|v| v.to_json().to_string()).collect();
            match values.as_slice() {
                [one] => write!(f, "{}: {one}", p.name)?,
                _ => write!(f, "{}: [{}]", p.name, values.join(", "))?,
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Which properties each event type has

/// The top-level properties of each event type's CDR, as the phone system
/// writes them. Derived from the sample CDRs in `examples/cdr/` (the same
/// files as the shared `samples/cdr/` of contract §1): for each event type,
/// the union of the keys of its samples (an inferred sample, without
/// `EventType`, counts for the type its file name says), plus `EventType`.
/// `the_property_table_holds_every_sample_property` checks it against the
/// samples. The test webhook is not listed: `test` sends it whatever the
/// filter, so no filter ever applies to it.
#[rustfmt::skip]
pub const EVENT_PROPERTIES: [(EventType, &[&str]); 4] = [
    (EventType::Queue, &[
        "EventType", "CallId", "ScenarioId", "CallDirection", "CallerName", "CallerAdId",
        "CallerUpn", "CallerNumber", "StartDateTime", "EndDateTime", "CallLength", "WaitTime",
        "TalkTime", "QueueId", "QueueName", "ResourceAccountObjectId", "OUPath", "ParentId",
        "From", "MetServiceLevel", "AgentName", "AgentUpn", "AgentId", "AgentAdId",
        "CallbackRequestId", "LeaveReason", "TransferType", "TransferToId", "TransferToName",
        "Notes",
    ]),
    (EventType::Ivr, &[
        "EventType", "CallId", "ScenarioId", "CallDirection", "CallerName", "CallerAdId",
        "CallerUpn", "CallerNumber", "StartDateTime", "EndDateTime", "CallLength", "IvrId",
        "IvrName", "ResourceAccountObjectId", "OUPath", "ParentId", "From", "TransferType",
        "TrasnferToId", "TransferToName", "IvrInputs", "DataValue01", "DataValue02",
        "DataValue03", "DataValue04", "DataValue05", "DataValue06", "DataValue07",
        "DataValue08", "DataValue09", "DataValue10", "DataValue11", "DataValue12",
        "DataValue13", "DataValue14", "DataValue15", "DataValue16", "DataValue17",
        "DataValue18", "DataValue19", "DataValue20",
    ]),
    (EventType::Agent, &[
        "EventType", "CallId", "ScenarioId", "CallDirection", "CallerName", "CallerAdId",
        "CallerUpn", "CallerNumber", "StartDateTime", "EndDateTime", "CallLength", "AgentName",
        "AgentUpn", "AgentId", "AgentAdId", "InteractionObjectId", "InteractionObjectName",
        "OUPath", "ParentId", "AverageSentimentScore", "CallState", "IsDirectCall",
        "WrapupTime", "WrapupData",
    ]),
    (EventType::Recording, &[
        "EventType", "CallId", "ScenarioId", "StartDateTime", "EndDateTime", "CallDirection",
        "CallLength", "CallerName", "CallerAdId", "CallerNumber", "CallerUpn", "CalleeName",
        "CalleeAdId", "CalleeUpn", "CalleeNumber", "OuPath", "RecordingFileName",
        "RecordingMode", "RecordedUserName", "RecordedUserUpn", "RecordedUserAdId",
        "Transcription",
    ]),
];

/// Whether some event type has this property.
pub fn known_property(name: &str) -> bool {
    EVENT_PROPERTIES
        .iter()
        .any(|(_, props)| props.contains(&name))
}

/// A known property spelled like `name` but for letter case.
fn differently_cased(name: &str) -> Option<&'static str> {
    EVENT_PROPERTIES
        .iter()
        .flat_map(|(_, props)| props.iter())
        .find(|p| p.eq_ignore_ascii_case(name))
        .copied()
}

/// The warnings for filters on properties that no event type has, each
/// with the file, line and column of the property in the filter. A
/// warning, not a refusal: the phone system may send properties the
/// samples do not show.
pub(super) fn warnings(text: &str, path: &Path, subs: &[Subscription]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, s) in subs.iter().enumerate() {
        let Some(filter) = &s.filter else { continue };
        for name in filter.names() {
            let at = || match locate(text, i, name) {
                Some((line, column)) => format!("{}:{line}:{column}", path.display()),
                None => path.display().to_string(),
            };
            if known_property(name) {
                // Known, but maybe not to the event types this
                // subscription takes: then nothing can ever match.
                if let Some(w) = not_in_its_events(&s.events, name) {
                    out.push(format!("{}: subscriptions[{}].filter: {w}", at(), s.name));
                }
                continue;
            }
            let at = at();
            let hint = match differently_cased(name) {
                Some(known) => format!("did you mean {known:?}? Property names are case-sensitive"),
                None => "check the spelling (property names are case-sensitive); a CDR \
                         without the property never matches"
                    .to_string(),
            };
            out.push(format!(
                "{at}: subscriptions[{}].filter: no event type has a property {name:?}; {hint}",
                s.name
            ));
        }
    }
    out
}

/// Why a filter on the known property `name` can never match a CDR of the
/// event types `events` (the test webhook aside, which no filter applies
/// to), or `None` when one of them has the property.
fn not_in_its_events(events: &[EventType], name: &str) -> Option<String> {
    let has = |t: &EventType| {
        EVENT_PROPERTIES
            .iter()
            .any(|(e, props)| e == t && props.contains(&name))
    };
    let taken: Vec<&EventType> = events.iter().filter(|t| **t != EventType::Test).collect();
    if taken.is_empty() || taken.iter().any(|t| has(t)) {
        return None;
    }
    let names = |ts: Vec<&EventType>| ts.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ");
    let holders = EVENT_PROPERTIES
        .iter()
        .filter(|(_, props)| props.contains(&name))
        .map(|(t, _)| t)
        .collect();
    Some(format!(
        "none of the event types it takes ({}) has a property {name:?} (only {} do), \
         so no CDR can match; check its `events` and `filter`",
        names(taken),
        names(holders)
    ))
}

// ---------------------------------------------------------------------------
// Reading the filter

/// `filter:` as the file holds it; see the module doc for what is refused.
pub(super) struct RawFilter(pub(super) Filter);

const EMPTY_FILTER: &str = "the filter is empty; list at least one property and its \
                            value(s), or remove `filter` to receive every CDR of the events listed";

/// For `#[serde(deserialize_with)]`: a `filter:` key that is present but
/// null is refused (an absent key is `None` through `#[serde(default)]`).
pub(super) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RawFilter>, D::Error> {
    RawFilter::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for RawFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FilterVisitor;

        impl<'de> Visitor<'de> for FilterVisitor {
            type Value = RawFilter;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a filter: a mapping of CDR property names to a value or a list of values",
                )
            }

            fn visit_unit<E: de::Error>(self) -> Result<RawFilter, E> {
                Err(E::custom(EMPTY_FILTER))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFilter, A::Error> {
                let mut props: Vec<PropertyFilter> = Vec::new();
                while let Some(name) = map.next_key_seed(PropertyName)? {
                    let Values(values) = map.next_value()?;
                    props.push(PropertyFilter { name, values });
                }
                if props.is_empty() {
                    return Err(de::Error::custom(EMPTY_FILTER));
                }
                Ok(RawFilter(Filter { props }))
            }
        }

        d.deserialize_any(FilterVisitor)
    }
}

/// A property name. (A name given twice is refused by serde_yaml itself,
/// as for every mapping, naming the filter but without a position.)
struct PropertyName;

impl<'de> DeserializeSeed<'de> for PropertyName {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for PropertyName {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a CDR property name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        if v.is_empty() {
            return Err(E::custom("a filter property name is empty"));
        }
        Ok(v.to_owned())
    }
}

/// A property's values: one scalar or a non-empty list of scalars.
struct Values(Vec<FilterValue>);

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValuesVisitor;

        impl<'de> Visitor<'de> for ValuesVisitor {
            type Value = Values;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value (text, number or true/false) or a list of values")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Values, E> {
                Ok(Values(vec![FilterValue::Text(v.to_owned())]))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Values, E> {
                Ok(Values(vec![FilterValue::Bool(v)]))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Values, E> {
                Ok(Values(vec![FilterValue::Number(v.into())]))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Values, E> {
                Ok(Values(vec![FilterValue::Number(v.into())]))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Values, E> {
                number(v).map(|n| Values(vec![n]))
            }

            fn visit_unit<E: de::Error>(self) -> Result<Values, E> {
                Err(E::custom(NO_VALUE))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
                let mut values = Vec::new();
                while let Some(Scalar(v)) = seq.next_element()? {
                    if !values.contains(&v) {
                        values.push(v);
                    }
                }
                if values.is_empty() {
                    return Err(de::Error::custom(
                        "the list of values is empty, so nothing could match; \
                         list at least one value",
                    ));
                }
                Ok(Values(values))
            }
        }

        d.deserialize_any(ValuesVisitor)
    }
}

const NO_VALUE: &str = "no value for this filter property (null is not a filter value); \
                        give a value or a list of values";

fn number<E: de::Error>(v: f64) -> Result<FilterValue, E> {
    serde_json::Number::from_f64(v)
        .map(FilterValue::Number)
        .ok_or_else(|| E::custom("a filter value must be a finite number"))
}

/// One element of a list of values.
struct Scalar(FilterValue);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value (text, number or true/false)")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(FilterValue::Text(v.to_owned())))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(FilterValue::Bool(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(FilterValue::Number(v.into())))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(FilterValue::Number(v.into())))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                number(v).map(Scalar)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Err(E::custom(NO_VALUE))
            }
        }

        d.deserialize_any(ScalarVisitor)
    }
}

// ---------------------------------------------------------------------------
// Positions for warnings
//
// serde_yaml gives a position only with an error, and a warning is not one.
// So the position of `subscriptions[i].filter.NAME` is found by a second
// pass over the (already accepted) text that walks to that key and stops
// there with an error: its location is the key's. Only done for a warning.

const HERE: &str = "cdrhook: filter property found here";

fn locate(text: &str, sub: usize, name: &str) -> Option<(usize, usize)> {
    let walk = Walk {
        sub,
        name,
        step: Step::Top,
    };
    let err = match walk.deserialize(serde_yaml::Deserializer::from_str(text)) {
        Ok(()) => return None,
        Err(e) => e,
    };
    if !err.to_string().contains(HERE) {
        return None;
    }
    err.location().map(|l| (l.line(), l.column()))
}

/// Where the walk is: the document, the `subscriptions` list, entry
/// number `sub`, its `filter`.
#[derive(Clone, Copy)]
enum Step {
    Top,
    Subscriptions,
    Entry,
    Filter,
}

#[derive(Clone, Copy)]
struct Walk<'a> {
    sub: usize,
    name: &'a str,
    step: Step,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.step {
            Step::Subscriptions => d.deserialize_seq(self),
            _ => d.deserialize_map(self),
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the config as it was accepted")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (key, next) = match self.step {
            Step::Top => ("subscriptions", Step::Subscriptions),
            Step::Entry => ("filter", Step::Filter),
            Step::Subscriptions => return Ok(()),
            Step::Filter => {
                while map.next_key_seed(KeyHere(self.name))?.is_some() {
                    map.next_value::<de::IgnoredAny>()?;
                }
                return Ok(());
            }
        };
        while let Some(k) = map.next_key::<String>()? {
            if k == key {
                map.next_value_seed(Walk { step: next, ..self })?;
            } else {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let more = if i == self.sub {
                seq.next_element_seed(Walk {
                    step: Step::Entry,
                    ..self
                })?
                .is_some()
            } else {
                seq.next_element::<de::IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// A filter key: stops the walk with [`HERE`] at the one looked for.
struct KeyHere<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyHere<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyHere<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a filter property name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if v == self.0 {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/cdrhook/config.yaml";

    /// A config with one subscription `crm` whose filter is `filter` (YAML
    /// flow or block text after `filter:`), starting on line 5.
    fn config(filter: &str) -> String {
        format!(
            "subscriptions:\n  - name: crm\n    endpoint: http://127.0.0.1:1/x\n    events: [\"*\"]\n    filter: {filter}\n"
        )
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        crate::config::parse(text, Path::new(PATH), &|_| None)
    }

    fn filter_of(text: &str) -> Filter {
        match parse(text) {
            Ok(c) => c.subscriptions[0].filter.clone().expect("a filter"),
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn body(json: &str) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::from_str(json) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("{json}: {other:?}"),
        }
    }

    #[test]
    fn the_match_rule() {
        // (filter, CDR, matches)
        let cases: &[(&str, &str, bool)] = &[
            // A scalar is a list of one; strings compare exactly.
            (
                "{CallDirection: Inbound}",
                r#"{"CallDirection":"Inbound"}"#,
                true,
            ),
            (
                "{CallDirection: Inbound}",
                r#"{"CallDirection":"inbound"}"#,
                false,
            ),
            (
                "{CallDirection: Inbound}",
                r#"{"CallDirection":"Inbound "}"#,
                false,
            ),
            // One of the listed values.
            (
                "{QueueName: [Sales, Support]}",
                r#"{"QueueName":"Support"}"#,
                true,
            ),
            (
                "{QueueName: [Sales, Support]}",
                r#"{"QueueName":"Billing"}"#,
                false,
            ),
            // Every listed property must match.
            (
                "{QueueName: [Sales, Support], CallDirection: Inbound}",
                r#"{"QueueName":"Sales","CallDirection":"Inbound"}"#,
                true,
            ),
            (
                "{QueueName: [Sales, Support], CallDirection: Inbound}",
                r#"{"QueueName":"Sales","CallDirection":"Outbound"}"#,
                false,
            ),
            // A CDR without the property does not match.
            ("{QueueName: Sales}", r#"{"IvrName":"Sales"}"#, false),
            // Numbers by value; "30" is text and never a number.
            ("{Duration: 30}", r#"{"Duration":30}"#, true),
            ("{Duration: 30}", r#"{"Duration":30.0}"#, true),
            ("{Duration: 30.0}", r#"{"Duration":30}"#, true),
            ("{Duration: 30}", r#"{"Duration":31}"#, false),
            ("{Duration: 30}", r#"{"Duration":"30"}"#, false),
            ("{Duration: \"30\"}", r#"{"Duration":30}"#, false),
            ("{Duration: \"30\"}", r#"{"Duration":"30"}"#, true),
            ("{Score: -1}", r#"{"Score":-1}"#, true),
            ("{Score: 0.42}", r#"{"Score":0.42}"#, true),
            // Booleans by value; "true" is text.
            (
                "{MetServiceLevel: true}",
                r#"{"MetServiceLevel":true}"#,
                true,
            ),
            (
                "{MetServiceLevel: true}",
                r#"{"MetServiceLevel":false}"#,
                false,
            ),
            (
                "{MetServiceLevel: true}",
                r#"{"MetServiceLevel":"true"}"#,
                false,
            ),
            (
                "{MetServiceLevel: \"true\"}",
                r#"{"MetServiceLevel":true}"#,
                false,
            ),
            // Null, lists and objects never match.
            ("{ParentId: \"null\"}", r#"{"ParentId":null}"#, false),
            ("{WrapupData: x}", r#"{"WrapupData":["x"]}"#, false),
            ("{WrapupData: x}", r#"{"WrapupData":{"x":"x"}}"#, false),
            // Mixed lists.
            ("{Code: [1, \"1\", true]}", r#"{"Code":"1"}"#, true),
            ("{Code: [1, \"1\", true]}", r#"{"Code":true}"#, true),
            ("{Code: [1, \"1\", true]}", r#"{"Code":false}"#, false),
        ];
        for (filter, cdr, want) in cases {
            let f = filter_of(&config(filter));
            let props = body(cdr);
            assert_eq!(f.matches(|n| props.get(n)), *want, "{filter} on {cdr}");
        }
    }

    #[test]
    fn a_filter_reads_in_file_order_in_block_and_flow_style() {
        let block =
            "\n      QueueName:\n        - Sales\n        - Support\n      CallDirection: Inbound";
        for text in [
            config(block),
            config("{QueueName: [Sales, Support], CallDirection: [Inbound]}"),
        ] {
            let f = filter_of(&text);
            assert_eq!(
                f.props,
                [
                    PropertyFilter {
                        name: "QueueName".into(),
                        values: vec![
                            FilterValue::Text("Sales".into()),
                            FilterValue::Text("Support".into())
                        ],
                    },
                    PropertyFilter {
                        name: "CallDirection".into(),
                        values: vec![FilterValue::Text("Inbound".into())],
                    },
                ]
            );
            assert_eq!(
                f.to_string(),
                r#"QueueName: ["Sales", "Support"], CallDirection: "Inbound""#
            );
            assert_eq!(
                f.to_json(),
                serde_json::json!({"QueueName": ["Sales", "Support"], "CallDirection": ["Inbound"]})
            );
        }
        let f = filter_of(&config("{Duration: [30, \"30\", true]}"));
        assert_eq!(f.to_string(), r#"Duration: [30, "30", true]"#);
        // No filter key: no filter.
        let c = parse("subscriptions:\n  - {name: a, endpoint: 'http://h', events: ['*']}\n")
            .expect("valid");
        assert_eq!(c.subscriptions[0].filter, None);
    }

    #[test]
    fn bad_filters_are_refused_with_line_and_column() {
        // (filter text, line, column, part of the message)
        let cases: &[(&str, usize, usize, &str)] = &[
            ("{}", 5, 13, "the filter is empty"),
            ("", 5, 12, "the filter is empty"),
            ("~", 5, 13, "the filter is empty"),
            ("{QueueName: []}", 5, 25, "the list of values is empty"),
            ("{QueueName: }", 5, 25, "no value for this filter property"),
            (
                "{QueueName: [Sales, ~]}",
                5,
                33,
                "no value for this filter property",
            ),
            (
                "{QueueName: [[Sales]]}",
                5,
                26,
                "a value (text, number or true/false)",
            ),
            (
                "{QueueName: {a: b}}",
                5,
                25,
                "a value (text, number or true/false) or a list",
            ),
            ("{\"\": a}", 5, 14, "property name is empty"),
            ("Sales", 5, 13, "a mapping of CDR property names"),
            ("[Sales]", 5, 13, "a mapping of CDR property names"),
            ("{Score: .nan}", 5, 21, "finite number"),
        ];
        for (filter, line, column, needle) in cases {
            match parse(&config(filter)) {
                Err(ConfigError::Invalid {
                    path,
                    line: l,
                    column: c,
                    message,
                }) => {
                    assert_eq!(path, Path::new(PATH));
                    assert!(message.contains(needle), "{filter}: {message}");
                    assert_eq!((l, c), (*line, *column), "{filter}: {message}");
                }
                other => panic!("{filter}: expected a positioned refusal, got {other:?}"),
            }
        }
        // serde_yaml refuses a repeated key itself, without a position.
        match parse(&config("{QueueName: a, QueueName: b}")) {
            Err(e) => assert!(
                e.to_string()
                    .contains("subscriptions[0].filter: duplicate entry with key \"QueueName\""),
                "{e}"
            ),
            Ok(_) => panic!("a property given twice was accepted"),
        }
    }

    #[test]
    fn a_property_no_event_type_has_is_a_warning_with_its_position() {
        let text = "subscriptions:\n  - name: crm\n    endpoint: http://127.0.0.1:1/x\n    events: [\"*\"]\n  - name: sales\n    endpoint: http://127.0.0.1:1/y\n    events: [App.QueueWebhook]\n    filter:\n      QueueName: Sales\n      queuename: Sales\n      Departement: [a, b]\n";
        let c = parse(text).expect("a warning does not refuse the file");
        assert_eq!(
            c.warnings,
            [
                format!("{PATH}:10:7: subscriptions[sales].filter: no event type has a property \"queuename\"; did you mean \"QueueName\"? Property names are case-sensitive"),
                format!("{PATH}:11:7: subscriptions[sales].filter: no event type has a property \"Departement\"; check the spelling (property names are case-sensitive); a CDR without the property never matches"),
            ]
        );
        // Known properties of any event type: no warning (flow style too).
        for filter in [
            "{QueueName: Sales, CallDirection: Inbound}",
            "{TrasnferToId: x, RecordingMode: Always, IsDirectCall: true}",
        ] {
            assert_eq!(
                parse(&config(filter)).expect("valid").warnings,
                Vec::<String>::new()
            );
        }
        // A known property that none of the subscription's event types
        // has: nothing can match.
        let text = "subscriptions:\n  - name: ivr\n    endpoint: http://127.0.0.1:1/x\n    events: [App.IvrWebhook, App.TestWebhook]\n    filter:\n      IvrName: Main\n      QueueName: Sales\n";
        assert_eq!(
            parse(text).expect("valid").warnings,
            [format!("{PATH}:7:7: subscriptions[ivr].filter: none of the event types it takes (App.IvrWebhook) has a property \"QueueName\" (only App.QueueWebhook do), so no CDR can match; check its `events` and `filter`")]
        );
        let c = parse(&config("{QueueName: Sales, Nope: 1}")).expect("valid");
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].starts_with(&format!(
                "{PATH}:5:32: subscriptions[crm].filter: no event type has a property \"Nope\""
            )),
            "{}",
            c.warnings[0]
        );
    }

    /// The table holds every top-level property of every sample CDR, under
    /// the sample's event type.
    #[test]
    fn the_property_table_holds_every_sample_property() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cdr");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("examples/cdr") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned();
            let text = std::fs::read_to_string(&path).expect("read a sample");
            let props = body(&text);
            let event_type = match props.get("EventType").and_then(|v| v.as_str()) {
                Some(t) => EventType::parse(t).expect("a known event type"),
                None => match name.split(['-', '.']).nth(1) {
                    Some("queue") => EventType::Queue,
                    Some("ivr") => EventType::Ivr,
                    Some("agent") => EventType::Agent,
                    Some("recording") => EventType::Recording,
                    _ => panic!("{name}: no EventType and no type in the name"),
                },
            };
            let (_, known) = EVENT_PROPERTIES
                .iter()
                .find(|(t, _)| *t == event_type)
                .expect("the type is in the table");
            for key in props.keys() {
                assert!(
                    known.contains(&key.as_str()),
                    "{name}: {key} not in the table for {event_type}"
                );
            }
            seen += 1;
        }
        assert!(seen >= 4, "only {seen} samples");
    }
}
