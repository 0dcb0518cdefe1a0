//! The network, as the main stage brings it up: this module's interface ioctls
//! (no netlink) bring loopback up and give the wired interface its static
//! address, netmask and default route; without one, [`dhcp_link`] runs the DHCP
//! client of [`dhcp`] on every wired interface, first during boot and then from
//! the run loop. Once the network is up, [`sntp`] sets the clock in a thread of
//! its own.

use berth_init::dhcp;
pub mod dhcp_link;
pub mod sntp;

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use berth_format::image_config::StaticIpv4;

// Request numbers from linux/sockios.h, typed for libc's ioctl on both glibc
// (unsigned long) and musl (int).
const SIOCADDRT: libc::Ioctl = 0x890B;
const SIOCGIFFLAGS: libc::Ioctl = 0x8913;
const SIOCSIFFLAGS: libc::Ioctl = 0x8914;
const SIOCSIFADDR: libc::Ioctl = 0x8916;
const SIOCSIFNETMASK: libc::Ioctl = 0x891C;

/// `AF_INET` as the `sa_family` field's type.
const AF_INET: libc::sa_family_t = 2;
/// `IFF_UP` as the `ifru_flags` field's type.
const IFF_UP: libc::c_short = 0x1;

// Route flags from linux/route.h.
const RTF_UP: libc::c_ushort = 0x0001;
const RTF_GATEWAY: libc::c_ushort = 0x0002;

/// A network setup step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration holds something that is not an address or prefix.
    #[error("invalid network configuration: {0}")]
    Config(String),
    /// No socket to issue the ioctls on.
    #[error("creating a socket for interface ioctls: {0}")]
    Socket(std::io::Error),
    /// The interface never appeared.
    #[error("interface {0} did not appear (is its driver loaded?)")]
    NoInterface(String),
    /// An ioctl on an interface failed.
    #[error("{op} on {interface}: {source}")]
    Ioctl {
        op: &'static str,
        interface: String,
        source: std::io::Error,
    },
}

/// A validated static IPv4 configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Setup {
    pub interface: String,
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
}

impl Ipv4Setup {
    /// Checks the image configuration's `network.ipv4` table.
    pub fn from_config(config: &StaticIpv4) -> Result<Ipv4Setup, NetError> {
        if config.interface.is_empty() || config.interface.len() >= libc::IFNAMSIZ {
            return Err(NetError::Config(format!(
                "interface name {:?} is empty or longer than {} bytes",
                config.interface,
                libc::IFNAMSIZ - 1
            )));
        }
        let parse = |text: &str| {
            text.parse::<Ipv4Addr>()
                .map_err(|_| NetError::Config(format!("{text:?} is not an IPv4 address")))
        };
        Ok(Ipv4Setup {
            interface: config.interface.clone(),
            address: parse(&config.address)?,
            netmask: netmask(config.prefix)?,
            gateway: config.gateway.as_deref().map(parse).transpose()?,
        })
    }
}

/// The netmask of a prefix length: 24 → 255.255.255.0.
pub fn netmask(prefix: u8) -> Result<Ipv4Addr, NetError> {
    match prefix {
        0 => Ok(Ipv4Addr::UNSPECIFIED),
        1..=32 => Ok(Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix)))),
        _ => Err(NetError::Config(format!(
            "prefix /{prefix} is longer than 32"
        ))),
    }
}

/// Brings the loopback interface up.
pub fn loopback_up() -> Result<(), NetError> {
    let socket = Socket::new()?;
    socket.set_up("lo")
}

/// Waits up to `timeout` for the interface to appear in `<sys>/class/net`, then
/// gives it its address and netmask, brings it up and adds the default route.
pub fn configure_ipv4(setup: &Ipv4Setup, sys: &Path, timeout: Duration) -> Result<(), NetError> {
    wait_for_interface(sys, &setup.interface, timeout)?;
    let socket = Socket::new()?;
    socket.set_address(&setup.interface, SIOCSIFADDR, "SIOCSIFADDR", setup.address)?;
    socket.set_address(
        &setup.interface,
        SIOCSIFNETMASK,
        "SIOCSIFNETMASK",
        setup.netmask,
    )?;
    socket.set_up(&setup.interface)?;
    if let Some(gateway) = setup.gateway {
        socket.add_default_route(&setup.interface, gateway)?;
    }
    Ok(())
}

