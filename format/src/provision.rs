//! The per-device provisioning file, `berth/provision.toml` on the ESP: its
//! settings and their parser. The init applies it at boot
//! (`berth-init`'s `system::provision`); `berth flash --provision` checks a file
//! with this same parser before it writes it onto a flashed ESP.
//!
//! The file is read leniently, field by field: [`parse`] returns the valid
//! settings and one message per field that is not.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::image_config::{RebootPolicy, StaticIpv4, MIN_INTERVAL_S};
use crate::ImageConfig;

/// The accepted settings (each `None`/empty when absent or invalid).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provision {
    pub hostname: Option<String>,
    pub ipv4: Option<StaticIpv4>,
    pub dhcp: Option<bool>,
    pub dns: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// SNTP servers (IPv4 addresses).
    pub ntp: Vec<String>,
    /// `[update]`: the update agent's settings.
    pub update: ProvisionedUpdate,
}

/// `[update]` of the provisioning file: each overrides the recipe's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvisionedUpdate {
    pub repository: Option<String>,
    pub channel: Option<String>,
    pub interval_s: Option<u64>,
    pub reboot: Option<String>,
    pub report: Option<String>,
    /// The device's identity in status reports.
    pub device: Option<String>,
    /// The device's rollout seed (64 hex digits), instead of a random one: it
    /// places the device in a chosen wave (Bottlerocket's `updates.seed`).
    pub seed: Option<String>,
}

/// Parses the file's text: the settings that are valid, and one message per
/// field that is not.
pub fn parse(text: &str) -> (Provision, Vec<String>) {
    let mut out = Provision::default();
    let mut problems = Vec::new();
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(err) => {
            let first = err
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            return (out, vec![format!("not TOML, ignored: {first}")]);
        }
    };
    for (key, value) in &table {
        match key.as_str() {
            "hostname" => match value.as_str().filter(|h| valid_hostname(h)) {
                Some(hostname) => out.hostname = Some(hostname.to_string()),
                None => problems.push(format!("hostname {value} is not a host name")),
            },
            "network" => match value.as_table() {
                Some(network) => parse_network(network, &mut out, &mut problems),
                None => problems.push("network is not a table".into()),
            },
            "env" => match value.as_table() {
                Some(env) => {
                    for (name, value) in env {
                        let ok_name =
                            !name.is_empty() && !name.contains(['=', '\0']) && name != "PATH";
                        match value.as_str() {
                            Some(text) if ok_name && !text.contains('\0') => {
                                out.env.insert(name.clone(), text.to_string());
                            }
                            _ => problems.push(format!("env.{name} is not NAME = \"text\"")),
                        }
                    }
                }
                None => problems.push("env is not a table".into()),
            },
            "time" => match value.as_table() {
                Some(time) => {
                    for (key, value) in time {
                        match (key.as_str(), ipv4_list(value)) {
                            ("ntp", Some(servers)) => out.ntp = servers,
                            ("ntp", None) => problems
                                .push(format!("time.ntp {value} is not a list of IPv4 addresses")),
                            (other, _) => problems.push(format!("time.{other} is not a setting")),
                        }
                    }
                }
                None => problems.push("time is not a table".into()),
            },
            "update" => match value.as_table() {
                Some(update) => parse_update(update, &mut out.update, &mut problems),
                None => problems.push("update is not a table".into()),
            },
            other => problems.push(format!("{other} is not a setting")),
        }
    }
    (out, problems)
}

fn parse_network(network: &toml::Table, out: &mut Provision, problems: &mut Vec<String>) {
    for (key, value) in network {
        match key.as_str() {
            "dhcp" => match value.as_bool() {
                Some(on) => out.dhcp = Some(on),
                None => problems.push(format!("network.dhcp {value} is not true or false")),
            },
            "dns" => {
                match ipv4_list(value) {
                    Some(servers) => out.dns = Some(servers),
                    None => problems.push(format!("network.dns {value} is not a list of IPv4 addresses")),
                }
            }
            "ipv4" => match value.as_table().and_then(static_ipv4) {
                Some(ipv4) => out.ipv4 = Some(ipv4),
                None => problems.push(format!(
                    "network.ipv4 {value} is not {{ address = \"A.B.C.D/N\", gateway = \"A.B.C.D\", interface = \"eth0\" }}"
                )),
            },
            other => problems.push(format!("network.{other} is not a setting")),
        }
    }
}

fn parse_update(update: &toml::Table, out: &mut ProvisionedUpdate, problems: &mut Vec<String>) {
    let is_url = |url: &&str| {
        (url.starts_with("http://") || url.starts_with("https://"))
            && !url.contains(char::is_whitespace)
    };
    let is_name = |name: &&str| {
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    for (key, value) in update {
        let text = value.as_str();
        match key.as_str() {
            "repository" => match text.filter(is_url) {
                Some(url) => out.repository = Some(url.to_string()),
                None => problems.push(format!("update.repository {value} is not an http(s) URL")),
            },
            "report" => match text.filter(is_url) {
                Some(url) => out.report = Some(url.to_string()),
                None => problems.push(format!("update.report {value} is not an http(s) URL")),
            },
            "channel" => match text.filter(is_name) {
                Some(name) => out.channel = Some(name.to_string()),
                None => problems.push(format!("update.channel {value} is not a channel name")),
            },
            "device" => match text.filter(is_name) {
                Some(name) => out.device = Some(name.to_string()),
                None => problems.push(format!(
                    "update.device {value} is not a name of letters, digits, '-', '_' and '.'"
                )),
            },
            "seed" => {
                match text.filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())) {
                    Some(seed) => out.seed = Some(seed.to_ascii_lowercase()),
                    None => problems.push(format!("update.seed {value} is not 64 hex digits")),
                }
            }
            "interval" => {
                let seconds = text
                    .and_then(crate::image_config::parse_duration)
                    .map(|d| d.as_secs())
                    .filter(|s| *s >= MIN_INTERVAL_S);
                match seconds {
                    Some(s) => out.interval_s = Some(s),
                    None => problems.push(format!(
                        "update.interval {value} is not a duration of at least {MIN_INTERVAL_S} s (\"30m\", \"6h\")"
                    )),
                }
            }
            "reboot" | "reboot_window" => match text.map(RebootPolicy::parse) {
                Some(Ok(policy)) => out.reboot = Some(policy.to_string()),
                Some(Err(why)) => problems.push(format!("update.{why}")),
                None => problems.push(format!("update.reboot {value} is not text")),
            },
            other => problems.push(format!("update.{other} is not a setting")),
        }
    }
}

