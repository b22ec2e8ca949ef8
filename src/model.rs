//! Domain types shared by the pipeline's stages (intake, journal, delivery,
//! control): event types, delivery states, attempt triggers and ids. Plain
//! data without I/O; it depends on nothing else in the crate, and every
//! stage may depend on it.

use std::fmt;

/// A CDR's sequence number in the journal: grows with the time it was
/// taken in.
pub type CdrSeq = u64;
/// A delivery: one CDR to one subscription, ever.
pub type DeliveryId = u64;
/// One HTTP attempt of a delivery.
pub type AttemptId = u64;

/// The webhook event types a CDR can have, plus the synthetic test event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Queue,
    Ivr,
    Agent,
    Recording,
    Test,
}

impl EventType {
    /// Every event type, in a stable order; what `"*"` stands for.
    pub const ALL: [EventType; 5] = [
        EventType::Queue,
        EventType::Ivr,
        EventType::Agent,
        EventType::Recording,
        EventType::Test,
    ];

    /// The name used on the wire and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Queue => "App.QueueWebhook",
            EventType::Ivr => "App.IvrWebhook",
            EventType::Agent => "App.AgentWebhook",
            EventType::Recording => "App.RecordingWebhook",
            EventType::Test => "App.TestWebhook",
        }
    }

    /// Parses an exact (case-sensitive) event type name.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Retrying,
    Delivered,
    Dead,
}

impl State {
    pub fn is_open(self) -> bool {
        matches!(self, State::Pending | State::Retrying)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Retrying => "retrying",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }
}

/// Why an attempt was made (docs/contract.md, `attempts` `trigger`), and
/// what created a delivery (`auto`, `replay` or `test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Auto,
    Resend,
    Replay,
    Test,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Auto => "auto",
            Trigger::Resend => "resend",
            Trigger::Replay => "replay",
            Trigger::Test => "test",
        }
    }
}
