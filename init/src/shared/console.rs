//! Making sure the standard descriptors reach the console.
//!
//! The kernel opens `/dev/console` as descriptors 0, 1 and 2 of PID 1 when the
//! initramfs has that node (the kernel's built-in initramfs provides it). If it was
//! missing, Rust's runtime put `/dev/null` there before `main`; once devtmpfs is
//! mounted, the real console can take their place.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::stat::{fstat, SFlag};

/// `/dev/null` is character device 1:3.
const DEV_NULL: (u64, u64) = (1, 3);

/// Major and minor number of a `dev_t` (glibc's and the kernel's encoding).
fn major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    (major, minor)
}

/// Points descriptors 0, 1 and 2 at `/dev/console` if standard error is not a
/// character device other than `/dev/null`.
pub fn ensure() {
    let stderr_ok = fstat(std::io::stderr().as_fd()).is_ok_and(|stat| {
        SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFCHR
            && major_minor(stat.st_rdev) != DEV_NULL
    });
    if stderr_ok {
        return;
    }
    let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for target in 0..=2 {
        // SAFETY: dup2 takes two descriptor numbers and no pointers; `console` is
        // open for the duration of the call, and replacing 0-2 is the point.
        unsafe {
            libc::dup2(console.as_raw_fd(), target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_device_numbers() {
        assert_eq!(major_minor(0x103), DEV_NULL);
        // /dev/console is 5:1; a large minor uses the high bits.
        assert_eq!(major_minor(0x501), (5, 1));
        assert_eq!(major_minor(0x0120_0834), (8, 0x1234));
    }
}
