//! `--json` for scripts: `berth build`, `berth bundle`, `berth bundle inspect`,
//! `berth publish` and `berth cache ls` each print one JSON document on stdout,
//! and what it says about the files written is what is on disk (sizes, sha256).
//! Messages go to stderr. No VM is booted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use berth_tests::{binaries, e2e_dir, release_key};
use serde_json::Value;
use sha2::{Digest, Sha256};

struct Fixture {
    dir: PathBuf,
    key: PathBuf,
    recipe: PathBuf,
    build: Value,
    /// What the build wrote on stderr (a pipe, not a terminal).
    build_stderr: String,
    bundle: Value,
}

/// Runs `berth ARGS`, checks it succeeded and that stdout is exactly one JSON
/// document, and returns it.
fn berth_json(args: &[&std::ffi::OsStr]) -> Value {
    berth_json_and_stderr(args).0
}

/// [`berth_json`], with what the command wrote on stderr.
fn berth_json_and_stderr(args: &[&std::ffi::OsStr]) -> (Value, String) {
    let output = Command::new(&binaries().berth)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running berth: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "berth {args:?} failed ({}):\n{stdout}{stderr}",
        output.status
    );
    let value = serde_json::from_str(&stdout).unwrap_or_else(|err| {
        panic!(
            "berth {args:?}: stdout is not one JSON document ({err}):\n{stdout}\nstderr:\n{stderr}"
        )
    });
    (value, stderr.into_owned())
}

/// Checks a file record (`path`, `size`, `sha256`) against the file, and
/// returns its path.
fn check_record(record: &Value) -> PathBuf {
    let path = PathBuf::from(
        record["path"]
            .as_str()
            .unwrap_or_else(|| panic!("no path in {record}")),
    );
    let bytes = fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert_eq!(record["size"], bytes.len() as u64, "{record}");
    assert_eq!(
        record["sha256"],
        hex::encode(Sha256::digest(&bytes)),
        "{record}"
    );
    path
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = e2e_dir().join("json");
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("emptying the json folder");
        }
        fs::create_dir_all(dir.join("images")).expect("creating the json folder");
        let key = dir.join("release");
        release_key(&key);
        let recipe = dir.join("jsondemo.toml");
        fs::write(
            &recipe,
            r#"[image]
name = "jsondemo"
version = "2.3.4"
epoch = 1700000000

[[container]]
name = "hello"
packages = ["busybox-static"]
command = ["/bin/busybox", "echo", "hello"]
restart = "never"
"#,
        )
        .expect("writing the recipe");
        let images = dir.join("images");
        let (build, build_stderr) = berth_json_and_stderr(&[
            "build".as_ref(),
            recipe.as_os_str(),
            "--out".as_ref(),
            images.as_os_str(),
            "--json".as_ref(),
        ]);
        let image = images.join("jsondemo-2.3.4.img");
        let bundle = berth_json(&[
            "bundle".as_ref(),
            image.as_os_str(),
            "--key".as_ref(),
            key.with_extension("key").as_os_str(),
            "--json".as_ref(),
        ]);
        Fixture {
            dir,
            key,
            recipe,
            build,
            build_stderr,
            bundle,
        }
    })
}

#[test]
fn build_json_names_the_image_and_report_as_written() {
    let fx = fixture();
    let b = &fx.build;
    assert_eq!(b["name"], "jsondemo", "{b:#}");
    assert_eq!(b["version"], "2.3.4", "{b:#}");
    let image = check_record(&b["image"]);
    assert_eq!(image, fx.dir.join("images").join("jsondemo-2.3.4.img"));
    let bmap = check_record(&b["bmap"]);
    assert_eq!(bmap, image.with_extension("bmap"));
    let report_path = check_record(&b["report"]);
    let report: Value = serde_json::from_slice(&fs::read(&report_path).expect("the report"))
        .expect("the report is JSON");
    assert_eq!(b["contents"], report["outputs"], "{b:#}");
    assert_eq!(
        b["contents"]["disk"]["sha256"], b["image"]["sha256"],
        "{b:#}"
    );
    assert!(b.get("qcow2").is_none(), "{b:#}");
    let steps = b["steps"].as_array().expect("steps");
    assert!(!steps.is_empty(), "{b:#}");
    assert!(
        steps
            .iter()
            .all(|s| s["step"].is_string() && s["seconds"].is_f64()),
        "{b:#}"
    );
    assert!(b["seconds"].as_f64().is_some(), "{b:#}");
}

