//! Each container's OCI runtime configuration, the `config.json` of its bundle:
//! the process (command, environment, user, working folder), its mounts
//! (a private /tmp, the host's resolv.conf, volumes), namespaces, cgroup limits,
//! and its confinement (capabilities, no new privileges, a seccomp filter).
//!
//! Written once at build time from the plan and the image's defaults; the init
//! hands the bundle to crun as it is. The bytes are stable: the same recipe
//! always gives the same `config.json`.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use berth_format::layout::{CGROUP_LEAF, CGROUP_PARENT, RESOLV_CONF, VOLUMES_DIR};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::recipe::{
    BuildPlan, ContainerNetwork, ContainerPlan, Limits, Privileges, RecipeError, CAPABILITIES,
};
use crate::sources::oci::ImageDefaults;
use crate::tree::{Node, NodeKind, Tree};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A container whose runtime configuration cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeSpecError {
    /// Points at the recipe's container (no command to run).
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("writing the OCI runtime config of {container}: {reason}")]
    Spec { container: String, reason: String },
}

/// The `config.json` bytes of a container's bundle.
pub fn config_json(
    plan: &BuildPlan,
    container: &ContainerPlan,
    defaults: &ImageDefaults,
    rootfs: &Tree,
) -> Result<Vec<u8>, RuntimeSpecError> {
    let spec = runtime_spec(plan, container, defaults, rootfs)?;
    spec_json(&spec).map_err(|e| RuntimeSpecError::Spec {
        container: container.name.clone(),
        reason: e.to_string(),
    })
}

/// The OCI runtime configuration of a container.
pub fn runtime_spec(
    plan: &BuildPlan,
    container: &ContainerPlan,
    defaults: &ImageDefaults,
    rootfs: &Tree,
) -> Result<Spec, RuntimeSpecError> {
    let fail = |reason: String| RuntimeSpecError::Spec {
        container: container.name.clone(),
        reason,
    };
    let args: Vec<String> = match &container.command {
        Some(command) => command
            .iter()
            .chain(container.args.iter().flatten())
            .cloned()
            .collect(),
        None => defaults
            .entrypoint
            .iter()
            .chain(container.args.as_ref().unwrap_or(&defaults.cmd))
            .cloned()
            .collect(),
    };
    if args.is_empty() {
        return Err(container
            .at
            .error(format!(
                "container {:?}: the image has no entrypoint or command; set `command`",
                container.name
            ))
            .into());
    }
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    };
    set(DEFAULT_PATH.to_string());
    defaults.env.iter().cloned().for_each(&mut set);
    container
        .env
        .iter()
        .for_each(|(k, v)| set(format!("{k}={v}")));
    let (uid, gid) = match (&container.user, &defaults.user) {
        (Some(user), _) => resolve_user(user, rootfs).ok_or_else(|| {
            fail(format!(
                "user {user:?} of the recipe is neither numeric nor in the image's /etc/passwd"
            ))
        })?,
        (None, Some(user)) => resolve_user(user, rootfs).ok_or_else(|| {
            fail(format!(
                "user {user:?} of the image is neither numeric nor in its /etc/passwd"
            ))
        })?,
        (None, None) => (0, 0),
    };
    let cwd = container
        .workdir
        .clone()
        .or_else(|| defaults.workdir.clone())
        .unwrap_or_else(|| "/".to_string());

    let mut spec = Spec::default();
    // No UTS namespace: containers see the device's host name, which the init
    // sets at boot (from the recipe, or from the ESP's provisioning file).
    let _ = &plan.hostname;
    spec.set_hostname(None);
    if !defaults.exposed_ports.is_empty() {
        // The image-spec's name for them in a runtime config: informational,
        // containers share the device's network.
        spec.set_annotations(Some(
            [(
                "org.opencontainers.image.exposedPorts".to_string(),
                defaults.exposed_ports.join(","),
            )]
            .into_iter()
            .collect(),
        ));
    }
    let mut root = oci_spec::runtime::Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(true));
    spec.set_root(Some(root));
    let process = spec
        .process_mut()
        .as_mut()
        .ok_or_else(|| fail("no process".into()))?;
    process.set_terminal(Some(false));
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cwd));
    process.set_no_new_privileges(Some(true));
    let mut user = oci_spec::runtime::User::default();
    user.set_uid(uid);
    user.set_gid(gid);
    process.set_user(user);
    // The root is read-only: give the container a private, writable /tmp (as
    // `docker run --read-only --tmpfs /tmp` would).
    let mut tmp = oci_spec::runtime::Mount::default();
    tmp.set_destination(PathBuf::from("/tmp"));
    tmp.set_typ(Some("tmpfs".into()));
    tmp.set_source(Some(PathBuf::from("tmpfs")));
    tmp.set_options(Some(
        ["nosuid", "nodev", "mode=1777", "size=64m"]
            .map(String::from)
            .to_vec(),
    ));
    let bind = |source: &str, destination: &str, options: &[&str]| {
        let mut mount = oci_spec::runtime::Mount::default();
        mount.set_destination(PathBuf::from(destination));
        mount.set_typ(Some("bind".into()));
        mount.set_source(Some(PathBuf::from(source)));
        mount.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
        mount
    };
    if let Some(mounts) = spec.mounts_mut() {
        mounts.push(tmp);
        // The host's DNS configuration (written by the init: static servers or the
        // DHCP lease's, rewritten in place so the bind mount follows it).
        if container.network == ContainerNetwork::Host {
            mounts.push(bind(
                RESOLV_CONF,
                "/etc/resolv.conf",
                &["bind", "ro", "nosuid", "nodev", "noexec"],
            ));
        }
        for (volume, path) in &container.volumes {
            mounts.push(bind(
                &format!("{VOLUMES_DIR}/{volume}"),
                path,
                &["rbind", "rw", "nosuid", "nodev"],
            ));
        }
    }
    if container.writable {
        // The init mounts an overlay on the bundle's rootfs before the start.
        if let Some(root) = spec.root_mut() {
            root.set_readonly(Some(false));
        }
    }
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| fail("no linux section".into()))?;
    if let Some(namespaces) = linux.namespaces_mut() {
        namespaces.retain(|n| {
            n.typ() != LinuxNamespaceType::Uts
                && (n.typ() != LinuxNamespaceType::Network
                    || container.network == ContainerNetwork::None)
        });
    }
    linux.set_cgroups_path(Some(PathBuf::from(format!(
        "{CGROUP_PARENT}/{}/{CGROUP_LEAF}",
        container.name
    ))));
    if let Some(resources) = resources(&container.limits).map_err(|e| fail(e.to_string()))? {
        linux.set_resources(Some(resources));
    }
    if container.privileges == Privileges::Privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    confine(spec, container).map_err(|e| fail(e.to_string()))
}

