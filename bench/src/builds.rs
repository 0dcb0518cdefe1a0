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
    /// The builder's own step times of the warm builds (`    step: 1.2 s` on
    /// its stderr), in the order it ran them.
    pub warm_steps: Vec<(String, Vec<f64>)>,
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
            warm_steps: Vec::new(),
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
            let (cold, _) = build(berth, recipe, &cache, &out)?;
            let (warm, steps) = build(berth, recipe, &cache, &out)?;
            for (step, secs) in steps {
                match times.warm_steps.iter_mut().find(|(s, _)| *s == step) {
                    Some((_, all)) => all.push(secs),
                    None => times.warm_steps.push((step, vec![secs])),
                }
            }
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

/// One build: its wall time and the builder's step times.
fn build(
    berth: &Path,
    recipe: &Path,
    cache: &Path,
    out: &Path,
) -> anyhow::Result<(f64, Vec<(String, f64)>)> {
    let start = Instant::now();
    let output = Command::new(berth)
        .arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
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
    Ok((secs, steps(&String::from_utf8_lossy(&output.stderr))))
}

/// The builder's step times from its plain (not a terminal) progress output:
/// `    root filesystem tree: 5.3 s`.
fn steps(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .filter_map(|line| {
            let line = line.strip_prefix("    ")?;
            let (name, took) = line.rsplit_once(": ")?;
            Some((name.to_string(), took.strip_suffix(" s")?.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_builders_step_times() {
        let err = "==> recipe\n    recipe: 0.0 s\n==> root filesystem tree\n    root filesystem tree: 5.3 s\nregistries: 0 requests, 0 B fetched\n    note: not a time\n";
        assert_eq!(
            super::steps(err),
            vec![
                ("recipe".to_string(), 0.0),
                ("root filesystem tree".to_string(), 5.3)
            ]
        );
    }
}
