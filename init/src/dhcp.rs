//! A DHCPv4 client (RFC 2131) as pure logic: no sockets, no clock. The caller
//! feeds it received datagrams and the current time, sends what it returns and
//! applies the leases it reports.
//!
//! States: Init → Selecting (DISCOVER sent) → Requesting (REQUEST for the offer) →
//! Bound → Renewing at T1 (REQUEST unicast to the server) → Rebinding at T2
//! (REQUEST broadcast) → Init when the lease expires or a server answers NAK.
//! Retransmissions back off 4 s, 8 s, 16 s, … up to 64 s.
//!
//! The BOOTP header and the handful of options used are encoded by hand: the
//! `dhcproto` crate pulls in a DNS library (`hickory-proto`) and grew the init
//! by more than the whole client is worth (see docs/init.md).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// First retransmission delay; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(4);
/// Longest delay between two retransmissions.
pub const MAX_BACKOFF: Duration = Duration::from_secs(64);
/// REQUESTs sent for one offer before starting over with a DISCOVER.
const REQUEST_TRIES: u32 = 4;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const HTYPE_ETHERNET: u8 = 1;
const FLAG_BROADCAST: u16 = 0x8000;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header, up to and including the `file` field.
const HEADER_LEN: usize = 236;
/// Smallest BOOTP message some servers (and relays) accept.
const MIN_MESSAGE_LEN: usize = 300;

// Option codes.
const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_NTP: u8 = 42;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMETERS: u8 = 55;
const OPT_RENEWAL_TIME: u8 = 58;
const OPT_REBINDING_TIME: u8 = 59;
const OPT_CLIENT_ID: u8 = 61;
const OPT_END: u8 = 255;

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Ack = 5,
    Nak = 6,
}

impl MessageType {
    fn from_byte(byte: u8) -> Option<MessageType> {
        Some(match byte {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            _ => return None,
        })
    }
}

/// Where the client is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No lease and nothing sent: the next [`Client::poll`] sends a DISCOVER.
    Init,
    /// DISCOVER sent, waiting for an OFFER.
    Selecting,
    /// REQUEST sent for an offered address, waiting for an ACK.
    Requesting { offered: Ipv4Addr, server: Ipv4Addr },
    /// A lease is held; nothing to do until T1.
    Bound,
    /// Past T1: REQUESTs go to the leasing server.
    Renewing,
    /// Past T2: REQUESTs go to any server.
    Rebinding,
}

/// An address lease, as the server gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// NTP servers (option 42).
    pub ntp: Vec<Ipv4Addr>,
    /// The server that granted it (option 54).
    pub server: Ipv4Addr,
    /// `None` for an infinite lease.
    pub lease_time: Option<Duration>,
    /// Renewal (T1) and rebinding (T2) times, after `acquired`.
    pub t1: Option<Duration>,
    pub t2: Option<Duration>,
    /// When the REQUEST that got it was sent (the lease runs from then).
    pub acquired: Instant,
}

impl Lease {
    pub fn renew_at(&self) -> Option<Instant> {
        self.t1.map(|t| self.acquired + t)
    }
    pub fn rebind_at(&self) -> Option<Instant> {
        self.t2.map(|t| self.acquired + t)
    }
    pub fn expires_at(&self) -> Option<Instant> {
        self.lease_time.map(|t| self.acquired + t)
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:67.
    Broadcast,
    /// The server's address, port 67 (renewal).
    Unicast(Ipv4Addr),
}

/// What the caller must do after feeding the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this message.
    Send {
        message: Vec<u8>,
        to: Destination,
        kind: MessageType,
    },
    /// A lease was granted or renewed: apply it.
    Bound(Lease),
    /// The lease is gone (expired, or refused at renewal): remove the address.
    Lost(&'static str),
}

/// The client's state machine for one interface.
#[derive(Debug, Clone)]
pub struct Client {
    mac: [u8; 6],
    hostname: Option<String>,
    state: State,
    xid: u32,
    rng: u64,
    lease: Option<Lease>,
    /// When the next retransmission is due, in the sending states.
    next_send: Option<Instant>,
    /// Messages sent in this state so far.
    sent: u32,
    /// When the current exchange's first message was sent (a lease runs from the
    /// REQUEST that got it).
    request_sent: Option<Instant>,
}

impl Client {
    /// A client for the interface with hardware address `mac`; `seed` feeds the
    /// transaction ids (any value; 0 is replaced).
    pub fn new(mac: [u8; 6], seed: u64, hostname: Option<String>) -> Client {
        Client {
            mac,
            hostname,
            state: State::Init,
            xid: 0,
            rng: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
            lease: None,
            next_send: None,
            sent: 0,
            request_sent: None,
        }
    }

