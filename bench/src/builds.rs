//! Build times: cold (a build cache holding only the downloaded packages) and warm
//! (the same build again, nothing changed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

/// Build times of one recipe, in seconds.
#[derive(Debug, Clone)]
pub struct Times {
    pub name: String,
    pub cold: Vec<f64>,
    pub warm: Vec<f64>,
}

/// The host's berth cache, as the builder finds it.
pub fn user_cache() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("BERTH_CACHE").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("berth"));
    }
    let home = std::env::var_os("HOME").context("no HOME")?;
    Ok(PathBuf::from(home).join(".cache").join("berth"))
}

/// Times `runs` cold and warm builds of each recipe, interleaved.
pub fn run(recipes: &[(String, PathBuf)], runs: usize) -> anyhow::Result<Vec<Times>> {
    let berth = &berth_tests::binaries().berth;
    let blobs = user_cache()?.join("blobs");
    anyhow::ensure!(
        blobs.is_dir(),
        "no downloaded packages in {}: build the recipes once first",
        blobs.display()
    );
    let mut all: Vec<Times> = recipes
        .iter()
        .map(|(name, _)| Times {
            name: name.clone(),
            cold: Vec::new(),
            warm: Vec::new(),
        })
        .collect();
    for i in 0..runs {
        for ((name, recipe), times) in recipes.iter().zip(all.iter_mut()) {
            let scratch = tempfile::Builder::new()
                .prefix("berth-bench-build-")
                .tempdir()?;
            let cache = scratch.path().join("cache");
            std::fs::create_dir_all(&cache)?;
            // Outside the timing: only the downloads survive into a cold build.
            copy_tree(&blobs, &cache.join("blobs"))?;
            let out = scratch.path().join("out");
            let cold = build(berth, recipe, &cache, &out)?;
            let warm = build(berth, recipe, &cache, &out)?;
            eprintln!(
                "berth-bench: build {name} {}: cold {cold:.1} s, warm {warm:.1} s",
                i + 1
            );
            times.cold.push(cold);
            times.warm.push(warm);
        }
    }
    Ok(all)
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let status = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .status()?;
    if !status.success() {
        bail!("copying {} to {}: {status}", from.display(), to.display());
    }
    Ok(())
}

fn build(berth: &Path, recipe: &Path, cache: &Path, out: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let output = Command::new(berth)
        .arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .env("BERTH_CACHE", cache)
        .current_dir(berth_tests::workspace_root())
        .output()?;
    let secs = start.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "berth build {} failed:\n{}",
            recipe.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(secs)
}