/// The cgroup v2 limits as OCI resources (crun writes memory.max, cpu.max,
/// pids.max); `None` when the recipe sets none.
fn resources(
    limits: &Limits,
) -> Result<Option<oci_spec::runtime::LinuxResources>, oci_spec::OciSpecError> {
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    if *limits == Limits::default() {
        return Ok(None);
    }
    let mut builder = LinuxResourcesBuilder::default();
    if let Some(bytes) = limits.memory {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        // No swap on berth devices: memory + swap = memory.
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()?,
        );
    }
    if let Some(millicpus) = limits.millicpus {
        let quota = i64::try_from(millicpus * 100).unwrap_or(i64::MAX);
        builder = builder.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(100_000u64)
                .build()?,
        );
    }
    if let Some(pids) = limits.pids {
        builder = builder.pids(LinuxPidsBuilder::default().limit(pids).build()?);
    }
    Ok(Some(builder.build()?))
}

/// System calls a confined container may not make (EPERM), after Docker's
/// default profile, reduced to a deny list: kernel modules, kexec, reboot,
/// swap, accounting, keyrings, BPF, perf, userfaultfd, handles by inode and
/// long-obsolete calls. Each group is lifted when the recipe adds the
/// capability it belongs to.
const DENIED_SYSCALLS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "acct",
            "add_key",
            "bpf",
            "create_module",
            "get_kernel_syms",
            "keyctl",
            "lookup_dcookie",
            "nfsservctl",
            "perf_event_open",
            "query_module",
            "request_key",
            "_sysctl",
            "sysfs",
            "uselib",
            "userfaultfd",
            "ustat",
            "vhangup",
        ],
    ),
    (
        "CAP_SYS_ADMIN",
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "name_to_handle_at",
            "quotactl",
            "swapon",
            "swapoff",
            "fsopen",
            "fsmount",
            "fsconfig",
            "move_mount",
            "open_tree",
            "fspick",
            "mount_setattr",
        ],
    ),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_MODULE",
        &["init_module", "finit_module", "delete_module"],
    ),
    ("CAP_SYS_BOOT", &["reboot", "kexec_load", "kexec_file_load"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_adjtime"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
];

/// Capabilities (the OCI default set, `cap_add`, minus `cap_drop`; every one when
/// privileged), no new privileges and the seccomp filter unless privileged.
fn confine(spec: Spec, container: &ContainerPlan) -> Result<Spec, serde_json::Error> {
    let mut value = serde_json::to_value(&spec)?;
    let privileged = container.privileges == Privileges::Privileged;
    let mut caps: BTreeSet<String> = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        .map(String::from)
        .into_iter()
        .collect();
    if privileged {
        caps.extend(CAPABILITIES.map(String::from));
    }
    caps.extend(container.cap_add.iter().cloned());
    for drop in &container.cap_drop {
        caps.remove(drop);
    }
    let list = serde_json::Value::from(caps.iter().cloned().collect::<Vec<_>>());
    if let Some(process) = value.get_mut("process").and_then(|p| p.as_object_mut()) {
        let sets = [
            "bounding",
            "effective",
            "inheritable",
            "permitted",
            "ambient",
        ];
        let capabilities: serde_json::Map<String, serde_json::Value> = sets
            .iter()
            .map(|set| (set.to_string(), list.clone()))
            .collect();
        process.insert("capabilities".into(), capabilities.into());
        process.insert("noNewPrivileges".into(), (!privileged).into());
    }
    if !privileged {
        let names: Vec<&str> = DENIED_SYSCALLS
            .iter()
            .filter(|(cap, _)| cap.is_empty() || !caps.contains(*cap))
            .flat_map(|(_, names)| names.iter().copied())
            .collect();
        let seccomp = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{ "names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }],
        });
        if let Some(linux) = value.get_mut("linux").and_then(|l| l.as_object_mut()) {
            linux.insert("seccomp".into(), seccomp);
        }
    }
    serde_json::from_value(value)
}

