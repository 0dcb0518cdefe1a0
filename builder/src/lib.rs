//! berth-builder: turns a TOML recipe into a bootable GPT disk image.
//!
//! The folders follow the pipeline (driven by [`build`]):
//! [`recipe`] parses and validates into a `BuildPlan`; [`sources`] fetches the
//! packages, kernel and images (pinned by `RECIPE.lock`) into the
//! content-addressed cache; [`tree`] assembles the root and initramfs trees
//! without root privileges; [`filesystem`] writes the initramfs, the squashfs root
//! and its verity hash tree; [`disk`] writes the GPT image; [`report`] records
//! what went in. The [`release`] stage (bundles, keys, the update repository)
//! signs and publishes built images.
//!
//! At the top stay the driver and what every stage uses: [`build`] (the pipeline,
//! which knows every stage), [`output`] (what `--json` prints), [`progress`] (the terminal output each stage
//! reports to), [`report`] (the build's record, filled from every stage) and
//! [`reproducible`] (builds the whole pipeline twice and compares).

pub mod build;
pub mod disk;
pub mod filesystem;
pub mod flash;
pub mod output;
pub mod progress;
pub mod recipe;
pub mod release;
pub mod report;
pub mod reproducible;
pub mod sources;
pub mod tree;
