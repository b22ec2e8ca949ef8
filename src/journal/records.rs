//! The journal's on-disk encoding (format version 4): keys and the binary
//! layout of every record. Pure functions, no sled: what is written here is
//! what ARCHITECTURE.md and README's "Journal" section describe.
//!
//! A key is a one-byte kind and big-endian numbers, so sled's order is id
//! order within a kind. Each kind from `c` to `x` below has a sled tree of
//! its own (`journal.v3.` + the kind letter, see `store.rs`); `V`, `n`, `s`,
//! `k` and `w` share the meta tree [`TREE`]. Format 2 had the same keys and
//! records in one tree (`journal.v2`); format 3 only moved them apart;
//! format 4 indexes an open delivery (`o`) only once it has been open for
//! a while, below the mark `w` (`open_index.rs`), keeps a body of one chunk
//! in its CDR's record, and an attempt's detail in its record, its
//! delivery's attempts chained from the delivery's `last_attempt` (so a
//! CDR with one delivery is three records at ingest instead of five, and
//! an attempt two instead of five). Every
//! format-3 record stays readable as it is: the new fields are at the end
//! of their records, absent from older ones.
//!
//! | key                       | value                                    |
//! |---------------------------|------------------------------------------|
//! | `V`                       | format version (one byte, 4)             |
//! | `c` seq                   | [`CdrRec`]: ids, event, call, files, and |
//! |                           | the body if it is one chunk at most      |
//! | `i` content id            | seq                                      |
//! | `b` seq chunk             | a larger body, in chunks of 2 KiB at most|
//! | `d` delivery              | [`DeliveryRec`]: state, fixed width      |
//! | `o` delivery              | [`OpenRec`]: the open-delivery index,    |
//! |                           | below the mark `w` only                  |
//! | `a` attempt               | [`AttemptRec`]: what listings show, the  |
//! |                           | delivery's previous attempt, and (format |
//! |                           | 4) its [`AttemptDetail`]                 |
//! | `h` attempt               | format 3: [`AttemptDetail`]: headers,    |
//! |                           | response (read, no longer written)       |
//! | `x` delivery attempt      | format 3: nothing: the attempts of a     |
//! |                           | delivery (read, no longer written)       |
//! | `n` subscription number   | [`CountsRec`]: per-subscription counts   |
//! |                           | (`unmatched` last, optional: absent = 0) |
//! |                           | then, only when there is one, the        |
//! |                           | endpoint's `Retry-After` [`EndpointHold`]|
//! | `s` subscription name     | its number (u32)                         |
//! | `w`                       | the open index's mark (u64)              |
//!
//! Numbers are fixed width (ids and times u64, counts as varints); strings
//! are a varint length and the bytes; an optional string is length + 1, 0
//! for none. A content id of the usual `cdr_` + 32 hex form takes 17 bytes.

use crate::model::{AttemptId, CdrSeq, DeliveryId, EventType, State, Trigger};

/// The format this code writes. A journal with a higher number was written
/// by a newer cdrhook and is refused; versions 1 (JSON in five trees) and 2
/// (these records in one tree) are migrated at open, and version 3 (every
/// open delivery indexed) is version 4 without a mark. An older cdrhook
/// refuses a version-4 journal: it would take the open deliveries above
/// the mark for ended ones.
pub const FORMAT_VERSION: u8 = 4;
/// The meta tree of formats 3 and 4: the version, counts, subscription
/// numbers, the clean-stop mark and the open index's mark.
pub const TREE: &str = "journal.v3";
/// The one tree of format 2, migrated at open.
pub const TREE_V2: &str = "journal.v2";
/// A body is stored in chunks of at most this many bytes, so that no sled
/// page holds a large value: sled's cache never evicts the last page of each
/// of its 256 shards, and every insert copies its leaf (up to 16 values), so
/// what sled holds for large bodies scales with 16 chunks (BENCHMARKS.md).
/// A ~600-byte CDR is one chunk. Readers take the chunks as stored, so this
/// can change without a format change.
pub const BODY_CHUNK: usize = 2048;

