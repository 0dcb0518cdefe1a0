//! Container confinement proven from inside containers on a booted production
//! image (no debug shell): a static probe (`builder/tests/probe/confine_probe.c`,
//! built here with the host's C compiler and put into each container by the
//! recipe's `files`) tries every call family the seccomp filter decides on and
//! prints what the kernel answered, the process's capability sets,
//! no-new-privileges and seccomp mode, which `/proc` and `/sys` paths are
//! masked or read-only, and the size of `/tmp`. Four containers run it:
//! - `confined`: the defaults. Every denied family answers EPERM (`clone3`
//!   ENOSYS), including calls the kernel would allow a root process without
//!   any capability (`get_mempolicy`, `kcmp`, `io_uring_setup`, a vsock
//!   socket): the filter, not the missing capability, denies them. The five
//!   capability sets are the OCI default set; no new privileges; seccomp on.
//! - `granted`: `cap_add` of every capability that re-allows a family; each
//!   family's call gets past the filter (the kernel's own answer to its
//!   harmless arguments, never EPERM), while io_uring, keyrings,
//!   userfaultfd, swap and kexec stay denied.
//! - `dropped`: `cap_drop` of two default capabilities: gone from every set.
//! - `privileged`: every capability, no filter, no masked paths, new
//!   privileges allowed.
//!
//! `builder/tests/seccomp_crun.rs` runs the same probe under the host's crun
//! (no VM, seconds); this test is the device's kernel and crun.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use berth_tests::{boot, build_image, e2e_dir, workspace_path, BootOptions, BOOT_TIMEOUT};
use regex::Regex;

/// The OCI runtime-spec defaults berth keeps (`maskedPaths`, `readonlyPaths`
/// of oci-spec's default `linux` section), and the mounts berth makes
/// read-only itself.
const MASKED: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];
/// Masked paths the device's kernel has (the others may be absent: a
/// masked path that does not exist is not mounted over).
const MASKED_PRESENT: [&str; 4] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/sys/firmware",
];
const READ_ONLY: [&str; 7] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/sys",
    "/",
];

/// The calls each capability re-allows (the probe's `CALL-CAPABILITY` names).
const CAPABILITY_CALLS: [&str; 15] = [
    "mount-SYS_ADMIN",
    "reboot-SYS_BOOT",
    "chroot-SYS_CHROOT",
    "init_module-SYS_MODULE",
    "delete_module-SYS_MODULE",
    "acct-SYS_PACCT",
    "kcmp-SYS_PTRACE",
    "iopl-SYS_RAWIO",
    "ioperm-SYS_RAWIO",
    "settimeofday-SYS_TIME",
    "clock_adjtime-SYS_TIME",
    "vhangup-SYS_TTY_CONFIG",
    "get_mempolicy-SYS_NICE",
    "open_by_handle_at-DAC_READ_SEARCH",
    "syslog-SYSLOG",
];
/// The namespace calls CAP_SYS_ADMIN re-allows, and the other SYS_ADMIN ones.
const ADMIN_CALLS: [&str; 7] = [
    "unshare-newuser",
    "unshare-newns",
    "clone-newns",
    "clone-newuser",
    "clone3",
    "bpf",
    "perf_event_open",
];
/// Denied to every confined container, whatever its capabilities.
const ALWAYS_DENIED: [&str; 7] = [
    "io_uring_setup",
    "keyctl",
    "userfaultfd",
    "swapon",
    "kexec_file_load",
    "socket-vsock",
    "personality-bsd",
];

/// The capabilities `granted` adds: every one that re-allows a family.
const GRANTED: [&str; 12] = [
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYS_NICE",
    "DAC_READ_SEARCH",
    "SYSLOG",
];

/// Capability numbers (linux/capability.h) of the names used here.
fn cap_bit(name: &str) -> u32 {
    match name {
        "DAC_READ_SEARCH" => 2,
        "KILL" => 5,
        "NET_BIND_SERVICE" => 10,
        "SYS_MODULE" => 16,
        "SYS_RAWIO" => 17,
        "SYS_CHROOT" => 18,
        "SYS_PTRACE" => 19,
        "SYS_PACCT" => 20,
        "SYS_ADMIN" => 21,
        "SYS_BOOT" => 22,
        "SYS_NICE" => 23,
        "SYS_TIME" => 25,
        "SYS_TTY_CONFIG" => 26,
        "AUDIT_WRITE" => 29,
        "SYSLOG" => 34,
        other => panic!("no bit for {other}"),
    }
}

