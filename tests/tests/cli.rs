//! The `berth` command line as a user runs it: `berth run --expect` exit codes and
//! its console tail, and `berth build`'s messages for a bad recipe.

use std::fs;
use std::process::{Command, Output};

use berth_tests::{binaries, build_image, VmPermit};

fn berth(args: &[&std::ffi::OsStr]) -> Output {
    let berth = &binaries().berth;
    Command::new(berth)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", berth.display()))
}

/// `berth run IMAGE --snapshot --direct --expect REGEX --timeout SECS`, holding a
/// VM slot while it runs.
fn berth_run_expect(expect: &str, timeout_secs: u32) -> Output {
    let image = build_image("recipes/hello.toml");
    let _permit = VmPermit::acquire();
    let timeout = timeout_secs.to_string();
    berth(&[
        "run".as_ref(),
        image.as_os_str(),
        "--snapshot".as_ref(),
        "--direct".as_ref(),
        "--expect".as_ref(),
        expect.as_ref(),
        "--timeout".as_ref(),
        timeout.as_ref(),
    ])
}

fn describe(output: &Output) -> String {
    format!(
        "exit status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn run_expect_exits_zero_on_match() {
    let output = berth_run_expect("Hello from berth!", 300);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    // The console is streamed on stdout.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("Hello from berth!"),
        "{}",
        describe(&output)
    );
}

#[test]
fn run_expect_times_out_with_exit_one() {
    let output = berth_run_expect("this line never appears", 20);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("this line never appears"),
        "the message does not name the pattern:\n{}",
        describe(&output)
    );
    // The console's tail follows on stderr, each line as `    | LINE`: real
    // console lines, the same ones streamed on stdout.
    let tail: Vec<&str> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix("    | "))
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    assert!(!tail.is_empty(), "no console tail:\n{}", describe(&output));
    let console: Vec<&str> = stdout.lines().map(str::trim_end).collect();
    for line in &tail {
        assert!(
            console.contains(line),
            "tail line {line:?} is not a console line:\n{}",
            describe(&output)
        );
    }
    // By then the init has spoken (the hello container runs once and the VM idles).
    assert!(
        stdout.contains("berth-init:"),
        "the console never reached berth-init:\n{}",
        describe(&output)
    );
}

#[test]
fn unknown_package_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("unknown-package.toml");
    let text = "\
[image]
name = \"unknownpkg\"
version = \"1.0.0\"

[[container]]
name = \"app\"
packages = [\"no-such-package-berth\"]
command = [\"/bin/busybox\", \"true\"]
";
    let line = text
        .lines()
        .position(|l| l.starts_with("packages"))
        .expect("the packages line")
        + 1;
    fs::write(&recipe, text).unwrap();
    let out = dir.path().join("out");
    let output = berth(&[
        "build".as_ref(),
        recipe.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--quiet".as_ref(),
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let at = format!("{}:{line}:", recipe.display());
    assert!(
        stderr.contains(&at),
        "the error does not point at {at}\n{}",
        describe(&output)
    );
    assert!(
        stderr.contains("unknown Debian package \"no-such-package-berth\""),
        "{}",
        describe(&output)
    );
}

#[test]
fn missing_recipe_file_is_a_clear_error() {
    let missing = "/nonexistent.toml";
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = berth(&[
        "build".as_ref(),
        missing.as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(missing), "{}", describe(&output));
    assert!(
        !stderr.contains("panicked"),
        "berth panicked:\n{}",
        describe(&output)
    );
}

#[test]
fn run_refuses_a_file_that_is_not_a_disk_image() {
    let recipe = berth_tests::workspace_path("recipes/hello.toml");
    let output = berth(&[
        "run".as_ref(),
        recipe.as_os_str(),
        "--timeout".as_ref(),
        "5".as_ref(),
    ]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not a disk image"),
        "{}",
        describe(&output)
    );
}

#[test]
fn build_writes_a_qcow2_that_boots_through_uefi() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = berth_tests::workspace_path("recipes/hello.toml");
    let built = berth(&[
        "build".as_ref(),
        recipe.as_os_str(),
        "--out".as_ref(),
        dir.path().as_os_str(),
        "--qcow2".as_ref(),
        "--quiet".as_ref(),
    ]);
    assert!(built.status.success(), "{}", describe(&built));
    let qcow2 = dir.path().join("hello-1.0.0.qcow2");
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut std::fs::File::open(&qcow2).unwrap(), &mut magic).unwrap();
    assert_eq!(&magic, b"QFI\xfb", "not a qcow2 file");
    let _permit = VmPermit::acquire();
    let output = berth(&[
        "run".as_ref(),
        qcow2.as_os_str(),
        "--snapshot".as_ref(),
        "--expect".as_ref(),
        "Hello from berth!".as_ref(),
        "--timeout".as_ref(),
        "300".as_ref(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}
