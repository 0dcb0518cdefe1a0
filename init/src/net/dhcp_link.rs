//! The DHCP client on a real interface: a UDP socket on 0.0.0.0:68 bound to the
//! interface, the state machine of [`crate::net::dhcp`], and the lease applied with the
//! interface ioctls of [`crate::net`] plus `/run/berth/resolv.conf`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::net::dhcp::{Action, Client, Destination, Lease, CLIENT_PORT, SERVER_PORT};
use crate::net::{self, Ipv4Setup};

/// Where the DNS servers of the lease are written.
pub use berth_format::layout::RESOLV_CONF;

/// A DHCP client running on one interface.
#[derive(Debug)]
pub struct DhcpLink {
    interface: String,
    socket: UdpSocket,
    client: Client,
    /// The lease configured on the interface.
    applied: Option<Lease>,
    /// Whether the lease's DNS servers go to resolv.conf (not when the recipe or
    /// the provisioning file set static ones).
    write_dns: bool,
}

impl DhcpLink {
    /// Brings `interface` up and opens the client socket on it.
    pub fn start(
        sys: &Path,
        interface: String,
        hostname: &str,
        write_dns: bool,
    ) -> Result<DhcpLink, String> {
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
            write_dns,
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

    /// The NTP servers of the lease on the interface (option 42).
    pub fn ntp_servers(&self) -> &[std::net::Ipv4Addr] {
        self.applied.as_ref().map_or(&[], |lease| &lease.ntp)
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
        if self.write_dns {
            let text = resolv_conf(
                &format!("from the DHCP lease of {}", self.interface),
                &lease.dns,
            );
            if let Err(err) = write_resolv_conf(Path::new(RESOLV_CONF), &text) {
                log!("dhcp: writing {RESOLV_CONF}: {err}");
            }
        }
        self.applied = Some(lease);
    }
}

/// UDP on 0.0.0.0:68, broadcast allowed, bound to `interface` so broadcasts go
/// out (and replies come in) there even before it has an address. The device is
/// bound before the port, with `SO_REUSEADDR`, so every wired interface can
/// have a client of its own on port 68.
fn open_socket(interface: &str) -> std::io::Result<UdpSocket> {
    // SAFETY: plain socket(2); the descriptor is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let socket = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let name = interface.as_bytes();
    let options: [(libc::c_int, *const libc::c_void, usize); 3] = [
        (
            libc::SO_REUSEADDR,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>(),
        ),
        (
            libc::SO_BROADCAST,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>(),
        ),
        (libc::SO_BINDTODEVICE, name.as_ptr().cast(), name.len()),
    ];
    for (option, value, len) in options {
        // SAFETY: the socket is open; `value` points to `len` readable bytes
        // (`one` or `name`) that live through the call.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                value,
                libc::socklen_t::try_from(len).unwrap_or(0),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let address = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
        sin_port: CLIENT_PORT.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: `address` is a valid sockaddr_in of the given length.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            std::ptr::addr_of!(address).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(0),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(socket)
}

/// Writes resolv.conf in place (one write into the same file, not a rename):
/// containers bind-mount this very file, and a rename would leave them the old
/// one.
pub fn write_resolv_conf(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
}

/// `nameserver` lines under a comment saying where they come from.
pub fn resolv_conf(source: &str, servers: &[Ipv4Addr]) -> String {
    let mut text = format!("# written by berth-init {source}\n");
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
        let text = resolv_conf(
            "from the DHCP lease of eth0",
            &[Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
        );
        assert!(
            text.ends_with("nameserver 10.0.2.3\nnameserver 1.1.1.1\n"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth/resolv.conf");
        write_resolv_conf(&path, "# none\n").unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        write_resolv_conf(&path, &text).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.contains("nameserver 10.0.2.3\n"));
        // Rewritten in place: a bind mount of the file sees the new servers.
        let after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_eq!(inode, after);
    }
}
