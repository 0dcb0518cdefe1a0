//! berth's benchmarks: boot breakdown, a Debian + systemd baseline, sizes, build
//! times, update throughput and the init's footprint, measured in one run and
//! written to `docs/benchmarks.md` with plots under `docs/bench/`.

pub mod arm64;
pub mod baseline;
pub mod boots;
pub mod builds;
pub mod delta;
pub mod flash;
pub mod fleet;
pub mod footprint;
pub mod packages;
pub mod registry_build;
pub mod report;
pub mod sizes;
pub mod stats;
pub mod svg;
pub mod timeline;
pub mod update;
pub mod verity_boot;
pub mod vmrun;

use std::path::{Path, PathBuf};

use anyhow::bail;
use berth_qemu::Accel;

use crate::vmrun::BootPath;

/// The accelerator every VM of the run uses (probed once).
pub fn accel() -> anyhow::Result<Accel> {
    Ok(berth_qemu::accel::detect(Path::new(
        berth_qemu::command::DEFAULT_QEMU,
    ))?)
}

/// What `all` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Boots of each image along each path (and of the baseline).
    pub boots: usize,
    /// Cold and warm builds of each recipe.
    pub builds: usize,
    /// Installs and dds.
    pub updates: usize,
    /// The report; plots go to `bench/` next to it.
    pub out: PathBuf,
    /// The CI smoke: direct boots only, one recipe built, and the baseline only
    /// when it is cached already (building it takes minutes).
    pub quick: bool,
    /// The command line, for the report.
    pub command: String,
}

/// Runs everything and writes the report.
pub fn all(opts: &Options) -> anyhow::Result<report::Results> {
    if opts.boots == 0 || opts.builds == 0 || opts.updates == 0 {
        bail!("--boots, --builds and --updates must be at least 1");
    }
    berth_tests::binaries();
    let accel = accel()?;
    let load_before = load();
    let recipes: Vec<(String, PathBuf)> = ["hello", "web"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                berth_tests::workspace_path(format!("recipes/{n}.toml")),
            )
        })
        .collect();
    let images: Vec<(String, PathBuf)> = recipes
        .iter()
        .map(|(n, r)| (n.clone(), berth_tests::build_image(r)))
        .collect();

    let mut sizes = Vec::new();
    for (name, image) in &images {
        sizes.push((name.clone(), sizes::measure(image)?));
    }

    let baseline = if opts.quick {
        baseline::cached().ok_or_else(|| {
            "--quick skips building the baseline; it was not cached (run without --quick once)"
                .to_string()
        })
    } else {
        baseline::get().map_err(|e| format!("{e:#}"))
    };
    if let Err(why) = &baseline {
        eprintln!("berth-bench: no baseline: {why}");
    }
    let baseline = match baseline {
        Ok(b) => Ok((b.clone(), baseline::boots(&b, opts.boots)?)),
        Err(why) => Err(why),
    };

    let targets: Vec<boots::Target> = images
        .iter()
        .map(|(n, i)| boots::Target {
            name: n.clone(),
            image: i.clone(),
            output: (n == "hello").then(|| baseline::OUTPUT.to_string()),
        })
        .collect();
    let paths: &[BootPath] = if opts.quick {
        &[BootPath::Direct]
    } else {
        &[BootPath::Direct, BootPath::Uefi]
    };
    let series = boots::run(&targets, paths, opts.boots)?;

    let update = update::run(opts.updates)?;

    let build_recipes = if opts.quick {
        recipes[..1].to_vec()
    } else {
        recipes.clone()
    };
    let builds = builds::run(&build_recipes, opts.builds)?;

    let results = report::Results {
        command: opts.command.clone(),
        date: date(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        accel: accel.as_str().to_uppercase(),
        qemu: qemu_version(),
        load: format!(
            "load average {load_before} at the start, {} at the end",
            load()
        ),
        boots: opts.boots,
        series,
        baseline,
        sizes,
        builds,
        update: Some(update),
    };
    results.write(&opts.out)?;
    Ok(results)
}

pub(crate) fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn qemu_version() -> String {
    std::process::Command::new(berth_qemu::command::DEFAULT_QEMU)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "QEMU (version unknown)".into())
}
