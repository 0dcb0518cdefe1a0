//! `berth-update`: the device agent. Installs signed bundles onto the inactive
//! slot (from a file, a URL or the update repository), reports both slots,
//! rolls back, marks the booted slot good.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use berth_agent::{
    self as agent, CheckReport, Checkpoint, InstallOptions, Observer, System, UpdateOutcome,
};
use berth_bundle::channel::ChannelName;

/// Environment variable naming an install checkpoint at which the agent stops
/// and waits forever, so a test can cut the power there. A fault-injection hook
/// for berth's own power-cut tests; never set on a device.
const TEST_PAUSE_ENV: &str = "BERTH_UPDATE_TEST_PAUSE";

#[derive(Parser)]
#[command(name = "berth-update", version, about = "berth's A/B update agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install a signed bundle (a file or an http:// URL) onto the inactive slot.
    Install {
        /// Bundle file or http:// URL.
        source: String,
        /// Install even if the bundle's version is not newer than the running one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Boot tries the new slot gets before the boot loader gives up on it.
        #[arg(long, default_value_t = agent::install::DEFAULT_TRIES)]
        tries: u32,
        /// Reboot into the new slot once installed.
        #[arg(long)]
        reboot: bool,
    },
    /// Show both slots, which one booted, which one boots next, and how the last
    /// install, boot assessment and rollback ended.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Make the other slot boot next.
    Rollback {
        /// Also accept a slot that was never marked good (but still has tries).
        #[arg(long)]
        force: bool,
        /// Reboot into it now.
        #[arg(long)]
        reboot: bool,
    },
    /// Mark the booted slot good (blessed: it boots with no counting from now on).
    MarkGood,
    /// Ask the update repository whether a newer bundle is published for this
    /// device. Exit code: 0 an update is available, 2 up to date, 1 error.
    Check {
        /// The repository (http:// URL or folder); default: the provisioned one
        /// ([update] repository in the ESP's berth/provision.toml).
        #[arg(long, value_name = "URL")]
        repo: Option<String>,
        /// The channel to follow.
        #[arg(long, default_value = berth_bundle::channel::DEFAULT_CHANNEL)]
        channel: String,
        /// Machine-readable output (`update_available`, `version`, `bundle_url`, …).
        #[arg(long)]
        json: bool,
    },
    /// Run as the device's update service (the init starts it on a device with
    /// an update repository): check every interval, install, reboot as the
    /// policy says, report.
    Daemon {
        /// The repository (http:// URL or folder).
        #[arg(long, value_name = "URL")]
        repo: String,
        /// The channel to follow.
        #[arg(long, default_value = berth_bundle::channel::DEFAULT_CHANNEL)]
        channel: String,
        /// Seconds between checks (random jitter of ±25 % is added).
        #[arg(long, default_value_t = berth_format::image_config::DEFAULT_INTERVAL_S)]
        interval: u64,
        /// `auto`: reboot into an installed update at once; `manual`: never by itself.
        #[arg(long, default_value = "auto")]
        reboot: String,
        /// URL to POST a status report to after each round.
        #[arg(long, value_name = "URL")]
        report: Option<String>,
        /// The device's identity in reports.
        #[arg(long)]
        device: Option<String>,
        /// Boot tries a new slot gets.
        #[arg(long, default_value_t = agent::install::DEFAULT_TRIES)]
        tries: u32,
    },
    /// Check the update repository and install the newest bundle it offers for
    /// this device. Exit code: 0 installed or already up to date, 1 error.
    Update {
        /// The repository (http:// URL or folder); default: the provisioned one.
        #[arg(long, value_name = "URL")]
        repo: Option<String>,
        /// The channel to follow.
        #[arg(long, default_value = berth_bundle::channel::DEFAULT_CHANNEL)]
        channel: String,
        /// Boot tries the new slot gets before the boot loader gives up on it.
        #[arg(long, default_value_t = agent::install::DEFAULT_TRIES)]
        tries: u32,
        /// Reboot into the new slot once installed.
        #[arg(long)]
        reboot: bool,
    },
}

