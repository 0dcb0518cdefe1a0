//! What both stages use: the kernel command line ([`cmdline`]), the standard
//! descriptors on the console ([`console`]), mounting ([`mounts`]), the EFI system
//! partition ([`esp`]; the main stage mounts it, the early stage reads its boot
//! counter when it refuses a slot), the log files ([`logfile`]; the early stage's
//! lines wait in memory) and the end of every boot ([`power`]).

pub mod cmdline;
pub mod console;
pub mod esp;
pub mod logfile;
pub mod mounts;
pub mod power;
