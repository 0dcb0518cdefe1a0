//! `berth`: the host CLI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use berth_builder::build::{build, BuildOptions};
use berth_builder::flash;
use berth_builder::output;
use berth_builder::progress::{Progress, Verbosity};
use berth_builder::release::bundle::{self, BundleOptions, Inspection, PayloadCheck};
use berth_builder::release::keys::{self, Overwrite};
use berth_builder::release::publish::{self, PublishOptions};
use berth_builder::reproducible::{self, Reproducibility};
use berth_builder::sources::cache::Cache;
use berth_builder::sources::lock::LockMode;
use berth_bundle::channel::ChannelName;
use berth_bundle::TrustedKeys;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Build, run and update minimal container OS images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a bootable disk image from a recipe.
    Build {
        /// Output folder.
        #[arg(long, default_value = "images")]
        out: PathBuf,
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Build twice, in two temporary folders under --out with different
        /// umasks, and compare the image, kernel, initramfs and root: exit 1 and
        /// name what differs unless every byte is the same. Keeps no image.
        #[arg(long)]
        check_reproducible: bool,
        /// Also write a qcow2 copy of the image (NAME-VERSION.qcow2).
        #[arg(long)]
        qcow2: bool,
        /// Resolve every image tag and package afresh and fail, naming what
        /// changed, if RECIPE.lock would change (for CI).
        #[arg(long)]
        locked: bool,
        /// Print what was built as one JSON document on stdout (files with
        /// size and sha256, versions, step times); messages stay on stderr.
        /// With --check-reproducible: both builds' hashes and the verdict.
        #[arg(long)]
        json: bool,
    },
    /// Resolve and fetch a recipe's images and packages and write RECIPE.lock
    /// (no image is built).
    // The shared arguments' help speaks of building; locking puts no image
    // anywhere, so it says why it needs the binaries instead.
    #[command(
        mut_arg("init", |a| a.help("The berth-init binary (default: next to berth)")),
        mut_arg("update_agent", |a| a.help(
            "The berth-update binary (default: next to berth); locking assembles the root tree, which holds it"
        )),
    )]
    Lock {
        /// With --update: only the images of these containers and these
        /// packages (default: everything).
        #[arg(requires = "update", index = 2)]
        names: Vec<String>,
        /// Resolve afresh (tags from the registry, candidates from apt) instead
        /// of keeping what the lock pins.
        #[arg(long)]
        update: bool,
        #[command(flatten)]
        recipe: RecipeArgs,
    },
    /// The download cache shared by all builds.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
        /// The cache (default: $BERTH_CACHE, $XDG_CACHE_HOME/berth or ~/.cache/berth).
        #[arg(long, global = true)]
        cache: Option<PathBuf>,
    },
    /// Boot an image in QEMU with its serial console on stdout.
    ///
    /// UEFI firmware (OVMF) and systemd-boot by default; KVM when it works here,
    /// else software emulation (TCG).
    Run {
        /// The disk image (raw or qcow2).
        image: PathBuf,
        /// Forward a TCP port: HOST:GUEST (on 127.0.0.1; repeatable).
        #[arg(long = "port", value_name = "HOST:GUEST")]
        ports: Vec<berth_qemu::PortForward>,
        /// Do not write to the image: changes are dropped when QEMU exits.
        #[arg(long)]
        snapshot: bool,
        /// Exit 0 as soon as a console line matches this regular expression
        /// (and stop the VM); exit 1 with the console's tail on timeout.
        #[arg(long, value_name = "REGEX")]
        expect: Option<regex::Regex>,
        /// Seconds to wait for --expect (default 300); without --expect, stop
        /// the VM after this long.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Boot the slot's kernel and initramfs directly (-kernel/-initrd),
        /// skipping the firmware and boot loader: about 4 s faster under TCG,
        /// but it does not test the boot loader or boot counting.
        #[arg(long)]
        direct: bool,
        /// Memory in MiB.
        #[arg(long, default_value_t = 512)]
        memory: u32,
        /// How the disk is attached: virtio (default), or as real hardware
        /// has it: nvme, sata (AHCI) or usb (mass storage on xHCI). The
        /// default cloud kernel drives virtio only: the others need
        /// `[kernel] package = "linux-image-amd64"` (or -arm64).
        #[arg(long, value_name = "BUS", default_value = "virtio")]
        disk_bus: berth_qemu::DiskBus,
        /// Add an Intel 6300ESB hardware watchdog (the init arms it).
        #[arg(long)]
        watchdog: bool,
        /// Also append the console to this file.
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Write an image onto a disk (or into a file): only its mapped blocks
    /// (from IMAGE.bmap), then read back and checked.
    ///
    /// Refuses, before writing anything: a mounted or otherwise used disk, the
    /// host's own disk, a partition, a disk smaller than the image, anything
    /// but a block device or a regular file. Exit 3 when refused.
    Flash {
        /// The built raw image (images/NAME-VERSION.img).
        image: PathBuf,
        /// A whole disk (/dev/sdX, /dev/mmcblkN) or a file (made the image's size).
        target: PathBuf,
        /// The block map (default: IMAGE.bmap next to the image; without one,
        /// the image's holes are mapped here).
        #[arg(long, value_name = "FILE")]
        bmap: Option<PathBuf>,
        /// Put this provisioning file on the flashed ESP as berth/provision.toml
        /// (host name, network, repository, environment); checked first.
        #[arg(long, value_name = "FILE")]
        provision: Option<PathBuf>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
        /// Print what was written as one JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Manage release keys (minisign format).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Make a signed update bundle from a built image, or inspect one.
    Bundle(BundleArgs),
    /// Add signed bundles to a static update repository and re-sign its channel
    /// index (REPO/CHANNEL.json and REPO/CHANNEL.json.minisig).
    Publish {
        /// The bundles to add (each is verified with the key's public half).
        #[arg(required_unless_present_any = ["pause", "resume", "withdraw", "prune"])]
        bundles: Vec<PathBuf>,
        /// The repository folder (created when missing); serve it with any web server.
        #[arg(long, value_name = "DIR")]
        repo: PathBuf,
        /// The secret key to sign the index with (the bundles' release key).
        #[arg(long, value_name = "SECRET")]
        key: PathBuf,
        /// The channel whose index is written.
        #[arg(long, default_value = berth_bundle::channel::DEFAULT_CHANNEL)]
        channel: String,
        /// How long devices accept the index: 30d, 12h, 90m, 3600s. Publish
        /// again (with or without new bundles) before it runs out.
        #[arg(long, default_value = berth_builder::release::publish::DEFAULT_LIFETIME)]
        expires: String,
        /// Roll the new bundles out in waves: cumulative percent of the fleet
        /// at an offset after publishing, e.g. "1%@0h,10%@6h,100%@48h"
        /// (percents increasing, the last 100). Without it: everyone at once.
        #[arg(long, value_name = "SCHEDULE")]
        rollout: Option<String>,
        /// Stop the rollout of a listed version (re-signs the index).
        #[arg(long, value_name = "VERSION", group = "change", conflicts_with_all = ["bundles", "rollout"])]
        pause: Option<String>,
        /// Go on with a paused rollout.
        #[arg(long, value_name = "VERSION", group = "change", conflicts_with_all = ["bundles", "rollout"])]
        resume: Option<String>,
        /// Withdraw a listed version for good: no device installs it any more.
        #[arg(long, value_name = "VERSION", group = "change", conflicts_with_all = ["bundles", "rollout"])]
        withdraw: Option<String>,
        /// With --pause, --resume or --withdraw: the version's compatible
        /// string, when the index lists that version for several.
        #[arg(long, value_name = "COMPATIBLE", requires = "change")]
        compatible: Option<String>,
        /// Keep only the newest N releases (per compatible string) in the
        /// channel's index, then remove the bundles, chunk indexes and chunks
        /// no channel's index references any more.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        prune: Option<u32>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
        /// Print what was written as one JSON document on stdout (the index
        /// and its signature with size and sha256, every entry).
        #[arg(long)]
        json: bool,
    },
}

/// What `build` and `lock` both take: the recipe, the download cache, the
/// binaries the root tree holds (locking assembles it too) and the verbosity.
#[derive(Debug, Args)]
struct RecipeArgs {
    /// The recipe (TOML).
    // Always the first positional, though flattened after `lock`'s NAMES.
    #[arg(index = 1)]
    recipe: PathBuf,
    /// Download cache (default: $BERTH_CACHE, $XDG_CACHE_HOME/berth or ~/.cache/berth).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// The berth-init binary to put in the image (default: next to berth).
    #[arg(long)]
    init: Option<PathBuf>,
    /// The berth-update binary (the device agent) to put in the image
    /// (default: next to berth).
    #[arg(long)]
    update_agent: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
}

impl RecipeArgs {
    /// The build options these arguments give, writing to `out_dir`.
    fn options(self, out_dir: PathBuf, lock_mode: LockMode) -> anyhow::Result<BuildOptions> {
        Ok(BuildOptions {
            recipe: self.recipe,
            out_dir,
            cache_dir: cache_root(self.cache)?,
            init: self.init,
            update_agent: self.update_agent,
            lock_mode,
            fresh: false,
        })
    }

    fn progress(&self) -> Progress {
        Progress::new(if self.quiet {
            Verbosity::Quiet
        } else {
            Verbosity::Normal
        })
    }
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Write a new ed25519 key pair: PATH.pub (public, for `[update] keys` and
    /// `minisign -V`) and PATH.key (secret, unencrypted, mode 0600).
    Generate {
        /// Where to write the key pair, without extension (e.g. keys/release).
        path: PathBuf,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct BundleArgs {
    #[command(subcommand)]
    command: Option<BundleCommand>,
    /// The built disk image (images/NAME-VERSION.img).
    #[arg(required = true)]
    image: Option<PathBuf>,
    /// The secret key to sign with (PATH.key from `berth key generate`).
    #[arg(long, required = true, value_name = "SECRET")]
    key: Option<PathBuf>,
    /// Output file (default: the image's path with the extension .bundle).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Lowest running version this bundle may update from.
    #[arg(long, value_name = "VERSION")]
    min_version: Option<String>,
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Print the bundle written as one JSON document on stdout (size, sha256,
    /// versions, payloads).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum BundleCommand {
    /// Show a bundle's manifest and check its signature (and payloads).
    Inspect {
        /// The bundle.
        file: PathBuf,
        /// Public key (PATH.pub) or folder of *.pub keys to verify the signature
        /// with; without it the signature is not checked.
        #[arg(long, value_name = "PUB")]
        key: Option<PathBuf>,
        /// Also stream every payload and check its size and sha256.
        #[arg(long)]
        verify_payload: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// List every blob: sha256, size, days since a build used it, what it is.
    Ls {
        /// Print the list as one JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove blobs no build used for a while, unfinished downloads and
    /// temporary files (refused while a build runs).
    Prune {
        /// Remove blobs no build used for this many days.
        #[arg(long, default_value_t = 30, conflicts_with = "all")]
        unused_days: u64,
        /// Remove every blob.
        #[arg(long)]
        all: bool,
    },
}

fn cache_root(cache: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match cache {
        Some(c) => c,
        None => Cache::default_root()?,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each cause shown once: many of berth's error
/// messages already include their cause's text.
fn chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let line = cause.to_string();
        if text.contains(&line) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&line);
    }
    text
}

/// Refuses a file that is neither a qcow2 image nor a raw disk with a GPT: booting
/// it would only show firmware looking for something to boot.
fn check_disk_image(image: &std::path::Path) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut file, &mut magic)
        .with_context(|| format!("{} is not a disk image: too short", image.display()))?;
    if &magic == b"QFI\xfb" {
        return Ok(());
    }
    berth_format::gpt::read_partitions(&mut file).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a disk image berth can boot ({e}); build one with `berth build RECIPE`",
            image.display()
        )
    })?;
    Ok(())
}

/// `berth bundle inspect` in readable form on stdout.
fn print_inspection(file: &std::path::Path, result: &Inspection) {
    println!("bundle:        {}", file.display());
    if let Some(m) = &result.manifest {
        println!("name:          {}", m.name);
        println!("version:       {}", m.version);
        println!("compatible:    {}", m.compatible);
        println!("architecture:  {}", m.architecture);
        println!(
            "min version:   {}",
            m.min_version.as_ref().map_or("(any)", |v| v.as_str())
        );
        println!("created:       {} (unix seconds)", m.created);
        println!("title:         {}", m.title);
        println!("cmdline:       {}", m.cmdline);
        match &m.verity {
            Some(v) => println!(
                "verity:        root hash {}, {} data blocks, hash tree at {}",
                v.root_hash, v.data_blocks, v.hash_offset
            ),
            None => println!("verity:        none"),
        }
        println!("payloads:");
        for p in &m.payloads {
            println!(
                "  {:<10} {:<18} {:>11} bytes ({} stored)  sha256 {}",
                p.kind.to_string(),
                p.file,
                p.size,
                p.stored_size,
                p.sha256
            );
        }
    }
    if let Some(id) = &result.signature_key_id {
        println!("signed by key: {id}");
    }
    if let Some(comment) = &result.trusted_comment {
        println!("trusted comment: {comment}");
    }
    match (result.signature, &result.signature_key_id) {
        ("verified", Some(id)) => println!("signature: verified with {id}"),
        ("not checked", _) => println!("signature: NOT checked (no --key given)"),
        _ => println!("signature: FAILED"),
    }
    for p in &result.payloads {
        if p.ok {
            println!("{}: ok", p.file);
        } else {
            println!("{}: FAILED", p.file);
        }
    }
}

fn run_bundle(args: BundleArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(BundleCommand::Inspect {
            file,
            key,
            verify_payload,
            json,
        }) => {
            let keys = match &key {
                Some(path) if path.is_dir() => Some(TrustedKeys::load_dir(path)?),
                Some(path) => Some(TrustedKeys::load_file(path)?),
                None => None,
            };
            let check = if verify_payload {
                PayloadCheck::Stream
            } else {
                PayloadCheck::ManifestOnly
            };
            let started = Instant::now();
            let result = bundle::inspect(&file, keys.as_ref(), check)?;
            if json {
                output::print(&output::InspectOutput {
                    bundle: output::FileRecord::of(&file)?,
                    inspection: &result,
                    seconds: started.elapsed().as_secs_f64(),
                })?;
            } else {
                print_inspection(&file, &result);
            }
            match &result.error {
                None => Ok(ExitCode::SUCCESS),
                Some(error) => {
                    eprintln!("error: {}: {error}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        None => {
            let (Some(image), Some(key)) = (args.image, args.key) else {
                anyhow::bail!("berth bundle needs IMAGE and --key SECRET");
            };
            let started = Instant::now();
            let interactive = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut progress = Progress::new(if interactive {
                Verbosity::Normal
            } else {
                Verbosity::Quiet
            });
            let options = BundleOptions {
                image: image.clone(),
                key,
                out: args.out,
                min_version: args.min_version,
            };
            let created = bundle::create(&options, &mut progress)
                .with_context(|| format!("bundling {}", image.display()))?;
            if !args.quiet {
                eprintln!(
                    "wrote {} ({} {}, {} MiB, signed by {})",
                    created.path.display(),
                    created.manifest.name,
                    created.manifest.version,
                    created.size / (1024 * 1024),
                    created.key_id
                );
            }
            if args.json {
                output::print(&output::BundleOutput::new(
                    &image,
                    created,
                    started.elapsed(),
                )?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `berth flash`: exit 0 when written and verified, 3 when refused (nothing
/// written), 1 on any other error.
fn run_flash(
    image: PathBuf,
    target: PathBuf,
    bmap: Option<PathBuf>,
    provision: Option<PathBuf>,
    quiet: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut progress = Progress::new(if quiet {
        Verbosity::Quiet
    } else {
        Verbosity::Normal
    });
    let options = flash::FlashOptions {
        image: image.clone(),
        target: target.clone(),
        bmap,
        provision,
        roots: flash::target::SystemRoots::system(),
    };
    let flashed = match flash::flash(&options, &mut progress) {
        Ok(flashed) => flashed,
        Err(e) if e.nothing_written() => {
            drop(progress);
            eprintln!(
                "error: refusing to flash {} onto {}: {e} (nothing was written)",
                image.display(),
                target.display()
            );
            return Ok(ExitCode::from(3));
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "flashing {} onto {}",
                image.display(),
                target.display()
            )))
        }
    };
    if !quiet {
        let mib = |b: u64| b / (1024 * 1024);
        eprintln!(
            "flashed {} onto {} ({}): {} MiB mapped of {} MiB, {} MiB written in {:.1} s ({:.0} MB/s), read back and verified in {:.1} s{}",
            image.display(),
            target.display(),
            flashed.target.kind.name(),
            mib(flashed.mapped_bytes),
            mib(flashed.image_size),
            mib(flashed.written_bytes),
            flashed.write_time.as_secs_f64(),
            flashed.write_rate(),
            flashed.verify_time.as_secs_f64(),
            match &flashed.provisioned {
                Some((path, _)) => format!(
                    "; {} written to the ESP as {}",
                    path.display(),
                    flash::PROVISION_ESP_PATH
                ),
                None => String::new(),
            }
        );
    }
    if json {
        output::print(&output::FlashOutput::new(&flashed, started.elapsed())?)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The comparison on stdout: one line per artifact, then the verdict.
/// The verdict of `--check-reproducible` for a person: each artifact's hash,
/// both when they differ, then one line saying which.
fn reproducibility_text(recipe: &std::path::Path, result: &Reproducibility) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for a in &result.artifacts {
        if a.identical() {
            let _ = writeln!(text, "  {:<17} {}  identical", a.name, a.first);
        } else {
            let _ = writeln!(text, "  {:<17} {}  first build", a.name, a.first);
            let _ = writeln!(text, "  {:<17} {}  second build: DIFFERS", "", a.second);
        }
    }
    if !result.differing_regions.is_empty() {
        let _ = writeln!(
            text,
            "  the disk images differ in: {}",
            result.differing_regions.join(", ")
        );
    }
    if result.is_reproducible() {
        let _ = writeln!(
            text,
            "reproducible: two builds of {} gave the same {}",
            recipe.display(),
            result.image
        );
    } else {
        let names: Vec<&str> = result.differing().iter().map(|a| a.name.as_str()).collect();
        let _ = writeln!(
            text,
            "NOT reproducible: two builds of {} differ in {}",
            recipe.display(),
            names.join(", ")
        );
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build {
            recipe: args,
            out,
            check_reproducible,
            qcow2,
            locked,
            json,
        } => {
            let started = Instant::now();
            let mut progress = args.progress();
            let lock_mode = if locked {
                LockMode::Locked
            } else {
                LockMode::Use
            };
            let options = args.options(out, lock_mode)?;
            let recipe = options.recipe.clone();
            if check_reproducible {
                let result = reproducible::check(&options, &mut progress)
                    .with_context(|| format!("building {}", recipe.display()))?;
                if json {
                    progress.finish();
                    output::print(&output::ReproducibleOutput::new(
                        &recipe,
                        &result,
                        started.elapsed(),
                        progress.times().to_vec(),
                    ))?;
                } else {
                    print!("{}", reproducibility_text(&recipe, &result));
                }
                return Ok(if result.is_reproducible() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            let built = build(&options, &mut progress)
                .with_context(|| format!("building {}", recipe.display()))?;
            progress.say(&format!(
                "built {} ({} MiB, report {})",
                built.image.display(),
                built.report_data.outputs.disk.size / (1024 * 1024),
                built.report.display()
            ));
            let converted = if qcow2 {
                let converted = berth_builder::build::convert_qcow2(&built.image)?;
                progress.say(&format!("wrote {}", converted.display()));
                Some(converted)
            } else {
                None
            };
            if json {
                progress.finish();
                let times = progress.times().to_vec();
                output::print(&output::BuildOutput::new(
                    built,
                    converted.as_deref(),
                    started.elapsed(),
                    times,
                )?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lock {
            recipe: args,
            names,
            update,
        } => {
            let mut progress = args.progress();
            let lock_mode = if update {
                LockMode::Update(names)
            } else {
                LockMode::Use
            };
            let options = args.options(PathBuf::from("."), lock_mode)?;
            let recipe = options.recipe.clone();
            let locked = berth_builder::build::lock(&options, &mut progress)
                .with_context(|| format!("locking {}", recipe.display()))?;
            if locked.changes.is_empty() {
                progress.say(&format!("{} is up to date", locked.path.display()));
            } else {
                progress.say(&format!(
                    "{} {}:\n{}",
                    if locked.written {
                        "wrote"
                    } else {
                        "would write"
                    },
                    locked.path.display(),
                    locked.changes
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache { command, cache } => {
            let cache = Cache::open(&cache_root(cache)?)?;
            match command {
                CacheCommand::Ls { json } => {
                    let now = std::time::SystemTime::now();
                    let entries = cache.list()?;
                    if json {
                        output::print(&output::CacheOutput::new(cache.root(), entries, now))?;
                        return Ok(ExitCode::SUCCESS);
                    }
                    let mut total = 0;
                    for e in &entries {
                        let days = now
                            .duration_since(e.last_used)
                            .map(|d| d.as_secs() / 86400)
                            .unwrap_or(0);
                        total += e.size;
                        println!(
                            "{}  {:>10}  {:>4}d  {}",
                            e.sha256,
                            berth_builder::sources::registry::human_bytes(e.size),
                            days,
                            e.what
                        );
                    }
                    println!(
                        "{} blobs, {} in {}",
                        entries.len(),
                        berth_builder::sources::registry::human_bytes(total),
                        cache.root().display()
                    );
                }
                CacheCommand::Prune { unused_days, all } => {
                    let unused =
                        (!all).then(|| std::time::Duration::from_secs(unused_days * 86400));
                    let pruned = cache.prune(unused)?;
                    println!(
                        "removed {} blobs, {}",
                        pruned.blobs,
                        berth_builder::sources::registry::human_bytes(pruned.bytes)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            image,
            ports,
            snapshot,
            expect,
            timeout,
            direct,
            memory,
            disk_bus,
            watchdog,
            log,
        } => {
            check_disk_image(&image)?;
            let mut options = berth_qemu::RunOptions::new(&image);
            options.ports = ports;
            options.snapshot = snapshot;
            options.expect = expect;
            options.timeout = timeout.map(std::time::Duration::from_secs);
            options.memory_mib = memory;
            options.disk_bus = disk_bus;
            options.watchdog = watchdog;
            options.log = log;
            options.input = berth_qemu::ConsoleInput::detect();
            if direct {
                options.boot = berth_qemu::RunBoot::DirectFromImage;
            }
            let outcome = berth_qemu::run(&options)
                .with_context(|| format!("running {}", image.display()))?;
            let code = outcome.exit_code();
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        Command::Key {
            command: KeyCommand::Generate { path, force },
        } => {
            let overwrite = if force {
                Overwrite::Replace
            } else {
                Overwrite::Refuse
            };
            let made = keys::generate(&path, overwrite)?;
            eprintln!(
                "wrote {} (public key {}) and {} (secret key: keep it private)",
                made.paths.public.display(),
                made.key_id,
                made.paths.secret.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bundle(args) => run_bundle(args),
        Command::Flash {
            image,
            target,
            bmap,
            provision,
            quiet,
            json,
        } => run_flash(image, target, bmap, provision, quiet, json),
        Command::Publish {
            bundles,
            repo,
            key,
            channel,
            expires,
            rollout,
            pause,
            resume,
            withdraw,
            compatible,
            prune,
            quiet,
            json,
        } => {
            let started = Instant::now();
            let change = [
                (publish::Action::Pause, pause),
                (publish::Action::Resume, resume),
                (publish::Action::Withdraw, withdraw),
            ]
            .into_iter()
            .find_map(|(action, version)| version.map(|v| (action, v)))
            .map(
                |(action, version)| -> anyhow::Result<publish::EntryChange> {
                    Ok(publish::EntryChange {
                        action,
                        version: version
                            .parse()
                            .with_context(|| format!("version {version:?}"))?,
                        compatible,
                    })
                },
            )
            .transpose()?;
            let options = PublishOptions {
                bundles,
                repo: repo.clone(),
                key,
                channel: ChannelName::new(&channel)?,
                lifetime: publish::parse_lifetime(&expires)?,
                now: publish::publish_time(),
                rollout: rollout
                    .as_deref()
                    .map(berth_bundle::rollout::parse_schedule)
                    .transpose()?,
                change,
                prune: prune.map(|n| n as usize),
            };
            let published = publish::publish(&options)
                .with_context(|| format!("publishing into {}", repo.display()))?;
            if !quiet {
                for e in &published.added {
                    eprintln!(
                        "added {} {} ({}) as {}",
                        e.compatible, e.version, e.name, e.path
                    );
                }
                if let Some(change) = &options.change {
                    let done = match change.action {
                        publish::Action::Pause => "paused",
                        publish::Action::Resume => "resumed",
                        publish::Action::Withdraw => "withdrew",
                    };
                    eprintln!("{done} {}", change.version);
                }
                for e in &published.unchanged {
                    eprintln!(
                        "{} {} was already published as {}",
                        e.compatible, e.version, e.path
                    );
                }
                if let Some(pruned) = &published.pruned {
                    for e in &pruned.entries {
                        eprintln!("pruned {} {} from the index", e.compatible, e.version);
                    }
                    eprintln!(
                        "removed {} bundles, {} chunk indexes and {} chunks ({} bytes) no index references",
                        pruned.bundles, pruned.chunk_indexes, pruned.chunks, pruned.bytes
                    );
                }
                eprintln!(
                    "wrote {} ({} bundles, expires {}) and its signature by {}",
                    published.index_path.display(),
                    published.index.bundles.len(),
                    berth_format::clock::utc_datetime(published.index.expires),
                    published.key_id
                );
            }
            if json {
                let change = options
                    .change
                    .as_ref()
                    .map(|c| (c.action, c.version.to_string()));
                output::print(&output::PublishOutput::new(
                    &repo,
                    &channel,
                    published,
                    change,
                    started.elapsed(),
                )?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_reproducibility_verdict_names_what_differs() {
        use berth_builder::reproducible::Compared;
        let same = |name: &str| Compared {
            name: name.into(),
            first: "aa".into(),
            second: "aa".into(),
        };
        let mut result = Reproducibility {
            image: "hello-1.0.0.img".into(),
            artifacts: vec![same("disk"), same("kernel")],
            differing_regions: Vec::new(),
        };
        let text = reproducibility_text(std::path::Path::new("r.toml"), &result);
        assert_eq!(
            text,
            "  disk              aa  identical\n  kernel            aa  identical\n\
             reproducible: two builds of r.toml gave the same hello-1.0.0.img\n"
        );
        result.artifacts[0].second = "bb".into();
        result.differing_regions = vec!["root-a".into()];
        let text = reproducibility_text(std::path::Path::new("r.toml"), &result);
        assert!(
            text.contains("  disk              aa  first build\n"),
            "{text}"
        );
        assert!(text.contains("bb  second build: DIFFERS\n"), "{text}");
        assert!(
            text.contains("the disk images differ in: root-a\n"),
            "{text}"
        );
        assert!(
            text.ends_with("NOT reproducible: two builds of r.toml differ in disk\n"),
            "{text}"
        );
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn build_and_lock_share_their_recipe_arguments() {
        let cli = Cli::parse_from(["berth", "lock", "--update", "r.toml", "web", "crun", "-q"]);
        let Command::Lock {
            recipe,
            names,
            update,
        } = cli.command
        else {
            panic!("not lock: {cli:?}");
        };
        assert_eq!(recipe.recipe, PathBuf::from("r.toml"));
        assert!(recipe.quiet && update);
        assert_eq!(names, ["web", "crun"]);

        let cli = Cli::parse_from(["berth", "build", "r.toml", "--cache", "c", "--init", "i"]);
        let Command::Build { recipe, out, .. } = cli.command else {
            panic!("not build: {cli:?}");
        };
        assert_eq!(recipe.recipe, PathBuf::from("r.toml"));
        assert_eq!(recipe.cache, Some(PathBuf::from("c")));
        assert_eq!(recipe.init, Some(PathBuf::from("i")));
        assert_eq!(out, PathBuf::from("images"));
    }
}
