//! The general-purpose baseline: Debian 12 with systemd, running the same busybox
//! container with crun as a systemd unit, booted in the same QEMU the same way as
//! berth's direct path (`-kernel/-initrd` with Debian's own initramfs-tools
//! initramfs mounting an ext4 root on the virtio disk).
//!
//! The root filesystem is made by `mmdebstrap` through the host's apt sources and
//! cached under `target/bench/baseline/`: later runs reuse it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use berth_qemu::{BootMode, DirectBoot, DiskWrites, VmConfig};

use crate::timeline::{milestones, Milestones};

/// Packages of the baseline root, on top of mmdebstrap's minbase variant.
pub const PACKAGES: &str =
    "systemd,systemd-sysv,udev,crun,busybox-static,linux-image-cloud-amd64,initramfs-tools";
/// The suite: Debian 12, as on the host.
pub const SUITE: &str = "bookworm";
/// The host's apt sources, handed to mmdebstrap as they are.
pub const HOST_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// What the container prints (the same as the hello recipe's container).
pub const OUTPUT: &str = "Hello from berth!";
/// Kernel command line: Debian's initramfs mounts `root=`; no first-boot prompts.
const CMDLINE: &str = "root=/dev/vda rw console=ttyS0 systemd.firstboot=off";
/// The baseline's fixed machine id (any 128-bit hex value).
const MACHINE_ID: &str = "6265727468206265726368206261736c\n";
/// Written last when the root disk is made; versioned with what [`add_container`]
/// puts into the tree, so a change there makes a new disk.
const SIZES_FILE: &str = "root-size-v2.txt";
/// Size of the (sparse) ext4 root disk.
const DISK_BYTES: u64 = 1 << 30;

/// The built baseline.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub disk: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Bytes of the root file tree: apparent and allocated (`du`).
    pub root_apparent: u64,
    pub root_allocated: u64,
}

fn dir() -> PathBuf {
    berth_tests::target_dir().join("bench").join("baseline")
}

/// The cached baseline, if it was built before.
pub fn cached() -> Option<Baseline> {
    let dir = dir();
    let sizes = fs::read_to_string(dir.join(SIZES_FILE)).ok()?;
    let mut it = sizes.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(root_apparent)), Some(Ok(root_allocated))) = (it.next(), it.next()) else {
        return None;
    };
    let b = Baseline {
        disk: dir.join("root.ext4"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        root_apparent,
        root_allocated,
    };
    (b.disk.is_file() && b.kernel.is_file() && b.initrd.is_file()).then_some(b)
}

/// The baseline, built when it is not cached (minutes: mmdebstrap downloads and
/// installs some 200 packages).
pub fn get() -> anyhow::Result<Baseline> {
    if let Some(b) = cached() {
        return Ok(b);
    }
    let dir = dir();
    fs::create_dir_all(&dir)?;
    let tree = dir.join("rootfs.tmp");
    let done = dir.join("rootfs.done");
    if !done.exists() {
        if tree.exists() {
            fs::remove_dir_all(&tree)?;
        }
        eprintln!("berth-bench: building the Debian baseline with mmdebstrap (minutes)");
        run(Command::new("mmdebstrap")
            .args(["--variant=minbase", &format!("--include={PACKAGES}")])
            .arg("--format=directory")
            .arg(SUITE)
            .arg(&tree)
            .arg(HOST_SOURCES))?;
        fs::write(&done, PACKAGES)?;
    }
    add_container(&tree)?;
    let kernel = newest(&tree.join("boot"), "vmlinuz-")?;
    let initrd = newest(&tree.join("boot"), "initrd.img-")?;
    fs::copy(&kernel, dir.join("vmlinuz"))?;
    fs::copy(&initrd, dir.join("initrd.img"))?;
    let root_apparent = du(&tree, true)?;
    let root_allocated = du(&tree, false)?;
    let disk = dir.join("root.ext4");
    let _ = fs::remove_file(&disk);
    fs::File::create(&disk)?.set_len(DISK_BYTES)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "root", "-d"])
        .arg(&tree)
        .arg(&disk))?;
    fs::write(
        dir.join(SIZES_FILE),
        format!("{root_apparent} {root_allocated}\n"),
    )?;
    cached().context("the baseline was built but is incomplete")
}

