//! Running one step without `CAP_SYS_RESOURCE` in the calling thread's
//! effective set.
//!
//! The data partition's reserved blocks are for processes with
//! `CAP_SYS_RESOURCE` (see `berth_format::layout::DATA_RESERVE_UID`).
//! overlayfs writes to its upper layer with the credentials of the process
//! that mounted it, captured at mount time: an overlay the init mounted with
//! all its capabilities would let a container with a writable root write into
//! the reserve. So the init mounts writable roots with that one capability
//! lowered, and raises it again right after (it stays in the permitted set).

use std::io;

/// `CAP_SYS_RESOURCE` (linux/capability.h).
const CAP_SYS_RESOURCE: u32 = 24;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn get() -> io::Result<[Data; 2]> {
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget reads the header and writes two `Data` records (version 3),
    // both valid, properly laid out (#[repr(C)]) and alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

fn set(data: &[Data; 2]) -> io::Result<()> {
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two `Data` records (version 3), both
    // valid and alive for the call; it changes only this thread's credentials.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `step` with `CAP_SYS_RESOURCE` out of this thread's effective set,
/// then puts it back. Fails (without running `step`) when the capability
/// cannot be lowered.
pub fn without_sys_resource<T>(step: impl FnOnce() -> T) -> io::Result<T> {
    let before = get()?;
    let mut lowered = before;
    lowered[0].effective &= !(1 << CAP_SYS_RESOURCE);
    set(&lowered)?;
    let result = step();
    if let Err(err) = set(&before) {
        log!("raising CAP_SYS_RESOURCE again: {err}");
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_sys_resource() -> bool {
        get().unwrap()[0].effective & (1 << CAP_SYS_RESOURCE) != 0
    }

    #[test]
    fn the_step_runs_without_the_capability_and_it_comes_back() {
        let had = has_sys_resource();
        let inside = without_sys_resource(has_sys_resource).unwrap();
        assert!(!inside);
        assert_eq!(has_sys_resource(), had);
    }
}
