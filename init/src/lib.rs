//! The parts of berth-init that read packets from the network, as a library:
//! pure logic with no socket, no clock and no global state, so they are
//! unit-tested and fuzzed (`fuzz/`) like every other parser of outside input.
//! The binary (`main.rs`) holds everything else and uses these.

pub mod dhcp;
pub mod ntp;