pub const K_VERSION: u8 = b'V';
pub const K_CDR: u8 = b'c';
pub const K_CDR_ID: u8 = b'i';
pub const K_BODY: u8 = b'b';
pub const K_DELIVERY: u8 = b'd';
pub const K_OPEN: u8 = b'o';
pub const K_ATTEMPT: u8 = b'a';
pub const K_DETAIL: u8 = b'h';
pub const K_ATTEMPTS_OF: u8 = b'x';
pub const K_COUNTS: u8 = b'n';
pub const K_SUB: u8 = b's';
/// One key, present only while no cdrhook has the journal open after a
/// clean stop: the persisted counts are exact (see `counts.rs`).
pub const K_CLEAN: u8 = b'k';
/// The open index's mark: open deliveries below this id have their `o`
/// entry, those at or above it have none (`open_index.rs`). Absent in a
/// journal written before it: every open delivery has its entry.
pub const K_INDEXED: u8 = b'w';

/// A record that does not decode: the journal is damaged or not ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct DecodeError {
    pub what: &'static str,
    pub why: &'static str,
}

pub type Decoded<T> = std::result::Result<T, DecodeError>;

pub fn key(kind: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = kind;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn key2(kind: u8, a: u64, b: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = kind;
    k[1..9].copy_from_slice(&a.to_be_bytes());
    k[9..].copy_from_slice(&b.to_be_bytes());
    k
}

pub fn body_key(seq: CdrSeq, chunk: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = K_BODY;
    k[1..9].copy_from_slice(&seq.to_be_bytes());
    k[9..].copy_from_slice(&chunk.to_be_bytes());
    k
}

pub fn name_key(kind: u8, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(kind);
    k.extend_from_slice(name);
    k
}

/// The number after the kind byte of a key (0 if it is short).
pub fn key_id(k: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if let Some(b) = k.get(1..9) {
        a.copy_from_slice(b);
    }
    u64::from_be_bytes(a)
}

/// A big-endian u64 at the start of `b` (0 if it is short).
pub fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    if let Some(b) = b.get(..8) {
        a.copy_from_slice(b);
    }
    u64::from_be_bytes(a)
}

/// The second number of a `key2`.
pub fn key_id2(k: &[u8]) -> u64 {
    key_id(k.get(8..).unwrap_or_default())
}

/// A CDR's content id as stored: `cdr_` + 32 lowercase hex digits in 16
/// bytes, anything else (test webhooks, old journals) as it is.
pub fn id_bytes(id: &str) -> Vec<u8> {
    match compact_id(id) {
        Some(raw) => {
            let mut v = Vec::with_capacity(17);
            v.push(1);
            v.extend_from_slice(&raw);
            v
        }
        None => {
            let mut v = Vec::with_capacity(1 + id.len());
            v.push(0);
            v.extend_from_slice(id.as_bytes());
            v
        }
    }
}

fn compact_id(id: &str) -> Option<[u8; 16]> {
    let hex = id.strip_prefix("cdr_")?.as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(hex[2 * i])? << 4 | digit(hex[2 * i + 1])?;
    }
    Some(out)
}

fn id_from_bytes(b: &[u8]) -> Decoded<String> {
    let bad = DecodeError {
        what: "content id",
        why: "malformed",
    };
    match b.split_first() {
        Some((1, raw)) if raw.len() == 16 => {
            let mut s = String::with_capacity(36);
            s.push_str("cdr_");
            for byte in raw {
                s.push_str(&format!("{byte:02x}"));
            }
            Ok(s)
        }
        Some((0, text)) => String::from_utf8(text.to_vec()).map_err(|_| bad),
        _ => Err(bad),
    }
}

/// Appends fields to a record.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn var(&mut self, mut v: u64) -> &mut Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.var(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.var(0),
            Some(s) => {
                self.var(s.len() as u64 + 1);
                self.0.extend_from_slice(s.as_bytes());
                self
            }
        }
    }
    pub fn opt_u64(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => self.u8(1).u64(v),
        }
    }
    pub fn pairs(&mut self, list: &[(String, String)]) -> &mut Self {
        self.var(list.len() as u64);
        for (k, v) in list {
            self.str(k).str(v);
        }
        self
    }
}

