//! The device agent behind `berth-update`: install a signed bundle onto the
//! inactive slot, check the update repository and install what it offers,
//! report both slots, roll back, mark the booted slot good; and the
//! [`daemon`] the init runs as a service on a device with an update repository.

pub mod daemon;
pub mod delta;
pub mod fleet;
pub mod idle;
pub mod index_cache;
pub mod install;
pub mod lock;
pub mod report;
pub mod source;
pub mod status;
pub mod system;

pub use fleet::{check, update, CheckReport, FleetError, Repository, UpdateOutcome};
pub use install::{install, Checkpoint, InstallError, InstallOptions, Installed, Observer};
pub use status::{mark_good, rollback, status, Status, StatusError};
pub use system::{request_reboot, System, SystemError};
