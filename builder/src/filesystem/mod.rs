//! Filesystems: the bytes that boot, written from trees.
//!
//! Takes the assembled [`Tree`](crate::tree::Tree)s; gives the compressed
//! [`initramfs`], the read-only root as a [`squashfs`] image and its dm-[`verity`]
//! hash tree (whose root hash goes on the kernel command line).

pub mod initramfs;
pub mod squashfs;
pub mod verity;
