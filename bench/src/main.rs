//! `berth-bench`: berth's benchmarks.
//!
//! `cargo run --release -p berth-bench -- all` runs everything and writes
//! `docs/benchmarks.md` and the plots under `docs/bench/`;
//! `cargo run --release -p berth-bench -- verity-boot --boots 5`: boot time of the
//! hello image with and without dm-verity;
//! `cargo run --release -p berth-bench -- registry-build`: cold and warm build
//! of a recipe whose ~50 MB image comes from a registry on loopback;
//! `cargo run --release -p berth-bench -- footprint`: berth-init's size and RSS
//! supervising three containers;
//! `cargo run --release -p berth-bench -- fleet`: the repository's load from
//! 100,000 devices booting at once, simulated with the agent's schedule;
//! `cargo run --release -p berth-bench -- packages --out docs/bench/packages.md`:
//! cold and warm builds and root sizes of nginx and postgresql from Debian's
//! packages against hello.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "berth-bench", about = "berth's benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Everything: boot breakdown, Debian baseline, sizes, builds, update, init
    /// footprint; writes the report and its plots.
    All {
        /// Boots of each image along each path, and of the baseline.
        #[arg(long, default_value_t = 5)]
        boots: usize,
        /// Cold and warm builds of each recipe.
        #[arg(long, default_value_t = 3)]
        builds: usize,
        /// Installs (and as many dds) in the update benchmark.
        #[arg(long, default_value_t = 3)]
        updates: usize,
        /// The report; plots go to `bench/` next to it.
        #[arg(long, default_value = "docs/benchmarks.md")]
        out: PathBuf,
        /// Smoke run: direct boots only, one recipe built, baseline only if cached.
        #[arg(long)]
        quick: bool,
    },
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
    /// Update install throughput against dd onto the same slot (part of `all`);
    /// prints where the first install's time went.
    Update {
        /// Installs (and as many dds).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The update repository's load from a fleet whose devices all boot at once
    /// (the agent's own schedule, simulated), and a device's idle check cost.
    Fleet {
        /// Devices simulated.
        #[arg(long, default_value_t = 100_000)]
        devices: usize,
    },
    /// `berth flash` against dd (whole image, conv=fsync) and `bmaptool copy`
    /// of the hello and web images onto the same file: time and bytes written.
    Flash {
        /// Runs of each tool on each image.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also write the table as a section that `all` includes in its
        /// report (docs/bench/flash.md).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The hello image for arm64 beside x86_64: boot breakdown along both
    /// paths (same run, interleaved) and sizes.
    Arm64 {
        /// Boots of each image along each path.
        #[arg(long, default_value_t = 3)]
        boots: usize,
        /// Also write the tables as a section that `all` includes in its
        /// report (docs/bench/arm64.md).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Containers from Debian's packages (nginx-light, postgresql-15, installed
    /// by mmdebstrap) against hello: cold and warm build time, root size.
    Packages {
        /// Cold and warm builds of each recipe.
        #[arg(long, default_value_t = 1)]
        builds: usize,
        /// Also write the table as a section that `all` includes in its
        /// report (docs/bench/packages.md).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Bytes a delta update fetches against the full bundle, what chunks cost
    /// the repository, and a delta install's time against the full one's in a
    /// VM.
    Delta {
        /// Updates of each kind (delta, full bundle) timed in one VM; 0 skips
        /// the VM.
        #[arg(long, default_value_t = 3)]
        installs: usize,
        /// Also write the section of the report (docs/bench/delta.md) and its
        /// plot (docs/bench/delta.svg).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// berth-init's static binary size and its RSS supervising three containers.
    Footprint {
        /// Seconds to let the system settle after the containers started.
        #[arg(long, default_value_t = 10)]
        settle: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Build and flash times are of the CLI users run, its release build. The
    // other benchmarks time VMs or count bytes, and an image is the same bytes
    // whichever build of the CLI made it: they take the debug CLI the tests
    // build anyway, as the CI smoke (`all --quick`) does.
    let times_the_cli = match &cli.bench {
        Bench::All { quick, .. } => !quick,
        Bench::RegistryBuild | Bench::Flash { .. } | Bench::Packages { .. } => true,
        Bench::VerityBoot { .. }
        | Bench::Update { .. }
        | Bench::Fleet { .. }
        | Bench::Arm64 { .. }
        | Bench::Delta { .. }
        | Bench::Footprint { .. } => false,
    };
    if times_the_cli {
        berth_tests::prefer_release_cli();
    }
    match cli.bench {
        Bench::All {
            boots,
            builds,
            updates,
            out,
            quick,
        } => {
            let command = format!(
                "berth-bench all --boots {boots} --builds {builds} --updates {updates}{}",
                if quick { " --quick" } else { "" }
            );
            let results = berth_bench::all(&berth_bench::Options {
                boots,
                builds,
                updates,
                out: out.clone(),
                quick,
                command,
            })?;
            println!("{}", results.headline());
            println!(
                "written: {} and {}",
                out.display(),
                out.with_file_name("bench").display()
            );
            Ok(())
        }
        Bench::VerityBoot { boots, uefi } => berth_bench::verity_boot::run(boots, uefi),
        Bench::RegistryBuild => berth_bench::registry_build::run(),
        Bench::Update { runs } => {
            let u = berth_bench::update::run(runs)?;
            println!("{u:#?}");
            Ok(())
        }
        Bench::Delta { installs, out } => {
            let results = berth_bench::delta::run(installs)?;
            if let Some(out) = out {
                berth_bench::delta::write(&results, &out)?;
            }
            Ok(())
        }
        Bench::Footprint { settle } => berth_bench::footprint::run(settle),
        Bench::Fleet { devices } => berth_bench::fleet::run(devices),
        Bench::Flash { runs, out } => berth_bench::flash::run(runs, out.as_deref()),
        Bench::Arm64 { boots, out } => berth_bench::arm64::run(boots, out.as_deref()),
        Bench::Packages { builds, out } => {
            berth_bench::packages::run(builds, out.as_deref()).map(drop)
        }
    }
}
