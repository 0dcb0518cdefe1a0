//! `berth-bench arm64`: the hello image built for arm64 beside the x86_64 one,
//! booted along both paths in the same run (interleaved), and both images'
//! sizes. Under TCG on an x86_64 host the arm64 guest is emulated instruction by
//! instruction, so the ratio between the two rows is what this measures.

use std::fmt::Write as _;
use std::path::Path;

use crate::boots::{self, Target};
use crate::report::{boot_table, sizes_table};
use crate::sizes;
use crate::vmrun::BootPath;

/// Builds both images, boots each `boots` times along each path, prints the
/// tables (and writes them as a report section to `out`).
pub fn run(boots: usize, out: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(boots >= 1, "--boots must be at least 1");
    berth_tests::binaries();
    let images = [
        ("hello", berth_tests::build_image("recipes/hello.toml")),
        (
            "hello-arm64",
            berth_tests::build_image("recipes/hello-arm64.toml"),
        ),
    ];
    let mut sizes = Vec::new();
    for (name, image) in &images {
        sizes.push((name.to_string(), sizes::measure(image)?));
    }
    let targets: Vec<Target> = images
        .iter()
        .map(|(name, image)| Target {
            name: name.to_string(),
            image: image.clone(),
            // Both print `Hello from berth!` / `… on aarch64!`.
            output: Some("Hello from berth".to_string()),
        })
        .collect();
    let series = boots::run(&targets, &[BootPath::Direct, BootPath::Uefi], boots)?;
    let mut body = String::new();
    let _ = writeln!(
        body,
        "### Boot breakdown (accelerator {} for x86_64, {boots} boots each along each path; arm64 is emulated by TCG on an x86_64 host)\n",
        crate::accel()?.as_str().to_uppercase()
    );
    body.push_str(&boot_table(&series));
    let _ = writeln!(body, "\n### Sizes\n");
    body.push_str(&sizes_table(&sizes));
    print!("{body}");
    if let Some(out) = out {
        crate::report::write_section(
            out,
            "arm64 beside x86_64",
            &format!("berth-bench arm64 --boots {boots}"),
            &body,
        )?;
    }
    Ok(())
}
