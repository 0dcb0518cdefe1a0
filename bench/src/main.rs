//! `berth-bench`: benchmarks that print their figures and compare against a
//! baseline run in the same invocation.
//!
//! `cargo run --release -p berth-bench -- verity-boot --boots 5`: boot time of the
//! hello image with and without dm-verity, boots interleaved so both see the same
//! machine load.
//!
//! `cargo run --release -p berth-bench -- footprint`: berth-init's binary size
//! and its resident memory (VmRSS of PID 1, read through the debug shell) while
//! it supervises three containers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_tests::{boot, build_image, literal, BootOptions, BOOT_TIMEOUT};
use clap::{Parser, Subcommand};
use regex::Regex;

#[derive(Debug, Parser)]
#[command(name = "berth-bench", about = "berth's benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Boot time to the first container's output, with and without dm-verity.
    VerityBoot {
        /// Boots of each image.
        #[arg(long, default_value_t = 5)]
        boots: usize,
        /// Boot through OVMF and systemd-boot instead of -kernel/-initrd.
        #[arg(long)]
        uefi: bool,
    },
    /// berth-init's static binary size and its RSS supervising three containers.
    Footprint {
        /// Seconds to let the system settle after the containers started.
        #[arg(long, default_value_t = 10)]
        settle: u64,
    },
}

/// One boot's figures.
#[derive(Debug, Clone, Copy)]
struct Boot {
    /// QEMU start → the container's line on the console.
    to_container: Duration,
    /// The init's own verification time, when it printed one.
    verify_ms: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::VerityBoot { boots, uefi } => verity_boot(boots, uefi),
        Bench::Footprint { settle } => footprint(settle),
    }
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

fn verity_boot(boots: usize, uefi: bool) -> anyhow::Result<()> {
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

/// Three busybox containers (one with an exec health check, one with a
/// memory limit), DHCP, the debug shell to read /proc/1/status.
const FOOTPRINT_RECIPE: &str = r#"
[image]
name = "bench-footprint"
version = "1.0.0"

[debug]
console_shell = true

[[container]]
name = "one"
packages = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", "echo one up; exec /bin/busybox sleep 100000"]
restart = "always"

[[container]]
name = "two"
packages = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", "echo two up; exec /bin/busybox sleep 100000"]
restart = "always"
health = { exec = ["/bin/busybox", "true"], interval = "2s" }

[[container]]
name = "three"
packages = ["busybox-static"]
command = ["/bin/busybox", "sh", "-c", "echo three up; exec /bin/busybox sleep 100000"]
restart = "always"
memory = "32M"
"#;

fn footprint(settle: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let recipe = dir.path().join("bench-footprint.toml");
    std::fs::write(&recipe, FOOTPRINT_RECIPE)?;
    let image = build_image(&recipe);
    let init = &berth_tests::binaries().init;
    let size = std::fs::metadata(init)
        .with_context(|| init.display().to_string())?
        .len();
    let mut vm = boot(
        &image,
        BootOptions {
            direct: true,
            log_name: Some("bench-footprint".into()),
            ..BootOptions::default()
        },
    );
    // In whatever order the containers print.
    let wanted = [
        literal("[one] one up"),
        literal("[two] two up"),
        literal("[three] three up"),
        literal("berth-init: container two is healthy"),
    ];
    let mut seen = [false; 4];
    while !seen.iter().all(|&s| s) {
        let patterns: Vec<&Regex> = wanted.iter().collect();
        let (index, _) = vm
            .expect_any(&patterns, BOOT_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        seen[index] = true;
    }
    std::thread::sleep(Duration::from_secs(settle));
    vm.send_line("grep -E '^(VmRSS|VmHWM|RssAnon|RssFile):' /proc/1/status | tr -s ' \\t' ' ' | tr '\\n' ' '; echo @@end")?;
    let line = vm
        .expect(&Regex::new(r"VmRSS: \d+ kB.*@@end")?, BOOT_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let field = |name: &str| -> Option<u64> {
        let re = Regex::new(&format!(r"{name}: (\d+) kB")).ok()?;
        re.captures(&line)?[1].parse().ok()
    };
    let rss = field("VmRSS").context("no VmRSS")?;
    println!("footprint: berth-init supervising 3 containers (direct boot, {settle} s after they started)");
    println!("| figure | value | goal |");
    println!("|---|---|---|");
    println!(
        "| static binary, stripped ({}) | {:.2} MB ({size} bytes) | ≤ 1.5 MB |",
        init.display(),
        size as f64 / 1e6
    );
    println!(
        "| VmRSS of PID 1 | {:.2} MB ({rss} kB) | ≤ 2 MB |",
        rss as f64 / 1024.0
    );
    for name in ["VmHWM", "RssAnon", "RssFile"] {
        if let Some(kb) = field(name) {
            println!("| {name} | {kb} kB | |");
        }
    }
    vm.powerdown().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
