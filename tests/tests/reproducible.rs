//! Reproducible builds: the same recipe and inputs give a byte-identical disk
//! image whatever the build folder, working folder, umask, time zone and locale
//! (each example recipe is built twice with all of those different, each
//! build with a cache of its own holding only the downloads), and
//! `berth build --check-reproducible` says so.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_tests::images::downloads_only_cache;
use berth_tests::{binaries, e2e_dir, workspace_path};
use sha2::Digest;

/// How one of the two builds differs from the other.
struct Environment {
    umask: &'static str,
    tz: &'static str,
    lc_all: &'static str,
}

const FIRST: Environment = Environment {
    umask: "022",
    tz: "UTC",
    lc_all: "C",
};
const SECOND: Environment = Environment {
    umask: "077",
    tz: "Pacific/Kiritimati",
    lc_all: "C.UTF-8",
};

fn sha256(path: &Path) -> String {
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut File::open(path).unwrap(), &mut h)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hex::encode(h.finalize())
}

/// A scratch folder under `target/e2e/` (images are large: not on a tmpfs).
fn scratch(prefix: &str) -> tempfile::TempDir {
    let e2e = e2e_dir();
    fs::create_dir_all(&e2e).unwrap();
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&e2e)
        .unwrap_or_else(|e| panic!("creating a folder in {}: {e}", e2e.display()))
}

/// Builds `recipe` into `out` with `berth build` under
/// `sh -c 'umask U; exec "$@"'`, with the environment's TZ and LC_ALL, the
/// output folder as the working folder and a build cache of its own that
/// holds only the downloaded packages (so neither build reuses a kernel,
/// initramfs or installed root the other made); returns the image.
fn build(recipe: &Path, out: &Path, env: &Environment, epoch: &str) -> PathBuf {
    let cache = downloads_only_cache(&out.with_extension("cache"));
    fs::create_dir_all(out).unwrap();
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {}; exec \"$@\"", env.umask))
        .arg("sh")
        .arg(&binaries().berth)
        .arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .current_dir(out)
        .env("SOURCE_DATE_EPOCH", epoch)
        .env("BERTH_CACHE", &cache)
        .env("TZ", env.tz)
        .env("LC_ALL", env.lc_all)
        .output()
        .unwrap_or_else(|e| panic!("running berth: {e}"));
    assert!(
        output.status.success(),
        "berth build {} (umask {}, TZ {}, LC_ALL {}) failed:\n{}{}",
        recipe.display(),
        env.umask,
        env.tz,
        env.lc_all,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stem = recipe.file_stem().unwrap().to_string_lossy().into_owned();
    fs::read_dir(out)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|x| x == "img")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&stem))
        })
        .unwrap_or_else(|| panic!("no image in {}", out.display()))
}

fn builds_are_identical(recipe: &str) {
    let recipe = workspace_path(recipe);
    let dir = scratch("reproducible-");
    let one = dir.path().join("one");
    let two = dir
        .path()
        .join("second")
        .join("build")
        .join("somewhere-else");
    let epoch = "1700000000";
    let a = build(&recipe, &one, &FIRST, epoch);
    let b = build(&recipe, &two, &SECOND, epoch);
    let report = |image: &Path| -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(image.with_extension("json")).unwrap()).unwrap()
    };
    let (ra, rb) = (report(&a), report(&b));
    for artifact in ["kernel", "initramfs", "root"] {
        assert_eq!(
            ra["outputs"][artifact]["sha256"],
            rb["outputs"][artifact]["sha256"],
            "{artifact} differs between two builds of {}",
            recipe.display()
        );
    }
    assert_eq!(ra["epoch"], 1_700_000_000);
    let (ha, hb) = (sha256(&a), sha256(&b));
    assert_eq!(
        ha,
        hb,
        "two builds of {} gave different disk images",
        recipe.display()
    );
    assert_eq!(ra["outputs"]["disk"]["sha256"], ha.as_str());
    let bmap = |image: &Path| fs::read(image.with_extension("bmap")).unwrap();
    assert!(
        bmap(&a) == bmap(&b),
        "two builds of {} gave different block maps",
        recipe.display()
    );
}

#[test]
fn hello_builds_are_identical() {
    builds_are_identical("recipes/hello.toml");
}

#[test]
fn web_builds_are_identical() {
    builds_are_identical("recipes/web.toml");
}

#[test]
fn check_reproducible_passes_on_hello() {
    let dir = scratch("check-reproducible-");
    // No SOURCE_DATE_EPOCH and no epoch in the recipe: the fixed time is 0, which
    // e2fsprogs would otherwise read as "use the clock".
    let output = Command::new(&binaries().berth)
        .arg("build")
        .arg(workspace_path("recipes/hello.toml"))
        .arg("--out")
        .arg(dir.path())
        .arg("--check-reproducible")
        .arg("--json")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "--check-reproducible failed:\n{text}"
    );
    // --json: one document on stdout with the verdict and both builds' hashes.
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|err| panic!("stdout is not one JSON document ({err}):\n{text}"));
    assert_eq!(json["reproducible"], true, "{json:#}");
    assert_eq!(json["image"], "hello-1.0.0.img", "{json:#}");
    let artifacts = json["artifacts"].as_array().expect("artifacts");
    let names: Vec<&str> = artifacts
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "disk",
            "block map",
            "kernel",
            "initramfs",
            "root",
            "verity root hash"
        ],
        "{json:#}"
    );
    for a in artifacts {
        assert_eq!(a["identical"], true, "{a}");
        assert_eq!(a["first"], a["second"], "{a}");
        assert_eq!(a["first"].as_str().map(str::len), Some(64), "{a}");
    }
    assert!(
        json["steps"].as_array().is_some_and(|s| !s.is_empty()),
        "{json:#}"
    );
    // It keeps nothing.
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
