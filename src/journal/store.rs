//! Where each record kind lives: one sled tree per key kind (formats 3
//! and 4).
//!
//! The keys and records are those of `records` (a kind byte, then
//! big-endian numbers); `Store` routes every read and write to the tree of
//! its key's kind, with the same calls as a `sled::Tree`, so the rest of
//! the journal reads as if it had one tree.
//!
//! Why one tree per kind (measured, BENCHMARKS.md "Journal in one tree per
//! record kind"): sled 0.34 copies a whole leaf (up to 16 entries) on every
//! insert and rewrites it whole into its log every tenth change. With every
//! kind in one tree, the leaf where new keys of one kind are appended also
//! holds the first keys of the next kind: each new attempt (`a`) went into
//! the leaf that held the oldest bodies (`b`), each new body into the leaf
//! of the oldest CDR records (`c`), and so on, so small, often written
//! records paid for copying and logging large, never changed ones. Apart,
//! a kind's appends only ever touch its own leaves.
//!
//! An ingest's [`Batch`] is not a sled batch: it is written key by key,
//! tree by tree in [`APPLY_ORDER`] (bodies, deliveries, open index, CDR
//! records, content ids last). sled recovers a prefix of its one log, so a
//! crash in the middle leaves a prefix of that order: a content id (what
//! makes a CDR "known") is never on disk without its record, deliveries and
//! open-index entries; what a cut-short ingest left before it (deliveries
//! and open-index entries of a CDR with no record or no content id, that
//! record and its body) is dropped at the next open (`counts.rs`), and the
//! file, still in the spool, is taken in again and delivered once.
//!
//! Why not sled's own batches (measured, BENCHMARKS.md "fourth session"):
//! sled 0.34's `apply_batch` takes a process-wide write lock for the whole
//! batch, and once any batch has been applied, every read and write of the
//! process goes through that lock's read side for the rest of its life. A
//! batch of 512 CDRs held every delivery thread's attempt for its whole
//! length, and the journal's atomicity never needed more than the order.

use std::ops::{Bound, RangeBounds};

use super::records;

/// Key kinds with a tree of their own; every other kind (`V`, `n`, `s`,
/// `k`: a few small records) lives in the meta tree, [`records::TREE`].
const KINDS: [u8; 8] = [
    records::K_BODY,
    records::K_DELIVERY,
    records::K_OPEN,
    records::K_CDR,
    records::K_CDR_ID,
    records::K_ATTEMPT,
    records::K_DETAIL,
    records::K_ATTEMPTS_OF,
];

/// The order in which a [`Batch`]'s trees are written (the meta tree last):
/// see the module docs for why a crash between two of them is safe.
const APPLY_ORDER: [u8; 8] = KINDS;

/// The name of a kind's tree.
pub(super) fn tree_name(kind: u8) -> String {
    format!("journal.v3.{}", kind as char)
}

/// The journal's trees, one per key kind.
pub(super) struct Store {
    /// By position in `KINDS`.
    kinds: Vec<sled::Tree>,
    meta: sled::Tree,
}

fn index(kind: u8) -> Option<usize> {
    KINDS.iter().position(|&k| k == kind)
}

fn kind_of(key: &[u8]) -> u8 {
    key.first().copied().unwrap_or(0)
}

impl Store {
    pub(super) fn open(db: &sled::Db) -> sled::Result<Store> {
        let kinds = KINDS
            .iter()
            .map(|&k| db.open_tree(tree_name(k)))
            .collect::<sled::Result<_>>()?;
        let meta = db.open_tree(records::TREE)?;
        Ok(Store { kinds, meta })
    }

    /// The tree that holds keys of `kind`.
    pub(super) fn of(&self, kind: u8) -> &sled::Tree {
        match index(kind) {
            Some(i) => &self.kinds[i],
            None => &self.meta,
        }
    }

    fn for_key(&self, key: &[u8]) -> &sled::Tree {
        self.of(kind_of(key))
    }

    pub(super) fn get<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<sled::IVec>> {
        self.for_key(key.as_ref()).get(key)
    }

    pub(super) fn contains_key<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<bool> {
        self.for_key(key.as_ref()).contains_key(key)
    }

    pub(super) fn insert<K: AsRef<[u8]>, V: Into<sled::IVec>>(
        &self,
        key: K,
        value: V,
    ) -> sled::Result<Option<sled::IVec>> {
        self.for_key(key.as_ref()).insert(key, value)
    }

    pub(super) fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<sled::IVec>> {
        self.for_key(key.as_ref()).remove(key)
    }

    /// Keys starting with `prefix`, whose first byte names the kind.
    pub(super) fn scan_prefix<P: AsRef<[u8]>>(&self, prefix: P) -> sled::Iter {
        self.for_key(prefix.as_ref()).scan_prefix(prefix)
    }

