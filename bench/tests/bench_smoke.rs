//! The whole benchmark harness, one iteration of each part (`--quick`): so the
//! one documented command cannot rot. Boots VMs and builds images (minutes).

use std::process::Command;

use regex::Regex;

#[test]
fn one_iteration_of_everything_writes_tables_with_numbers() {
    // berth-bench takes one of the suite's VM slots for each VM it boots
    // (`vmrun::start`), as the test command runs this beside the other tests:
    // between its boots (builds, publishes) the slot is free for them.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("benchmarks.md");
    let status = Command::new(env!("CARGO_BIN_EXE_berth-bench"))
        .args([
            "all",
            "--boots",
            "1",
            "--builds",
            "1",
            "--updates",
            "1",
            "--quick",
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("running berth-bench");
    assert!(status.success(), "berth-bench all --quick failed: {status}");
    let report = std::fs::read_to_string(&out).expect("the report was written");
    let seconds = r"\d+\.\d+ s \(\d+\.\d+–\d+\.\d+\)";
    for (what, pattern) in [
        (
            "hello's direct boot row",
            format!(r"(?m)^\| hello \| direct \| {seconds} \| {seconds} \| {seconds} \| \d+\.\d+ "),
        ),
        (
            "web's direct boot row",
            format!(r"(?m)^\| web \| direct \| {seconds} \| {seconds} \| {seconds} \|"),
        ),
        (
            "hello's sizes",
            r"(?m)^\| hello \| \d+\.\d+ MB \| \d+\.\d+ MB \| \d+\.\d+ MB \|".to_string(),
        ),
        (
            "a build time",
            r"(?m)^\| hello \| \d+\.\d+ s \(\d+\.\d+–\d+\.\d+\) \| \d+\.\d+ s".to_string(),
        ),
        ("update throughput", r"\d+\.\d+ MB/s \(".to_string()),
        ("init RSS", r"\d+ KiB \(\d+–\d+\)".to_string()),
        (
            "the accelerator",
            r"accelerator \*\*(TCG|KVM)\*\*".to_string(),
        ),
    ] {
        let re = Regex::new(&pattern).expect("valid regex");
        assert!(re.is_match(&report), "no {what} in the report:\n{report}");
    }
    for plot in ["boot.svg", "sizes.svg", "update.svg"] {
        let svg = std::fs::read_to_string(dir.path().join("bench").join(plot))
            .unwrap_or_else(|e| panic!("{plot}: {e}"));
        assert!(svg.starts_with("<svg") && svg.contains("<rect"), "{plot}");
    }
}