    /// Where the client is in the exchange.
    pub fn state(&self) -> State {
        self.state
    }

    /// The current transaction id (a reply must carry it).
    pub fn xid(&self) -> u32 {
        self.xid
    }

    /// The lease held, if any.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// When [`Client::poll`] has something to do next (`None` in Init: poll now).
    pub fn next_wakeup(&self) -> Option<Instant> {
        let lease = self.lease.as_ref();
        match self.state {
            State::Init => None,
            State::Selecting | State::Requesting { .. } => self.next_send,
            State::Bound => lease.and_then(|l| l.renew_at().or(l.expires_at())),
            State::Renewing | State::Rebinding => [
                self.next_send,
                lease.and_then(Lease::rebind_at),
                lease.and_then(Lease::expires_at),
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }

    /// Time-driven work: the first DISCOVER, retransmissions, T1, T2, expiry.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(lease) = &self.lease {
            if lease.expires_at().is_some_and(|at| now >= at) {
                self.lease = None;
                self.state = State::Init;
                actions.push(Action::Lost("lease expired"));
            } else if matches!(self.state, State::Bound | State::Renewing)
                && lease.rebind_at().is_some_and(|at| now >= at)
            {
                self.state = State::Rebinding;
                self.begin_exchange(now);
            } else if self.state == State::Bound && lease.renew_at().is_some_and(|at| now >= at) {
                self.state = State::Renewing;
                self.begin_exchange(now);
            }
        }
        match self.state {
            State::Init => {
                self.state = State::Selecting;
                self.begin_exchange(now);
                actions.push(self.send(now));
            }
            State::Bound => {}
            State::Requesting { .. } if self.due(now) && self.sent >= REQUEST_TRIES => {
                // No answer to the REQUEST: start over.
                self.state = State::Selecting;
                self.begin_exchange(now);
                actions.push(self.send(now));
            }
            State::Selecting | State::Requesting { .. } | State::Renewing | State::Rebinding => {
                if self.due(now) {
                    actions.push(self.send(now));
                }
            }
        }
        actions
    }

