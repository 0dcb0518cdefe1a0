//! The confinement berth writes into a container's OCI runtime config, run for
//! real: a small static probe (`probe/confine_probe.c`, built with the host's C
//! compiler) runs under the host's crun with the config the builder generates,
//! and tries the calls the seccomp filter decides on. Confined, the namespace
//! calls, io_uring, keyrings, BPF and perf fail; with `cap_add = ["SYS_ADMIN"]`
//! the namespace calls work (io_uring and keyrings stay denied); privileged, no
//! filter at all. tests/tests/confinement.rs runs the same probe on a booted
//! device, where every family, the capability sets and the masked paths are
//! checked against the device's own kernel.
//!
//! Needs root, crun and a C compiler that links static binaries (musl-gcc or
//! gcc); says so and passes without them, as other host-tool tests do.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_builder::recipe::{parse, CAPABILITIES};
use berth_builder::sources::oci::ImageDefaults;
use berth_builder::tree::runtime_spec::config_json;
use berth_builder::tree::Tree;

/// Why this host cannot run the test, if it cannot.
fn missing_tools() -> Option<String> {
    // /proc/self belongs to the process's effective user.
    let euid = fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if euid.ok() != Some(0) {
        return Some("not root".into());
    }
    for tool in ["crun", "unshare"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("no {tool}"));
        }
    }
    None
}

/// The test process's capability bounding set (`CapBnd` of
/// /proc/self/status), bit N for capability N.
fn host_bounding_set() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapBnd in /proc/self/status")
}

/// Builds the probe, statically linked, into `out`.
fn build_probe(out: &Path) -> Result<(), String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/confine_probe.c");
    for compiler in ["musl-gcc", "gcc", "cc"] {
        let status = Command::new(compiler)
            .args(["-static", "-O1", "-o"])
            .arg(out)
            .arg(&source)
            .status();
        if matches!(status, Ok(s) if s.success()) {
            return Ok(());
        }
    }
    Err("no C compiler could link the probe statically".into())
}