/// Reads fields back in the order they were written.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }
    fn err(&self, why: &'static str) -> DecodeError {
        DecodeError {
            what: self.what,
            why,
        }
    }
    /// Whether every byte was read: a field added at the end of a record
    /// is absent from one written before it.
    pub fn at_end(&self) -> bool {
        self.buf.is_empty()
    }
    fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Decoded<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Decoded<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Decoded<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Decoded<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Decoded<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn var(&mut self) -> Decoded<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }
    fn len(&mut self) -> Decoded<usize> {
        usize::try_from(self.var()?).map_err(|_| self.err("length too large"))
    }
    pub fn bytes(&mut self) -> Decoded<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }
    pub fn str(&mut self) -> Decoded<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("not UTF-8"))
    }
    pub fn opt_str(&mut self) -> Decoded<Option<String>> {
        match self.len()? {
            0 => Ok(None),
            n => {
                let b = self.take(n - 1)?;
                String::from_utf8(b.to_vec())
                    .map(Some)
                    .map_err(|_| self.err("not UTF-8"))
            }
        }
    }
    pub fn opt_u64(&mut self) -> Decoded<Option<u64>> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.u64().map(Some),
        }
    }
    pub fn pairs(&mut self) -> Decoded<Vec<(String, String)>> {
        let n = self.len()?;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            out.push((self.str()?, self.str()?));
        }
        Ok(out)
    }
}

pub fn state_code(s: State) -> u8 {
    match s {
        State::Pending => 0,
        State::Retrying => 1,
        State::Delivered => 2,
        State::Dead => 3,
    }
}

pub fn state_from(c: u8) -> Decoded<State> {
    Ok(match c {
        0 => State::Pending,
        1 => State::Retrying,
        2 => State::Delivered,
        3 => State::Dead,
        _ => {
            return Err(DecodeError {
                what: "state",
                why: "unknown code",
            })
        }
    })
}

pub fn trigger_code(t: Trigger) -> u8 {
    match t {
        Trigger::Auto => 0,
        Trigger::Resend => 1,
        Trigger::Replay => 2,
        Trigger::Test => 3,
    }
}

pub fn trigger_from(c: u8) -> Decoded<Trigger> {
    Ok(match c {
        0 => Trigger::Auto,
        1 => Trigger::Resend,
        2 => Trigger::Replay,
        3 => Trigger::Test,
        _ => {
            return Err(DecodeError {
                what: "trigger",
                why: "unknown code",
            })
        }
    })
}

/// An event type as one byte: its place in `EventType::ALL`; 255 for a
/// name this version does not know (kept as text after it).
fn put_event(w: &mut Writer, name: &str) {
    match EventType::ALL.iter().position(|t| t.as_str() == name) {
        Some(i) => w.u8(i as u8),
        None => w.u8(255).str(name),
    };
}

fn get_event(r: &mut Reader<'_>) -> Decoded<String> {
    match r.u8()? {
        255 => r.str(),
        i => EventType::ALL
            .get(usize::from(i))
            .map(|t| t.as_str().to_string())
            .ok_or(DecodeError {
                what: "event type",
                why: "unknown code",
            }),
    }
}

/// An in-flight file a CDR came in, with every CDR of that file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRef {
    pub name: String,
    pub cdrs: Vec<CdrSeq>,
}

/// `c` seq: what a walk over CDRs reads; the body is elsewhere (`b`).
#[derive(Debug, Clone, PartialEq)]
pub struct CdrRec {
    pub id: String,
    pub event_type: String,
    pub call_id: Option<String>,
    pub received_ms: u64,
    pub body_len: u64,
    /// One per subscription, ever: a few bytes each.
    pub deliveries: Vec<DeliveryId>,
    pub files: Vec<FileRef>,
    /// The body, when it fits in one chunk (format 4; absent from a record
    /// written before, whose body is in `b` chunks like a large one's).
    pub body: Option<Vec<u8>>,
}

/// Whether a body is kept in its CDR's record rather than in `b` chunks.
pub fn inline_body(body: &[u8]) -> bool {
    body.len() <= BODY_CHUNK
}

