//! The device agent behind `berth-update`: install a signed bundle onto the
//! inactive slot, check the update repository and install what it offers,
//! report both slots, roll back, mark the booted slot good.
//! Built only with the `agent` feature (the init stays without it).

pub mod fleet;
pub mod install;
pub mod source;
pub mod status;
pub mod system;

pub use fleet::{check, update, CheckReport, FleetError, Repository, UpdateOutcome};
pub use install::{install, Checkpoint, InstallError, InstallOptions, Installed, Observer};
pub use status::{mark_good, rollback, status, Status, StatusError};
pub use system::{System, SystemError};
