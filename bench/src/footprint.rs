//! berth-init's binary size and its resident memory (VmRSS of PID 1, read
//! through the debug shell) while it supervises three containers.

use std::time::Duration;

use anyhow::Context;
use berth_tests::{boot, build_image, literal, BootOptions, BOOT_TIMEOUT};
use regex::Regex;

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

/// Runs the benchmark and prints its figures.
pub fn run(settle: u64) -> anyhow::Result<()> {
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
