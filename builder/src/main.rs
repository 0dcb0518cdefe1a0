//! `berth`: the host CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth_builder::build::{build, BuildOptions};
use berth_builder::cache::Cache;
use berth_builder::progress::{Progress, Verbosity};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "Build, run and update minimal container OS images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a bootable disk image from a recipe.
    Build {
        /// The recipe (TOML).
        recipe: PathBuf,
        /// Output folder.
        #[arg(long, default_value = "images")]
        out: PathBuf,
        /// Download cache (default: $BERTH_CACHE, $XDG_CACHE_HOME/berth or ~/.cache/berth).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// The berth-init binary to put in the image (default: next to berth).
        #[arg(long)]
        init: Option<PathBuf>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build {
            recipe,
            out,
            cache,
            init,
            quiet,
        } => {
            let cache_dir = match cache {
                Some(c) => c,
                None => Cache::default_root()?,
            };
            let verbosity = if quiet { Verbosity::Quiet } else { Verbosity::Normal };
            let mut progress = Progress::new(verbosity);
            let built = build(
                &BuildOptions {
                    recipe: recipe.clone(),
                    out_dir: out,
                    cache_dir,
                    init,
                },
                &mut progress,
            )
            .with_context(|| format!("building {}", recipe.display()))?;
            progress.say(&format!(
                "built {} ({} MiB, report {})",
                built.image.display(),
                built.report_data.outputs.disk.size / (1024 * 1024),
                built.report.display()
            ));
            Ok(ExitCode::SUCCESS)
        }
    }
}