/// `check`'s exit code when nothing newer is published.
const UP_TO_DATE: u8 = 2;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth-update: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Command::Daemon {
        repo,
        channel,
        interval,
        reboot,
        report,
        device,
        tries,
    } = cli.command
    {
        let options = agent::daemon::DaemonOptions {
            repository: agent::Repository::parse(&repo)?,
            channel: ChannelName::new(&channel)?,
            interval: std::time::Duration::from_secs(
                interval.max(berth_format::image_config::MIN_INTERVAL_S),
            ),
            reboot: berth_format::image_config::RebootPolicy::parse(&reboot)
                .map_err(anyhow::Error::msg)?,
            report,
            device,
            install: InstallOptions {
                allow_downgrade: false,
                tries,
            },
        };
        let mut observer = Output::new();
        observer.prefix = "";
        agent::daemon::run(&options, &mut observer);
        agent::request_reboot().context("asking the init to reboot")?;
        // The init stops this process as part of the reboot.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    // Every command that writes takes the update lock first (see `lock`).
    let _lock = match &cli.command {
        Command::Status { .. } | Command::Check { .. } => None,
        _ => Some(agent::lock::UpdateLock::acquire(std::path::Path::new(
            agent::lock::LOCK_PATH,
        ))?),
    };
    let system = System::discover().context("describing the running system")?;
    match cli.command {
        Command::Daemon { .. } => unreachable!("handled above"),
        Command::Install {
            source,
            allow_downgrade,
            tries,
            reboot,
        } => {
            let reader = agent::source::open(&source)?;
            let options = InstallOptions {
                allow_downgrade,
                tries,
            };
            let mut observer = Output::new();
            let installed = agent::install(&system, reader, &source, &options, &mut observer)?;
            println!(
                "berth-update: installed {} into slot {}; it boots next ({} tries)",
                installed.version, installed.slot, options.tries
            );
            if reboot {
                request_reboot()?;
            }
        }
        Command::Status { json } => {
            let status = agent::status(&system)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render());
            }
        }
        Command::Rollback { force, reboot } => {
            let record = agent::rollback(&system, force)?;
            println!(
                "berth-update: rolled back: slot {} ({}) boots next instead of slot {} ({})",
                record.to, record.to_version, record.from, record.from_version
            );
            if reboot {
                request_reboot()?;
            }
        }
        Command::MarkGood => {
            agent::mark_good(&system)?;
            println!(
                "berth-update: slot {} ({}) marked good",
                system.booted, system.image.version
            );
        }
        Command::Check {
            repo,
            channel,
            json,
        } => {
            let repo = agent::fleet::device_repository(repo.as_deref())?;
            let channel = ChannelName::new(&channel)?;
            let report = agent::check(&system, &repo, &channel)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_check(&report);
            }
            if !report.update_available {
                return Ok(ExitCode::from(UP_TO_DATE));
            }
        }
        Command::Update {
            repo,
            channel,
            tries,
            reboot,
        } => {
            let repo = agent::fleet::device_repository(repo.as_deref())?;
            let channel = ChannelName::new(&channel)?;
            let options = InstallOptions {
                allow_downgrade: false,
                tries,
            };
            let mut observer = Output::new();
            match agent::update(&system, &repo, &channel, &options, &mut observer)? {
                UpdateOutcome::UpToDate(report) => print_check(&report),
                UpdateOutcome::Installed(_, installed) => {
                    println!(
                        "berth-update: installed {} into slot {}; it boots next ({} tries)",
                        installed.version, installed.slot, options.tries
                    );
                    if reboot {
                        request_reboot()?;
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `check`'s answer for a person.
fn print_check(report: &CheckReport) {
    match (&report.version, &report.bundle_url) {
        (Some(version), Some(url)) => println!(
            "berth-update: update available: {version} (running {}) at {url}",
            report.running
        ),
        _ => println!(
            "berth-update: up to date: channel {} of {} offers nothing newer than {}",
            report.channel, report.repository, report.running
        ),
    }
    if let (Some(version), Some(at)) = (&report.waiting_for, &report.wave_opens_at) {
        println!(
            "berth-update: waiting for {version}: its rollout wave opens for this device at {at}"
        );
    }
    println!(
        "berth-update: index signed by {}, generated {}, expires {}; rollout position {:.2}%",
        report.signed_by, report.index_generated, report.index_expires, report.position
    );
}

/// Asks the init for a reboot.
fn request_reboot() -> Result<()> {
    println!("berth-update: rebooting");
    agent::request_reboot().context("asking the init to reboot")
}

/// Progress on a terminal, plain lines otherwise; the test pause hook.
struct Output {
    interactive: bool,
    pause_at: Option<String>,
    /// Last percentage printed per item, to print each step once.
    last: Option<(String, u64)>,
    /// Before each step's line: `berth-update: ` by hand, nothing in the daemon
    /// (the init prefixes its lines already).
    prefix: &'static str,
}

impl Output {
    fn new() -> Output {
        Output {
            interactive: std::io::stdout().is_terminal(),
            pause_at: std::env::var(TEST_PAUSE_ENV).ok(),
            last: None,
            prefix: "berth-update: ",
        }
    }
}

impl Observer for Output {
    fn checkpoint(&mut self, point: Checkpoint) {
        if self.pause_at.as_deref() == Some(point.name().as_str()) {
            println!("\nberth-update: test pause at {}", point.name());
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }

    fn progress(&mut self, what: &str, done: u64, total: u64) {
        let percent = done * 100 / total.max(1);
        // A terminal gets every percent on one line; a log gets quarters.
        let step = if self.interactive { 1 } else { 25 };
        let shown = percent / step * step;
        if self.last.as_ref() == Some(&(what.to_string(), shown)) {
            return;
        }
        self.last = Some((what.to_string(), shown));
        if self.interactive {
            print!("\r{what}: {shown:3}% ({done} of {total} bytes)");
            if done >= total {
                println!();
            }
            let _ = std::io::stdout().flush();
        } else {
            println!("{what}: {shown}% ({done} of {total} bytes)");
        }
    }

    fn step(&mut self, message: &str) {
        println!("{}{message}", self.prefix);
    }
}