    /// A datagram received on the client port. Replies for another transaction,
    /// another client or without a message type are ignored.
    pub fn handle(&mut self, datagram: &[u8], now: Instant) -> Vec<Action> {
        let Some(reply) = Reply::parse(datagram) else {
            return Vec::new();
        };
        if reply.xid != self.xid || reply.chaddr != self.mac {
            return Vec::new();
        }
        let Some(kind) = reply.kind else {
            return Vec::new();
        };
        match (self.state, kind) {
            (State::Selecting, MessageType::Offer) => {
                let Some(server) = reply.server_id else {
                    return Vec::new();
                };
                if reply.yiaddr.is_unspecified() {
                    return Vec::new();
                }
                self.state = State::Requesting {
                    offered: reply.yiaddr,
                    server,
                };
                // Same xid: the REQUEST answers this offer.
                self.sent = 0;
                self.request_sent = Some(now);
                vec![self.send(now)]
            }
            (State::Requesting { .. } | State::Renewing | State::Rebinding, MessageType::Ack) => {
                let server = match self.state {
                    State::Requesting { server, .. } => server,
                    _ => self
                        .lease
                        .as_ref()
                        .map_or(server_or_zero(&reply), |l| l.server),
                };
                let Some(lease) = reply.lease(server, self.request_sent.unwrap_or(now)) else {
                    return Vec::new();
                };
                self.state = State::Bound;
                self.next_send = None;
                self.lease = Some(lease.clone());
                vec![Action::Bound(lease)]
            }
            (State::Requesting { .. }, MessageType::Nak) => {
                self.state = State::Init;
                self.poll(now)
            }
            (State::Renewing | State::Rebinding, MessageType::Nak) => {
                self.lease = None;
                self.state = State::Init;
                let mut actions = vec![Action::Lost("the server refused the renewal (NAK)")];
                actions.extend(self.poll(now));
                actions
            }
            _ => Vec::new(),
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.next_send.is_none_or(|at| now >= at)
    }

    /// A new transaction: fresh xid, retransmission count from zero.
    fn begin_exchange(&mut self, now: Instant) {
        self.xid = self.next_xid();
        self.sent = 0;
        self.next_send = None;
        self.request_sent = Some(now);
    }

    /// Sends the current state's message and schedules its retransmission.
    fn send(&mut self, now: Instant) -> Action {
        let delay = backoff(self.sent);
        self.sent += 1;
        let mut next = now + delay;
        // A retransmission never skips a T2 or expiry deadline.
        if let Some(lease) = &self.lease {
            let limit = match self.state {
                State::Renewing => lease.rebind_at(),
                State::Rebinding => lease.expires_at(),
                _ => None,
            };
            if let Some(limit) = limit {
                next = next.min(limit);
            }
        }
        self.next_send = Some(next);
        let ciaddr = self.lease.as_ref().map(|l| l.address);
        let (kind, to, message) = match self.state {
            State::Init | State::Selecting => (
                MessageType::Discover,
                Destination::Broadcast,
                self.message(MessageType::Discover, None, None, None),
            ),
            State::Requesting { offered, server } => (
                MessageType::Request,
                Destination::Broadcast,
                self.message(MessageType::Request, None, Some(offered), Some(server)),
            ),
            State::Bound | State::Renewing => (
                MessageType::Request,
                match &self.lease {
                    Some(lease) => Destination::Unicast(lease.server),
                    None => Destination::Broadcast,
                },
                self.message(MessageType::Request, ciaddr, None, None),
            ),
            State::Rebinding => (
                MessageType::Request,
                Destination::Broadcast,
                self.message(MessageType::Request, ciaddr, None, None),
            ),
        };
        Action::Send { message, to, kind }
    }

    fn message(
        &self,
        kind: MessageType,
        ciaddr: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
        server: Option<Ipv4Addr>,
    ) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m[0] = BOOTREQUEST;
        m[1] = HTYPE_ETHERNET;
        m[2] = 6;
        m[4..8].copy_from_slice(&self.xid.to_be_bytes());
        // Without an address the client cannot receive unicast: ask for broadcast
        // replies. With one (renewing, rebinding) it can.
        if ciaddr.is_none() {
            m[10..12].copy_from_slice(&FLAG_BROADCAST.to_be_bytes());
        }
        if let Some(ciaddr) = ciaddr {
            m[12..16].copy_from_slice(&ciaddr.octets());
        }
        m[28..34].copy_from_slice(&self.mac);
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind as u8]);
        m.extend_from_slice(&[OPT_CLIENT_ID, 7, HTYPE_ETHERNET]);
        m.extend_from_slice(&self.mac);
        if let Some(requested) = requested {
            m.extend_from_slice(&[OPT_REQUESTED_IP, 4]);
            m.extend_from_slice(&requested.octets());
        }
        if let Some(server) = server {
            m.extend_from_slice(&[OPT_SERVER_ID, 4]);
            m.extend_from_slice(&server.octets());
        }
        if let Some(hostname) = &self.hostname {
            let bytes = &hostname.as_bytes()[..hostname.len().min(255)];
            m.extend_from_slice(&[OPT_HOSTNAME, u8::try_from(bytes.len()).unwrap_or(255)]);
            m.extend_from_slice(bytes);
        }
        m.extend_from_slice(&[
            OPT_PARAMETERS,
            7,
            OPT_SUBNET_MASK,
            OPT_ROUTER,
            OPT_DNS,
            OPT_NTP,
            OPT_LEASE_TIME,
            OPT_RENEWAL_TIME,
            OPT_REBINDING_TIME,
        ]);
        m.push(OPT_END);
        if m.len() < MIN_MESSAGE_LEN {
            m.resize(MIN_MESSAGE_LEN, OPT_PAD);
        }
        m
    }

    /// xorshift64: transaction ids need only differ, not be secret.
    fn next_xid(&mut self) -> u32 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 32) as u32
    }
}

fn server_or_zero(reply: &Reply) -> Ipv4Addr {
    reply.server_id.unwrap_or(Ipv4Addr::UNSPECIFIED)
}

/// Retransmission delay after `sent` messages: 4 s, 8 s, … 64 s.
pub fn backoff(sent: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << sent.min(5))
        .min(MAX_BACKOFF)
}

/// The prefix length of a netmask (its leading one bits).
pub fn prefix_of(mask: Ipv4Addr) -> u8 {
    u8::try_from(u32::from(mask).leading_ones()).unwrap_or(32)
}

/// What a server's reply says, as far as the client cares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    xid: u32,
    chaddr: [u8; 6],
    yiaddr: Ipv4Addr,
    kind: Option<MessageType>,
    server_id: Option<Ipv4Addr>,
    subnet_mask: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
    ntp: Vec<Ipv4Addr>,
    lease_time: Option<u32>,
    t1: Option<u32>,
    t2: Option<u32>,
}

