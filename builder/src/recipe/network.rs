//! `[network]`: DHCP or a static IPv4 address, and DNS servers.

use std::net::Ipv4Addr;

use berth_format::image_config::StaticIpv4;
use berth_format::NetworkConfig;
use serde::Deserialize;
use toml::Spanned;

use super::{RecipeError, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    #[serde(default)]
    ipv4: Option<Spanned<RawIpv4>>,
    /// DHCPv4 on the first wired interface; on unless `ipv4` is given.
    #[serde(default)]
    dhcp: Option<Spanned<bool>>,
    /// Static DNS servers for every container's /etc/resolv.conf.
    #[serde(default)]
    dns: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIpv4 {
    #[serde(default)]
    interface: Option<Spanned<String>>,
    address: Spanned<String>,
    #[serde(default)]
    gateway: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn network(&self, raw: Option<RawNetwork>) -> Result<NetworkConfig, RecipeError> {
        let Some(raw) = raw else {
            return Ok(NetworkConfig::default());
        };
        let mut dns = Vec::new();
        for server in raw.dns.iter().flatten() {
            let address = server.get_ref().parse::<Ipv4Addr>().map_err(|_| {
                self.at(&server.span()).error(format!(
                    "DNS server {:?} is not an IPv4 address",
                    server.get_ref()
                ))
            })?;
            dns.push(address.to_string());
        }
        let dhcp = raw.dhcp.as_ref().map(|d| (*d.get_ref(), d.span()));
        let Some(ipv4) = raw.ipv4 else {
            return Ok(NetworkConfig {
                ipv4: None,
                dhcp: dhcp.is_none_or(|(on, _)| on),
                dns,
            });
        };
        if let Some((true, span)) = dhcp {
            return self.err(
                &span,
                "dhcp = true and a static ipv4 exclude each other: remove one of them".to_string(),
            );
        }
        let ipv4 = ipv4.into_inner();
        let (address, prefix) = ipv4
            .address
            .get_ref()
            .split_once('/')
            .and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)))
            .filter(|(_, p)| *p <= 32)
            .ok_or_else(|| {
                self.at(&ipv4.address.span()).error(format!(
                    "address {:?} is not an IPv4 address with a prefix length, like \"10.0.2.15/24\"",
                    ipv4.address.get_ref()
                ))
            })?;
        let gateway = match &ipv4.gateway {
            Some(g) => Some(
                g.get_ref()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| {
                        self.at(&g.span())
                            .error(format!("gateway {:?} is not an IPv4 address", g.get_ref()))
                    })?
                    .to_string(),
            ),
            None => None,
        };
        let interface = match &ipv4.interface {
            Some(i) => {
                let ok = !i.get_ref().is_empty()
                    && i.get_ref().len() < 16
                    && i.get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
                if !ok {
                    return self.err(
                        &i.span(),
                        format!("{:?} is not an interface name", i.get_ref()),
                    );
                }
                i.get_ref().clone()
            }
            None => "eth0".to_string(),
        };
        Ok(NetworkConfig {
            ipv4: Some(StaticIpv4 {
                interface,
                address: address.to_string(),
                prefix,
                gateway,
            }),
            dhcp: false,
            dns,
        })
    }
}