    /// A range within one kind (its bounds' first byte).
    pub(super) fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> sled::Iter {
        let kind = match (range.start_bound(), range.end_bound()) {
            (Bound::Included(k) | Bound::Excluded(k), _) => kind_of(k.as_ref()),
            (Bound::Unbounded, Bound::Included(k) | Bound::Excluded(k)) => kind_of(k.as_ref()),
            (Bound::Unbounded, Bound::Unbounded) => 0,
        };
        self.of(kind).range(range)
    }

    /// Every tree, for clearing a migration that was cut short.
    pub(super) fn clear(&self) -> sled::Result<()> {
        for t in self.kinds.iter().chain([&self.meta]) {
            t.clear()?;
        }
        Ok(())
    }

    /// Writes a batch key by key: the trees one after the other in
    /// `APPLY_ORDER`, then the meta tree, each tree's writes in the order
    /// they were put in (see the module docs for why not a sled batch).
    pub(super) fn apply_batch(&self, batch: Batch) -> sled::Result<()> {
        let Batch { mut kinds, meta } = batch;
        let write = |tree: &sled::Tree, writes: Writes| -> sled::Result<()> {
            for (k, v) in writes {
                tree.insert(k, v)?;
            }
            Ok(())
        };
        for kind in APPLY_ORDER {
            if let Some(i) = index(kind) {
                write(&self.kinds[i], std::mem::take(&mut kinds[i]))?;
            }
        }
        write(&self.meta, meta)
    }
}

/// One tree's writes, in order (an ingest only inserts).
type Writes = Vec<(sled::IVec, sled::IVec)>;

/// Writes to apply together (`Store::apply_batch`), ordered across trees.
pub(super) struct Batch {
    kinds: Vec<Writes>,
    meta: Writes,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            kinds: (0..KINDS.len()).map(|_| Vec::new()).collect(),
            meta: Vec::new(),
        }
    }
}

impl Batch {
    fn part(&mut self, key: &[u8]) -> &mut Writes {
        match index(kind_of(key)) {
            Some(i) => &mut self.kinds[i],
            None => &mut self.meta,
        }
    }

    pub(super) fn insert<K: AsRef<[u8]>, V: Into<sled::IVec>>(&mut self, key: K, value: V) {
        let key = key.as_ref();
        self.part(key).push((key.into(), value.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_tree_and_the_rest_share_the_meta_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let store = Store::open(&db).expect("store");
        let cases: [(u8, &str); 12] = [
            (records::K_BODY, "journal.v3.b"),
            (records::K_DELIVERY, "journal.v3.d"),
            (records::K_OPEN, "journal.v3.o"),
            (records::K_CDR, "journal.v3.c"),
            (records::K_CDR_ID, "journal.v3.i"),
            (records::K_ATTEMPT, "journal.v3.a"),
            (records::K_DETAIL, "journal.v3.h"),
            (records::K_ATTEMPTS_OF, "journal.v3.x"),
            (records::K_VERSION, records::TREE),
            (records::K_COUNTS, records::TREE),
            (records::K_SUB, records::TREE),
            (records::K_CLEAN, records::TREE),
        ];
        for (kind, tree) in cases {
            assert_eq!(
                store.of(kind).name(),
                tree.as_bytes(),
                "kind {}",
                kind as char
            );
        }
    }

    #[test]
    fn reads_writes_and_batches_go_to_the_kind_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let store = Store::open(&db).expect("store");
        let mut batch = Batch::default();
        batch.insert(records::key(records::K_CDR, 1), &b"c1"[..]);
        batch.insert(records::key(records::K_DELIVERY, 2), &b"d2"[..]);
        batch.insert(records::counts_key(0), &b"n0"[..]);
        store.apply_batch(batch).expect("apply");
        store
            .insert(records::key(records::K_CDR, 3), &b"c3"[..])
            .expect("insert");
        assert_eq!(store.of(records::K_CDR).len(), 2);
        assert_eq!(store.of(records::K_DELIVERY).len(), 1);
        assert_eq!(store.of(records::K_COUNTS).len(), 1);
        let got = store
            .get(records::key(records::K_DELIVERY, 2))
            .expect("get");
        assert_eq!(got.as_deref(), Some(&b"d2"[..]));
        let seqs: Vec<u64> = store
            .range(records::key(records::K_CDR, 0)..=records::key(records::K_CDR, u64::MAX))
            .map(|i| records::key_id(&i.expect("item").0))
            .collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(store.scan_prefix([records::K_CDR]).count(), 2);
        store
            .remove(records::key(records::K_CDR, 1))
            .expect("remove");
        assert!(!store
            .contains_key(records::key(records::K_CDR, 1))
            .expect("contains"));
    }
}
