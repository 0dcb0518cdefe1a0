//! A tiny DNS server for the tests: answers `A` queries for a few made-up names
//! over UDP, so a guest can resolve a name offline. QEMU's user networking
//! forwards the guest's UDP to 10.0.2.2 to the host's 127.0.0.1, so a guest
//! whose resolv.conf says `nameserver 10.0.2.2` asks this server when it
//! listens on 127.0.0.1:53 (the resolver has no port setting).

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server; stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl DnsServer {
    /// Answers for `records` (names without the final dot) on
    /// 127.0.0.1:`port` (0: any free port; see [`bind_udp`]).
    pub fn start(port: u16, records: &[(&str, Ipv4Addr)]) -> DnsServer {
        let socket = bind_udp(port, "DNS");
        let port = socket.local_addr().expect("bound address").port();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("a read timeout");
        let records: Vec<(String, Ipv4Addr)> = records
            .iter()
            .map(|(name, addr)| (name.to_ascii_lowercase(), *addr))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..len], &records) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        DnsServer { port, stop }
    }
}

/// A UDP socket on 127.0.0.1:`port` with a short read timeout (so a server
/// thread sees its stop flag). A port that is taken (another test process's
/// server) is tried again for up to 5 minutes.
pub(crate) fn bind_udp(port: u16, what: &str) -> UdpSocket {
    let deadline = Instant::now() + Duration::from_secs(300);
    let socket = loop {
        match UdpSocket::bind(("127.0.0.1", port)) {
            Ok(socket) => break socket,
            Err(err) if Instant::now() < deadline => {
                eprintln!("binding the {what} server on 127.0.0.1:{port}: {err}; trying again");
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(err) => panic!("binding the {what} server on 127.0.0.1:{port}: {err}"),
        }
    };
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a read timeout");
    socket
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// The reply to one query: the A record when the name is known (no answer
/// for other types of a known name), NXDOMAIN for an unknown name; `None`
/// for what is not a one-question query.
pub fn answer(query: &[u8], records: &[(String, Ipv4Addr)]) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let is_query = header[2] & 0x80 == 0;
    let questions = u16::from_be_bytes([header[4], header[5]]);
    if !is_query || questions != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*query.get(pos + 2)?, *query.get(pos + 3)?]);
    let question = &query[12..pos + 4];
    let name = labels.join(".");
    let known = records.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
    let answer = known.filter(|_| qtype == TYPE_A && qclass == CLASS_IN);

    let mut reply = Vec::with_capacity(64);
    reply.extend_from_slice(&header[..2]); // id
                                           // QR, opcode 0, AA, RD copied; RA; rcode 0 or 3 (NXDOMAIN).
    reply.push(0x84 | (header[2] & 0x01));
    reply.push(0x80 | if known.is_some() { 0 } else { 3 });
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&u16::from(answer.is_some()).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    reply.extend_from_slice(question);
    if let Some(addr) = answer {
        reply.extend_from_slice(&[0xc0, 12]); // the name: a pointer to the question's
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&60u32.to_be_bytes()); // TTL
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&addr.octets());
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(u8::try_from(label.len()).unwrap());
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn answers_known_names_and_refuses_others() {
        let records = vec![("files.berth.test".to_string(), Ipv4Addr::new(10, 0, 2, 2))];
        let q = query(0x1234, "Files.Berth.Test", TYPE_A);
        let r = answer(&q, &records).unwrap();
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0, "rcode");
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 0, 2, 2]);
        // AAAA of a known name: no error, no answer.
        let r = answer(&query(1, "files.berth.test", 28), &records).unwrap();
        assert_eq!((r[3] & 0x0f, r[7]), (0, 0));
        // Unknown: NXDOMAIN.
        let r = answer(&query(2, "other.test", TYPE_A), &records).unwrap();
        assert_eq!(r[3] & 0x0f, 3);
        // A truncated packet or a response: nothing.
        assert!(answer(&q[..15], &records).is_none());
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(answer(&response, &records).is_none());
    }

    #[test]
    fn serves_over_udp() {
        let server = DnsServer::start(0, &[("a.test", Ipv4Addr::new(1, 2, 3, 4))]);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client
            .send_to(&query(7, "a.test", TYPE_A), ("127.0.0.1", server.port))
            .unwrap();
        let mut buf = [0u8; 512];
        let (len, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[len - 4..len], &[1, 2, 3, 4]);
    }
}