impl CdrRec {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64 + self.files.len() * 48));
        w.bytes(&id_bytes(&self.id));
        put_event(&mut w, &self.event_type);
        w.opt_str(self.call_id.as_deref())
            .u64(self.received_ms)
            .var(self.body_len)
            .var(self.deliveries.len() as u64);
        for d in &self.deliveries {
            w.u64(*d);
        }
        w.var(self.files.len() as u64);
        for f in &self.files {
            w.str(&f.name).var(f.cdrs.len() as u64);
            for s in &f.cdrs {
                w.u64(*s);
            }
        }
        if let Some(body) = &self.body {
            w.bytes(body);
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Decoded<CdrRec> {
        let mut r = Reader::new(b, "cdr record");
        let id = id_from_bytes(r.bytes()?)?;
        let event_type = get_event(&mut r)?;
        let call_id = r.opt_str()?;
        let received_ms = r.u64()?;
        let body_len = r.var()?;
        let n = r.len()?;
        let mut deliveries = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            deliveries.push(r.u64()?);
        }
        let n = r.len()?;
        let mut files = Vec::with_capacity(n.min(16));
        for _ in 0..n {
            let name = r.str()?;
            let m = r.len()?;
            let mut cdrs = Vec::with_capacity(m.min(1024));
            for _ in 0..m {
                cdrs.push(r.u64()?);
            }
            files.push(FileRef { name, cdrs });
        }
        let body = if r.at_end() {
            None
        } else {
            Some(r.bytes()?.to_vec())
        };
        Ok(CdrRec {
            id,
            event_type,
            call_id,
            received_ms,
            body_len,
            deliveries,
            files,
            body,
        })
    }
}

/// `d` delivery: fixed width but for the last error; rewritten by every
/// attempt, so nothing in it grows.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRec {
    pub cdr_seq: CdrSeq,
    pub sub: u32,
    pub state: State,
    pub origin: Trigger,
    pub attempts: u32,
    pub failures: u32,
    pub next_at_ms: Option<u64>,
    pub created_ms: u64,
    pub ended_ms: Option<u64>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// Its latest attempt (0: none yet), the head of the chain the
    /// attempts keep (`AttemptRec::prev`). Format 4; a record written
    /// before has none, and its attempts are listed by the `x` index.
    pub last_attempt: AttemptId,
    /// A retrying delivery's `Retry-After`: not sent before then, even when
    /// its failing endpoint recovers and the others waiting go at once.
    /// Written only when there is one, after the chain head.
    pub hold_until_ms: Option<u64>,
}

