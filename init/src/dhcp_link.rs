//! The DHCP client on a real interface: a UDP socket on 0.0.0.0:68 bound to the
//! interface, the state machine of [`crate::dhcp`], and the lease applied with the
//! interface ioctls of [`crate::net`] plus `/run/berth/resolv.conf`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::dhcp::{Action, Client, Destination, Lease, CLIENT_PORT, SERVER_PORT};
use crate::net::{self, Ipv4Setup};

/// Where the DNS servers of the lease are written.
pub const RESOLV_CONF: &str = "/run/berth/resolv.conf";

/// A DHCP client running on one interface.
#[derive(Debug)]
pub struct DhcpLink {
    interface: String,
    socket: UdpSocket,
    client: Client,
    /// The lease configured on the interface.
    applied: Option<Lease>,
}

impl DhcpLink {
    /// Picks the first wired interface, brings it up and opens the client socket.
    pub fn start(sys: &Path, hostname: &str, timeout: Duration) -> Result<DhcpLink, String> {
        let interface = net::first_wired_interface(sys, timeout).map_err(|e| e.to_string())?;
        let mac = net::mac_address(sys, &interface)
            .ok_or_else(|| format!("{interface} has no Ethernet address"))?;
        net::link_up(&interface).map_err(|e| e.to_string())?;
        let socket = open_socket(&interface).map_err(|e| format!("{interface}: {e}"))?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() ^ u64::from(d.subsec_nanos()) << 32)
            ^ u64::from(std::process::id())
            ^ mac.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        Ok(DhcpLink {
            interface,
            socket,
            client: Client::new(mac, seed, Some(hostname.to_string())),
            applied: None,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    pub fn is_bound(&self) -> bool {
        self.applied.is_some()
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// When [`DhcpLink::on_timer`] has work next.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.client.next_wakeup()
    }

    /// Retransmissions, T1, T2, expiry; the first DISCOVER.
    pub fn on_timer(&mut self, now: Instant) {
        let actions = self.client.poll(now);
        self.execute(actions);
    }

    /// Reads every datagram waiting on the socket.
    pub fn on_readable(&mut self, now: Instant) {
        let mut buf = [0u8; 1500];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let actions = self.client.handle(&buf[..n], now);
                    self.execute(actions);
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    log!("dhcp: receiving on {}: {err}", self.interface);
                    break;
                }
            }
        }
    }

    /// Runs the client until it holds a lease or `timeout` passes.
    pub fn acquire(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            self.on_timer(now);
            if self.is_bound() {
                return true;
            }
            if now >= deadline {
                return false;
            }
            let wakeup = self.next_wakeup().map_or(deadline, |at| at.min(deadline));
            let millis = wakeup.saturating_duration_since(now).as_millis().max(1);
            let timeout = PollTimeout::try_from(i32::try_from(millis).unwrap_or(i32::MAX))
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            if let Ok(n) = poll(&mut fds, timeout) {
                if n > 0 {
                    self.on_readable(Instant::now());
                }
            }
        }
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { message, to, kind } => {
                    let address = match to {
                        Destination::Broadcast => Ipv4Addr::BROADCAST,
                        Destination::Unicast(server) => server,
                    };
                    if let Err(err) = self
                        .socket
                        .send_to(&message, SocketAddrV4::new(address, SERVER_PORT))
                    {
                        log!("dhcp: sending {kind:?} on {}: {err}", self.interface);
                    }
                }
                Action::Bound(lease) => self.bound(lease),
                Action::Lost(why) => {
                    log!("dhcp: {} lost its address: {why}", self.interface);
                    if let Err(err) = net::clear_ipv4(&self.interface) {
                        log!("dhcp: {err}");
                    }
                    self.applied = None;
                }
            }
        }
    }

    fn bound(&mut self, lease: Lease) {
        let seconds = lease
            .lease_time
            .map_or_else(|| "infinite".to_string(), |t| format!("{} s", t.as_secs()));
        let same = self.applied.as_ref().is_some_and(|old| {
            old.address == lease.address && old.prefix == lease.prefix && old.router == lease.router
        });
        if same {
            log!(
                "dhcp: {} renewed {} (lease {seconds})",
                self.interface,
                lease.address
            );
        } else {
            if self.applied.is_some() {
                if let Err(err) = net::clear_ipv4(&self.interface) {
                    log!("dhcp: {err}");
                }
            }
            let setup = match net::netmask(lease.prefix) {
                Ok(netmask) => Ipv4Setup {
                    interface: self.interface.clone(),
                    address: lease.address,
                    netmask,
                    gateway: lease.router,
                },
                Err(err) => {
                    log!("dhcp: {err}");
                    return;
                }
            };
            if let Err(err) = net::configure_ipv4(&setup, Path::new("/sys"), Duration::ZERO) {
                log!("dhcp: configuring {}: {err}", self.interface);
            }
            log!(
                "dhcp: {} bound to {}/{}{} (lease {seconds})",
                self.interface,
                lease.address,
                lease.prefix,
                lease
                    .router
                    .map(|router| format!(" via {router}"))
                    .unwrap_or_default()
            );
        }
        if let Err(err) = write_resolv_conf(Path::new(RESOLV_CONF), &lease.dns) {
            log!("dhcp: writing {RESOLV_CONF}: {err}");
        }
        self.applied = Some(lease);
    }
}

/// UDP on 0.0.0.0:68, broadcast allowed, bound to `interface` so broadcasts go
/// out (and replies come in) there even before it has an address.
fn open_socket(interface: &str) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT))?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    let name = interface.as_bytes();
    // SAFETY: the socket is open; the option value is `name`, valid for its length
    // for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            libc::socklen_t::try_from(name.len()).unwrap_or(0),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

/// `nameserver` lines, written to a temporary file and renamed into place.
fn write_resolv_conf(path: &Path, servers: &[Ipv4Addr]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = resolv_conf(servers);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn resolv_conf(servers: &[Ipv4Addr]) -> String {
    let mut text = String::from("# written by berth-init from the DHCP lease\n");
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lists_the_servers() {
        let text = resolv_conf(&[Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]);
        assert!(
            text.ends_with("nameserver 10.0.2.3\nnameserver 1.1.1.1\n"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth/resolv.conf");
        write_resolv_conf(&path, &[Ipv4Addr::new(10, 0, 2, 3)]).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.contains("nameserver 10.0.2.3\n"));
    }
}
