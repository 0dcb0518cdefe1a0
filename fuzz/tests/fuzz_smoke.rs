//! The fuzz targets in the ordinary test suite: every committed corpus input
//! replayed through its target, then a short mutation run of each (bit flips,
//! byte changes, cuts, splices of the corpus's inputs) — not coverage-guided
//! like `scripts/fuzz`, but seconds long and enough to catch a parser that
//! panics again on what the corpora hold or on inputs near them.
//!
//! `BERTH_FUZZ_SMOKE_MS` sets each target's mutation time (default 1500 ms).

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_fuzz::{Target, TARGETS};

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = fs::read_dir(corpus_dir(name))
        .unwrap_or_else(|e| panic!("corpus/{name}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Runs `target` on `input`; a panic is reported with the input, saved where
/// `scripts/fuzz replay` can take it.
fn check(name: &str, target: Target, input: &[u8], what: &str) {
    if panic::catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("artifacts")
            .join(name);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("smoke-{}", berth_bundle::delta::sha256_hex(input)));
        fs::write(&path, input).unwrap();
        panic!(
            "fuzz target {name} panicked on {what}; the input is in {} \
             (scripts/fuzz replay {name} FILE)",
            path.display()
        );
    }
}

/// xorshift64*: the mutations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::try_from(self.next() % n as u64).expect("below n")
        }
    }
}

const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'"', b'\n', b'/'];

/// One to four random edits of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len());
        match rng.below(7) {
            0 if !out.is_empty() => out[at] ^= 1 << rng.below(8),
            1 if !out.is_empty() => out[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 if !out.is_empty() => out[at] = rng.next().to_le_bytes()[0],
            3 => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            4 => out.insert(at.min(out.len()), INTERESTING[rng.below(INTERESTING.len())]),
            5 => out.truncate(at),
            _ => {
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from.min(other.len()) + 1);
                let piece = other[from..(from + len).min(other.len())].to_vec();
                let at = at.min(out.len());
                out.splice(at..at, piece);
            }
        }
    }
    out
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    for name in &names {
        assert!(!corpus(name).is_empty(), "corpus/{name} is empty");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for dir in fs::read_dir(root).unwrap() {
        let dir = dir.unwrap().file_name().into_string().unwrap();
        assert!(names.contains(&dir.as_str()), "corpus/{dir} has no target");
    }
    // And a libFuzzer binary each (fuzz_targets/NAME.rs).
    for name in &names {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz_targets")
            .join(format!("{name}.rs"));
        assert!(source.is_file(), "{} is missing", source.display());
    }
}

#[test]
fn corpora_replay_and_mutants_pass() {
    let budget = Duration::from_millis(
        std::env::var("BERTH_FUZZ_SMOKE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500),
    );
    let mut report = Vec::new();
    for (name, target) in TARGETS {
        let inputs = corpus(name);
        for (path, bytes) in &inputs {
            check(name, *target, bytes, &path.display().to_string());
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        let start = Instant::now();
        let mut runs = 0u64;
        while start.elapsed() < budget {
            let (_, a) = &inputs[rng.below(inputs.len())];
            let (_, b) = &inputs[rng.below(inputs.len())];
            let mutant = mutate(&mut rng, a, b);
            check(name, *target, &mutant, &format!("mutant {runs}"));
            runs += 1;
        }
        report.push(format!("{name}: {} inputs, {runs} mutants", inputs.len()));
    }
    println!("{}", report.join("\n"));
}