impl DeliveryRec {
    /// A new delivery, not attempted yet (an ingest or a replay).
    pub fn new_pending(cdr_seq: CdrSeq, sub: u32, origin: Trigger, created_ms: u64) -> DeliveryRec {
        DeliveryRec {
            cdr_seq,
            sub,
            state: State::Pending,
            origin,
            attempts: 0,
            failures: 0,
            next_at_ms: None,
            created_ms,
            ended_ms: None,
            last_status: None,
            last_error: None,
            last_attempt: 0,
            hold_until_ms: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(56));
        w.u64(self.cdr_seq)
            .u32(self.sub)
            .u8(state_code(self.state))
            .u8(trigger_code(self.origin))
            .u32(self.attempts)
            .u32(self.failures)
            .opt_u64(self.next_at_ms)
            .u64(self.created_ms)
            .opt_u64(self.ended_ms)
            .u16(self.last_status.unwrap_or(0))
            .opt_str(self.last_error.as_deref())
            .u64(self.last_attempt);
        if let Some(until) = self.hold_until_ms {
            w.u64(until);
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Decoded<DeliveryRec> {
        let mut r = Reader::new(b, "delivery record");
        Ok(DeliveryRec {
            cdr_seq: r.u64()?,
            sub: r.u32()?,
            state: state_from(r.u8()?)?,
            origin: trigger_from(r.u8()?)?,
            attempts: r.u32()?,
            failures: r.u32()?,
            next_at_ms: r.opt_u64()?,
            created_ms: r.u64()?,
            ended_ms: r.opt_u64()?,
            last_status: Some(r.u16()?).filter(|&s| s != 0),
            last_error: r.opt_str()?,
            last_attempt: if r.at_end() { 0 } else { r.u64()? },
            hold_until_ms: if r.at_end() { None } else { Some(r.u64()?) },
        })
    }
}

/// `o` delivery: present exactly while the delivery is open and its id is
/// below the index mark (`open_index.rs`); what start-up reads instead of
/// every delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenRec {
    pub sub: u32,
    pub state: State,
    pub origin: Trigger,
    pub next_at_ms: u64,
    /// The delivery's `hold_until_ms`, written only when there is one.
    pub hold_until_ms: Option<u64>,
}

impl OpenRec {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(14));
        w.u32(self.sub)
            .u8(state_code(self.state))
            .u8(trigger_code(self.origin))
            .u64(self.next_at_ms);
        if let Some(until) = self.hold_until_ms {
            w.u64(until);
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Decoded<OpenRec> {
        let mut r = Reader::new(b, "open-delivery index");
        Ok(OpenRec {
            sub: r.u32()?,
            state: state_from(r.u8()?)?,
            origin: trigger_from(r.u8()?)?,
            next_at_ms: r.u64()?,
            hold_until_ms: if r.at_end() { None } else { Some(r.u64()?) },
        })
    }
}

/// `a` attempt: every field a listing shows or filters on, so that a walk
/// over attempts reads nothing else (the subscription's name comes from its
/// number, held in memory).
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRec {
    pub delivery_id: DeliveryId,
    pub cdr_seq: CdrSeq,
    pub sub: u32,
    pub event_type: String,
    pub webhook_id: String,
    pub call_id: Option<String>,
    pub time_ms: u64,
    pub attempt: u32,
    pub status: Option<u16>,
    pub duration_ms: u64,
    pub trigger: Trigger,
    pub error: Option<String>,
    /// The delivery's attempt before this one (0: none), so a delivery's
    /// attempts are a chain from its `last_attempt`. Format 4; absent
    /// (0) from a record written before, listed by the `x` index instead.
    pub prev: AttemptId,
    /// What only `show` reads ([`AttemptDetail`], encoded), kept in the
    /// record since format 4: one write per attempt, not two. `None` in a
    /// record written before (its detail is the `h` record) or with none.
    pub detail: Option<Vec<u8>>,
}

impl AttemptRec {
    /// A 2xx answer without an error (as `Attempt::succeeded`).
    pub fn succeeded(&self) -> bool {
        matches!(self.status, Some(200..=299)) && self.error.is_none()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(48));
        w.u64(self.delivery_id).u64(self.cdr_seq).u32(self.sub);
        put_event(&mut w, &self.event_type);
        w.bytes(&id_bytes(&self.webhook_id))
            .opt_str(self.call_id.as_deref())
            .u64(self.time_ms)
            .var(u64::from(self.attempt))
            .u16(self.status.unwrap_or(0))
            .var(self.duration_ms)
            .u8(trigger_code(self.trigger))
            .opt_str(self.error.as_deref())
            .u64(self.prev);
        if let Some(detail) = &self.detail {
            w.bytes(detail);
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Decoded<AttemptRec> {
        let mut r = Reader::new(b, "attempt record");
        Ok(AttemptRec {
            delivery_id: r.u64()?,
            cdr_seq: r.u64()?,
            sub: r.u32()?,
            event_type: get_event(&mut r)?,
            webhook_id: id_from_bytes(r.bytes()?)?,
            call_id: r.opt_str()?,
            time_ms: r.u64()?,
            attempt: u32::try_from(r.var()?).unwrap_or(u32::MAX),
            status: Some(r.u16()?).filter(|&s| s != 0),
            duration_ms: r.var()?,
            trigger: trigger_from(r.u8()?)?,
            error: r.opt_str()?,
            prev: if r.at_end() { 0 } else { r.u64()? },
            detail: if r.at_end() {
                None
            } else {
                Some(r.bytes()?.to_vec())
            },
        })
    }
}

/// An attempt's detail: what only `show` reads. Since format 4 it is
/// encoded into the attempt's record (`AttemptRec::detail`, when not
/// empty); a format-3 journal has it as the `h` record.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttemptDetail {
    pub request_headers: Vec<(String, String)>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Option<String>,
}

/// What an attempt's standard request headers are made of, so that they
/// are stored as a byte or two, not as text (they make up most of an
/// attempt otherwise).
pub struct HeaderContext<'a> {
    pub webhook_id: &'a str,
    pub event_type: &'a str,
    pub attempt: u32,
    pub time_ms: u64,
}

/// Header names stored as one byte (their place here, from 1); 0 means the
/// name follows as text. Append only: the numbers are on disk.
const HEADER_NAMES: [&str; 16] = [
    "content-type",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "x-webhook-event",
    "x-webhook-attempt",
    "webhook-signature",
    "authorization",
    "server",
    "date",
    "connection",
    "content-length",
    "transfer-encoding",
    "cache-control",
    "x-request-id",
    "vary",
];

