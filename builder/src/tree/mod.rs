//! Trees: the image's root and the initramfs, assembled in a staging folder
//! without root privileges.
//!
//! Takes the plan and the fetched sources; gives [`Tree`]s (metadata in memory,
//! contents in the staging folder) for the filesystem writers. [`staging`] is the
//! tree itself; [`rootfs`] assembles the root and the initramfs, and
//! [`runtime_spec`] writes each container's OCI runtime `config.json`; [`files`]
//! copies the user's files in and [`users`] resolves names through a root's own
//! /etc/passwd and /etc/group.

pub mod files;
pub mod rootfs;
pub mod runtime_spec;
pub mod staging;
pub mod users;

pub use staging::{normalize, Node, NodeKind, TarGuard, Tree, TreeError};
