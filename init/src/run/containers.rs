//! What a container needs on the host before it starts: the folders of its named
//! volumes, its writable root (an overlay over the read-only bundle root, its
//! upper layer on the data partition, wiped when the image version changes) and
//! its cgroup parent, whose `memory.events` tells whether the kernel's OOM killer
//! ended it.

use std::path::{Path, PathBuf};

use berth_format::layout::{CGROUP_PARENT, CONTAINERS_DIR, CONTAINER_STATE_DIR, VOLUMES_DIR};
use nix::mount::MsFlags;

use crate::shared::mounts;

/// Where cgroup2 is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Controllers delegated to the containers' cgroups.
const CONTROLLERS: &str = "+cpu +memory +pids";
/// The file in a writable root's state folder naming the image version that
/// created its upper layer.
const VERSION_FILE: &str = "image-version";

/// A step of preparing a container that failed (the start goes on without it).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A folder could not be created or removed.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError {
    let path = path.to_path_buf();
    move |source| PrepareError::Io { what, path, source }
}

/// Enables the cpu, memory and pids controllers for `/berth` and its children
/// (crun creates the leaves). Best effort: without them limits do not apply.
pub fn delegate_controllers() {
    let root = Path::new(CGROUP_ROOT);
    let parent = root.join(CGROUP_PARENT.trim_start_matches('/'));
    if let Err(err) = std::fs::create_dir_all(&parent) {
        log!("creating cgroup {}: {err}", parent.display());
        return;
    }
    for dir in [root, parent.as_path()] {
        let control = dir.join("cgroup.subtree_control");
        if let Err(err) = std::fs::write(&control, CONTROLLERS) {
            log!("enabling {CONTROLLERS} in {}: {err}", control.display());
        }
    }
}

/// The cgroup folder of container `name` that the runtime's leaf lives in.
fn cgroup_dir(name: &str) -> PathBuf {
    Path::new(CGROUP_ROOT)
        .join(CGROUP_PARENT.trim_start_matches('/'))
        .join(name)
}

/// Creates the container's cgroup parent (with the controllers delegated).
pub fn cgroup(name: &str) -> Result<(), PrepareError> {
    let dir = cgroup_dir(name);
    std::fs::create_dir_all(&dir).map_err(io("creating cgroup", &dir))?;
    let control = dir.join("cgroup.subtree_control");
    std::fs::write(&control, CONTROLLERS).map_err(io("writing", &control))
}

/// How many processes of container `name` the OOM killer has killed so far.
pub fn oom_kills(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(cgroup_dir(name).join("memory.events")).ok()?;
    parse_oom_kills(&text)
}

/// The `oom_kill` count of a `memory.events` file.
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Creates `/var/lib/berth/volumes/<volume>` for each of the container's volumes.
pub fn volumes(volumes: &[String]) -> Result<(), PrepareError> {
    for volume in volumes {
        let dir = Path::new(VOLUMES_DIR).join(volume);
        std::fs::create_dir_all(&dir).map_err(io("creating volume", &dir))?;
    }
    Ok(())
}

/// What [`writable_root`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WritableRoot {
    /// Mounted earlier in this boot (a restart).
    AlreadyMounted,
    /// Mounted over the layer of the same image version.
    Kept,
    /// Mounted over a fresh layer; the old one (of this version, if any) was
    /// removed.
    Fresh { previous: Option<String> },
}

/// Mounts the overlay root of container `name`: lower = its read-only bundle
/// root, upper and work under `/var/lib/berth/containers/<name>/`, wiped first
/// when they were made by another image version.
pub fn writable_root(name: &str, version: &str) -> Result<WritableRoot, PrepareError> {
    let rootfs = Path::new(CONTAINERS_DIR).join(name).join("rootfs");
    if mounts::is_mountpoint(&rootfs) {
        return Ok(WritableRoot::AlreadyMounted);
    }
    let state = Path::new(CONTAINER_STATE_DIR).join(name);
    let outcome = refresh_layer(&state, version)?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        rootfs.display(),
        state.join("upper").display(),
        state.join("work").display()
    );
    // Without CAP_SYS_RESOURCE: overlayfs writes the upper layer with the
    // mounter's credentials, and that capability opens the data partition's
    // reserve (see `caps`).
    let mount = || {
        mounts::mount_fs(
            "overlay",
            &rootfs,
            "overlay",
            MsFlags::MS_NODEV,
            Some(&data),
        )
    };
    super::caps::without_sys_resource(mount)
        .map_err(io("lowering CAP_SYS_RESOURCE to mount", &rootfs))??;
    Ok(outcome)
}

/// Keeps `<state>/upper` and `<state>/work` when `<state>/image-version` says
/// `version`, else removes them and starts over; creates what is missing.
pub fn refresh_layer(state: &Path, version: &str) -> Result<WritableRoot, PrepareError> {
    let stamp = state.join(VERSION_FILE);
    let previous = std::fs::read_to_string(&stamp)
        .ok()
        .map(|text| text.trim().to_string());
    let outcome = if previous.as_deref() == Some(version) {
        WritableRoot::Kept
    } else {
        for dir in ["upper", "work"] {
            let path = state.join(dir);
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io("removing", &path)(err)),
            }
        }
        WritableRoot::Fresh { previous }
    };
    for dir in ["upper", "work"] {
        let path = state.join(dir);
        std::fs::create_dir_all(&path).map_err(io("creating", &path))?;
    }
    if outcome != WritableRoot::Kept {
        std::fs::write(&stamp, format!("{version}\n")).map_err(io("writing", &stamp))?;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_oom_kill_count() {
        let text = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(text), Some(2));
        assert_eq!(parse_oom_kills("low 0\n"), None);
    }

    #[test]
    fn layers_are_kept_for_the_same_version_and_wiped_on_update() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("web");
        assert_eq!(
            refresh_layer(&state, "1.0.0").unwrap(),
            WritableRoot::Fresh { previous: None }
        );
        std::fs::write(state.join("upper/file"), "x").unwrap();
        assert_eq!(refresh_layer(&state, "1.0.0").unwrap(), WritableRoot::Kept);
        assert!(state.join("upper/file").exists());
        assert_eq!(
            refresh_layer(&state, "1.1.0").unwrap(),
            WritableRoot::Fresh {
                previous: Some("1.0.0".into())
            }
        );
        assert!(!state.join("upper/file").exists());
        assert!(state.join("work").is_dir());
        assert_eq!(
            std::fs::read_to_string(state.join("image-version")).unwrap(),
            "1.1.0\n"
        );
    }
}