/// A list of IPv4 addresses, as their text.
fn ipv4_list(value: &toml::Value) -> Option<Vec<String>> {
    value.as_array().and_then(|list| {
        list.iter()
            .map(|v| v.as_str()?.parse::<Ipv4Addr>().ok().map(|a| a.to_string()))
            .collect()
    })
}

fn static_ipv4(table: &toml::Table) -> Option<StaticIpv4> {
    if table
        .keys()
        .any(|k| !["address", "gateway", "interface"].contains(&k.as_str()))
    {
        return None;
    }
    let (address, prefix) = table.get("address")?.as_str()?.split_once('/')?;
    let address: Ipv4Addr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let gateway = match table.get("gateway") {
        Some(g) => Some(g.as_str()?.parse::<Ipv4Addr>().ok()?.to_string()),
        None => None,
    };
    let interface = match table.get("interface") {
        Some(i) => {
            let name = i.as_str()?;
            let ok = !name.is_empty()
                && name.len() < 16
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            ok.then(|| name.to_string())?
        }
        None => "eth0".to_string(),
    };
    Some(StaticIpv4 {
        interface,
        address: address.to_string(),
        prefix,
        gateway,
    })
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl Provision {
    /// Whether nothing was set.
    pub fn is_empty(&self) -> bool {
        *self == Provision::default()
    }

    /// Applies the settings over the image's configuration. A static address
    /// turns DHCP off; `dhcp = true` drops the recipe's static address.
    pub fn apply(&self, config: &mut ImageConfig) {
        if let Some(hostname) = &self.hostname {
            config.image.hostname = hostname.clone();
        }
        if let Some(ipv4) = &self.ipv4 {
            config.network.ipv4 = Some(ipv4.clone());
            config.network.dhcp = false;
        }
        if let Some(dhcp) = self.dhcp {
            config.network.dhcp = dhcp;
            if dhcp && self.ipv4.is_none() {
                config.network.ipv4 = None;
            }
        }
        if let Some(dns) = &self.dns {
            config.network.dns = dns.clone();
        }
        let update = &self.update;
        let target = &mut config.update;
        for (from, to) in [
            (&update.repository, &mut target.repository),
            (&update.channel, &mut target.channel),
            (&update.reboot, &mut target.reboot),
            (&update.report, &mut target.report),
        ] {
            if from.is_some() {
                to.clone_from(from);
            }
        }
        if update.interval_s.is_some() {
            target.interval_s = update.interval_s;
        }
    }

    /// The SNTP servers.
    pub fn ntp_servers(&self) -> Vec<Ipv4Addr> {
        self.ntp.iter().filter_map(|a| a.parse().ok()).collect()
    }

    /// The settings as a provisioning file (what is kept on the data partition).
    pub fn render(&self) -> String {
        let mut root = toml::Table::new();
        if let Some(hostname) = &self.hostname {
            root.insert("hostname".into(), hostname.clone().into());
        }
        let mut network = toml::Table::new();
        if let Some(ipv4) = &self.ipv4 {
            let mut table = toml::Table::new();
            table.insert("interface".into(), ipv4.interface.clone().into());
            table.insert(
                "address".into(),
                format!("{}/{}", ipv4.address, ipv4.prefix).into(),
            );
            if let Some(gateway) = &ipv4.gateway {
                table.insert("gateway".into(), gateway.clone().into());
            }
            network.insert("ipv4".into(), table.into());
        }
        if let Some(dhcp) = self.dhcp {
            network.insert("dhcp".into(), dhcp.into());
        }
        if let Some(dns) = &self.dns {
            network.insert("dns".into(), dns.clone().into());
        }
        if !network.is_empty() {
            root.insert("network".into(), network.into());
        }
        if !self.env.is_empty() {
            let env: toml::Table = self
                .env
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::from(v.clone())))
                .collect();
            root.insert("env".into(), env.into());
        }
        if !self.ntp.is_empty() {
            let mut time = toml::Table::new();
            time.insert("ntp".into(), self.ntp.clone().into());
            root.insert("time".into(), time.into());
        }
        let mut update = toml::Table::new();
        for (key, value) in [
            ("repository", &self.update.repository),
            ("channel", &self.update.channel),
            ("reboot", &self.update.reboot),
            ("report", &self.update.report),
            ("device", &self.update.device),
            ("seed", &self.update.seed),
        ] {
            if let Some(value) = value {
                update.insert(key.into(), value.clone().into());
            }
        }
        if let Some(seconds) = self.update.interval_s {
            update.insert("interval".into(), format!("{seconds}s").into());
        }
        if !update.is_empty() {
            root.insert("update".into(), update.into());
        }
        format!("# applied by berth-init from the ESP's berth/provision.toml\n{root}")
    }
}
