//! Boot breakdown of berth images: QEMU start → kernel → PID 1 → first container.

use std::path::Path;

use anyhow::Context;

use crate::timeline::{milestones, Milestones};
use crate::vmrun::{boot_image, BootPath};

/// What a boot waits for, and the container output it times.
#[derive(Debug, Clone)]
pub struct Target {
    /// Recipe name, for the table.
    pub name: String,
    pub image: std::path::PathBuf,
    /// The first container's output line (substring), when it prints one.
    pub output: Option<String>,
}

/// The runs of one image along one path.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub path: BootPath,
    pub runs: Vec<Milestones>,
}

/// Boots every target along every path `boots` times, interleaved so drift in the
/// machine's load hits all alike.
pub fn run(targets: &[Target], paths: &[BootPath], boots: usize) -> anyhow::Result<Vec<Series>> {
    let mut series: Vec<Series> = Vec::new();
    for t in targets {
        for &path in paths {
            series.push(Series {
                name: t.name.clone(),
                path,
                runs: Vec::new(),
            });
        }
    }
    for i in 0..boots {
        let mut k = 0;
        for t in targets {
            for &path in paths {
                let m = boot_once(&t.image, path, t.output.as_deref(), &t.name)
                    .with_context(|| format!("{} {} boot {}", t.name, path.label(), i + 1))?;
                eprintln!(
                    "berth-bench: {} {} boot {}: PID 1 at {:.2} s, container at {:.2} s",
                    t.name,
                    path.label(),
                    i + 1,
                    m.pid1.unwrap_or(f64::NAN),
                    m.container_started.unwrap_or(f64::NAN)
                );
                series[k].runs.push(m);
                k += 1;
            }
        }
    }
    Ok(series)
}

fn boot_once(
    image: &Path,
    path: BootPath,
    output: Option<&str>,
    name: &str,
) -> anyhow::Result<Milestones> {
    let vm = boot_image(image, path, &format!("bench-{name}-{}", path.label()))?;
    // The container's own line when it prints one, else the init's start stamp.
    let stop = match output {
        Some(text) => berth_tests::literal(text),
        None => regex::Regex::new(r"berth-init: container \S+ started \(pid")?,
    };
    let lines = vm.record_until(&stop, berth_tests::BOOT_TIMEOUT)?;
    let mut m = milestones(&lines, output);
    if output.is_some() && m.container_started.is_none() {
        // The container printed before the init's line came through: wait for it.
        let more = vm.record_until(
            &regex::Regex::new(r"berth-init: container \S+ started \(pid")?,
            berth_tests::BOOT_TIMEOUT,
        )?;
        let all: Vec<_> = lines.into_iter().chain(more).collect();
        m = milestones(&all, output);
    }
    anyhow::ensure!(
        m.pid1.is_some() && m.container_started.is_some() && m.kernel_start.is_some(),
        "{name} ({}): missing milestones {m:?} (is the init new enough to stamp its container starts?)",
        path.label()
    );
    Ok(m)
}