/// The container: busybox-static in a read-only OCI bundle under /opt/hello, run by
/// crun from a oneshot unit whose output goes to the console.
fn add_container(tree: &Path) -> anyhow::Result<()> {
    let bundle = tree.join("opt/hello");
    fs::create_dir_all(bundle.join("rootfs/bin"))?;
    fs::copy(tree.join("bin/busybox"), bundle.join("rootfs/bin/busybox"))?;
    // crun's own default spec, with the hello recipe's command.
    let scratch = tempfile::tempdir()?;
    run(Command::new("crun").arg("spec").current_dir(scratch.path()))?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&fs::read(scratch.path().join("config.json"))?)?;
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/busybox", "echo", OUTPUT]);
    spec["root"]["readonly"] = true.into();
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec)?,
    )?;
    // An installed system has its machine id; without one every (throwaway) boot
    // would be a first boot, with its extra work.
    fs::write(tree.join("etc/machine-id"), MACHINE_ID)?;
    let unit = "[Unit]\nDescription=The benchmark's busybox container\n\n\
        [Service]\nType=oneshot\n\
        ExecStart=/usr/bin/crun run --bundle /opt/hello hello\n\
        StandardOutput=tty\nTTYPath=/dev/console\n\n\
        [Install]\nWantedBy=multi-user.target\n";
    let units = tree.join("etc/systemd/system");
    fs::create_dir_all(units.join("multi-user.target.wants"))?;
    fs::write(units.join("bench-hello.service"), unit)?;
    let link = units.join("multi-user.target.wants/bench-hello.service");
    // symlink_metadata: the link's target is absolute inside the tree, so on the
    // host it dangles and `exists()` would say no.
    if fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("/etc/systemd/system/bench-hello.service", link)?;
    }
    Ok(())
}

fn newest(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

/// `du -s` in bytes: apparent sizes or allocated blocks.
pub fn du(path: &Path, apparent: bool) -> anyhow::Result<u64> {
    let out = run(Command::new("du")
        .arg(if apparent { "-sb" } else { "-s" })
        .args(if apparent {
            None
        } else {
            Some("--block-size=1")
        })
        .arg(path))?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("du printed {out:?}"))
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Boots the baseline `boots` times (direct kernel boot) and times it.
pub fn boots(b: &Baseline, boots: usize) -> anyhow::Result<Vec<Milestones>> {
    let mut runs = Vec::new();
    for i in 0..boots {
        let mut config = VmConfig::new(&b.disk)?;
        config.writes = DiskWrites::Discard;
        config.boot = BootMode::Direct(DirectBoot {
            kernel: b.kernel.clone(),
            initrd: b.initrd.clone(),
            cmdline: CMDLINE.to_string(),
        });
        let vm = crate::vmrun::start(config, "bench-baseline", None)?;
        let lines = vm
            .record_until(&berth_tests::literal(OUTPUT), berth_tests::BOOT_TIMEOUT)
            .with_context(|| format!("baseline boot {}", i + 1))?;
        let m = milestones(&lines, Some(OUTPUT));
        eprintln!(
            "berth-bench: baseline boot {}: PID 1 at {:.2} s, container output at {:.2} s",
            i + 1,
            m.pid1.unwrap_or(f64::NAN),
            m.qemu_to_output.unwrap_or(f64::NAN)
        );
        anyhow::ensure!(
            m.pid1.is_some() && m.container_output.is_some(),
            "baseline boot {}: missing milestones {m:?}",
            i + 1
        );
        runs.push(m);
    }
    Ok(runs)
}
