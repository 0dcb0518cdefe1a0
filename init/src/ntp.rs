//! SNTP packets (RFC 4330): the request berth-init sends and the check of a
//! server's answer, as pure functions (no socket, no clock) so they are
//! unit-tested and fuzzed; `net::sntp` in the binary sends and receives them.

use std::time::{SystemTime, UNIX_EPOCH};

/// The NTP port.
pub const PORT: u16 = 123;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const UNIX_OFFSET: u64 = 2_208_988_800;

/// Why a server's answer was not used.
#[derive(Debug, thiserror::Error)]
pub enum SntpError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Fewer than 48 bytes.
    #[error("answer of {0} bytes")]
    Short(usize),
    /// Not a server answer (mode 4).
    #[error("answer in mode {0}, not 4 (server)")]
    Mode(u8),
    /// Stratum 0 (kiss-o'-death) or 16+ (unsynchronized).
    #[error("server at stratum {0}")]
    Stratum(u8),
    /// Leap indicator 3: the server's clock is not synchronized.
    #[error("server clock not synchronized (leap indicator 3)")]
    Unsynchronized,
    /// A transmit time of zero.
    #[error("answer without a transmit time")]
    NoTransmitTime,
    /// The originate time is not our request's transmit time (a stale or
    /// forged answer).
    #[error("answer does not echo the request's time")]
    Origin,
    /// The clock is before 1970 or the time does not fit.
    #[error("time out of range")]
    Range,
}

/// A 64-bit NTP timestamp (32.32 fixed point seconds since 1900).
pub type Timestamp = u64;

/// `time` as an NTP timestamp.
pub fn to_ntp(time: SystemTime) -> Result<Timestamp, SntpError> {
    let since = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| SntpError::Range)?;
    let secs = since.as_secs() + UNIX_OFFSET;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    // Seconds wrap every 136 years (era 1 starts in 2036), as on the wire.
    Ok((secs << 32) | frac)
}

/// Nanoseconds since 1970 of an NTP timestamp. Seconds with the top bit clear
/// are taken as era 1 (2036 and later), as RFC 4330 suggests.
pub fn to_unix_nanos(ts: Timestamp) -> i128 {
    let mut secs = i128::from(ts >> 32);
    if secs < 0x8000_0000 {
        secs += 1 << 32;
    }
    let frac = i128::from(ts & 0xffff_ffff);
    (secs - i128::from(UNIX_OFFSET)) * 1_000_000_000 + ((frac * 1_000_000_000) >> 32)
}

/// A client request: version 4, mode 3, our time as the transmit timestamp
/// (the server echoes it as the originate timestamp).
pub fn request(transmit: Timestamp) -> [u8; 48] {
    let mut packet = [0u8; 48];
    packet[0] = (4 << 3) | 3;
    packet[40..48].copy_from_slice(&transmit.to_be_bytes());
    packet
}

/// The times of a valid answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub stratum: u8,
    /// When the server received the request.
    pub receive: Timestamp,
    /// When the server sent the answer.
    pub transmit: Timestamp,
}

/// Checks an answer to the request sent with `sent` as its transmit time.
pub fn parse(packet: &[u8], sent: Timestamp) -> Result<Answer, SntpError> {
    if packet.len() < 48 {
        return Err(SntpError::Short(packet.len()));
    }
    let field = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&packet[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    let mode = packet[0] & 7;
    if mode != 4 {
        return Err(SntpError::Mode(mode));
    }
    if packet[0] >> 6 == 3 {
        return Err(SntpError::Unsynchronized);
    }
    let stratum = packet[1];
    if !(1..=15).contains(&stratum) {
        return Err(SntpError::Stratum(stratum));
    }
    if field(24) != sent {
        return Err(SntpError::Origin);
    }
    let transmit = field(40);
    if transmit == 0 {
        return Err(SntpError::NoTransmitTime);
    }
    Ok(Answer {
        stratum,
        receive: field(32),
        transmit,
    })
}

/// The clock's offset from the server, in nanoseconds (positive: the clock is
/// behind): ((T2 - T1) + (T3 - T4)) / 2.
pub fn offset_nanos(sent: Timestamp, answer: &Answer, received: Timestamp) -> i128 {
    let (t1, t4) = (to_unix_nanos(sent), to_unix_nanos(received));
    let (t2, t3) = (
        to_unix_nanos(answer.receive),
        to_unix_nanos(answer.transmit),
    );
    ((t2 - t1) + (t3 - t4)) / 2
}
