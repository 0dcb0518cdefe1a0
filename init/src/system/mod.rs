//! The main stage, run as PID 1 inside the root: the file systems, hostname and
//! network the containers expect, then the event loop.
//!
//! In order: the API and data file systems (with [`grow`] on a first boot of a
//! larger disk), the clock from the [`rtc`], the ESP, the [`provision`]ing file
//! and the containers' environment ([`envmerge`]), the host name, the network
//! ([`crate::net`]), then the run loop ([`crate::run`]), which never returns.

pub mod envmerge;
mod espcheck;
mod fsck;
mod grow;
mod provision;
pub mod rtc;

use std::path::Path;
use std::time::{Duration, Instant};

use berth_format::data::{DataReport, DataState};
use berth_format::{layout, ImageConfig};
use nix::mount::MsFlags;

use crate::net::dhcp_link::DhcpLink;
use crate::net::{self, Ipv4Setup};
use crate::run::AssessmentInput;
use crate::shared::cmdline;
use crate::shared::mounts;
use berth_format::blockdev::{self, Roots};

/// How long to wait for the data partition (on the same disk as the root, so it is
/// normally there already).
const DATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the configured network interface to appear.
const INTERFACE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the boot waits for a DHCP lease before starting the containers (the
/// client keeps trying in the event loop).
const DHCP_TIMEOUT: Duration = Duration::from_secs(10);

/// What stops the main stage before the containers can run.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// The image configuration could not be read.
    #[error("reading {path}: {source}")]
    ReadConfig {
        path: String,
        source: std::io::Error,
    },
    /// The image configuration is not valid.
    #[error("{path}: {source}")]
    Config {
        path: String,
        source: berth_format::image_config::ImageConfigError,
    },
    #[error(transparent)]
    Loop(#[from] crate::run::LoopError),
}

/// Runs the main stage; returns only with an error (the event loop ends in a
/// poweroff or reboot).
pub fn run() -> SystemError {
    match boot() {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

fn boot() -> Result<std::convert::Infallible, SystemError> {
    let start = Instant::now();
    // Signals first, so a SIGTERM during setup waits in the signalfd's queue
    // instead of being lost.
    crate::run::block_signals()?;
    api_filesystems();
    crate::shared::console::ensure();
    let mut config = load_config(Path::new(layout::IMAGE_CONFIG_PATH))?;
    log!(
        "{} {} (slot {})",
        config.image.name,
        config.image.version,
        slot_name()
    );
    filesystems();
    crate::shared::logfile::open_init_log(
        Path::new(crate::shared::logfile::LOG_DIR),
        crate::run::rotation(&config),
    );
    let floor = clock_floor(&config);
    crate::system::rtc::set_clock_from_rtc(floor);
    quiet_console();
    // The ESP first: its provisioning file may change the host name and network.
    let assessment = mount_esp();
    let provision = crate::system::provision::load(
        Path::new(crate::system::provision::ESP_FILE),
        Path::new(crate::system::provision::SAVED_FILE),
    );
    provision.apply(&mut config);
    let names: Vec<&str> = config.containers.iter().map(|c| c.name.as_str()).collect();
    crate::system::envmerge::prepare(&names, &provision.env);
    if let Err(errno) = nix::unistd::sethostname(&config.image.hostname) {
        log!("setting hostname {:?}: {errno}", config.image.hostname);
    }
    let dhcp = network(&config);
    // In its own thread: the containers do not wait for the clock.
    crate::net::sntp::start(ntp_servers(provision.ntp_servers(), &dhcp), floor);
    if config.debug.console_shell {
        log!("debug shell on the console (development image)");
    }
    log!("system ready in {} ms", start.elapsed().as_millis());
    // The device's name in the update agent's reports: provisioned, else the
    // host name.
    let device = provision
        .update
        .device
        .clone()
        .unwrap_or_else(|| config.image.hostname.clone());
    Ok(crate::run::run(&config, dhcp, assessment, &device)?)
}

/// The lowest time the clock may show: the image's build epoch, or a later time
/// the update state on the data partition proves has passed.
fn clock_floor(config: &ImageConfig) -> u64 {
    let state = berth_format::state::UpdateState::load(Path::new(layout::UPDATE_STATE_PATH))
        .map(|state| state.clock_floor())
        .unwrap_or_else(|err| {
            log!("clock floor: {err}; the build epoch alone");
            0
        });
    config.image.epoch.max(state)
}

/// The SNTP servers: the provisioning file's, else those of the DHCP leases
/// held by now (option 42), without repeats.
fn ntp_servers(provisioned: Vec<std::net::Ipv4Addr>, dhcp: &[DhcpLink]) -> Vec<std::net::Ipv4Addr> {
    if !provisioned.is_empty() {
        return provisioned;
    }
    let mut servers = Vec::new();
    for server in dhcp.iter().flat_map(DhcpLink::ntp_servers) {
        if !servers.contains(server) {
            servers.push(*server);
        }
    }
    servers
}

/// From here on the kernel prints only errors and worse on the console (console
/// log level 4); everything is still in /var/log/berth/kernel.log. A console
/// flooded with OOM reports and stack dumps (a container at its memory limit,
/// restarted in a loop) drowns the lines that matter and was seen to starve
/// the serial console's input under emulation.
fn quiet_console() {
    if let Err(err) = std::fs::write("/proc/sys/kernel/printk", "4") {
        log!("setting the kernel's console log level: {err}");
    }
}

/// The ESP, read-write on /efi, for the boot assessment (and the device agent).
/// Without it, or without a booted slot (the root partition's, see
/// [`cmdline::booted_slot`]), the boot is not assessed.
fn mount_esp() -> Option<AssessmentInput> {
    let mounted = crate::shared::esp::find().and_then(|node| {
        match espcheck::check_if_unclean(&node) {
            espcheck::Outcome::Clean => {}
            espcheck::Outcome::Checked { repaired } => log!(
                "ESP checked: {}",
                if repaired {
                    "repaired"
                } else {
                    "nothing to repair"
                }
            ),
            espcheck::Outcome::Failed(why) => log!("ESP not checked: {why}"),
        }
        crate::shared::esp::mount_node(&node, false).map(|()| node)
    });
    match mounted {
        Ok(node) => log!("mounted ESP {} on {}", node.display(), layout::ESP_MOUNT),
        Err(why) => {
            log!("no ESP ({why}): boot assessment skipped");
            return None;
        }
    }
    // A rollback or fallback a cut left half done is finished, so its slot
    // boots next as it was meant to (see entries::recover_promotions).
    match berth_format::entries::recover_promotions(Path::new(layout::ESP_MOUNT)) {
        Ok(recovered) => {
            for path in recovered {
                log!(
                    "finished a change of the boot order a cut had interrupted: {}",
                    path.display()
                );
            }
        }
        Err(err) => log!("boot entries: {err}"),
    }
    // Why the last fallback left a blessed slot (kept on the ESP until a
    // later fallback replaces it).
    let record = Path::new(layout::ESP_MOUNT).join(crate::shared::esp::FALLBACK_RECORD);
    if let Ok(text) = std::fs::read_to_string(&record) {
        log!("last fallback: {}", text.trim());
    }
    let slot = cmdline::read(Path::new(cmdline::PROC_CMDLINE))
        .map_err(|err| err.to_string())
        .and_then(|cmdline| cmdline::booted_slot(&Roots::system(), &cmdline));
    let slot = match slot {
        Ok(slot) => slot,
        Err(why) => {
            log!("booted slot unknown ({why}): boot assessment skipped");
            return None;
        }
    };
    Some(AssessmentInput {
        esp: Path::new(layout::ESP_MOUNT).to_path_buf(),
        slot,
    })
}

fn slot_name() -> String {
    cmdline::read(Path::new(cmdline::PROC_CMDLINE))
        .map_err(|err| err.to_string())
        .and_then(|cmdline| cmdline::booted_slot(&Roots::system(), &cmdline))
        .map_or_else(|_| "unknown".to_string(), |slot| slot.to_string())
}

/// Reads and parses `/etc/berth/image.toml`.
pub fn load_config(path: &Path) -> Result<ImageConfig, SystemError> {
    let text = std::fs::read_to_string(path).map_err(|source| SystemError::ReadConfig {
        path: path.display().to_string(),
        source,
    })?;
    ImageConfig::parse(&text).map_err(|source| SystemError::Config {
        path: path.display().to_string(),
        source,
    })
}

/// /proc, /sys and /dev, unless the early stage moved them here already.
fn api_filesystems() {
    for (source, target, fstype) in crate::early::API_FILESYSTEMS {
        let path = Path::new(target);
        if mounts::is_mountpoint(path) {
            continue;
        }
        let flags = match fstype {
            "devtmpfs" => MsFlags::MS_NOSUID,
            _ => MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        };
        if let Err(err) = mounts::mount_fs(source, path, fstype, flags, None) {
            log!("{err}");
        }
    }
}

/// cgroup2, /run, /tmp, /var and the folders the runtime and the logs need.
/// Each failure is logged and the boot goes on: a container may still run.
fn filesystems() {
    let no_exec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let steps: [(&str, &str, &str, MsFlags, Option<&str>); 3] = [
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            no_exec | MsFlags::MS_RELATIME,
            None,
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
    ];
    for (source, target, fstype, flags, data) in steps {
        if let Err(err) = mounts::mount_on_dir(source, Path::new(target), fstype, flags, data) {
            log!("{err}");
        }
    }
    let data = mount_var();
    crate::run::containers::delegate_controllers();
    for dir in [crate::shared::logfile::LOG_DIR, "/run/crun", "/run/berth"] {
        if let Err(err) = std::fs::create_dir_all(dir) {
            log!("creating {dir}: {err}");
        }
    }
    report_data(&data);
}

/// The data partition's mount flags: nosuid and nodev. Nothing on /var needs a
/// set-uid program or a device node: confined containers run with no new
/// privileges anyway, a writable root is an overlay mount of its own (its own
/// flags apply), and named volumes, bind mounts of folders here, inherit
/// nosuid and nodev, so a container cannot plant a set-uid program or a
/// device node that another container or the host would honour. Not noexec:
/// writable roots and volumes may hold programs.
pub const DATA_MOUNT_FLAGS: MsFlags = MsFlags::MS_NOATIME
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV);

/// The data partition's mount options: its reserved blocks belong to a user id
/// no process runs as, so only `CAP_SYS_RESOURCE` (the init, the update agent;
/// not a container, whatever its user) opens them: a container that fills the
/// partition leaves the system room to record, update and bless.
fn data_mount_options() -> String {
    format!("resuid={}", layout::DATA_RESERVE_UID)
}

/// The data partition on /var, checked and repaired first when it needs it; a
/// tmpfs when it cannot be had, so the system still runs (without persistence,
/// and saying so). Returns what became of it, for [`report_data`].
fn mount_var() -> DataReport {
    let var = Path::new("/var");
    let (state, detail) = match data_partition() {
        Ok(device) => mount_data(&device, var),
        Err(why) => (DataState::Unavailable, why),
    };
    if state == DataState::Unavailable {
        log!("/var is a tmpfs: nothing written there survives a reboot");
        // A quarter of the memory at most: a container filling its volume
        // there must not take the memory the system runs in.
        if let Err(err) = mounts::mount_on_dir(
            "tmpfs",
            var,
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755,size=25%"),
        ) {
            log!("{err}");
        }
    }
    DataReport {
        state,
        detail,
        at: berth_format::state::now(),
    }
}

/// Grows, checks (when [`fsck::read_check_needed`] says so, or the mount
/// fails), mounts and grows the file system of the data partition `device` on
/// `var`.
fn mount_data(device: &str, var: &Path) -> (DataState, String) {
    let node = Path::new(device);
    match crate::system::grow::grow_partition(node) {
        Ok(Some(grown)) => log!(
            "data partition {device} grown from {} MiB to {} MiB",
            grown.old_bytes() >> 20,
            grown.new_bytes() >> 20
        ),
        Ok(None) => {}
        Err(err) => log!("growing data partition {device}: {err}"),
    }
    let options = data_mount_options();
    let mount = || mounts::mount_on_dir(device, var, "ext4", DATA_MOUNT_FLAGS, Some(&options));
    let check = |why: &str| {
        log!("data partition {device} needs a check: {why}");
        let outcome = fsck::check_and_repair(node);
        match &outcome {
            fsck::Outcome::Clean => log!("e2fsck found {device} clean"),
            fsck::Outcome::Repaired => log!("e2fsck repaired data partition {device}"),
            fsck::Outcome::Failed(why) => {
                log!("e2fsck could not repair data partition {device}: {why}")
            }
        }
        outcome
    };
    let mut checked = fsck::read_check_needed(node).map(|why| (check(&why), why));
    let mut mounted = mount();
    if let (Err(err), None) = (&mounted, &checked) {
        let why = format!("the mount failed: {err}");
        checked = Some((check(&why), why));
        mounted = mount();
    }
    let report = data_outcome(device, checked.as_ref(), mounted.as_ref().err());
    if mounted.is_ok() {
        log!("mounted data partition {device} on /var");
        match crate::system::grow::grow_filesystem(node, var) {
            Ok(Some((old, new))) => log!(
                "data file system grown online from {} MiB to {} MiB",
                old >> 20,
                new >> 20
            ),
            Ok(None) => {}
            Err(err) => log!("growing the data file system: {err}"),
        }
    }
    report
}

/// What a check (its outcome and why it ran) and a mount (its error) of
/// `device` amount to.
fn data_outcome(
    device: &str,
    checked: Option<&(fsck::Outcome, String)>,
    mount_error: Option<&mounts::MountError>,
) -> (DataState, String) {
    let check = checked.map(|(outcome, why)| match outcome {
        fsck::Outcome::Clean => format!("checked ({why}): clean"),
        fsck::Outcome::Repaired => format!("checked ({why}): e2fsck repaired it"),
        fsck::Outcome::Failed(how) => format!("checked ({why}): e2fsck could not repair it: {how}"),
    });
    match (mount_error, check) {
        (None, None) => (DataState::Mounted, format!("{device} mounted on /var")),
        (None, Some(check)) => {
            let state = match checked {
                Some((fsck::Outcome::Clean, _)) => DataState::Mounted,
                _ => DataState::Repaired,
            };
            (state, format!("{device} {check}; mounted on /var"))
        }
        (Some(err), check) => (
            DataState::Unavailable,
            format!(
                "{device} {}does not mount ({err}): /var is a tmpfs, containers run without persistent data",
                check.map(|check| format!("{check}; it still ")).unwrap_or_default()
            ),
        ),
    }
}

/// Writes the data report where `berth-update status` finds it, and logs a
/// fault so the console and the log say it too.
fn report_data(report: &DataReport) {
    if report.is_fault() {
        log!("data partition fault: {}", report.detail);
    }
    if let Err(err) = report.save(Path::new(layout::DATA_REPORT_PATH)) {
        log!("writing the data partition report: {err}");
    }
}

fn data_partition() -> Result<String, String> {
    let cmdline = cmdline::read(Path::new(cmdline::PROC_CMDLINE)).map_err(|err| err.to_string())?;
    let partuuid = cmdline::data_partuuid(&cmdline)
        .ok_or("the kernel command line names no berth.data=PARTUUID=<uuid>")?;
    blockdev::wait_for_partition(
        &Roots::system(),
        partuuid,
        DATA_TIMEOUT,
        Duration::from_millis(50),
    )
    .map(|node| node.to_string_lossy().into_owned())
    .map_err(|err| format!("data partition: {err}"))
}

/// Loopback, resolv.conf, then the static address or DHCP on every wired
/// interface; the DHCP clients are returned for the event loop to keep
/// (renewals, or the first lease if it came late).
fn network(config: &ImageConfig) -> Vec<DhcpLink> {
    if let Err(err) = net::loopback_up() {
        log!("loopback: {err}");
    }
    let dns: Vec<std::net::Ipv4Addr> = config
        .network
        .dns
        .iter()
        .filter_map(|server| server.parse().ok())
        .collect();
    let text = if dns.is_empty() {
        crate::net::dhcp_link::resolv_conf("(no DNS servers yet)", &[])
    } else {
        crate::net::dhcp_link::resolv_conf("from the static configuration", &dns)
    };
    if let Err(err) =
        crate::net::dhcp_link::write_resolv_conf(Path::new(layout::RESOLV_CONF), &text)
    {
        log!("writing {}: {err}", layout::RESOLV_CONF);
    }
    let Some(ipv4) = &config.network.ipv4 else {
        if !config.network.dhcp {
            return Vec::new();
        }
        return dhcp(config, dns.is_empty());
    };
    let setup = match Ipv4Setup::from_config(ipv4) {
        Ok(setup) => setup,
        Err(err) => {
            log!("{err}");
            return Vec::new();
        }
    };
    match net::configure_ipv4(&setup, Path::new("/sys"), INTERFACE_TIMEOUT) {
        Ok(()) => log!(
            "network: {} {}/{}{}",
            setup.interface,
            setup.address,
            ipv4.prefix,
            setup
                .gateway
                .map(|gateway| format!(" via {gateway}"))
                .unwrap_or_default()
        ),
        Err(err) => log!("network: {err}"),
    }
    // The other wired interfaces: up, without an address.
    for interface in net::wired_interfaces(Path::new("/sys"), Duration::ZERO).unwrap_or_default() {
        if interface != setup.interface {
            if let Err(err) = net::link_up(&interface) {
                log!("network: {err}");
            }
        }
    }
    Vec::new()
}

fn dhcp(config: &ImageConfig, write_dns: bool) -> Vec<DhcpLink> {
    let interfaces = match net::wired_interfaces(Path::new("/sys"), INTERFACE_TIMEOUT) {
        Ok(interfaces) => interfaces,
        Err(err) => {
            log!("dhcp: {err}");
            return Vec::new();
        }
    };
    let mut links = Vec::new();
    for interface in interfaces {
        match DhcpLink::start(
            Path::new("/sys"),
            interface.clone(),
            &config.image.hostname,
            write_dns,
        ) {
            Ok(link) => links.push(link),
            Err(err) => log!("dhcp: {interface}: {err}"),
        }
    }
    let deadline = Instant::now() + DHCP_TIMEOUT;
    for link in &mut links {
        let left = deadline.saturating_duration_since(Instant::now());
        if !link.acquire(left) {
            log!(
                "dhcp: no lease for {} after {} s; starting the containers, still trying",
                link.interface(),
                DHCP_TIMEOUT.as_secs()
            );
        }
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_partition_is_nosuid_and_nodev_but_not_noexec() {
        assert!(DATA_MOUNT_FLAGS.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        assert!(!DATA_MOUNT_FLAGS.contains(MsFlags::MS_NOEXEC));
        assert!(!DATA_MOUNT_FLAGS.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn the_reserve_is_not_roots_so_root_containers_cannot_use_it() {
        assert_eq!(data_mount_options(), "resuid=4294967294");
        assert_ne!(layout::DATA_RESERVE_UID, 0);
        // (uid_t)-1 means "no change" to the kernel; it is not a user id.
        assert_ne!(layout::DATA_RESERVE_UID, u32::MAX);
    }

    #[test]
    fn a_check_and_a_mount_make_the_data_report() {
        let failed = mounts::MountError::Mount {
            device: "/dev/vda4".into(),
            target: "/var".into(),
            fstype: "ext4".into(),
            errno: nix::errno::Errno::EUCLEAN,
        };
        let (state, detail) = data_outcome("/dev/vda4", None, None);
        assert_eq!(state, DataState::Mounted, "{detail}");

        let repaired = (fsck::Outcome::Repaired, "the mount failed".to_string());
        let (state, detail) = data_outcome("/dev/vda4", Some(&repaired), None);
        assert_eq!(state, DataState::Repaired);
        assert!(detail.contains("e2fsck repaired it"), "{detail}");

        let clean = (fsck::Outcome::Clean, "not marked clean".to_string());
        let (state, _) = data_outcome("/dev/vda4", Some(&clean), None);
        assert_eq!(state, DataState::Mounted);

        let broken = (
            fsck::Outcome::Failed("e2fsck -y exited with status 8".into()),
            "its superblock is not an ext4 superblock".to_string(),
        );
        let (state, detail) = data_outcome("/dev/vda4", Some(&broken), Some(&failed));
        assert_eq!(state, DataState::Unavailable);
        assert!(
            detail.contains("could not repair it: e2fsck -y exited with status 8")
                && detail.contains("does not mount")
                && detail.contains("/var is a tmpfs"),
            "{detail}"
        );
        let (state, detail) = data_outcome("/dev/vda4", None, Some(&failed));
        assert_eq!(state, DataState::Unavailable);
        assert!(detail.starts_with("/dev/vda4 does not mount"), "{detail}");
    }

    #[test]
    fn config_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.toml");
        let err = load_config(&path).unwrap_err();
        assert!(err.to_string().contains("image.toml"), "{err}");
        std::fs::write(&path, "[image]\nname = 1\n").unwrap();
        let err = load_config(&path).unwrap_err();
        assert!(matches!(err, SystemError::Config { .. }), "{err}");
        std::fs::write(
            &path,
            "[image]\nname='a'\nversion='1'\ncompatible='a'\nhostname='a'\n\
             [[container]]\nname='web'\nrestart='always'\n",
        )
        .unwrap();
        let config = load_config(&path).unwrap();
        assert_eq!(config.containers.len(), 1);
    }
}