impl HeaderContext<'_> {
    /// The value a header has when the daemon set it from the attempt.
    fn derived(&self, name: &str) -> Option<String> {
        Some(match name {
            "content-type" => "application/json".to_string(),
            "webhook-id" => self.webhook_id.to_string(),
            "webhook-timestamp" => (self.time_ms / 1000).to_string(),
            "x-webhook-event" => self.event_type.to_string(),
            "x-webhook-attempt" => self.attempt.to_string(),
            _ => return None,
        })
    }

    fn put(&self, w: &mut Writer, list: &[(String, String)]) {
        w.var(list.len() as u64);
        for (name, value) in list {
            match HEADER_NAMES.iter().position(|n| n == name) {
                Some(i) => w.u8(i as u8 + 1),
                None => w.u8(0).str(name),
            };
            if self.derived(name).as_deref() == Some(value.as_str()) {
                w.var(0);
            } else {
                w.opt_str(Some(value));
            }
        }
    }

    fn get(&self, r: &mut Reader<'_>) -> Decoded<Vec<(String, String)>> {
        let n = r.len()?;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let name = match r.u8()? {
                0 => r.str()?,
                i => HEADER_NAMES
                    .get(usize::from(i) - 1)
                    .map(|n| n.to_string())
                    .ok_or(DecodeError {
                        what: "attempt detail",
                        why: "unknown header code",
                    })?,
            };
            let value = match r.opt_str()? {
                Some(v) => v,
                None => self.derived(&name).ok_or(DecodeError {
                    what: "attempt detail",
                    why: "no derived value for this header",
                })?,
            };
            out.push((name, value));
        }
        Ok(out)
    }
}

impl AttemptDetail {
    pub fn is_empty(&self) -> bool {
        self.request_headers.is_empty()
            && self.response_headers.is_empty()
            && self.response_body.is_none()
    }

    pub fn encode(&self, ctx: &HeaderContext<'_>) -> Vec<u8> {
        let mut w = Writer::default();
        ctx.put(&mut w, &self.request_headers);
        ctx.put(&mut w, &self.response_headers);
        w.opt_str(self.response_body.as_deref());
        w.0
    }

    pub fn decode(b: &[u8], ctx: &HeaderContext<'_>) -> Decoded<AttemptDetail> {
        let mut r = Reader::new(b, "attempt detail");
        Ok(AttemptDetail {
            request_headers: ctx.get(&mut r)?,
            response_headers: ctx.get(&mut r)?,
            response_body: r.opt_str()?,
        })
    }
}

/// `n` subscription: its counts and last results, written in the same
/// batch as every change they count.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CountsRec {
    pub pending: u64,
    pub retrying: u64,
    pub dead: u64,
    pub delivered: u64,
    pub last_success_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
    pub last_error: Option<String>,
    /// CDRs the subscription's filter excluded, as the caller said at
    /// ingest. Written last, and read as 0 when absent: a counts record
    /// of a format-3 journal written before the field existed reads
    /// unchanged (no format bump), and such a cdrhook ignores the extra
    /// bytes.
    pub unmatched: u64,
    /// The endpoint's `Retry-After` to a failing answer: no automatic
    /// attempt of the subscription before then, also after a restart.
    /// Written after `unmatched` only when there is one: a record without
    /// it is byte for byte as before, and an older cdrhook ignores it.
    pub endpoint_hold: Option<EndpointHold>,
}

/// An endpoint-wide `Retry-After`, journaled with its subscription's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointHold {
    pub until_ms: u64,
    /// Which endpoint asked (a fingerprint the caller gives, opaque here):
    /// a hold is not applied to a URL edited while the daemon was stopped.
    pub endpoint: u64,
}

impl CountsRec {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.var(self.pending)
            .var(self.retrying)
            .var(self.dead)
            .var(self.delivered)
            .opt_u64(self.last_success_ms)
            .opt_u64(self.last_failure_ms)
            .opt_str(self.last_error.as_deref())
            .var(self.unmatched);
        if let Some(hold) = self.endpoint_hold {
            w.u64(hold.until_ms).u64(hold.endpoint);
        }
        w.0
    }

    pub fn decode(b: &[u8]) -> Decoded<CountsRec> {
        let mut r = Reader::new(b, "counts record");
        Ok(CountsRec {
            pending: r.var()?,
            retrying: r.var()?,
            dead: r.var()?,
            delivered: r.var()?,
            last_success_ms: r.opt_u64()?,
            last_failure_ms: r.opt_u64()?,
            last_error: r.opt_str()?,
            unmatched: if r.at_end() { 0 } else { r.var()? },
            endpoint_hold: if r.at_end() {
                None
            } else {
                Some(EndpointHold {
                    until_ms: r.u64()?,
                    endpoint: r.u64()?,
                })
            },
        })
    }
}

