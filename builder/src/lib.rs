//! berth-builder: turns a TOML recipe into a bootable GPT disk image.
//!
//! The pipeline (see `build`): `recipe` parses and validates into a `BuildPlan`;
//! `apt`, `kernel`, `oci` and `registry` fetch sources (pinned by `lock`) into the content-addressed `cache`;
//! `rootfs` assembles staging `tree`s without root privileges; `initramfs`,
//! `squashfs`, `verity` and `disk` write the artifacts; `report` records what went in.

pub mod apt;
pub mod build;
pub mod bundle;
pub mod cache;
pub mod credentials;
pub mod deb;
pub mod disk;
pub mod initramfs;
pub mod kernel;
pub mod keys;
pub mod lock;
pub mod oci;
pub mod progress;
pub mod publish;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod reproducible;
pub mod rootfs;
pub mod squashfs;
pub mod tree;
pub mod verity;
