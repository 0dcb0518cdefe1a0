//! Building what the tests run: the host CLI and the static device binaries once
//! per test process, and each recipe's image once (shared between test processes
//! under a file lock, rebuilt when the recipe or the binaries are newer).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

use fs4::FileExt;

/// The init's target triple.
pub const INIT_TARGET: &str = "x86_64-unknown-linux-musl";
/// The init's target triple in arm64 images.
pub const INIT_TARGET_ARM64: &str = "aarch64-unknown-linux-musl";

/// The workspace root (this crate's parent folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target folder: `CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Where the end-to-end tests keep their images and logs.
pub fn e2e_dir() -> PathBuf {
    target_dir().join("e2e")
}

/// The binaries the tests use.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The host CLI: `target/debug/berth`, or `target/release/berth` after
    /// [`prefer_release_cli`].
    pub berth: PathBuf,
    /// PID 1 of the images, `target/x86_64-unknown-linux-musl/release/berth-init`.
    pub init: PathBuf,
    /// The device agent of the images, `…/release/berth-update`.
    pub update_agent: PathBuf,
}

/// Whether [`binaries`] gives the release build of the host CLI.
static RELEASE_CLI: AtomicBool = AtomicBool::new(false);

/// Makes [`binaries`] give `target/release/berth`, the build users run, in
/// place of the debug one: for the benchmark's timings. Call it before the
/// first [`binaries`].
pub fn prefer_release_cli() {
    RELEASE_CLI.store(true, Ordering::Relaxed);
}

/// Builds the host CLI and the device binaries once per test process.
///
/// The tests run the debug build of the host CLI: `cargo test` builds it
/// anyway, and an image build's heavy lifting (compression, hashing, the
/// squashfs writer) is in dependencies, which the dev profile optimises, so
/// it builds images as fast as the release one. The release one, with its
/// whole-program optimisation for the small init, costs minutes to compile.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let profile = if RELEASE_CLI.load(Ordering::Relaxed) {
            cargo_build(&[
                "build",
                "--release",
                "-p",
                "berth-builder",
                "--bin",
                "berth",
            ]);
            "release"
        } else {
            // Cargo builds `berth` for the builder's integration tests. Asked
            // for them with the whole workspace selected, as the test command's
            // `cargo test --workspace` is, it resolves the same features and
            // finds that build fresh; `cargo build -p berth-builder` would
            // resolve others and build the dependencies again.
            cargo_build(&["test", "--workspace", "--no-run", "--test", "recipe_errors"]);
            "debug"
        };
        // The device binaries, static: berth-init and berth-update (the agent).
        build_device_binaries(INIT_TARGET);
        let target = target_dir();
        let binaries = Binaries {
            berth: target.join(profile).join("berth"),
            init: target.join(INIT_TARGET).join("release").join("berth-init"),
            update_agent: target
                .join(INIT_TARGET)
                .join("release")
                .join("berth-update"),
        };
        for path in [&binaries.berth, &binaries.init, &binaries.update_agent] {
            assert!(
                path.is_file(),
                "cargo build succeeded but {} is missing",
                path.display()
            );
        }
        binaries
    })
}

/// Cross-compiles the device binaries for arm64 images once per test process
/// (only the tests that build one pay for it) and returns them: berth-init and
/// berth-update in `target/aarch64-unknown-linux-musl/release`, where `berth
/// build` finds them for an `arch = "arm64"` recipe.
pub fn arm64_binaries() -> &'static [PathBuf; 2] {
    static BINARIES: OnceLock<[PathBuf; 2]> = OnceLock::new();
    BINARIES.get_or_init(|| {
        build_device_binaries(INIT_TARGET_ARM64);
        let release = target_dir().join(INIT_TARGET_ARM64).join("release");
        let binaries = [release.join("berth-init"), release.join("berth-update")];
        for path in &binaries {
            assert!(
                path.is_file(),
                "cargo build succeeded but {} is missing",
                path.display()
            );
        }
        binaries
    })
}

/// `cargo build --release -p berth-init -p berth-agent --target TARGET`.
fn build_device_binaries(target: &str) {
    cargo_build(&[
        "build",
        "--release",
        "-p",
        "berth-init",
        "-p",
        "berth-agent",
        "--target",
        target,
    ]);
}