/// Key of the `n` record of subscription number `sub`.
pub fn counts_key(sub: u32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = K_COUNTS;
    k[1..].copy_from_slice(&sub.to_be_bytes());
    k
}

/// Splits a body into the chunks it is stored as (one for a small body,
/// none for an empty one).
pub fn chunks(body: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    body.chunks(BODY_CHUNK)
        .enumerate()
        .map(|(i, c)| (i as u32, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let cdr = CdrRec {
            id: "cdr_0123456789abcdef0123456789abcdef".into(),
            event_type: "App.QueueWebhook".into(),
            call_id: Some("c-1".into()),
            received_ms: 1_700_000_000_000,
            body_len: 600,
            deliveries: vec![3, 4],
            files: vec![FileRef {
                name: "x.json".into(),
                cdrs: vec![2],
            }],
            body: Some(br#"{"QueueId":"q"}"#.to_vec()),
        };
        assert_eq!(CdrRec::decode(&cdr.encode()), Ok(cdr.clone()));
        // An empty body is kept too; a record written before format 4 (or
        // of a large body) has none.
        for body in [Some(Vec::new()), None] {
            let c = CdrRec {
                body,
                ..cdr.clone()
            };
            assert_eq!(CdrRec::decode(&c.encode()), Ok(c));
        }
        for (id, len) in [
            ("cdr_0123456789abcdef0123456789abcdef", 17),
            ("t1", 3),
            ("cdr_0123456789ABCDEF0123456789abcdef", 37),
            ("cdr_short", 10),
        ] {
            let b = id_bytes(id);
            assert_eq!(b.len(), len, "{id}");
            assert_eq!(id_from_bytes(&b).as_deref(), Ok(id));
        }
        let unknown = CdrRec {
            event_type: "App.FutureWebhook".into(),
            call_id: None,
            ..cdr
        };
        assert_eq!(CdrRec::decode(&unknown.encode()), Ok(unknown));
        let d = DeliveryRec {
            cdr_seq: 9,
            sub: 1,
            state: State::Retrying,
            origin: Trigger::Replay,
            attempts: 2,
            failures: 1,
            next_at_ms: Some(0),
            created_ms: 5,
            ended_ms: None,
            last_status: Some(503),
            last_error: Some("HTTP 503".into()),
            last_attempt: 77,
            hold_until_ms: None,
        };
        assert_eq!(DeliveryRec::decode(&d.encode()), Ok(d.clone()));
        // A `Retry-After` hold rides after the chain head.
        let held = DeliveryRec {
            hold_until_ms: Some(123),
            ..d.clone()
        };
        assert_eq!(DeliveryRec::decode(&held.encode()), Ok(held));
        // Written by format 3: no chain head.
        let old = d.encode();
        assert_eq!(
            DeliveryRec::decode(&old[..old.len() - 8]),
            Ok(DeliveryRec {
                last_attempt: 0,
                hold_until_ms: None,
                ..d
            })
        );
        let a = AttemptRec {
            delivery_id: 1,
            cdr_seq: 2,
            sub: 0,
            event_type: "App.TestWebhook".into(),
            webhook_id: "t1".into(),
            call_id: Some("c".into()),
            time_ms: 7,
            attempt: 300,
            status: None,
            duration_ms: 70_000,
            trigger: Trigger::Resend,
            error: Some("timeout".into()),
            prev: 41,
            detail: Some(vec![1, 2, 3]),
        };
        assert_eq!(AttemptRec::decode(&a.encode()), Ok(a.clone()));
        let bare = AttemptRec {
            prev: 0,
            detail: None,
            ..a
        };
        assert_eq!(AttemptRec::decode(&bare.encode()), Ok(bare.clone()));
        // Written by format 3: neither field.
        let old = bare.encode();
        assert_eq!(AttemptRec::decode(&old[..old.len() - 8]), Ok(bare));
        let ctx = HeaderContext {
            webhook_id: "cdr_1",
            event_type: "App.QueueWebhook",
            attempt: 3,
            time_ms: 1_700_000_000_123,
        };
        let h = AttemptDetail {
            request_headers: vec![
                ("a".into(), "b".into()),
                ("webhook-id".into(), "cdr_1".into()),
                ("webhook-timestamp".into(), "1700000000".into()),
                ("x-webhook-attempt".into(), "3".into()),
                ("x-webhook-event".into(), "App.QueueWebhook".into()),
                ("content-type".into(), "text/plain".into()),
                ("authorization".into(), "***".into()),
            ],
            response_headers: vec![("date".into(), "today".into())],
            response_body: Some(String::new()),
        };
        let bytes = h.encode(&ctx);
        assert!(
            bytes.len() <= 40,
            "derived headers take two bytes: {}",
            bytes.len()
        );
        assert_eq!(AttemptDetail::decode(&bytes, &ctx), Ok(h));
        let c = CountsRec {
            delivered: 1 << 40,
            last_failure_ms: Some(3),
            unmatched: 300,
            ..Default::default()
        };
        assert_eq!(CountsRec::decode(&c.encode()), Ok(c.clone()));
        // A counts record written without `unmatched` (before it existed)
        // reads it as 0, the rest unchanged.
        let mut old = c.encode();
        old.truncate(old.len() - 2);
        assert_eq!(
            CountsRec::decode(&old),
            Ok(CountsRec {
                unmatched: 0,
                ..c.clone()
            })
        );
        // The endpoint's hold follows `unmatched`, only when there is one.
        let held = CountsRec {
            endpoint_hold: Some(EndpointHold {
                until_ms: 1_800_000_000_000,
                endpoint: u64::MAX - 5,
            }),
            ..c.clone()
        };
        let bytes = held.encode();
        assert_eq!(bytes.len(), c.encode().len() + 16);
        assert_eq!(CountsRec::decode(&bytes), Ok(held));
        let o = OpenRec {
            sub: 7,
            state: State::Pending,
            origin: Trigger::Test,
            next_at_ms: 0,
            hold_until_ms: None,
        };
        assert_eq!(OpenRec::decode(&o.encode()), Ok(o));
        let held = OpenRec {
            hold_until_ms: Some(123),
            ..o
        };
        assert_eq!(OpenRec::decode(&held.encode()), Ok(held));
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let d = DeliveryRec {
            cdr_seq: 9,
            sub: 1,
            state: State::Dead,
            origin: Trigger::Auto,
            attempts: 2,
            failures: 1,
            next_at_ms: None,
            created_ms: 5,
            ended_ms: Some(6),
            last_status: None,
            last_error: Some("x".into()),
            last_attempt: 0,
            hold_until_ms: None,
        }
        .encode();
        // Cut anywhere but where a format-3 record ended (before the
        // chain head), it is an error.
        for n in (0..d.len()).filter(|&n| n != d.len() - 8) {
            assert!(DeliveryRec::decode(&d[..n]).is_err(), "cut at {n}");
        }
        let mut bad = d.clone();
        bad[12] = 9;
        assert!(DeliveryRec::decode(&bad).is_err(), "unknown state");
        assert!(Reader::new(&[0xff; 11], "x").var().is_err());
    }

    #[test]
    fn a_delivery_record_is_small_and_bodies_are_chunked() {
        let d = DeliveryRec {
            cdr_seq: 9,
            sub: 1,
            state: State::Delivered,
            origin: Trigger::Auto,
            attempts: 1,
            failures: 0,
            next_at_ms: None,
            created_ms: 5,
            ended_ms: Some(6),
            last_status: Some(204),
            last_error: None,
            last_attempt: 0,
            hold_until_ms: None,
        };
        // 48 bytes and the chain head.
        assert!(d.encode().len() <= 56, "{}", d.encode().len());
        let body = vec![b'x'; BODY_CHUNK * 2 + 1];
        let sizes: Vec<_> = chunks(&body).map(|(i, c)| (i, c.len())).collect();
        assert_eq!(sizes, vec![(0, BODY_CHUNK), (1, BODY_CHUNK), (2, 1)]);
        assert_eq!(chunks(b"").count(), 0);
    }
}