impl Reply {
    /// A BOOTREPLY for Ethernet with the DHCP cookie; `None` for anything else.
    fn parse(data: &[u8]) -> Option<Reply> {
        if data.len() < HEADER_LEN + MAGIC_COOKIE.len()
            || data[0] != BOOTREPLY
            || data[1] != HTYPE_ETHERNET
            || data[2] != 6
            || data[HEADER_LEN..HEADER_LEN + 4] != MAGIC_COOKIE
        {
            return None;
        }
        let addr = |at: usize| Ipv4Addr::new(data[at], data[at + 1], data[at + 2], data[at + 3]);
        let mut reply = Reply {
            xid: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            chaddr: [0; 6],
            yiaddr: addr(16),
            kind: None,
            server_id: None,
            subnet_mask: None,
            router: None,
            dns: Vec::new(),
            ntp: Vec::new(),
            lease_time: None,
            t1: None,
            t2: None,
        };
        reply.chaddr.copy_from_slice(&data[28..34]);
        let mut options = &data[HEADER_LEN + 4..];
        while let Some((&code, rest)) = options.split_first() {
            match code {
                OPT_PAD => {
                    options = rest;
                    continue;
                }
                OPT_END => break,
                _ => {}
            }
            let (&len, rest) = rest.split_first()?;
            let value = rest.get(..usize::from(len))?;
            options = &rest[usize::from(len)..];
            let ipv4 = |v: &[u8]| (v.len() >= 4).then(|| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
            let seconds =
                |v: &[u8]| (v.len() == 4).then(|| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            match code {
                OPT_MESSAGE_TYPE if len == 1 => reply.kind = MessageType::from_byte(value[0]),
                OPT_SERVER_ID => reply.server_id = ipv4(value),
                OPT_SUBNET_MASK => reply.subnet_mask = ipv4(value),
                OPT_ROUTER => reply.router = ipv4(value),
                OPT_DNS => reply.dns = addresses(value),
                OPT_NTP => reply.ntp = addresses(value),
                OPT_LEASE_TIME => reply.lease_time = seconds(value),
                OPT_RENEWAL_TIME => reply.t1 = seconds(value),
                OPT_REBINDING_TIME => reply.t2 = seconds(value),
                _ => {}
            }
        }
        Some(reply)
    }

    /// The lease an ACK grants, running from `acquired`; `None` without an address.
    fn lease(&self, server: Ipv4Addr, acquired: Instant) -> Option<Lease> {
        if self.yiaddr.is_unspecified() {
            return None;
        }
        let server = self.server_id.unwrap_or(server);
        // 0xffffffff is an infinite lease: no renewal, no expiry.
        let lease_time = self
            .lease_time
            .filter(|&t| t != u32::MAX)
            .map(|t| Duration::from_secs(u64::from(t)));
        let (t1, t2) = match lease_time {
            Some(total) => {
                let default_t1 = total / 2;
                let default_t2 = total * 7 / 8;
                let t2 = self
                    .t2
                    .map(|t| Duration::from_secs(u64::from(t)))
                    .filter(|&t| t <= total)
                    .unwrap_or(default_t2);
                let t1 = self
                    .t1
                    .map(|t| Duration::from_secs(u64::from(t)))
                    .filter(|&t| t <= t2)
                    .unwrap_or(default_t1.min(t2));
                (Some(t1), Some(t2))
            }
            None => (None, None),
        };
        let prefix = match self.subnet_mask {
            Some(mask) => prefix_of(mask),
            // Classful default, as old clients did.
            None => match self.yiaddr.octets()[0] {
                0..=127 => 8,
                128..=191 => 16,
                _ => 24,
            },
        };
        Some(Lease {
            address: self.yiaddr,
            prefix,
            router: self.router,
            dns: self.dns.clone(),
            ntp: self.ntp.clone(),
            server,
            lease_time,
            t1,
            t2,
            acquired,
        })
    }
}

/// A list of IPv4 addresses (4 bytes each).
fn addresses(value: &[u8]) -> Vec<Ipv4Addr> {
    value
        .chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    /// A server reply, as QEMU's user networking sends it.
    fn reply(kind: Option<MessageType>, xid: u32, extra: &[(u8, &[u8])]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m[0] = BOOTREPLY;
        m[1] = HTYPE_ETHERNET;
        m[2] = 6;
        m[4..8].copy_from_slice(&xid.to_be_bytes());
        m[16..20].copy_from_slice(&ADDRESS.octets());
        m[28..34].copy_from_slice(&MAC);
        m.extend_from_slice(&MAGIC_COOKIE);
        if let Some(kind) = kind {
            m.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind as u8]);
        }
        for (code, value) in extra {
            m.push(*code);
            m.push(u8::try_from(value.len()).unwrap());
            m.extend_from_slice(value);
        }
        m.push(OPT_END);
        m
    }

