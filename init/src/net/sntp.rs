//! A small SNTP client (RFC 4330): one 48-byte request over UDP to each
//! configured server in turn until one gives a sane answer, then the clock is
//! stepped when it is off by more than [`STEP_THRESHOLD`] (no slewing: the
//! device wants the right date for its logs and TLS, not a smooth clock).
//!
//! It runs once per boot in a thread of its own, after the network is up, so
//! it never delays the containers; each server gets [`TRIES`] requests of
//! [`TIMEOUT`] each.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use berth_init::ntp::*;

/// How long one request waits for its answer.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Requests per server.
const TRIES: u32 = 3;
/// The pause after a failed request.
const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// Smaller offsets are left alone.
pub const STEP_THRESHOLD: Duration = Duration::from_secs(1);

/// Asks `server` once; the offset and the server's stratum.
fn query(server: Ipv4Addr) -> Result<(i128, u8), SntpError> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_read_timeout(Some(TIMEOUT))?;
    let to = SocketAddr::V4(SocketAddrV4::new(server, PORT));
    let sent = to_ntp(SystemTime::now())?;
    socket.send_to(&request(sent), to)?;
    let mut buf = [0u8; 128];
    loop {
        // A timeout ends the loop with an error; answers from elsewhere are
        // skipped.
        let (len, from) = socket.recv_from(&mut buf)?;
        let received = to_ntp(SystemTime::now())?;
        if from != to {
            continue;
        }
        let answer = parse(&buf[..len], sent)?;
        return Ok((offset_nanos(sent, &answer, received), answer.stratum));
    }
}

/// Asks the servers in turn and steps the clock from the first sane answer
/// (an answer below `floor`, unix seconds, is ignored and logged).
pub fn sync(servers: &[Ipv4Addr], floor: u64) {
    for server in servers {
        for _ in 0..TRIES {
            match query(*server) {
                Ok((offset, stratum)) => {
                    step(*server, offset, stratum, floor);
                    return;
                }
                Err(err) => {
                    log!("sntp: {server}: {err}");
                    // A send refused at once (no lease yet) waits too.
                    std::thread::sleep(RETRY_PAUSE);
                }
            }
        }
    }
    log!("sntp: no server answered; the clock stays as it is");
}

fn step(server: Ipv4Addr, offset: i128, stratum: u8, floor: u64) {
    let millis = offset / 1_000_000;
    if offset.unsigned_abs() < STEP_THRESHOLD.as_nanos() {
        log!("sntp: clock within {millis} ms of {server} (stratum {stratum})");
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let target = i128::try_from(now).unwrap_or(0) + offset;
    let Some(target) = u64::try_from(target / 1_000_000_000)
        .ok()
        .zip(u32::try_from(target.rem_euclid(1_000_000_000)).ok())
        .map(|(secs, nanos)| Duration::new(secs, nanos))
    else {
        log!("sntp: {server} gives a time before 1970: ignored");
        return;
    };
    let when = crate::shared::logfile::timestamp(UNIX_EPOCH + target);
    if below_floor(target, floor) {
        let floor_when = crate::shared::logfile::timestamp(UNIX_EPOCH + Duration::from_secs(floor));
        log!("sntp: {server} says {when}, before this device's clock floor {floor_when}: ignored");
        return;
    }
    match crate::system::rtc::set_clock(target) {
        Ok(()) => {
            log!("sntp: clock stepped by {millis} ms to {when} from {server} (stratum {stratum})")
        }
        Err(err) => log!("sntp: setting the clock to {when}: {err}"),
    }
}

/// Whether a time (since the epoch) lies before the clock floor (seconds).
fn below_floor(target: Duration, floor: u64) -> bool {
    target.as_secs() < floor
}

/// Runs [`sync`] in a thread of its own (nothing when there are no servers).
pub fn start(servers: Vec<Ipv4Addr>, floor: u64) {
    if servers.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("sntp".into())
        .spawn(move || sync(&servers, floor));
    if let Err(err) = spawned {
        log!("sntp: starting its thread: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(sent: Timestamp, receive: Timestamp, transmit: Timestamp) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = (4 << 3) | 4;
        p[1] = 2;
        p[24..32].copy_from_slice(&sent.to_be_bytes());
        p[32..40].copy_from_slice(&receive.to_be_bytes());
        p[40..48].copy_from_slice(&transmit.to_be_bytes());
        p
    }

    #[test]
    fn answers_below_the_floor_are_refused() {
        assert!(below_floor(Duration::from_secs(99), 100));
        assert!(!below_floor(Duration::from_secs(100), 100));
        assert!(!below_floor(Duration::from_millis(100_500), 100));
    }

    #[test]
    fn timestamps_round_trip_and_cross_2036() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000);
        let ntp = to_ntp(t).unwrap();
        assert_eq!(ntp >> 32, 1_700_000_000 + UNIX_OFFSET);
        assert_eq!(ntp & 0xffff_ffff, 1 << 31);
        assert_eq!(to_unix_nanos(ntp), 1_700_000_000_500_000_000);
        // 2040-01-01 is in era 1: its seconds wrapped on the wire.
        let t = UNIX_EPOCH + Duration::from_secs(2_208_988_800);
        assert_eq!(
            to_unix_nanos(to_ntp(t).unwrap()),
            2_208_988_800 * 1_000_000_000
        );
        assert!(to_ntp(UNIX_EPOCH - Duration::from_secs(1)).is_err());
    }

    #[test]
    fn requests_are_version_4_client_mode_with_our_time() {
        let p = request(0x0102_0304_0506_0708);
        assert_eq!(p[0], 0x23);
        assert_eq!(&p[40..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(p[1..40].iter().all(|b| *b == 0));
    }

    #[test]
    fn sane_answers_pass_and_others_are_refused() {
        let sent = 100 << 32;
        let good = answer(sent, 200 << 32, 201 << 32);
        let a = parse(&good, sent).unwrap();
        assert_eq!(
            (a.stratum, a.receive, a.transmit),
            (2, 200 << 32, 201 << 32)
        );

        assert!(matches!(
            parse(&good[..47], sent),
            Err(SntpError::Short(47))
        ));
        assert!(matches!(parse(&good, sent + 1), Err(SntpError::Origin)));
        let mut p = good;
        p[0] = (4 << 3) | 3;
        assert!(matches!(parse(&p, sent), Err(SntpError::Mode(3))));
        let mut p = good;
        p[0] |= 3 << 6;
        assert!(matches!(parse(&p, sent), Err(SntpError::Unsynchronized)));
        for stratum in [0, 16] {
            let mut p = good;
            p[1] = stratum;
            assert!(matches!(parse(&p, sent), Err(SntpError::Stratum(s)) if s == stratum));
        }
        let p = answer(sent, 200 << 32, 0);
        assert!(matches!(parse(&p, sent), Err(SntpError::NoTransmitTime)));
    }

    #[test]
    fn offset_is_the_mean_of_both_legs() {
        let secs = |s: u64| (s + UNIX_OFFSET) << 32;
        // Sent at 1000, the server got it at 5000 and answered at 5001, back at
        // 1003 by our clock: 1 s each way, our clock 3999 s behind.
        let a = Answer {
            stratum: 1,
            receive: secs(5000),
            transmit: secs(5001),
        };
        assert_eq!(
            offset_nanos(secs(1000), &a, secs(1003)),
            3999 * 1_000_000_000
        );
    }
}
