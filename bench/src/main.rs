//! `berth-bench`: benchmarks that print their figures and compare against a
//! baseline run in the same invocation.
//!
//! `cargo run --release -p berth-bench -- verity-boot --boots 5`: boot time of the
//! hello image with and without dm-verity, boots interleaved so both see the same
//! machine load.
//!
//! `cargo run --release -p berth-bench -- registry-build`: cold and warm build
//! time of a recipe whose image (about 50 MB of layers, made from Debian
//! packages) comes from a registry on loopback; the registry's own access log
//! counts the bytes each build fetched.
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
    /// Cold and warm build time of a recipe with a ~50 MB image pulled from a
    /// registry on loopback (Debian's docker-registry, started here).
    RegistryBuild,
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
        Bench::RegistryBuild => registry_build(),
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

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One timed `berth build`; returns the time, berth's own "registries:" line and
/// what the registry served (blob requests, bytes) during it.
fn timed_build(
    registry: &berth_tests::images::TestRegistry,
    recipe: &Path,
    out: &Path,
) -> anyhow::Result<(Duration, String, usize, u64)> {
    let served_before = registry.blob_requests();
    let start = Instant::now();
    let output = std::process::Command::new(&berth_tests::binaries().berth)
        .arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .output()?;
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!("berth build {} failed:\n{stderr}", recipe.display());
    }
    for l in stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("fetched"))
    {
        println!("    berth: {}", l.trim());
    }
    for l in stderr
        .lines()
        .filter(|l| l.starts_with("    ") && l.ends_with(" s") && !l.contains("fetched"))
    {
        println!("    berth: {}", l.trim());
    }
    let line = stderr
        .lines()
        .find(|l| l.starts_with("registries:"))
        .unwrap_or("(no registries line)")
        .to_string();
    let served = registry.blob_requests();
    let new = &served[served_before.len()..];
    Ok((
        took,
        line,
        new.len(),
        new.iter().map(|(_, _, bytes)| bytes).sum(),
    ))
}

fn registry_build() -> anyhow::Result<()> {
    use berth_tests::images::{
        busybox_layer, debian_package_tar, default_cache, nonce, write_layout, Compression,
        ImageSpec, TestRegistry,
    };
    let dir = tempfile::tempdir()?;
    // Layers from Debian packages, one per compression berth reads.
    let nonce = nonce();
    let layers = vec![
        (
            busybox_layer(&[("etc/bench-nonce", nonce.as_bytes(), 0o644)]),
            Compression::Gzip,
        ),
        (debian_package_tar("libicu72"), Compression::None),
        (debian_package_tar("libclang-cpp15"), Compression::Gzip),
        (debian_package_tar("perl-modules-5.36"), Compression::Gzip),
        (debian_package_tar("libperl5.36"), Compression::Zstd),
    ];
    let unpacked: u64 = layers.iter().map(|(t, _)| t.len() as u64).sum();
    let spec = ImageSpec {
        layers,
        config: serde_json::json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hello"],
        }),
    };
    let layout = write_layout(&dir.path().join("layout"), &spec, "1.0");
    let registry = TestRegistry::start();
    let host = registry.host();
    let digest = registry.push(&layout.dir, "1.0", "bench/big:1.0");
    // The manifest as the registry has it: skopeo gzips uncompressed layers on
    // the way in, so its layers are not all the layout's.
    let raw = berth_tests::run_tool(
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/bench/big:1.0")),
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw)?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let pushed: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
    let mut blobs: Vec<String> = layers
        .iter()
        .filter_map(|l| l["digest"].as_str().map(str::to_string))
        .collect();
    blobs.extend(manifest["config"]["digest"].as_str().map(str::to_string));
    blobs.push(digest);
    // Cold: none of the image's blobs in the cache (the Debian packages of the
    // image itself, kernel and crun, stay cached: they do not come from the
    // registry).
    let cache = default_cache();
    for digest in &blobs {
        let _ = std::fs::remove_file(
            cache
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        );
    }
    // Built before the clock starts.
    berth_tests::binaries();
    let recipe = dir.path().join("bench-registry.toml");
    std::fs::write(
        &recipe,
        format!(
            "[image]\nname = \"bench-registry\"\nversion = \"1.0.0\"\n\n\
             [registry.\"{host}\"]\ninsecure = true\n\n\
             [[container]]\nname = \"big\"\nimage = \"{host}/bench/big:1.0\"\n"
        ),
    )?;
    let out = dir.path().join("out");
    let (cold, cold_line, cold_requests, cold_bytes) = timed_build(&registry, &recipe, &out)?;
    let (warm, warm_line, warm_requests, warm_bytes) = timed_build(&registry, &recipe, &out)?;
    let accel = berth_qemu::accel::detect(Path::new(berth_qemu::command::DEFAULT_QEMU))?;
    println!(
        "registry-build: image of {} layers from Debian packages, {:.1} MiB in the registry ({:.1} MiB unpacked), registry on loopback; {} cores, accelerator {accel}",
        layers.len(),
        mib(pushed),
        mib(unpacked),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "  cold build: {:.1} s; the registry served {cold_requests} blob requests, {:.1} MiB; berth says \"{cold_line}\"",
        cold.as_secs_f64(),
        mib(cold_bytes)
    );
    println!(
        "  warm build: {:.1} s; the registry served {warm_requests} blob requests, {:.1} MiB; berth says \"{warm_line}\"",
        warm.as_secs_f64(),
        mib(warm_bytes)
    );
    if warm_requests != 0 || warm_bytes != 0 || !warm_line.contains("0 requests") {
        bail!("the warm build fetched something");
    }
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
