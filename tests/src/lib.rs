//! Helpers for berth's end-to-end tests: build the host CLI and the init once per
//! test process, build each recipe's image once (shared between test processes
//! under a file lock, rebuilt when the recipe or the binaries are newer), and boot
//! images in QEMU with at most [`MAX_VMS`] VMs at a time.
//!
//! Everything goes under the workspace's `target/`: images in `target/e2e/<recipe>/`,
//! console logs in `target/e2e/logs/<test>.log`.
//!
//! The helpers panic with a full explanation on failure: they run inside tests.
//!
//! The modules follow the jobs: [`build`] (binaries and images), [`vm`] (booting
//! and the console), [`disk`] (an image offline), [`http`] (loopback HTTP),
//! [`pty`] (a program on a pseudo-terminal, as a person uses it),
//! [`release`] (keys and bundles), [`logwrites`] (the guest's writes as QEMU
//! logged them) and [`crashstates`] (every state a power cut leaves, checked), [`tls`] (a test CA), and the [`dns`] and
//! [`sntp`] servers some tests start. Everything is re-exported here, so a test imports `berth_tests::*`.

pub mod build;
pub mod crashstates;
pub mod disk;
pub mod dns;
pub mod http;
pub mod images;
pub mod logwrites;
pub mod pty;
pub mod release;
pub mod sntp;
pub mod tls;
pub mod vm;

pub use build::*;
pub use disk::*;
pub use dns::DnsServer;
pub use http::*;
pub use release::*;
pub use sntp::SntpServer;
pub use vm::*;