fn cap_mask(names: &[&str]) -> u64 {
    names.iter().fold(0, |mask, name| mask | 1 << cap_bit(name))
}

/// Builds the probe (static) and writes the recipe beside it; returns the
/// recipe's path. Rewritten only when it changed, so the image is reused.
fn write_recipe(dir: &Path) -> std::path::PathBuf {
    fs::create_dir_all(dir).expect("the recipe's folder");
    let probe = dir.join("confine_probe");
    let source = workspace_path("builder/tests/probe/confine_probe.c");
    let built = ["musl-gcc", "gcc", "cc"].iter().any(|compiler| {
        Command::new(compiler)
            .args(["-static", "-O1", "-o"])
            .arg(&probe)
            .arg(&source)
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(
        built,
        "no C compiler linked {} statically (scripts/install-deps installs gcc)",
        source.display()
    );
    let args: Vec<String> = MASKED
        .iter()
        .map(|p| format!("\"mask:{p}\""))
        .chain(READ_ONLY.iter().map(|p| format!("\"ro:{p}\"")))
        .collect();
    let command = format!("[\"/probe\", {}]", args.join(", "));
    let container = |name: &str, extra: &str| {
        format!(
            "[[container]]\nname = \"{name}\"\npackages = [\"busybox-static\"]\ncommand = {command}\n\
             restart = \"never\"\nfiles = [{{ source = \"confine_probe\", target = \"/probe\", mode = 0o755 }}]\n{extra}\n"
        )
    };
    let granted: Vec<String> = GRANTED.iter().map(|c| format!("\"{c}\"")).collect();
    let recipe = format!(
        "# Written by tests/tests/confinement.rs.\n[image]\nname = \"confinement\"\nversion = \"1.0.0\"\n\n{}{}{}{}",
        container("confined", ""),
        container("granted", &format!("cap_add = [{}]", granted.join(", "))),
        container("dropped", "cap_drop = [\"KILL\", \"NET_BIND_SERVICE\"]"),
        container("privileged", "privileged = true"),
    );
    let path = dir.join("confinement.toml");
    if fs::read_to_string(&path).ok().as_deref() != Some(recipe.as_str()) {
        fs::write(&path, recipe).expect("writing the recipe");
    }
    path
}

/// Each container's probe lines (`[name] KEY VALUE`), read from the console
/// until every container printed `done probing`.
fn probe_results(
    vm: &berth_tests::TestVm,
    names: &[&str],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let line = Regex::new(r"\[(confined|granted|dropped|privileged)\] (\S+) (.*)$").expect("regex");
    let mut results: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let finished = |results: &BTreeMap<String, BTreeMap<String, String>>| {
        names
            .iter()
            .all(|name| results.get(*name).is_some_and(|r| r.contains_key("done")))
    };
    while !finished(&results) {
        let text = vm
            .expect(&line, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}: so far {results:?} (log: {})", vm.log().display()));
        let caps = line.captures(&text).expect("the line matched");
        results
            .entry(caps[1].to_string())
            .or_default()
            .insert(caps[2].to_string(), caps[3].trim().to_string());
    }
    results
}

fn status_mask(result: &BTreeMap<String, String>, set: &str) -> u64 {
    let value = result
        .get(&format!("status-{set}"))
        .unwrap_or_else(|| panic!("no {set} in {result:?}"));
    u64::from_str_radix(value, 16).unwrap_or_else(|e| panic!("{set} {value:?}: {e}"))
}

fn answer<'a>(result: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    result
        .get(key)
        .unwrap_or_else(|| panic!("the probe printed no {key}: {result:?}"))
}

#[test]
fn containers_are_confined_as_their_recipe_says_from_inside() {
    let recipe = write_recipe(&e2e_dir().join("confinement-recipe"));
    let image = build_image(&recipe);
    let vm = boot(
        &image,
        BootOptions {
            direct: true,
            ..BootOptions::default()
        },
    );
    let names = ["confined", "granted", "dropped", "privileged"];
    let results = probe_results(&vm, &names);
    let sets = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];
    let default_set = cap_mask(&["AUDIT_WRITE", "KILL", "NET_BIND_SERVICE"]);

    // Confined: the filter denies every family.
    let confined = &results["confined"];
    for set in sets {
        assert_eq!(
            status_mask(confined, set),
            default_set,
            "{set} of confined: {confined:?}"
        );
    }
    assert_eq!(answer(confined, "status-NoNewPrivs"), "1");
    assert_eq!(
        answer(confined, "status-Seccomp"),
        "2",
        "seccomp filter mode"
    );
    for call in CAPABILITY_CALLS
        .iter()
        .chain(&ADMIN_CALLS)
        .chain(&ALWAYS_DENIED)
    {
        let expected = if *call == "clone3" { "ENOSYS" } else { "EPERM" };
        assert_eq!(
            answer(confined, call),
            expected,
            "{call} confined: {confined:?}"
        );
    }
    for call in ["clone-plain", "personality-query", "socket-unix"] {
        assert_eq!(
            answer(confined, call),
            "ok",
            "{call} confined: {confined:?}"
        );
    }
    for path in MASKED {
        let state = answer(confined, &format!("mask:{path}"));
        assert!(
            matches!(state, "masked" | "absent"),
            "{path} is {state} in confined"
        );
    }
    for path in MASKED_PRESENT {
        assert_eq!(
            answer(confined, &format!("mask:{path}")),
            "masked",
            "{path} in confined"
        );
    }
    for path in READ_ONLY {
        assert_eq!(
            answer(confined, &format!("ro:{path}")),
            "ro",
            "{path} in confined"
        );
    }
    assert_eq!(
        answer(confined, "tmp-size"),
        (64u64 << 20).to_string(),
        "/tmp's size"
    );
    assert_eq!(answer(confined, "tmp-mode"), "rw");

    // Granted: each family's capability lets its calls through the filter.
    let granted = &results["granted"];
    let granted_set = default_set | cap_mask(&GRANTED);
    for set in sets {
        assert_eq!(
            status_mask(granted, set),
            granted_set,
            "{set} of granted: {granted:?}"
        );
    }
    assert_eq!(answer(granted, "status-Seccomp"), "2");
    for call in CAPABILITY_CALLS.iter().chain(&ADMIN_CALLS) {
        assert_ne!(
            answer(granted, call),
            "EPERM",
            "{call} with its capability: {granted:?}"
        );
    }
    for call in [
        "unshare-newuser",
        "unshare-newns",
        "clone-newns",
        "clone3",
        "mount-SYS_ADMIN",
    ] {
        assert_eq!(
            answer(granted, call),
            "ok",
            "{call} with CAP_SYS_ADMIN: {granted:?}"
        );
    }
    for call in ALWAYS_DENIED {
        assert_eq!(
            answer(granted, call),
            "EPERM",
            "{call} is denied whatever the capabilities: {granted:?}"
        );
    }

    // Dropped: gone from every set, the filter as for confined.
    let dropped = &results["dropped"];
    for set in sets {
        assert_eq!(
            status_mask(dropped, set),
            cap_mask(&["AUDIT_WRITE"]),
            "{set} of dropped: {dropped:?}"
        );
    }
    assert_eq!(answer(dropped, "status-Seccomp"), "2");

    // Privileged: every capability the kernel knows, no filter, nothing masked.
    let privileged = &results["privileged"];
    let bounding = status_mask(privileged, "CapBnd");
    assert_eq!(
        bounding,
        (1u64 << 41) - 1,
        "the 41 capabilities of the device's kernel"
    );
    for set in ["CapPrm", "CapEff"] {
        assert_eq!(
            status_mask(privileged, set),
            bounding,
            "{set} of privileged"
        );
    }
    assert_eq!(answer(privileged, "status-NoNewPrivs"), "0");
    assert_eq!(answer(privileged, "status-Seccomp"), "0");
    for call in ALWAYS_DENIED
        .iter()
        .chain(&CAPABILITY_CALLS)
        .chain(&ADMIN_CALLS)
    {
        assert_ne!(
            answer(privileged, call),
            "EPERM",
            "{call} privileged: {privileged:?}"
        );
    }
    for path in MASKED_PRESENT {
        assert_eq!(
            answer(privileged, &format!("mask:{path}")),
            "visible",
            "{path} privileged"
        );
    }
    assert_eq!(
        answer(privileged, "ro:/proc/sys"),
        "rw",
        "/proc/sys privileged"
    );
}
