//! `berth flash` against `dd` (the whole image, `conv=fsync`) and `bmaptool
//! copy` (with berth's block map) of the same image onto the same target file,
//! in the same run: time and bytes written. The three take turns, so the page
//! cache and the disk's state favour none of them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

/// One tool's runs on one image.
#[derive(Debug, Clone)]
pub struct FlashTimes {
    pub image: String,
    pub tool: &'static str,
    /// Wall-clock seconds of each run.
    pub seconds: Vec<f64>,
    /// Bytes the tool writes onto the target.
    pub written: u64,
}

const TOOLS: [&str; 3] = ["berth flash", "bmaptool copy", "dd conv=fsync"];

/// Flashes each image `runs` times with each tool onto a file in `target/`.
pub fn measure(images: &[PathBuf], runs: usize) -> anyhow::Result<Vec<FlashTimes>> {
    let berth = &berth_tests::binaries().berth;
    let scratch = tempfile::Builder::new()
        .prefix("berth-bench-flash-")
        .tempdir_in(berth_tests::target_dir())
        .context("a scratch folder under target/")?;
    let target = scratch.path().join("device.img");
    let mut out = Vec::new();
    for image in images {
        let size = std::fs::metadata(image)?.len();
        let bmap = std::fs::read_to_string(image.with_extension("bmap"))
            .with_context(|| format!("{}: no block map", image.display()))?;
        let mapped = mapped_bytes(&bmap)?;
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut times: Vec<FlashTimes> = TOOLS
            .iter()
            .map(|tool| FlashTimes {
                image: name.clone(),
                tool,
                seconds: Vec::new(),
                written: match *tool {
                    "dd conv=fsync" => size,
                    _ => mapped,
                },
            })
            .collect();
        for _ in 0..runs {
            for t in &mut times {
                let _ = std::fs::remove_file(&target);
                let mut cmd = match t.tool {
                    "berth flash" => {
                        let mut c = Command::new(berth);
                        c.arg("flash").arg(image).arg(&target).arg("--quiet");
                        c
                    }
                    "bmaptool copy" => {
                        let mut c = Command::new("bmaptool");
                        c.arg("-q").arg("copy").arg(image).arg(&target);
                        c
                    }
                    _ => {
                        let mut c = Command::new("dd");
                        c.arg(format!("if={}", image.display()))
                            .arg(format!("of={}", target.display()))
                            .args(["bs=4M", "conv=fsync", "status=none"]);
                        c
                    }
                };
                let started = Instant::now();
                let output = cmd
                    .output()
                    .with_context(|| format!("running {}", t.tool))?;
                let took = started.elapsed().as_secs_f64();
                if !output.status.success() {
                    bail!(
                        "{} of {} failed: {}",
                        t.tool,
                        image.display(),
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
                check_same(image, &target)?;
                t.seconds.push(took);
            }
        }
        out.extend(times);
    }
    Ok(out)
}

/// The mapped bytes a bmap lists (block size 4096).
fn mapped_bytes(bmap: &str) -> anyhow::Result<u64> {
    // The last one: the header comment names the element too.
    let count = bmap
        .rsplit("<MappedBlocksCount>")
        .next()
        .and_then(|rest| rest.split('<').next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .context("no MappedBlocksCount in the block map")?;
    Ok(count * 4096)
}

/// Every tool must have made the target the image, or its time means nothing.
fn check_same(image: &Path, target: &Path) -> anyhow::Result<()> {
    let hash = |p: &Path| -> anyhow::Result<String> {
        let output = Command::new("sha256sum").arg(p).output()?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string())
    };
    if hash(image)? != hash(target)? {
        bail!("{} is not a copy of {}", target.display(), image.display());
    }
    Ok(())
}

/// The table: median (min–max) seconds and bytes written per tool and image.
pub fn table(results: &[FlashTimes]) -> String {
    let mut s = String::from(
        "| image | tool | time, median (min–max) | written | vs berth flash |\n|---|---|---|---|---|\n",
    );
    let summary = |r: &FlashTimes| {
        crate::stats::Summary::of(&r.seconds).unwrap_or(crate::stats::Summary {
            median: 0.0,
            min: 0.0,
            max: 0.0,
            runs: 0,
        })
    };
    for r in results {
        let this = summary(r);
        let berth = results
            .iter()
            .find(|b| b.image == r.image && b.tool == "berth flash")
            .map_or(this.median, |b| summary(b).median);
        #[allow(clippy::cast_precision_loss)] // MiB for people
        let mib = r.written as f64 / (1024.0 * 1024.0);
        s.push_str(&format!(
            "| {} | {} | {} | {mib:.1} MiB | {:.2}× |\n",
            r.image,
            r.tool,
            this.show(2, " s"),
            this.median / berth
        ));
    }
    s
}

/// `berth-bench flash`: the hello and web images, `runs` times each.
pub fn run(runs: usize, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let images = [
        berth_tests::build_image("recipes/hello.toml"),
        berth_tests::build_image("recipes/web.toml"),
    ];
    let results = measure(&images, runs)?;
    let body = table(&results);
    print!("{body}");
    if let Some(out) = out {
        crate::report::write_section(
            out,
            "Flashing: berth flash, bmaptool copy and dd",
            &format!("berth-bench flash --runs {runs}"),
            &format!(
                "Onto the same file in `target/` (a file target: page-cache and fsync figures, not a USB stick's); berth flash includes its read-back check.\n\n{body}"
            ),
        )?;
    }
    Ok(())
}
