//! `verity-boot`: boot time of the hello image with and without dm-verity, boots
//! interleaved so both see the same machine load.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_tests::{boot, build_image, literal, BootOptions, BOOT_TIMEOUT};
use regex::Regex;

/// One boot's figures.
#[derive(Debug, Clone, Copy)]
struct Boot {
    /// QEMU start → the container's line on the console.
    to_container: Duration,
    /// The init's own verification time, when it printed one.
    verify_ms: Option<f64>,
}

fn recipe(dir: &Path, verity: bool) -> anyhow::Result<PathBuf> {
    let hello = std::fs::read_to_string(berth_tests::workspace_path("recipes/hello.toml"))?;
    let name = if verity {
        "bench-verity"
    } else {
        "bench-noverity"
    };
    // The first `name` is the image's: [image] comes first in the recipe.
    let text = hello.replacen(
        "name = \"hello\"\n",
        &format!("name = \"{name}\"\nverity = {verity}\n"),
        1,
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

fn boot_once(image: &Path, uefi: bool, name: &str) -> anyhow::Result<Boot> {
    let start = Instant::now();
    let vm = boot(
        image,
        BootOptions {
            direct: !uefi,
            log_name: Some(name.to_string()),
            ..BootOptions::default()
        },
    );
    let verified = Regex::new(r"berth-init: verified root \(\d+ blocks\) in ([0-9.]+) ms")?;
    let hello = literal("[hello] Hello from berth!");
    let mut verify_ms = None;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        match vm.poll_any(&[&verified, &hello], deadline) {
            Ok(Some((0, line))) => {
                verify_ms = verified
                    .captures(&line)
                    .and_then(|c| c[1].parse::<f64>().ok());
            }
            Ok(Some((_, _))) => break,
            Ok(None) => bail!("{}: no hello within {:?}", image.display(), BOOT_TIMEOUT),
            Err(e) => bail!("{}: {e}", image.display()),
        }
    }
    Ok(Boot {
        to_container: start.elapsed(),
        verify_ms,
    })
}

fn stats(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = if values.len() % 2 == 1 {
        values[values.len() / 2]
    } else {
        (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
    };
    (median, values[0], values[values.len() - 1])
}

pub fn run(boots: usize, uefi: bool) -> anyhow::Result<()> {
    if boots == 0 {
        bail!("--boots must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let with = build_image(recipe(dir.path(), true)?);
    let without = build_image(recipe(dir.path(), false)?);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..boots {
        // Interleaved, so drift in the machine's load hits both alike.
        a.push(boot_once(&with, uefi, "bench-verity").with_context(|| format!("boot {i}"))?);
        b.push(boot_once(&without, uefi, "bench-noverity").with_context(|| format!("boot {i}"))?);
    }
    let accel = berth_qemu::accel::detect(Path::new(berth_qemu::command::DEFAULT_QEMU))?;
    println!(
        "verity-boot: {boots} boots each, {} path, accelerator {accel}, {} cores",
        if uefi {
            "UEFI (OVMF + systemd-boot)"
        } else {
            "direct (-kernel/-initrd)"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| image | QEMU start → container output, median (min–max) | init's verification, median (min–max) |");
    println!("|---|---|---|");
    for (label, runs) in [("verity", &a), ("no verity (baseline)", &b)] {
        let (m, lo, hi) = stats(runs.iter().map(|r| r.to_container.as_secs_f64()).collect());
        let verify: Vec<f64> = runs.iter().filter_map(|r| r.verify_ms).collect();
        let v = if verify.is_empty() {
            "—".to_string()
        } else {
            let (m, lo, hi) = stats(verify);
            format!("{m:.1} ms ({lo:.1}–{hi:.1})")
        };
        println!("| {label} | {m:.2} s ({lo:.2}–{hi:.2}) | {v} |");
    }
    let (ma, _, _) = stats(a.iter().map(|r| r.to_container.as_secs_f64()).collect());
    let (mb, _, _) = stats(b.iter().map(|r| r.to_container.as_secs_f64()).collect());
    println!(
        "verity costs {:+.2} s at the median ({:+.1} %)",
        ma - mb,
        (ma / mb - 1.0) * 100.0
    );
    Ok(())
}
