//! Each container's OCI runtime configuration, the `config.json` of its bundle:
//! the process (command, environment, user, working folder), its mounts
//! (a private /tmp, the host's resolv.conf, volumes), namespaces, cgroup limits,
//! and its confinement (capabilities, no new privileges, a seccomp filter).
//!
//! Written once at build time from the plan and the image's defaults; the init
//! hands the bundle to crun as it is. The bytes are stable: the same recipe
//! always gives the same `config.json`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use berth_format::layout::{CGROUP_LEAF, CGROUP_PARENT, RESOLV_CONF, VOLUMES_DIR};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::recipe::{
    BuildPlan, ContainerNetwork, ContainerPlan, Limits, Privileges, RecipeError, CAPABILITIES,
};
use crate::sources::oci::ImageDefaults;
use crate::tree::{users, Tree};

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
    let ids = match (&container.user, &defaults.user) {
        (Some(user), _) => users::resolve_process(user, rootfs).map_err(|e| {
            let message = format!("container {:?}: {e}", container.name);
            match &container.user_at {
                Some(at) => RuntimeSpecError::Recipe(at.error(message)),
                None => fail(message),
            }
        })?,
        (None, Some(user)) => users::resolve_process(user, rootfs)
            .map_err(|e| fail(format!("the image's user: {e}")))?,
        (None, None) => users::ProcessUser::default(),
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
    user.set_uid(ids.uid);
    user.set_gid(ids.gid);
    if !ids.additional.is_empty() {
        user.set_additional_gids(Some(ids.additional));
    }
    process.set_user(user);
    // Always written, so the default is berth's (Podman's), not the OCI
    // library's 1024.
    let rlimits = container
        .rlimits
        .iter()
        .map(|r| {
            serde_json::from_value::<oci_spec::runtime::PosixRlimit>(serde_json::json!({
                "type": r.name, "soft": r.soft, "hard": r.hard,
            }))
            .map_err(|e| fail(format!("rlimit {}: {e}", r.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    process.set_rlimits(Some(rlimits));
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
    if !container.sysctls.is_empty() {
        // Sorted by the JSON writer (serde_json's map is ordered by key).
        linux.set_sysctl(Some(container.sysctls.clone().into_iter().collect()));
    }
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

/// System calls every confined container may make. Everything else fails with
/// EPERM. This is Docker's default seccomp profile (moby
/// `profiles/seccomp/default.json`), its unconditional allow list for x86, with
/// these differences, each stricter:
/// - no `io_uring_setup`/`io_uring_enter`/`io_uring_register` (Docker 25 dropped
///   them too: io_uring has been a steady source of kernel exploits, and its
///   operations bypass this filter);
/// - `clock_adjtime` needs CAP_SYS_TIME and `name_to_handle_at` CAP_SYS_ADMIN
///   (berth's filter denied them before, nothing in a container needs them).
///
/// Not here, so denied: keyrings (`add_key`, `keyctl`, `request_key`),
/// `userfaultfd`, `kexec_*`, `swapon`/`swapoff`, obsolete calls (`uselib`,
/// `ustat`, `sysfs`, `_sysctl`, `create_module`, …), and the calls of
/// [`CAPABILITY_SYSCALLS`] without their capability. `clone`, `clone3`,
/// `socket` and `personality` have rules of their own ([`seccomp_filter`]).
#[rustfmt::skip] // Many short names: a block, not one per line.
const ALLOWED_SYSCALLS: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "arch_prctl", "bind", "brk",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr",
    "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
    "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv",
    "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list",
    "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid",
    "gettimeofday", "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup",
    "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat",
    "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "modify_ldt", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2", "pause",
    "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_mrelease", "process_vm_readv", "process_vm_writev",
    "pselect6", "pselect6_time64", "ptrace", "pwrite64", "pwritev", "pwritev2", "read",
    "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename", "renameat",
    "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn",
    "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx",
    "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill",
    "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat",
    "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4",
    "waitid", "waitpid", "write", "writev",
];

/// System calls allowed only with a capability, as Docker's default profile
/// has them (plus the two of [`ALLOWED_SYSCALLS`]'s stricter list). `cap_add`
/// (or `privileged`, which drops the filter altogether) lifts a group;
/// `cap_drop` of a default capability does not matter here, none of these
/// belong to the default set.
const CAPABILITY_SYSCALLS: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "name_to_handle_at",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &[
            "settimeofday",
            "stime",
            "clock_settime",
            "clock_settime64",
            "clock_adjtime",
            "clock_adjtime64",
        ],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The `clone` flags that create namespaces (CLONE_NEWNS, CLONE_NEWCGROUP,
/// CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET):
/// without CAP_SYS_ADMIN, `clone` is allowed only with none of them set.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `personality` values allowed: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and 0xffffffff (the query).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];
/// AF_VSOCK: `socket` is allowed for every other family.
const AF_VSOCK: u64 = 40;
const EPERM: u32 = 1;
/// `clone3` fails with ENOSYS without CAP_SYS_ADMIN (its flags are in memory,
/// out of seccomp's reach): C libraries then fall back to `clone`, whose flags
/// the filter checks.
const ENOSYS: u32 = 38;

/// The seccomp filter of a confined container holding `caps`: an allow list,
/// everything else EPERM (see [`ALLOWED_SYSCALLS`]).
fn seccomp_filter(caps: &BTreeSet<String>) -> serde_json::Value {
    let mut allowed: Vec<&str> = ALLOWED_SYSCALLS.to_vec();
    for (cap, names) in CAPABILITY_SYSCALLS {
        if caps.contains(*cap) {
            allowed.extend_from_slice(names);
        }
    }
    allowed.sort_unstable();
    allowed.dedup();
    let allow = "SCMP_ACT_ALLOW";
    let mut rules = vec![serde_json::json!({ "names": allowed, "action": allow })];
    rules.push(serde_json::json!({
        "names": ["socket"],
        "action": allow,
        "args": [{ "index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE" }],
    }));
    for personality in PERSONALITIES {
        rules.push(serde_json::json!({
            "names": ["personality"],
            "action": allow,
            "args": [{ "index": 0, "value": personality, "op": "SCMP_CMP_EQ" }],
        }));
    }
    if !caps.contains("CAP_SYS_ADMIN") {
        rules.push(serde_json::json!({
            "names": ["clone"],
            "action": allow,
            "args": [{
                "index": 0,
                "value": CLONE_NAMESPACE_FLAGS,
                "valueTwo": 0,
                "op": "SCMP_CMP_MASKED_EQ",
            }],
        }));
        rules.push(serde_json::json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
        }));
    }
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    })
}

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
        let seccomp = seccomp_filter(&caps);
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
        config_in(container, &Tree::new(std::path::Path::new("/nonexistent")))
    }

    /// The same, the container's root being `rootfs`.
    fn config_in(container: &str, rootfs: &Tree) -> serde_json::Value {
        let recipe = format!(
            "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[[container]]\nname = \"c\"\nimage = \"docker.io/library/busybox:1\"\ncommand = [\"/bin/sh\"]\n{container}\n"
        );
        let plan = crate::recipe::parse(std::path::Path::new("x.toml"), &recipe).unwrap();
        let json = config_json(
            &plan,
            &plan.containers[0],
            &ImageDefaults::default(),
            rootfs,
        )
        .unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    #[test]
    fn a_named_user_runs_with_its_supplementary_groups() {
        let dir = tempfile::tempdir().unwrap();
        let mut rootfs = Tree::new(dir.path());
        rootfs
            .add_bytes(
                "etc/passwd",
                b"root:x:0:0::/root:/bin/sh\npostgres:x:105:110::/var/lib/postgresql:/bin/sh\n",
                0o644,
            )
            .unwrap();
        rootfs
            .add_bytes(
                "etc/group",
                b"root:x:0:\nssl-cert:x:109:postgres\npostgres:x:110:\n",
                0o644,
            )
            .unwrap();
        let user_of = |user: &str| {
            config_in(&format!("user = \"{user}\""), &rootfs)["process"]["user"].clone()
        };
        assert_eq!(
            user_of("postgres"),
            serde_json::json!({"uid": 105, "gid": 110, "additionalGids": [109]})
        );
        // A named group: that group alone, as `docker run --user u:g`.
        assert_eq!(
            user_of("postgres:postgres"),
            serde_json::json!({"uid": 105, "gid": 110})
        );
        assert_eq!(user_of("root"), serde_json::json!({"uid": 0, "gid": 0}));
    }

    fn strings(value: &serde_json::Value) -> Vec<&str> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    }

    /// The names the first (plain allow) rule of a filter allows.
    fn allowed(config: &serde_json::Value) -> Vec<&str> {
        strings(&config["linux"]["seccomp"]["syscalls"][0]["names"])
    }

    /// The rules for `name` after the first one (those with conditions).
    fn conditional<'a>(config: &'a serde_json::Value, name: &str) -> Vec<&'a serde_json::Value> {
        config["linux"]["seccomp"]["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .filter(|rule| strings(&rule["names"]).contains(&name))
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
        let seccomp = &config["linux"]["seccomp"];
        // An allow list: what it does not name fails with EPERM.
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(seccomp["defaultErrnoRet"], 1);
        let allowed = allowed(&config);
        assert!(allowed.contains(&"read") && allowed.contains(&"execve"));
        assert!(allowed.is_sorted(), "{allowed:?}");
        // Adding CAP_SYS_TIME lifts the clock calls it belongs to.
        assert!(allowed.contains(&"settimeofday"), "{allowed:?}");
        assert!(allowed.contains(&"clock_adjtime"), "{allowed:?}");
    }

    #[test]
    fn the_filter_denies_what_dockers_default_profile_denies() {
        let config = config_of("");
        let allowed = allowed(&config);
        for denied in [
            // Namespaces, mounts, and other CAP_SYS_ADMIN calls.
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "fsopen",
            "open_tree",
            "clone3",
            "sethostname",
            "name_to_handle_at",
            // io_uring, keyrings, BPF, perf, userfaultfd.
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "add_key",
            "keyctl",
            "request_key",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            // Modules, kexec, reboot, swap, clocks, raw I/O, accounting, chroot.
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "reboot",
            "swapon",
            "swapoff",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "iopl",
            "ioperm",
            "acct",
            "chroot",
            "open_by_handle_at",
            "kcmp",
            "vhangup",
            "syslog",
            "mbind",
            "lookup_dcookie",
            "quotactl",
            // Obsolete.
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "create_module",
            "nfsservctl",
            // Conditional: only in their own rules below.
            "clone",
            "socket",
            "personality",
        ] {
            assert!(!allowed.contains(&denied), "{denied} is allowed");
        }
        // clone only without namespace flags (CLONE_NEWUSER is 0x10000000,
        // CLONE_NEWNS 0x20000).
        let clone = conditional(&config, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        let arg = &clone[0]["args"][0];
        assert_eq!(arg["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(arg["index"], 0);
        let mask = arg["value"].as_u64().unwrap();
        assert_eq!(mask, 0x7E02_0000);
        for flag in [0x1000_0000, 0x2_0000, 0x0200_0000, 0x0400_0000, 0x0800_0000] {
            assert_ne!(mask & flag, 0, "{flag:#x}");
        }
        assert_eq!(arg["valueTwo"], 0);
        // clone3 says ENOSYS, so libc falls back to clone.
        let clone3 = conditional(&config, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
        // personality: the five values Docker allows, one rule each.
        let values: Vec<u64> = conditional(&config, "personality")
            .iter()
            .map(|rule| {
                assert_eq!(rule["args"][0]["op"], "SCMP_CMP_EQ");
                rule["args"][0]["value"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(values, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
        // socket: every family but AF_VSOCK.
        let socket = conditional(&config, "socket");
        assert_eq!(socket[0]["args"][0]["op"], "SCMP_CMP_NE");
        assert_eq!(socket[0]["args"][0]["value"], 40);
    }

    #[test]
    fn cap_add_lifts_its_group_of_calls() {
        let config = config_of("cap_add = [\"SYS_ADMIN\", \"BPF\", \"SYS_PTRACE\"]");
        let allowed = allowed(&config);
        for name in [
            "unshare",
            "setns",
            "mount",
            "clone",
            "clone3",
            "bpf",
            "perf_event_open",
            "kcmp",
        ] {
            assert!(allowed.contains(&name), "{name} is not allowed");
        }
        // With CAP_SYS_ADMIN, no conditional clone rules remain.
        assert!(conditional(&config, "clone").is_empty());
        assert!(conditional(&config, "clone3").is_empty());
        // Other groups stay denied, io_uring and keyrings whatever the caps.
        for name in ["reboot", "init_module", "io_uring_setup", "keyctl"] {
            assert!(!allowed.contains(&name), "{name} is allowed");
        }
        let config = config_of("cap_add = [\"PERFMON\"]");
        assert!(allowed_has(&config, "perf_event_open"));
        assert!(!allowed_has(&config, "bpf"));
    }

    fn allowed_has(config: &serde_json::Value, name: &str) -> bool {
        allowed(config).contains(&name)
    }

    #[test]
    fn filter_names_are_well_formed_and_listed_once() {
        // crun skips names it does not know, so a malformed name would silently
        // allow nothing: each is a plain syscall name, listed once.
        for name in ALLOWED_SYSCALLS.iter().chain(
            CAPABILITY_SYSCALLS
                .iter()
                .flat_map(|(_, names)| names.iter()),
        ) {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
        let mut sorted = ALLOWED_SYSCALLS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ALLOWED_SYSCALLS.len(), "a name twice");
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

    #[test]
    fn rlimits_and_sysctls_reach_the_runtime() {
        let config = config_of("");
        assert_eq!(
            config["process"]["rlimits"],
            serde_json::json!([{ "type": "RLIMIT_NOFILE", "soft": 1_048_576, "hard": 1_048_576 }])
        );
        assert!(config["linux"].get("sysctl").is_none());
        let config = config_of(
            "network = \"none\"\nrlimits = { nofile = 4096, core = \"0:unlimited\" }\nsysctls = { \"net.ipv4.ip_unprivileged_port_start\" = 0, \"kernel.shmmax\" = \"65536\" }",
        );
        assert_eq!(
            config["process"]["rlimits"],
            serde_json::json!([
                { "type": "RLIMIT_CORE", "soft": 0, "hard": u64::MAX },
                { "type": "RLIMIT_NOFILE", "soft": 4096, "hard": 4096 },
            ])
        );
        assert_eq!(
            config["linux"]["sysctl"],
            serde_json::json!({ "kernel.shmmax": "65536", "net.ipv4.ip_unprivileged_port_start": "0" })
        );
    }
}
