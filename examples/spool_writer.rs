//! Plays the phone system: drops CDR files into cdrhook's spool the way the
//! spool protocol (contract §3) asks a writer to.
//!
//! ```text
//! cargo run --example spool_writer -- --spool examples/quickstart/spool \
//!     [--count N] [--interval 1s] [--verbatim] [FILES...]
//! ```
//!
//! Without FILES it writes the sample CDRs of examples/cdr/. `--count N`
//! writes N files in all, going round the inputs as often as needed (default:
//! each input once); `--interval` waits between two files.
//!
//! cdrhook recognizes a CDR it has already taken in by its content and does
//! not send it again. So that every file written here is a new call, each
//! CDR gets a fresh `CallId` (the rest of the file is left byte for byte);
//! `--verbatim` writes exact copies instead, to watch that deduplication.
//!
//! The protocol, step by step (see `drop_file`):
//! 1. write the CDR under a temporary name that starts with `.`, in the spool
//!    directory itself;
//! 2. fsync the file;
//! 3. rename it to `NAME.json`;
//! 4. fsync the directory.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Write CDR files into a cdrhook spool like the phone system does")]
struct Args {
    /// The spool directory (spool.dir of the config); created if missing.
    #[arg(long)]
    spool: PathBuf,

    /// How many files to write in all (default: each input once).
    #[arg(long)]
    count: Option<usize>,

    /// Wait this long between two files (e.g. 500ms, 1s).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    interval: Duration,

    /// Write exact copies of the inputs, without a fresh CallId.
    #[arg(long)]
    verbatim: bool,

    /// CDR files to write (default: examples/cdr/*.json).
    files: Vec<PathBuf>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("spool_writer: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let files = if args.files.is_empty() {
        sample_files()?
    } else {
        args.files
    };
    if files.is_empty() {
        return Err("no input files".into());
    }
    let inputs = files
        .iter()
        .map(|path| {
            let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("cdr")
                // A leading dot would make cdrhook ignore the final name too.
                .trim_start_matches('.')
                .to_string();
            Ok((stem, bytes))
        })
        .collect::<Result<Vec<_>, String>>()?;

    fs::create_dir_all(&args.spool).map_err(|e| format!("{}: {e}", args.spool.display()))?;

    // Names must be unique: rename() silently replaces an existing file, so
    // reusing the name of a file cdrhook has not taken in yet would lose that
    // CDR. The start time keeps two runs apart, the counter two files of one
    // run.
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let ids = CallIds::new();
    let count = args.count.unwrap_or(inputs.len());

    for n in 0..count {
        if n > 0 && !args.interval.is_zero() {
            thread::sleep(args.interval);
        }
        let (stem, original) = &inputs[n % inputs.len()];
        let (bytes, call_ids) = if args.verbatim {
            (original.clone(), call_ids_of(original))
        } else {
            with_fresh_call_ids(original, &ids)
        };
        let name = format!("{stem}-{run_id}-{}.json", n + 1);
        let path = drop_file(&args.spool, &name, &bytes)
            .map_err(|e| format!("writing {name} into {}: {e}", args.spool.display()))?;
        println!(
            "wrote {} ({} bytes, CallId {})",
            path.display(),
            bytes.len(),
            if call_ids.is_empty() {
                "-".to_string()
            } else {
                call_ids.join(", ")
            }
        );
    }
    Ok(())
}

