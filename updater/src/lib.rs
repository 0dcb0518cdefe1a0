//! berth's shared formats: the disk layout (partitions, ESP paths, boot entries, the
//! kernel command line contract), the boot-entry state machine (`entries`) and the
//! image configuration the init runs from.
//!
//! The builder writes these formats, the init and the device agent read them. The
//! init depends on this crate with default features off, so everything here is
//! plain std + serde/toml; the bundle reader (`bundle`) is behind the `bundle`
//! feature, for the device agent and the host CLI.

#[cfg(feature = "agent")]
pub mod agent;
pub mod blockdev;
#[cfg(feature = "bundle")]
pub mod bundle;
#[cfg(feature = "bundle")]
pub mod channel;
pub mod clock;
pub mod entries;
pub mod gpt;
pub mod image_config;
pub mod layout;
pub mod state;
pub mod window;

pub use image_config::{
    ContainerConfig, DebugConfig, HealthCheck, HealthProbe, ImageConfig, NetworkConfig,
    RestartPolicy, UpdateConfig,
};
pub use layout::{BootEntry, KernelCmdline, Slot};