    fn offer(xid: u32) -> Vec<u8> {
        reply(
            Some(MessageType::Offer),
            xid,
            &[(OPT_SERVER_ID, &SERVER.octets())],
        )
    }

    /// A client (seeded with `seed`) that sent DISCOVER, got an offer, and then an
    /// ACK with `options`; returns it and what it did with the ACK.
    fn bind_with(seed: u64, options: &[(u8, &[u8])], t0: Instant) -> (Client, Vec<Action>) {
        let mut client = Client::new(MAC, seed, None);
        client.poll(t0);
        let xid = client.xid();
        client.handle(&offer(xid), t0);
        let actions = client.handle(&reply(Some(MessageType::Ack), xid, options), t0);
        (client, actions)
    }

    fn ack(xid: u32) -> Vec<u8> {
        reply(
            Some(MessageType::Ack),
            xid,
            &[
                (OPT_SERVER_ID, &SERVER.octets()),
                (OPT_SUBNET_MASK, &[255, 255, 255, 0]),
                (OPT_ROUTER, &SERVER.octets()),
                (OPT_DNS, &[10, 0, 2, 3, 1, 1, 1, 1]),
                (OPT_NTP, &[10, 0, 2, 4]),
                (OPT_LEASE_TIME, &86400u32.to_be_bytes()),
            ],
        )
    }

