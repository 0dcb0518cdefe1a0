//! Release fixtures: the host CLI, release keys, signed bundles.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::{binaries, build_image, e2e_dir, run_tool};

/// Runs the host CLI (`berth ARGS`); panics with its output when it fails.
pub fn berth_cli(args: &[&std::ffi::OsStr]) -> String {
    let mut command = Command::new(&binaries().berth);
    command.args(args);
    run_tool(&mut command)
}

/// A release key pair `BASE.pub` + `BASE.key`, generated unless it exists.
pub fn release_key(base: &Path) {
    if !base.with_extension("key").exists() {
        berth_cli(&["key".as_ref(), "generate".as_ref(), base.as_os_str()]);
    }
}

/// Where a test file's update fixture lives, under `target/e2e/<name>/`: its
/// `recipes/` and `bundles/` folders and two release key pairs, `release` (the
/// images trust it) and `other` (they do not), made once.
#[derive(Debug)]
pub struct ReleaseWorkspace {
    pub dir: PathBuf,
    pub recipes: PathBuf,
    pub bundles: PathBuf,
    /// `keys/release` (`.pub`, `.key`).
    pub release: PathBuf,
    /// `keys/other`: a valid key the images do not trust.
    pub other: PathBuf,
}

impl ReleaseWorkspace {
    pub fn new(name: &str) -> ReleaseWorkspace {
        let dir = e2e_dir().join(name);
        let recipes = dir.join("recipes");
        let keys = dir.join("keys");
        let bundles = dir.join("bundles");
        for d in [&recipes, &keys, &bundles] {
            fs::create_dir_all(d).unwrap_or_else(|err| panic!("{}: {err}", d.display()));
        }
        let release = keys.join("release");
        let other = keys.join("other");
        release_key(&release);
        release_key(&other);
        ReleaseWorkspace {
            dir,
            recipes,
            bundles,
            release,
            other,
        }
    }

    /// Writes `recipes/<file_name>` (only when its text changed, so an image
    /// already built from it is reused) and builds its image.
    pub fn build(&self, file_name: &str, text: &str) -> PathBuf {
        let recipe = self.recipes.join(file_name);
        if fs::read_to_string(&recipe).ok().as_deref() != Some(text) {
            fs::write(&recipe, text).unwrap_or_else(|err| panic!("{}: {err}", recipe.display()));
        }
        build_image(&recipe)
    }
}

/// `berth bundle IMAGE --key KEY_BASE.key --out OUT`; returns `out`.
pub fn make_bundle(image: &Path, key_base: &Path, out: PathBuf) -> PathBuf {
    berth_cli(&[
        "bundle".as_ref(),
        image.as_os_str(),
        "--key".as_ref(),
        key_base.with_extension("key").as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    out
}