#[test]
fn bundle_and_inspect_json_match_the_bundle_file() {
    let fx = fixture();
    let b = &fx.bundle;
    let bundle = check_record(&b["bundle"]);
    assert_eq!(bundle, fx.dir.join("images").join("jsondemo-2.3.4.bundle"));
    assert_eq!(b["name"], "jsondemo", "{b:#}");
    assert_eq!(b["version"], "2.3.4", "{b:#}");
    assert_eq!(b["compatible"], "jsondemo", "{b:#}");
    let kinds: Vec<&str> = b["payloads"]
        .as_array()
        .expect("payloads")
        .iter()
        .map(|p| p["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["rootfs", "kernel", "initramfs"], "{b:#}");
    // The root payload is the build's root, byte for byte.
    assert_eq!(
        b["payloads"][0]["sha256"], fx.build["contents"]["root"]["sha256"],
        "{b:#}"
    );
    assert_eq!(
        b["payloads"][0]["size"], fx.build["contents"]["root"]["size"],
        "{b:#}"
    );

    let inspected = berth_json(&[
        "bundle".as_ref(),
        "inspect".as_ref(),
        bundle.as_os_str(),
        "--key".as_ref(),
        fx.key.with_extension("pub").as_os_str(),
        "--verify-payload".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(inspected["bundle"], b["bundle"], "{inspected:#}");
    assert_eq!(inspected["signature"], "verified", "{inspected:#}");
    assert_eq!(inspected["signature_key_id"], b["key_id"], "{inspected:#}");
    assert_eq!(
        inspected["manifest"]["payloads"], b["payloads"],
        "{inspected:#}"
    );
    assert!(inspected["error"].is_null(), "{inspected:#}");
    assert!(
        inspected["payloads"]
            .as_array()
            .expect("payloads")
            .iter()
            .all(|p| p["ok"] == true),
        "{inspected:#}"
    );
}

#[test]
fn publish_json_names_the_index_and_the_bundle_copy() {
    let fx = fixture();
    let repo = fx.dir.join("repo");
    let bundle = PathBuf::from(fx.bundle["bundle"]["path"].as_str().expect("path"));
    let p = berth_json(&[
        "publish".as_ref(),
        bundle.as_os_str(),
        "--repo".as_ref(),
        repo.as_os_str(),
        "--key".as_ref(),
        fx.key.with_extension("key").as_os_str(),
        "--json".as_ref(),
    ]);
    assert_eq!(check_record(&p["index"]), repo.join("stable.json"));
    assert_eq!(
        check_record(&p["signature"]),
        repo.join("stable.json.minisig")
    );
    assert_eq!(p["channel"], "stable", "{p:#}");
    let added = p["added"].as_array().expect("added");
    assert_eq!(added.len(), 1, "{p:#}");
    let entry = &added[0];
    assert_eq!(entry["version"], "2.3.4", "{p:#}");
    assert_eq!(entry["sha256"], fx.bundle["bundle"]["sha256"], "{p:#}");
    assert_eq!(entry["size"], fx.bundle["bundle"]["size"], "{p:#}");
    let copy = repo.join(entry["path"].as_str().expect("path"));
    check_record(&serde_json::json!({
        "path": copy, "size": entry["size"], "sha256": entry["sha256"]
    }));
    assert_eq!(p["entries"], p["added"], "{p:#}");
    assert!(p["expires"].as_u64() > p["generated"].as_u64(), "{p:#}");

    // Pausing says what changed and adds nothing.
    let paused = berth_json(&[
        "publish".as_ref(),
        "--repo".as_ref(),
        repo.as_os_str(),
        "--key".as_ref(),
        fx.key.with_extension("key").as_os_str(),
        "--pause".as_ref(),
        "2.3.4".as_ref(),
        "--json".as_ref(),
    ]);
    assert_eq!(paused["change"]["action"], "pause", "{paused:#}");
    assert_eq!(paused["change"]["version"], "2.3.4", "{paused:#}");
    assert_eq!(paused["added"], serde_json::json!([]), "{paused:#}");
    assert_eq!(paused["entries"][0]["paused"], true, "{paused:#}");
    check_record(&paused["index"]);
}

#[test]
fn cache_ls_json_lists_the_blobs_as_stored() {
    fixture();
    let cache = berth_json(&["cache".as_ref(), "ls".as_ref(), "--json".as_ref()]);
    let root = PathBuf::from(cache["root"].as_str().expect("root"));
    let blobs = cache["blobs"].as_array().expect("blobs");
    assert_eq!(cache["count"], blobs.len() as u64, "{cache}");
    assert!(!blobs.is_empty(), "the build left nothing in the cache");
    let total: u64 = blobs
        .iter()
        .map(|b| b["size"].as_u64().expect("size"))
        .sum();
    assert_eq!(cache["total_bytes"], total);
    // The smallest few blobs, hashed: the listing is what is stored.
    let mut small: Vec<&Value> = blobs.iter().collect();
    small.sort_by_key(|b| b["size"].as_u64());
    for blob in small.iter().take(5) {
        let sha = blob["sha256"].as_str().expect("sha256");
        let path = blob_path(&root, sha);
        check_record(&serde_json::json!({
            "path": path, "size": blob["size"], "sha256": sha
        }));
    }
}

fn blob_path(root: &Path, sha: &str) -> PathBuf {
    root.join("blobs").join("sha256").join(sha)
}

/// A byte count as indicatif shows it in a bar: `3.20 MiB/8.13 MiB`.
fn byte_bar() -> regex::Regex {
    regex::Regex::new(r"\d+(\.\d+)? [KMGT]?i?B/\d+(\.\d+)? [KMGT]?i?B").expect("valid regex")
}

#[test]
fn a_build_shows_byte_bars_on_a_terminal_and_plain_lines_off_it() {
    let fx = fixture();
    // Off a terminal (the fixture's build wrote to a pipe): step lines, no bar,
    // no terminal control sequences.
    assert!(
        fx.build_stderr.contains("==> squashfs root"),
        "{}",
        fx.build_stderr
    );
    assert!(!fx.build_stderr.contains('\x1b'), "{:?}", fx.build_stderr);
    assert!(
        !byte_bar().is_match(&fx.build_stderr),
        "{}",
        fx.build_stderr
    );

    // On a terminal: the squashfs and disk steps draw bars with bytes done of
    // the total, and the build still ends with its steps ticked off.
    let out = fx.dir.join("images-on-a-terminal");
    let terminal = berth_tests::pty::Terminal::open(24, 100);
    let mut program = terminal.spawn(
        Command::new(&binaries().berth)
            .arg("build")
            .arg(&fx.recipe)
            .arg("--out")
            .arg(&out),
    );
    let status = berth_tests::pty::wait_exit(&mut program, std::time::Duration::from_secs(600));
    let shown = terminal.shown();
    assert!(
        status.success(),
        "berth build on a terminal: {status}\n{shown}"
    );
    assert!(
        byte_bar().is_match(&shown),
        "no byte bar on the terminal:\n{shown:?}"
    );
    assert!(shown.contains("✓ squashfs root"), "{shown}");
    assert!(out.join("jsondemo-2.3.4.img").is_file());
}