/// Runs the probe in a container whose recipe lines are `container` and returns
/// what it printed, call by call.
fn probe_in(dir: &Path, probe: &Path, id: &str, container: &str) -> BTreeMap<String, String> {
    let recipe = format!(
        "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[[container]]\nname = \"{id}\"\npackages = [\"busybox-static\"]\ncommand = [\"/probe\"]\nnetwork = \"none\"\n{container}\n"
    );
    let plan = parse(Path::new("x.toml"), &recipe).unwrap_or_else(|e| panic!("{e}"));
    let bundle = dir.join(id);
    let rootfs = bundle.join("rootfs");
    for sub in ["proc", "dev", "sys", "tmp"] {
        fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    fs::copy(probe, rootfs.join("probe")).unwrap();
    let json = config_json(
        &plan,
        &plan.containers[0],
        &ImageDefaults::default(),
        &Tree::new(&rootfs),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut config: serde_json::Value = serde_json::from_slice(&json).unwrap();
    // The device's cgroup tree is not the host's (which may be cgroup v1 or
    // hybrid): run without cgroups (crun's `--cgroup-manager=disabled`) and
    // without a cgroup namespace. Everything that confines stays as written.
    let linux = config["linux"].as_object_mut().unwrap();
    linux.remove("cgroupsPath");
    linux.remove("resources");
    if let Some(namespaces) = linux.get_mut("namespaces").and_then(|n| n.as_array_mut()) {
        namespaces.retain(|ns| ns["type"] != "cgroup");
    }
    // A capability the test process does not hold cannot be given (this host
    // may run in a sandbox without some, CAP_SYS_RESOURCE say): only the
    // privileged container asks for every one.
    let bounding = host_bounding_set();
    if let Some(sets) = config["process"]["capabilities"].as_object_mut() {
        for set in sets.values_mut().filter_map(|v| v.as_array_mut()) {
            set.retain(|cap| {
                CAPABILITIES
                    .iter()
                    .position(|name| cap == name)
                    .is_some_and(|bit| bounding & (1u64 << bit) != 0)
            });
        }
    }
    // Nor can a hard limit above the test process's own be set without
    // CAP_SYS_RESOURCE (on the device, PID 1 holds it): open files are capped
    // at this process's hard limit.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    for limit in config["process"]["rlimits"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        for key in ["soft", "hard"] {
            if limit[key].as_u64().is_some_and(|v| v > hard) {
                limit[key] = hard.into();
            }
        }
    }
    if let Some(mounts) = config["mounts"].as_array_mut() {
        mounts.retain(|mount| mount["type"] != "cgroup" && mount["type"] != "cgroup2");
    }
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let state = dir.join("crun-state");
    // crun refuses a host with cgroup v1 and v2 side by side ("hybrid"), even
    // without a cgroup manager: it runs in a private mount namespace with a
    // cgroup2 file system of its own on /sys/fs/cgroup (no controllers, none
    // needed).
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t cgroup2 none /sys/fs/cgroup && exec crun \"$@\"")
        .arg("sh")
        .arg("--cgroup-manager=disabled")
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(format!("berth-confine-test-{id}-{}", std::process::id()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running crun: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "crun run failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(call, result)| (call.to_string(), result.to_string()))
        .collect()
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("confine_probe");
    build_probe(&probe).unwrap_or_else(|e| panic!("{e}"));
    (dir, probe)
}

#[test]
fn confined_containers_are_denied_what_docker_denies() {
    if let Some(why) = missing_tools() {
        eprintln!("skipped: {why}");
        return;
    }
    let (dir, probe) = scratch();

    let confined = probe_in(dir.path(), &probe, "confined", "");
    let expected = [
        ("unshare-newuser", "EPERM"),
        ("unshare-newns", "EPERM"),
        ("clone-plain", "ok"),
        ("clone-newns", "EPERM"),
        ("clone-newuser", "EPERM"),
        ("clone3", "ENOSYS"),
        ("io_uring_setup", "EPERM"),
        ("keyctl", "EPERM"),
        ("bpf", "EPERM"),
        ("perf_event_open", "EPERM"),
        ("personality-query", "ok"),
        ("personality-bsd", "EPERM"),
    ];
    for (call, result) in expected {
        assert_eq!(
            confined.get(call).map(String::as_str),
            Some(result),
            "{call} in a confined container: {confined:?}"
        );
    }

    // The filter is on and no new privileges can be gained.
    assert_eq!(
        confined.get("status-Seccomp").map(String::as_str),
        Some("2"),
        "{confined:?}"
    );
    assert_eq!(
        confined.get("status-NoNewPrivs").map(String::as_str),
        Some("1"),
        "{confined:?}"
    );

    // CAP_SYS_ADMIN lifts the namespace calls, as in Docker; io_uring and
    // keyrings stay denied whatever the capabilities.
    let admin = probe_in(dir.path(), &probe, "admin", "cap_add = [\"SYS_ADMIN\"]");
    for call in [
        "unshare-newuser",
        "unshare-newns",
        "clone-newns",
        "clone-newuser",
        "clone3",
    ] {
        assert_eq!(
            admin.get(call).map(String::as_str),
            Some("ok"),
            "{call} with CAP_SYS_ADMIN: {admin:?}"
        );
    }
    for call in ["io_uring_setup", "keyctl"] {
        assert_eq!(
            admin.get(call).map(String::as_str),
            Some("EPERM"),
            "{call} with CAP_SYS_ADMIN: {admin:?}"
        );
    }
    // bpf is no longer the filter's EPERM: the kernel sees the (empty) request.
    assert_ne!(
        admin.get("bpf").map(String::as_str),
        Some("EPERM"),
        "{admin:?}"
    );

    // Privileged: no filter.
    let privileged = probe_in(dir.path(), &probe, "privileged", "privileged = true");
    assert_eq!(
        privileged.get("status-Seccomp").map(String::as_str),
        Some("0"),
        "{privileged:?}"
    );
    assert_eq!(
        privileged.get("status-NoNewPrivs").map(String::as_str),
        Some("0"),
        "{privileged:?}"
    );
    for call in [
        "unshare-newuser",
        "clone-newns",
        "clone3",
        "personality-bsd",
    ] {
        assert_eq!(
            privileged.get(call).map(String::as_str),
            Some("ok"),
            "{call} privileged: {privileged:?}"
        );
    }
}
