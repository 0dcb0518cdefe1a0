//! A tiny SNTP server for the tests: answers every client request with one
//! fixed time, so a test can tell the guest's clock was set from it. QEMU's
//! user networking forwards the guest's UDP to 10.0.2.2 to the host's
//! 127.0.0.1, and an SNTP client always asks port 123.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::dns::bind_udp;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const UNIX_OFFSET: u64 = 2_208_988_800;

/// The server; stops when dropped.
#[derive(Debug)]
pub struct SntpServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl SntpServer {
    /// Answers on 127.0.0.1:`port` (0: any free port) that the time is
    /// `unix_seconds`, at stratum 1.
    pub fn start(port: u16, unix_seconds: u64) -> SntpServer {
        let socket = bind_udp(port, "SNTP");
        let port = socket.local_addr().expect("bound address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || serve(&socket, unix_seconds, &flag));
        SntpServer { port, stop }
    }
}

impl Drop for SntpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(socket: &UdpSocket, unix_seconds: u64, stop: &AtomicBool) {
    let mut buf = [0u8; 128];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Some(reply) = answer(&buf[..len], unix_seconds) {
            let _ = socket.send_to(&reply, from);
        }
    }
}

/// The answer to a client request (mode 3): mode 4, stratum 1, the request's
/// transmit time as originate time, `unix_seconds` as receive and transmit
/// time; `None` for anything else.
pub fn answer(request: &[u8], unix_seconds: u64) -> Option<[u8; 48]> {
    if request.len() < 48 || request[0] & 7 != 3 {
        return None;
    }
    let now = (unix_seconds + UNIX_OFFSET) << 32;
    let mut reply = [0u8; 48];
    reply[0] = (4 << 3) | 4;
    reply[1] = 1;
    reply[12..16].copy_from_slice(b"TEST");
    reply[16..24].copy_from_slice(&now.to_be_bytes());
    reply[24..32].copy_from_slice(&request[40..48]);
    reply[32..40].copy_from_slice(&now.to_be_bytes());
    reply[40..48].copy_from_slice(&now.to_be_bytes());
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn answers_client_requests_with_the_fixed_time() {
        let server = SntpServer::start(0, 1_924_992_000);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = [0u8; 48];
        request[0] = 0x23;
        request[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        client
            .send_to(&request, ("127.0.0.1", server.port))
            .unwrap();
        let mut buf = [0u8; 128];
        let (len, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(len, 48);
        assert_eq!((buf[0] & 7, buf[1]), (4, 1));
        assert_eq!(&buf[24..32], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let secs = u64::from_be_bytes(buf[40..48].try_into().unwrap()) >> 32;
        assert_eq!(secs - UNIX_OFFSET, 1_924_992_000);
        // A server answer is not a request.
        assert!(answer(&buf[..48], 0).is_none());
    }
}