/// The runtime configuration's bytes. oci-spec keeps capabilities in `HashSet`s,
/// which serialize in a different order in every process: they are sorted here so
/// the same recipe always gives the same `config.json` (and the same image).
pub fn spec_json(spec: &Spec) -> serde_json::Result<Vec<u8>> {
    let mut value = serde_json::to_value(spec)?;
    if let Some(sets) = value
        .pointer_mut("/process/capabilities")
        .and_then(serde_json::Value::as_object_mut)
    {
        for set in sets.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    serde_json::to_vec_pretty(&value)
}

fn resolve_user(user: &str, rootfs: &Tree) -> Option<(u32, u32)> {
    let (name, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let lookup = |file: &str, name: &str| -> Option<(u32, u32)> {
        let key = rootfs.resolve(file, true).ok()??;
        let Some(Node {
            kind: NodeKind::File(path),
            ..
        }) = rootfs.get(&key)
        else {
            return None;
        };
        let text = fs::read_to_string(path).ok()?;
        text.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&name) && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    let (uid, mut gid) = match name.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) => lookup("etc/passwd", name)?,
    };
    if let Some(group) = group {
        gid = match group.parse::<u32>() {
            Ok(g) => g,
            Err(_) => lookup("etc/group", group)?.0,
        };
    }
    Some((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_bytes_do_not_depend_on_hash_order() {
        // Every Spec gets its capability sets from a fresh, randomly keyed
        // HashSet: the bytes must still be the same each time.
        let first = spec_json(&Spec::default()).unwrap();
        for _ in 0..16 {
            assert_eq!(spec_json(&Spec::default()).unwrap(), first);
        }
        let value: serde_json::Value = serde_json::from_slice(&first).unwrap();
        let bounding: Vec<&str> = value["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(bounding.len() > 1, "{bounding:?}");
        assert!(bounding.is_sorted(), "{bounding:?}");
    }

    /// The runtime configuration of the recipe's one container, as JSON.
    fn config_of(container: &str) -> serde_json::Value {
        let recipe = format!(
            "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[[container]]\nname = \"c\"\nimage = \"docker.io/library/busybox:1\"\ncommand = [\"/bin/sh\"]\n{container}\n"
        );
        let plan = crate::recipe::parse(std::path::Path::new("x.toml"), &recipe).unwrap();
        let rootfs = Tree::new(std::path::Path::new("/nonexistent"));
        let json = config_json(
            &plan,
            &plan.containers[0],
            &ImageDefaults::default(),
            &rootfs,
        )
        .unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    fn strings(value: &serde_json::Value) -> Vec<&str> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    }

    #[test]
    fn confined_containers_get_few_capabilities_and_a_seccomp_filter() {
        let config = config_of("cap_add = [\"sys_time\"]\ncap_drop = [\"KILL\"]");
        assert_eq!(
            strings(&config["process"]["capabilities"]["bounding"]),
            ["CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE", "CAP_SYS_TIME"]
        );
        assert_eq!(config["process"]["noNewPrivileges"], true);
        let denied = strings(&config["linux"]["seccomp"]["syscalls"][0]["names"]);
        assert!(denied.contains(&"kexec_load") && denied.contains(&"mount"));
        // Adding CAP_SYS_TIME lifts the clock calls it belongs to.
        assert!(!denied.contains(&"settimeofday"), "{denied:?}");
    }

    #[test]
    fn privileged_containers_get_every_capability_and_no_filter() {
        let config = config_of("privileged = true");
        assert_eq!(
            config["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            CAPABILITIES.len()
        );
        assert_eq!(config["process"]["noNewPrivileges"], false);
        assert!(config["linux"].get("seccomp").is_none());
        assert!(config["linux"].get("maskedPaths").is_none());
    }

    #[test]
    fn limits_become_cgroup_resources() {
        let config = config_of("memory = \"64M\"\ncpus = 0.5\npids = 100");
        let resources = &config["linux"]["resources"];
        assert_eq!(resources["memory"]["limit"], 64 << 20);
        assert_eq!(resources["memory"]["swap"], 64 << 20);
        assert_eq!(resources["cpu"]["quota"], 50_000);
        assert_eq!(resources["cpu"]["period"], 100_000);
        assert_eq!(resources["pids"]["limit"], 100);
        assert_eq!(
            config["linux"]["cgroupsPath"],
            format!("{CGROUP_PARENT}/c/{CGROUP_LEAF}")
        );
    }
}