/// Puts one CDR file into the spool, safely for a reader that watches it.
fn drop_file(spool: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    // 1. The temporary file goes in the spool directory itself, not in /tmp:
    //    a rename is only atomic within one file system (across file systems
    //    it fails with EXDEV, and a copy would be seen half-written). Its name
    //    starts with "." and does not end in ".json", so cdrhook ignores it
    //    while it is being written, however long that takes.
    let temp = spool.join(format!(".{name}.tmp"));
    let final_path = spool.join(name);
    let result = (|| {
        // create_new: never write into a file that someone else owns.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        file.write_all(bytes)?;
        // 2. fsync before the rename: otherwise, after a power loss, the
        //    file system may have kept the rename but not the data, and
        //    cdrhook would find an empty or truncated NAME.json.
        file.sync_all()?;
        drop(file);
        // 3. rename is atomic: cdrhook sees either no NAME.json or the whole
        //    file, never a part of it. This is the moment it is handed over
        //    (inotify reports it as moved-in, and cdrhook takes it in).
        fs::rename(&temp, &final_path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    // 4. fsync the directory, so that the rename itself survives a crash:
    //    once this returns, the CDR is durably cdrhook's responsibility.
    File::open(spool)?.sync_all()?;
    Ok(final_path)
}

/// examples/cdr/*.json, sorted.
fn sample_files() -> Result<Vec<PathBuf>, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cdr");
    let mut files = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect::<Vec<_>>();
    files.sort();
    Ok(files)
}

/// The `CallId` strings of a file's CDRs (one object or an array of them).
fn call_ids_of(bytes: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Vec::new();
    };
    let objects = match &value {
        serde_json::Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    objects
        .iter()
        .filter_map(|o| o.get("CallId")?.as_str())
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect()
}

/// The file with each CDR's `CallId` replaced by a new one, and the new ids.
/// Only the quoted id strings change: every other byte, the property order
/// and the layout stay as the phone system wrote them. Files that are not
/// JSON, or have no CallId, are returned unchanged.
fn with_fresh_call_ids(bytes: &[u8], ids: &CallIds) -> (Vec<u8>, Vec<String>) {
    let old = call_ids_of(bytes);
    let Ok(text) = std::str::from_utf8(bytes) else {
        return (bytes.to_vec(), old);
    };
    let mut text = text.to_string();
    let mut new = Vec::new();
    for old_id in &old {
        let new_id = ids.next();
        text = text.replacen(&format!("\"{old_id}\""), &format!("\"{new_id}\""), 1);
        new.push(new_id);
    }
    (text.into_bytes(), new)
}

/// Random UUID-shaped call ids, from the standard library's randomly keyed
/// hasher (no extra crate).
struct CallIds {
    state: RandomState,
    counter: std::cell::Cell<u64>,
}

impl CallIds {
    fn new() -> Self {
        CallIds {
            state: RandomState::new(),
            counter: std::cell::Cell::new(0),
        }
    }

    fn random_u64(&self) -> u64 {
        let n = self.counter.get();
        self.counter.set(n + 1);
        let mut hasher = self.state.build_hasher();
        hasher.write_u64(n);
        hasher.finish()
    }

    /// A version 4 UUID: 8-4-4-4-12 lower-case hex digits.
    fn next(&self) -> String {
        let hi = self.random_u64();
        let lo = self.random_u64();
        let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x4000; // version 4
        let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // variant
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0xffff,
            lo >> 48,
            lo & 0xffff_ffff_ffff
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_call_ids_change_only_the_ids() {
        let original = b"\xef\xbb\xbf{\n  \"CallId\": \"abc\",\n  \"Other\": \"abc-not\"\n}";
        // A BOM makes serde_json refuse the file: it is left alone.
        let (same, ids) = with_fresh_call_ids(original, &CallIds::new());
        assert_eq!(same, original);
        assert!(ids.is_empty());

        let original = &original[3..];
        let (bytes, ids) = with_fresh_call_ids(original, &CallIds::new());
        assert_eq!(ids.len(), 1);
        let expected = format!(
            "{{\n  \"CallId\": \"{}\",\n  \"Other\": \"abc-not\"\n}}",
            ids[0]
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    }

    #[test]
    fn arrays_get_one_id_per_cdr() {
        let original = br#"[{"CallId": "a"}, {"CallId": "b"}, {"X": 1}]"#;
        let (bytes, ids) = with_fresh_call_ids(original, &CallIds::new());
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        assert_eq!(call_ids_of(&bytes), ids);
    }

    #[test]
    fn call_ids_look_like_uuids() {
        let ids = CallIds::new();
        let id = ids.next();
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
        assert_ne!(id, ids.next());
    }

    #[test]
    fn drop_file_leaves_only_the_final_name() {
        let dir = std::env::temp_dir().join(format!(
            "spool_writer_test_{}_{}",
            std::process::id(),
            CallIds::new().random_u64()
        ));
        fs::create_dir_all(&dir).unwrap();
        let path = drop_file(&dir, "x-1.json", b"{}").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["x-1.json".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