    fn sent(actions: &[Action]) -> Vec<(MessageType, Destination, Vec<u8>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { message, to, kind } => Some((*kind, *to, message.clone())),
                _ => None,
            })
            .collect()
    }

    /// The options of a message the client sent, code → value.
    fn options(message: &[u8]) -> Vec<(u8, Vec<u8>)> {
        assert_eq!(message[HEADER_LEN..HEADER_LEN + 4], MAGIC_COOKIE);
        let mut out = Vec::new();
        let mut rest = &message[HEADER_LEN + 4..];
        while let Some((&code, tail)) = rest.split_first() {
            if code == OPT_END {
                break;
            }
            if code == OPT_PAD {
                rest = tail;
                continue;
            }
            let len = usize::from(tail[0]);
            out.push((code, tail[1..1 + len].to_vec()));
            rest = &tail[1 + len..];
        }
        out
    }

    fn option(message: &[u8], code: u8) -> Option<Vec<u8>> {
        options(message)
            .into_iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v)
    }

    fn xid_of(message: &[u8]) -> u32 {
        u32::from_be_bytes([message[4], message[5], message[6], message[7]])
    }

    /// A client bound at `t0`, and the lease.
    fn bound(t0: Instant) -> (Client, Lease) {
        let mut client = Client::new(MAC, 42, None);
        client.poll(t0);
        let xid = client.xid();
        client.handle(&offer(xid), t0);
        let actions = client.handle(&ack(xid), t0);
        let Some(Action::Bound(lease)) = actions.into_iter().next() else {
            panic!("not bound");
        };
        (client, lease)
    }

    #[test]
    fn init_sends_a_broadcast_discover() {
        let t0 = Instant::now();
        let mut client = Client::new(MAC, 42, Some("web".into()));
        assert_eq!(client.state(), State::Init);
        assert_eq!(client.next_wakeup(), None);
        let out = sent(&client.poll(t0));
        assert_eq!(out.len(), 1);
        let (kind, to, m) = &out[0];
        assert_eq!(
            (*kind, *to),
            (MessageType::Discover, Destination::Broadcast)
        );
        assert_eq!(client.state(), State::Selecting);
        assert!(m.len() >= MIN_MESSAGE_LEN);
        assert_eq!(&m[..3], &[BOOTREQUEST, HTYPE_ETHERNET, 6]);
        assert_eq!(xid_of(m), client.xid());
        assert_eq!(&m[10..12], &FLAG_BROADCAST.to_be_bytes());
        assert_eq!(&m[28..34], &MAC);
        assert_eq!(option(m, OPT_MESSAGE_TYPE), Some(vec![1]));
        assert_eq!(option(m, OPT_HOSTNAME), Some(b"web".to_vec()));
        assert_eq!(
            option(m, OPT_PARAMETERS),
            Some(vec![1, 3, 6, 42, 51, 58, 59])
        );
        assert_eq!(client.next_wakeup(), Some(t0 + Duration::from_secs(4)));
    }

    #[test]
    fn discover_is_retransmitted_with_backoff() {
        let t0 = Instant::now();
        let mut client = Client::new(MAC, 42, None);
        client.poll(t0);
        let xid = client.xid();
        // Nothing before the timer.
        assert!(client.poll(t0 + Duration::from_secs(3)).is_empty());
        let mut t = t0;
        for expected in [4, 8, 16, 32, 64, 64, 64] {
            assert_eq!(
                client.next_wakeup(),
                Some(t + Duration::from_secs(expected))
            );
            t += Duration::from_secs(expected);
            let out = sent(&client.poll(t));
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, MessageType::Discover);
            assert_eq!(xid_of(&out[0].2), xid);
        }
        assert_eq!(client.state(), State::Selecting);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let secs: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [4, 8, 16, 32, 64, 64, 64, 64]);
        assert_eq!(backoff(u32::MAX).as_secs(), 64);
    }

    #[test]
    fn offer_leads_to_a_request_for_the_offered_address() {
        let t0 = Instant::now();
        let mut client = Client::new(MAC, 42, None);
        client.poll(t0);
        let xid = client.xid();
        let out = sent(&client.handle(&offer(xid), t0 + Duration::from_secs(1)));
        assert_eq!(
            client.state(),
            State::Requesting {
                offered: ADDRESS,
                server: SERVER
            }
        );
        assert_eq!(out.len(), 1);
        let (kind, to, m) = &out[0];
        assert_eq!((*kind, *to), (MessageType::Request, Destination::Broadcast));
        assert_eq!(xid_of(m), xid);
        assert_eq!(&m[10..12], &FLAG_BROADCAST.to_be_bytes());
        assert_eq!(&m[12..16], &[0, 0, 0, 0], "no ciaddr while selecting");
        assert_eq!(option(m, OPT_MESSAGE_TYPE), Some(vec![3]));
        assert_eq!(option(m, OPT_REQUESTED_IP), Some(ADDRESS.octets().to_vec()));
        assert_eq!(option(m, OPT_SERVER_ID), Some(SERVER.octets().to_vec()));
    }

    #[test]
    fn replies_for_other_transactions_or_clients_are_ignored() {
        let t0 = Instant::now();
        let mut client = Client::new(MAC, 42, None);
        client.poll(t0);
        let xid = client.xid();
        assert!(client.handle(&offer(xid.wrapping_add(1)), t0).is_empty());
        let mut other_client = offer(xid);
        other_client[33] ^= 1;
        assert!(client.handle(&other_client, t0).is_empty());
        // No message type: a plain BOOTP reply.
        let bootp = reply(None, xid, &[(OPT_SERVER_ID, &SERVER.octets())]);
        assert!(client.handle(&bootp, t0).is_empty());
        // Truncated, a request instead of a reply, no cookie.
        assert!(client.handle(&offer(xid)[..200], t0).is_empty());
        let mut request = offer(xid);
        request[0] = BOOTREQUEST;
        assert!(client.handle(&request, t0).is_empty());
        let mut no_cookie = offer(xid);
        no_cookie[HEADER_LEN] = 0;
        assert!(client.handle(&no_cookie, t0).is_empty());
        // An offer without a server identifier cannot be requested.
        let anonymous = reply(Some(MessageType::Offer), xid, &[]);
        assert!(client.handle(&anonymous, t0).is_empty());
        // An ACK while selecting is not ours to take.
        assert!(client.handle(&ack(xid), t0).is_empty());
        assert_eq!(client.state(), State::Selecting);
        // A truncated option does not panic.
        let mut bad = offer(xid);
        let end = bad.len() - 1;
        bad[end] = OPT_ROUTER;
        bad.push(200);
        assert!(client.handle(&bad, t0).is_empty());
        assert_eq!(client.state(), State::Selecting);
    }

    #[test]
    fn ack_binds_with_the_lease_options() {
        let t0 = Instant::now();
        let (client, lease) = bound(t0);
        assert_eq!(client.state(), State::Bound);
        assert_eq!(lease.address, ADDRESS);
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.router, Some(SERVER));
        assert_eq!(
            lease.dns,
            [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]
        );
        assert_eq!(lease.ntp, [Ipv4Addr::new(10, 0, 2, 4)]);
        assert_eq!(lease.server, SERVER);
        assert_eq!(lease.lease_time, Some(Duration::from_secs(86400)));
        // T1 and T2 default to 0.5 and 0.875 of the lease.
        assert_eq!(lease.t1, Some(Duration::from_secs(43200)));
        assert_eq!(lease.t2, Some(Duration::from_secs(75600)));
        assert_eq!(client.next_wakeup(), Some(t0 + Duration::from_secs(43200)));
        assert_eq!(client.lease(), Some(&lease));
    }

    #[test]
    fn explicit_t1_t2_and_infinite_leases() {
        let t0 = Instant::now();
        let (_, actions) = bind_with(
            7,
            &[
                (OPT_SERVER_ID, &SERVER.octets()),
                (OPT_LEASE_TIME, &600u32.to_be_bytes()),
                (OPT_RENEWAL_TIME, &100u32.to_be_bytes()),
                (OPT_REBINDING_TIME, &200u32.to_be_bytes()),
            ],
            t0,
        );
        let Some(Action::Bound(lease)) = actions.into_iter().next() else {
            panic!("not bound");
        };
        assert_eq!(lease.t1, Some(Duration::from_secs(100)));
        assert_eq!(lease.t2, Some(Duration::from_secs(200)));
        // No mask: the classful default (10/8).
        assert_eq!(lease.prefix, 8);
        assert_eq!(lease.router, None);

        let (mut client, actions) = bind_with(
            8,
            &[
                (OPT_SERVER_ID, &SERVER.octets()),
                (OPT_LEASE_TIME, &u32::MAX.to_be_bytes()),
            ],
            t0,
        );
        let Some(Action::Bound(lease)) = actions.into_iter().next() else {
            panic!("not bound");
        };
        assert_eq!((lease.lease_time, lease.t1, lease.t2), (None, None, None));
        assert_eq!(client.next_wakeup(), None);
        assert!(client.poll(t0 + Duration::from_secs(10_000_000)).is_empty());
    }

    #[test]
    fn unanswered_requests_start_over() {
        let t0 = Instant::now();
        let mut client = Client::new(MAC, 42, None);
        client.poll(t0);
        let first_xid = client.xid();
        client.handle(&offer(first_xid), t0);
        let mut t = t0;
        for delay in [4, 8, 16] {
            t += Duration::from_secs(delay);
            let out = sent(&client.poll(t));
            assert_eq!(out[0].0, MessageType::Request);
        }
        t += Duration::from_secs(32);
        let out = sent(&client.poll(t));
        assert_eq!(out[0].0, MessageType::Discover);
        assert_eq!(client.state(), State::Selecting);
        assert_ne!(client.xid(), first_xid);
    }

    #[test]
    fn nak_while_requesting_starts_over() {
        let t0 = Instant::now();
        let mut client = Client::new(MAC, 42, None);
        client.poll(t0);
        let xid = client.xid();
        client.handle(&offer(xid), t0);
        let nak = reply(
            Some(MessageType::Nak),
            xid,
            &[(OPT_SERVER_ID, &SERVER.octets())],
        );
        let out = sent(&client.handle(&nak, t0));
        assert_eq!(out[0].0, MessageType::Discover);
        assert_eq!(client.state(), State::Selecting);
        assert_ne!(client.xid(), xid);
    }

    #[test]
    fn renews_at_t1_by_unicast_and_rebinds_at_t2_by_broadcast() {
        let t0 = Instant::now();
        let (mut client, lease) = bound(t0);
        assert!(client.poll(t0 + Duration::from_secs(43199)).is_empty());
        let t1 = t0 + Duration::from_secs(43200);
        let out = sent(&client.poll(t1));
        assert_eq!(client.state(), State::Renewing);
        let (kind, to, m) = &out[0];
        assert_eq!(
            (*kind, *to),
            (MessageType::Request, Destination::Unicast(SERVER))
        );
        assert_eq!(
            &m[12..16],
            &ADDRESS.octets(),
            "ciaddr is the leased address"
        );
        assert_eq!(&m[10..12], &[0, 0], "no broadcast flag with an address");
        assert_eq!(option(m, OPT_REQUESTED_IP), None);
        assert_eq!(option(m, OPT_SERVER_ID), None);
        assert_ne!(xid_of(m), 0);
        assert_eq!(client.next_wakeup(), Some(t1 + Duration::from_secs(4)));
        let out = sent(&client.poll(t1 + Duration::from_secs(4)));
        assert_eq!(out[0].1, Destination::Unicast(SERVER));

        let t2 = lease.rebind_at().unwrap();
        let out = sent(&client.poll(t2));
        assert_eq!(client.state(), State::Rebinding);
        let (kind, to, m) = &out[0];
        assert_eq!((*kind, *to), (MessageType::Request, Destination::Broadcast));
        assert_eq!(&m[12..16], &ADDRESS.octets());

        // An ACK renews: bound again, the lease runs from the rebinding request.
        let actions = client.handle(&ack(client.xid()), t2 + Duration::from_secs(1));
        let Some(Action::Bound(renewed)) = actions.into_iter().next() else {
            panic!("not renewed");
        };
        assert_eq!(client.state(), State::Bound);
        assert_eq!(renewed.acquired, t2);
        assert_eq!(client.next_wakeup(), Some(t2 + Duration::from_secs(43200)));
    }

    #[test]
    fn renewal_ack_while_renewing() {
        let t0 = Instant::now();
        let (mut client, _) = bound(t0);
        let t1 = t0 + Duration::from_secs(43200);
        client.poll(t1);
        // A stale ACK (the old transaction) is ignored.
        let stale = client.xid().wrapping_sub(1);
        assert!(client.handle(&ack(stale), t1).is_empty());
        let actions = client.handle(&ack(client.xid()), t1);
        assert!(matches!(actions.as_slice(), [Action::Bound(l)] if l.acquired == t1));
        assert_eq!(client.state(), State::Bound);
    }

    #[test]
    fn renewal_retransmissions_stop_at_t2() {
        let t0 = Instant::now();
        let (mut client, actions) = bind_with(
            3,
            &[
                (OPT_SERVER_ID, &SERVER.octets()),
                (OPT_LEASE_TIME, &20u32.to_be_bytes()),
            ],
            t0,
        );
        assert!(matches!(actions.as_slice(), [Action::Bound(_)]));
        // T1 = 10 s, T2 = 17.5 s, expiry 20 s.
        client.poll(t0 + Duration::from_secs(10));
        client.poll(t0 + Duration::from_secs(14));
        assert_eq!(
            client.next_wakeup(),
            Some(t0 + Duration::from_millis(17500)),
            "the 8 s retransmission would pass T2"
        );
    }

    #[test]
    fn expiry_loses_the_lease_and_rediscover() {
        let t0 = Instant::now();
        let (mut client, lease) = bound(t0);
        client.poll(lease.renew_at().unwrap());
        client.poll(lease.rebind_at().unwrap());
        let actions = client.poll(lease.expires_at().unwrap());
        assert_eq!(actions[0], Action::Lost("lease expired"));
        let out = sent(&actions);
        assert_eq!(out[0].0, MessageType::Discover);
        assert_eq!(&out[0].2[12..16], &[0, 0, 0, 0]);
        assert_eq!(client.state(), State::Selecting);
        assert_eq!(client.lease(), None);
    }

    #[test]
    fn expiry_straight_from_bound() {
        // A loop that slept through T1 and T2 still sees the expiry.
        let t0 = Instant::now();
        let (mut client, lease) = bound(t0);
        let actions = client.poll(lease.expires_at().unwrap() + Duration::from_secs(1));
        assert_eq!(actions[0], Action::Lost("lease expired"));
        assert_eq!(client.state(), State::Selecting);
    }

    #[test]
    fn nak_while_renewing_loses_the_lease() {
        let t0 = Instant::now();
        let (mut client, lease) = bound(t0);
        let t1 = lease.renew_at().unwrap();
        client.poll(t1);
        let nak = reply(
            Some(MessageType::Nak),
            client.xid(),
            &[(OPT_SERVER_ID, &SERVER.octets())],
        );
        let actions = client.handle(&nak, t1);
        assert!(matches!(actions[0], Action::Lost(_)));
        assert_eq!(sent(&actions)[0].0, MessageType::Discover);
        assert_eq!(client.state(), State::Selecting);
        assert_eq!(client.lease(), None);
    }

    #[test]
    fn bound_ignores_stray_replies() {
        let t0 = Instant::now();
        let (mut client, _) = bound(t0);
        let xid = client.xid();
        assert!(client.handle(&ack(xid), t0).is_empty());
        assert!(client.handle(&offer(xid), t0).is_empty());
        assert_eq!(client.state(), State::Bound);
    }

    #[test]
    fn prefixes() {
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 0)), 24);
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 240, 0)), 20);
        assert_eq!(prefix_of(Ipv4Addr::new(0, 0, 0, 0)), 0);
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 255)), 32);
    }

    #[test]
    fn xids_change_per_transaction() {
        let mut client = Client::new(MAC, 0, None);
        let a = client.next_xid();
        let b = client.next_xid();
        assert_ne!(a, b);
    }
}