fn cargo_build(args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|err| panic!("running {cargo:?} {}: {err}", args.join(" ")));
    assert!(
        output.status.success(),
        "{cargo:?} {} failed ({}):\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A path relative to the workspace root (`recipes/hello.toml`).
pub fn workspace_path(relative: impl AsRef<Path>) -> PathBuf {
    workspace_root().join(relative)
}

/// Builds the image of `recipe` (a path relative to the workspace root or
/// absolute) into `target/e2e/<recipe-stem>/` and returns the `NAME-VERSION.img`
/// path. An image newer than the recipe and both binaries is reused; a file lock
/// keeps concurrent test processes and threads from building the same one twice.
/// For a recipe with `arch = "arm64"`, the arm64 device binaries are built first
/// and are inputs too.
pub fn build_image(recipe: impl AsRef<Path>) -> PathBuf {
    let recipe = workspace_path(recipe);
    let binaries = binaries();
    let text = fs::read_to_string(&recipe)
        .unwrap_or_else(|err| panic!("reading the recipe {}: {err}", recipe.display()));
    let arm64 = text
        .lines()
        .any(|line| line.split('#').next().unwrap_or("").replace(' ', "") == "arch=\"arm64\"");
    let more_inputs: Vec<&Path> = if arm64 {
        arm64_binaries().iter().map(PathBuf::as_path).collect()
    } else {
        Vec::new()
    };
    let stem = recipe
        .file_stem()
        .unwrap_or_else(|| panic!("recipe path {} has no file name", recipe.display()))
        .to_string_lossy()
        .into_owned();
    let e2e = e2e_dir();
    fs::create_dir_all(&e2e).unwrap_or_else(|err| panic!("creating {}: {err}", e2e.display()));
    let lock_path = e2e.join(format!("{stem}.lock"));
    let lock = File::create(&lock_path)
        .unwrap_or_else(|err| panic!("creating the lock file {}: {err}", lock_path.display()));
    // fs4's trait method, not std's inherent `File::lock` (newer than the MSRV).
    FileExt::lock(&lock).unwrap_or_else(|err| panic!("locking {}: {err}", lock_path.display()));

    let out = e2e.join(&stem);
    let mut inputs = vec![
        recipe.as_path(),
        &binaries.berth,
        &binaries.init,
        &binaries.update_agent,
    ];
    inputs.extend(more_inputs);
    if let Some(image) = find_image(&out) {
        if is_newer_than_all(&image, &inputs) {
            return image;
        }
    }
    if out.exists() {
        fs::remove_dir_all(&out)
            .unwrap_or_else(|err| panic!("removing the old build {}: {err}", out.display()));
    }
    fs::create_dir_all(&out).unwrap_or_else(|err| panic!("creating {}: {err}", out.display()));
    let output = Command::new(&binaries.berth)
        .arg("build")
        .arg(&recipe)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err}", binaries.berth.display()));
    assert!(
        output.status.success(),
        "berth build {} failed ({}):\n{}{}",
        recipe.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let image = find_image(&out).unwrap_or_else(|| {
        panic!(
            "berth build {} succeeded but left no single *.img in {}",
            recipe.display(),
            out.display()
        )
    });
    drop(lock);
    image
}

/// The one `*.img` in `dir`, if there is exactly one.
fn find_image(dir: &Path) -> Option<PathBuf> {
    let mut images = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "img") && path.is_file());
    let image = images.next()?;
    images.next().is_none().then_some(image)
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn is_newer_than_all(output: &Path, inputs: &[&Path]) -> bool {
    let Some(built) = modified(output) else {
        return false;
    };
    inputs
        .iter()
        .all(|input| modified(input).is_some_and(|time| time < built))
}

/// Runs a standard tool and returns its stdout and stderr; fails the test when
/// it fails.
pub fn run_tool(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn finds_exactly_one_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(find_image(dir.path()), None);
        fs::write(dir.path().join("hello-1.0.0.img"), b"").expect("write");
        fs::write(dir.path().join("hello-1.0.0.img.q35.vars.fd"), b"").expect("write");
        fs::write(dir.path().join("hello-1.0.0.qcow2"), b"").expect("write");
        assert_eq!(
            find_image(dir.path()),
            Some(dir.path().join("hello-1.0.0.img"))
        );
        fs::write(dir.path().join("other-1.0.0.img"), b"").expect("write");
        assert_eq!(find_image(dir.path()), None);
    }

    #[test]
    fn freshness_needs_every_input_older() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        fs::write(&old, b"").expect("write");
        fs::write(&new, b"").expect("write");
        let earlier = SystemTime::now() - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(earlier))
            .expect("set mtime");
        assert!(is_newer_than_all(&new, &[&old]));
        assert!(!is_newer_than_all(&old, &[&new]));
        assert!(!is_newer_than_all(
            &new,
            &[&old, &dir.path().join("missing")]
        ));
    }
}
