//! `berth-bench packages`: what containers installed from Debian's packages
//! with their maintainer scripts (through mmdebstrap) cost against the hello
//! recipe: build time, cold (only the downloaded packages cached: every
//! container is installed again) and warm (nothing changed: the installed roots
//! come from the cache), and the size of the root.
//!
//! The nginx and postgresql recipes are written here, one container each, the
//! way a user would start: `packages = ["nginx-light"]`,
//! `packages = ["postgresql-15"]`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::builds::{self, Times};
use crate::sizes::{self, Sizes};
use crate::stats::Summary;

/// The recipes measured: a name and the recipe's text (`None`: the
/// workspace's `recipes/<name>.toml`).
const RECIPES: [(&str, Option<&str>); 3] = [
    ("hello", None),
    (
        "nginx",
        Some(
            r#"# Written by berth-bench packages.
[image]
name = "nginx"
version = "1.0.0"

[disk]
root = "256M"

[[container]]
name = "web"
packages = ["nginx-light"]
command = ["/usr/sbin/nginx", "-g", "daemon off;"]
writable = true
cap_add = ["CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID"]
"#,
        ),
    ),
    (
        "postgresql",
        Some(
            r#"# Written by berth-bench packages.
[image]
name = "postgresql"
version = "1.0.0"

[disk]
root = "384M"

# Measured for its build and size: a running cluster needs the start script
# of tests/recipes/debian.toml.
[[container]]
name = "db"
packages = ["postgresql-15"]
user = "postgres"
command = ["/usr/lib/postgresql/15/bin/postgres", "--version"]
restart = "never"
"#,
        ),
    ),
];

/// One recipe's figures.
#[derive(Debug, Clone)]
pub struct Measured {
    pub times: Times,
    pub sizes: Sizes,
}

/// Builds each recipe once (downloading what is missing, outside the timing),
/// then times `runs` cold and warm builds of each; prints the table (and writes
/// it as a report section to `out`).
pub fn run(runs: usize, out: Option<&Path>) -> anyhow::Result<Vec<Measured>> {
    anyhow::ensure!(runs >= 1, "--builds must be at least 1");
    berth_tests::binaries();
    let recipes = write_recipes()?;
    // The images, for their sizes; this also fills the download cache.
    let mut sizes = Vec::new();
    for (name, recipe) in &recipes {
        let image = berth_tests::build_image(recipe);
        sizes.push(sizes::measure(&image)?);
        eprintln!("berth-bench: {name}: {}", image.display());
    }
    let times = builds::run(&recipes, runs)?;
    let measured: Vec<Measured> = times
        .into_iter()
        .zip(sizes)
        .map(|(times, sizes)| Measured { times, sizes })
        .collect();
    let body = table(&measured);
    print!("{body}");
    if let Some(out) = out {
        crate::report::write_section(
            out,
            "Containers from Debian packages (mmdebstrap) against hello",
            &format!("berth-bench packages --builds {runs}"),
            &body,
        )?;
    }
    Ok(measured)
}

/// The recipes as files: hello from the workspace, the others written under
/// `target/bench/packages/` (rewritten only when their text changed, so the
/// images built from them are reused).
fn write_recipes() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = berth_tests::target_dir().join("bench").join("packages");
    std::fs::create_dir_all(&dir)?;
    RECIPES
        .iter()
        .map(|(name, text)| {
            let path = match text {
                None => berth_tests::workspace_path(format!("recipes/{name}.toml")),
                Some(text) => {
                    let path = dir.join(format!("bench-{name}.toml"));
                    if std::fs::read_to_string(&path).ok().as_deref() != Some(*text) {
                        std::fs::write(&path, text)?;
                    }
                    path
                }
            };
            Ok((name.to_string(), path))
        })
        .collect()
}

/// The table: each recipe's root, cold and warm build, and both against the
/// first (hello).
pub fn table(measured: &[Measured]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| recipe | root squashfs | cold build (packages cached, installs not) | warm build (nothing changed) | root ÷ hello's | cold ÷ hello's | warm ÷ hello's |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let base = measured.first();
    let median = |runs: &[f64]| Summary::of(runs).map(|x| x.median);
    for m in measured {
        let ratio = |mine: Option<f64>, theirs: Option<f64>| match (mine, theirs) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
            _ => "—".to_string(),
        };
        let shown = |runs: &[f64]| Summary::of(runs).map_or("—".into(), |x| x.show(1, " s"));
        let _ = writeln!(
            s,
            "| {} | {:.2} MB | {} | {} | {} | {} | {} |",
            m.times.name,
            m.sizes.root as f64 / 1e6,
            shown(&m.times.cold),
            shown(&m.times.warm),
            ratio(Some(m.sizes.root as f64), base.map(|b| b.sizes.root as f64)),
            ratio(
                median(&m.times.cold),
                base.and_then(|b| median(&b.times.cold))
            ),
            ratio(
                median(&m.times.warm),
                base.and_then(|b| median(&b.times.warm))
            ),
        );
    }
    let _ = writeln!(s);
    for m in measured.iter().skip(1) {
        if m.times.warm_steps.is_empty() {
            continue;
        }
        let steps: Vec<String> = m
            .times
            .warm_steps
            .iter()
            .filter_map(|(step, runs)| Some(format!("{step} {:.1} s", median(runs)?)))
            .collect();
        let _ = writeln!(
            s,
            "- {}'s warm build, the builder's own step times (medians): {}",
            m.times.name,
            steps.join(", ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(name: &str, root: u64, cold: f64, warm: f64) -> Measured {
        Measured {
            times: Times {
                name: name.to_string(),
                cold: vec![cold],
                warm: vec![warm],
                warm_steps: vec![("root filesystem tree".to_string(), vec![warm / 2.0])],
            },
            sizes: Sizes {
                kernel: 1,
                initramfs: 1,
                root,
                disk_apparent: 1,
                disk_allocated: 1,
            },
        }
    }

    #[test]
    fn the_table_compares_each_recipe_with_the_first() {
        let table = table(&[
            measured("hello", 7_000_000, 7.0, 3.0),
            measured("nginx", 70_000_000, 70.0, 30.0),
        ]);
        assert!(
            table.contains(
                "| hello | 7.00 MB | 7.0 s (7.0–7.0) | 3.0 s (3.0–3.0) | 1.0× | 1.0× | 1.0× |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| nginx | 70.00 MB | 70.0 s (70.0–70.0) | 30.0 s (30.0–30.0) | 10.0× | 10.0× | 10.0× |"),
            "{table}"
        );
        assert!(
            table.contains("- nginx's warm build, the builder's own step times (medians): root filesystem tree 15.0 s"),
            "{table}"
        );
    }

    #[test]
    fn the_recipes_parse() {
        for (name, text) in RECIPES {
            if let Some(text) = text {
                berth_builder::recipe::parse(Path::new(name), text)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}
