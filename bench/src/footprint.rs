//! berth-init's binary size and its resident memory (VmRSS of PID 1, read
//! through the debug shell) while it supervises three containers; and the
//! update agent's, idle between checks of a real repository (served on
//! loopback, holding this very image's bundle, so every check finds it up to
//! date).

use std::time::Duration;

use anyhow::Context;
use berth_tests::{
    boot, build_image, literal, make_bundle, release_key, write_esp_file, BootOptions, FileServer,
    BOOT_TIMEOUT,
};
use regex::Regex;

/// Three busybox containers (one with an exec health check, one with a
/// memory limit), DHCP, the debug shell to read /proc/1/status.
const FOOTPRINT_RECIPE: &str = r#"
[image]
name = "bench-footprint"
version = "1.0.0"

[debug]
console_shell = true

[update]
keys = ["release.pub"]
interval = "10s"

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
    // A fixed folder: the image is rebuilt only when the recipe or the
    // binaries change (the key is made once).
    let dir = berth_tests::e2e_dir().join("bench-footprint-inputs");
    std::fs::create_dir_all(&dir)?;
    release_key(&dir.join("release"));
    let recipe = dir.join("bench-footprint.toml");
    if std::fs::read_to_string(&recipe).ok().as_deref() != Some(FOOTPRINT_RECIPE) {
        std::fs::write(&recipe, FOOTPRINT_RECIPE)?;
    }
    let built = build_image(&recipe);
    // The repository: this image's own bundle, published; served on loopback.
    let repo = dir.join("repo");
    let _ = std::fs::remove_dir_all(&repo);
    let bundle = make_bundle(&built, &dir.join("release"), dir.join("self.bundle"));
    berth_tests::berth_cli(&[
        "publish".as_ref(),
        bundle.as_os_str(),
        "--repo".as_ref(),
        repo.as_os_str(),
        "--key".as_ref(),
        dir.join("release.key").as_os_str(),
    ]);
    let server = FileServer::start(&repo);
    // A device of its own: a copy with the repository provisioned.
    let image = dir.join("device.img");
    std::fs::copy(&built, &image)?;
    write_esp_file(
        &image,
        "berth/provision.toml",
        &format!(
            "[update]\nrepository = \"{}\"\n",
            server.guest_url("").trim_end_matches('/')
        ),
    );
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
    let field = memory_fields(&mut vm, "1")?;
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
    // The agent, idle: wait for a check that found nothing to do, then read
    // its status while it sleeps until the next.
    vm.expect(
        &literal("[berth-update] up to date: channel stable"),
        BOOT_TIMEOUT,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    vm.expect(&literal("[berth-update] next check in"), BOOT_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let agent_field = memory_fields(&mut vm, "$(pidof berth-update)")?;
    let agent = &berth_tests::binaries().update_agent;
    let agent_size = std::fs::metadata(agent)?.len();
    println!(
        "| berth-update static binary ({}) | {:.2} MB ({agent_size} bytes) | |",
        agent.display(),
        agent_size as f64 / 1e6
    );
    let agent_rss = agent_field("VmRSS").context("no VmRSS for berth-update")?;
    println!(
        "| VmRSS of the update agent, idle between checks | {:.2} MB ({agent_rss} kB) | ≤ 2 MB |",
        agent_rss as f64 / 1024.0
    );
    for name in ["VmHWM", "RssAnon", "RssFile"] {
        if let Some(kb) = agent_field(name) {
            println!("| agent {name} | {kb} kB | |");
        }
    }
    vm.powerdown().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The memory fields (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`, in kB) of the
/// process `pid` (a number or a shell expression), read through the debug
/// shell; returns a lookup by name.
fn memory_fields(
    vm: &mut berth_tests::TestVm,
    pid: &str,
) -> anyhow::Result<impl Fn(&str) -> Option<u64>> {
    vm.send_line(&format!(
        "grep -E '^(VmRSS|VmHWM|RssAnon|RssFile):' /proc/{pid}/status | tr -s ' \\t' ' ' | tr '\\n' ' '; echo @@end"
    ))?;
    let line = vm
        .expect(&Regex::new(r"VmRSS: \d+ kB.*@@end")?, BOOT_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(move |name: &str| -> Option<u64> {
        let re = Regex::new(&format!(r"{name}: (\d+) kB")).ok()?;
        re.captures(&line)?[1].parse().ok()
    })
}