/// Brings an interface up (without an address: DHCP runs on it).
pub fn link_up(interface: &str) -> Result<(), NetError> {
    Socket::new()?.set_up(interface)
}

/// Removes the interface's IPv4 address (and with it the routes through it).
pub fn clear_ipv4(interface: &str) -> Result<(), NetError> {
    Socket::new()?.set_address(interface, SIOCSIFADDR, "SIOCSIFADDR", Ipv4Addr::UNSPECIFIED)
}

/// Every wired interface (all but loopback), `eth0` first, then by name. Waits
/// up to `timeout` for the first to appear.
pub fn wired_interfaces(sys: &Path, timeout: Duration) -> Result<Vec<String>, NetError> {
    let first = first_wired_interface(sys, timeout)?;
    let mut names: Vec<String> = std::fs::read_dir(sys.join("class/net"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name != "lo" && *name != first && name.len() < libc::IFNAMSIZ)
        .collect();
    names.sort();
    names.insert(0, first);
    Ok(names)
}

/// The wired interface to run DHCP on: `eth0` when there is one, else the first
/// other than loopback, by name. Waits up to `timeout` for one to appear.
pub fn first_wired_interface(sys: &Path, timeout: Duration) -> Result<String, NetError> {
    let start = Instant::now();
    loop {
        let dir = sys.join("class/net");
        if dir.join("eth0").exists() {
            return Ok("eth0".to_string());
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name != "lo" && name.len() < libc::IFNAMSIZ)
            .collect();
        names.sort();
        if let Some(name) = names.into_iter().next() {
            return Ok(name);
        }
        if start.elapsed() >= timeout {
            return Err(NetError::NoInterface("(any wired interface)".to_string()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The interface's hardware address, from `<sys>/class/net/<name>/address`.
pub fn mac_address(sys: &Path, interface: &str) -> Option<[u8; 6]> {
    let text =
        std::fs::read_to_string(sys.join("class/net").join(interface).join("address")).ok()?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn wait_for_interface(sys: &Path, name: &str, timeout: Duration) -> Result<(), NetError> {
    let path = sys.join("class/net").join(name);
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() >= timeout {
            return Err(NetError::NoInterface(name.to_string()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `struct sockaddr` holding an IPv4 address (the layout of `sockaddr_in`).
fn sockaddr_v4(address: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    // sa_data of sockaddr_in: 2 bytes of port, then the address in network order.
    for (slot, byte) in data[2..6].iter_mut().zip(address.octets()) {
        *slot = libc::c_char::from_ne_bytes([byte]);
    }
    libc::sockaddr {
        sa_family: AF_INET,
        sa_data: data,
    }
}

/// `struct rtentry` from linux/route.h (glibc's libc crate does not define it).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// A datagram socket to issue interface ioctls on.
struct Socket(OwnedFd);

impl Socket {
    fn new() -> Result<Socket, NetError> {
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(NetError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a freshly created, valid descriptor that nothing else owns.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Runs one ioctl whose argument is `arg`.
    fn ioctl<T>(
        &self,
        request: libc::Ioctl,
        arg: &mut T,
        op: &'static str,
        interface: &str,
    ) -> Result<(), NetError> {
        // SAFETY: the socket is open, and `arg` is an exclusively borrowed,
        // initialised value of the struct type this request reads or writes
        // (`ifreq` for the SIOC*IF* requests, `rtentry` for SIOCADDRT); it outlives
        // the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request, std::ptr::from_mut(arg)) };
        if rc < 0 {
            return Err(NetError::Ioctl {
                op,
                interface: interface.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn set_up(&self, interface: &str) -> Result<(), NetError> {
        let mut req = ifreq(interface);
        self.ioctl(SIOCGIFFLAGS, &mut req, "SIOCGIFFLAGS", interface)?;
        // SAFETY: SIOCGIFFLAGS succeeded, so the kernel filled in the flags member
        // of the union (and any bit pattern is a valid c_short).
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | IFF_UP;
        self.ioctl(SIOCSIFFLAGS, &mut req, "SIOCSIFFLAGS", interface)
    }

    fn set_address(
        &self,
        interface: &str,
        request: libc::Ioctl,
        op: &'static str,
        address: Ipv4Addr,
    ) -> Result<(), NetError> {
        let mut req = ifreq(interface);
        req.ifr_ifru.ifru_addr = sockaddr_v4(address);
        self.ioctl(request, &mut req, op, interface)
    }

    fn add_default_route(&self, interface: &str, gateway: Ipv4Addr) -> Result<(), NetError> {
        let mut route = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_v4(gateway),
            rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
            rt_flags: RTF_UP | RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: std::ptr::null_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        self.ioctl(
            SIOCADDRT,
            &mut route,
            "SIOCADDRT (default route)",
            interface,
        )
    }
}

/// An `ifreq` naming `interface` (validated shorter than IFNAMSIZ by the caller;
/// longer names are cut), everything else zero.
fn ifreq(interface: &str) -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct (a name array and a union of integers,
    // sockaddrs and a pointer) for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in req
        .ifr_name
        .iter_mut()
        .zip(interface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *slot = libc::c_char::from_ne_bytes([byte]);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(address: &str, prefix: u8, gateway: Option<&str>) -> StaticIpv4 {
        StaticIpv4 {
            interface: "eth0".into(),
            address: address.into(),
            prefix,
            gateway: gateway.map(str::to_string),
        }
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0).unwrap(), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(netmask(8).unwrap(), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(netmask(24).unwrap(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(25).unwrap(), Ipv4Addr::new(255, 255, 255, 128));
        assert_eq!(netmask(32).unwrap(), Ipv4Addr::new(255, 255, 255, 255));
        assert!(netmask(33).is_err());
    }

    #[test]
    fn validates_the_configuration() {
        let setup = Ipv4Setup::from_config(&config("10.0.2.15", 24, Some("10.0.2.2"))).unwrap();
        assert_eq!(setup.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(setup.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(setup.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert!(Ipv4Setup::from_config(&config("10.0.2", 24, None)).is_err());
        assert!(Ipv4Setup::from_config(&config("10.0.2.15", 40, None)).is_err());
        assert!(Ipv4Setup::from_config(&config("10.0.2.15", 24, Some("gw"))).is_err());
        let mut long = config("10.0.2.15", 24, None);
        long.interface = "a-very-long-ifname".into();
        assert!(Ipv4Setup::from_config(&long).is_err());
    }

    #[test]
    fn sockaddr_holds_the_address_in_network_order() {
        let sa = sockaddr_v4(Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        assert_eq!(i32::from(IFF_UP), libc::IFF_UP);
        let bytes: Vec<u8> = sa.sa_data[..6]
            .iter()
            .map(|&b| u8::from_ne_bytes(b.to_ne_bytes()))
            .collect();
        assert_eq!(bytes, [0, 0, 10, 0, 2, 15]);
    }

    #[test]
    fn rtentry_has_the_kernel_layout() {
        // struct rtentry is 120 bytes on x86-64 (and 64 on 32-bit targets).
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }

    #[test]
    fn ifreq_names_the_interface() {
        let req = ifreq("eth0");
        let name: Vec<u8> = req.ifr_name[..5]
            .iter()
            .map(|&b| u8::from_ne_bytes(b.to_ne_bytes()))
            .collect();
        assert_eq!(name, b"eth0\0");
    }

    #[test]
    fn picks_eth0_or_the_first_wired_interface() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("class/net");
        std::fs::create_dir_all(net.join("lo")).unwrap();
        assert!(first_wired_interface(dir.path(), Duration::from_millis(10)).is_err());
        std::fs::create_dir_all(net.join("ens4")).unwrap();
        std::fs::create_dir_all(net.join("enp0s3")).unwrap();
        assert_eq!(
            first_wired_interface(dir.path(), Duration::ZERO).unwrap(),
            "enp0s3"
        );
        std::fs::create_dir_all(net.join("eth0")).unwrap();
        assert_eq!(
            first_wired_interface(dir.path(), Duration::ZERO).unwrap(),
            "eth0"
        );
        assert_eq!(
            wired_interfaces(dir.path(), Duration::ZERO).unwrap(),
            ["eth0", "enp0s3", "ens4"]
        );
        std::fs::write(net.join("eth0/address"), "52:54:00:12:34:56\n").unwrap();
        assert_eq!(
            mac_address(dir.path(), "eth0"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        std::fs::write(net.join("ens4/address"), "52:54:00\n").unwrap();
        assert_eq!(mac_address(dir.path(), "ens4"), None);
    }

    #[test]
    fn missing_interface_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let err = wait_for_interface(dir.path(), "eth9", Duration::from_millis(10)).unwrap_err();
        assert!(err.to_string().contains("eth9"), "{err}");
    }
}
