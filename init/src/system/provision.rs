//! First-boot provisioning, a small Ignition: `berth/provision.toml` on the ESP
//! (mounted on /efi) sets per-device values over the recipe's defaults:
//!
//! ```toml
//! hostname = "edge-17"
//! [network]
//! ipv4 = { interface = "eth0", address = "192.168.1.17/24", gateway = "192.168.1.1" }
//! dns = ["192.168.1.1"]
//! [env]
//! SITE = "north"
//! [time]
//! ntp = ["192.168.1.1"]
//! [update]
//! repository = "http://updates.example/edge"
//! channel = "beta"          # the agent's settings, over the recipe's
//! interval = "6h"
//! reboot = "manual"        # or a window: reboot_window = "Mon-Fri 02:00-04:00 +01:00"
//! report = "http://fleet.example/report"
//! device = "edge-17"        # the identity in status reports (else the host name)
//! ```
//!
//! The file is read leniently, field by field: a field that is not valid is
//! logged and ignored, the others apply; a file that is not TOML at all is
//! logged and ignored. What was accepted is kept on the data partition
//! (`/var/lib/berth/provision.toml`) and used on later boots when the ESP has no
//! file (a provisioning stick removed, an ESP rewritten by an update).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use berth_format::atomic::write_atomically;
use berth_format::image_config::{RebootPolicy, StaticIpv4, MIN_INTERVAL_S};
use berth_format::ImageConfig;

/// Where the file is on the mounted ESP.
pub const ESP_FILE: &str = berth_format::layout::PROVISION_ESP_FILE;
/// Where the accepted settings are kept (the device agent reads the update
/// repository from there).
pub const SAVED_FILE: &str = berth_format::layout::PROVISION_SAVED_FILE;

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
                    .and_then(berth_format::image_config::parse_duration)
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

/// Reads the ESP's file (else the kept one), logs what is wrong with it, keeps
/// what was accepted on the data partition and returns it.
///
/// The ESP's file replaces the kept copy only when it could be read and sets at
/// least one valid value. A file that is there but unreadable (an I/O error, not
/// UTF-8) or wholly invalid (not TOML, empty as a cut write on FAT leaves it, or
/// no field valid) is logged and passed over: the kept copy and its settings stay
/// in force, so a bad stick or a damaged ESP never takes a device's network away.
pub fn load(esp_file: &Path, saved_file: &Path) -> Provision {
    match std::fs::read_to_string(esp_file) {
        Ok(text) => {
            let (provision, problems) = parse(&text);
            for problem in &problems {
                log!("provisioning {}: {problem}", esp_file.display());
            }
            if !provision.is_empty() {
                keep(saved_file, &provision);
                return applied(provision, esp_file);
            }
            log!(
                "provisioning {}: no valid setting in it: passed over, the kept settings stay",
                esp_file.display()
            );
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => log!(
            "provisioning {}: unreadable ({err}): passed over, the kept settings stay",
            esp_file.display()
        ),
    }
    let text = match std::fs::read_to_string(saved_file) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Provision::default(),
        Err(err) => {
            log!("provisioning {}: unreadable ({err})", saved_file.display());
            return Provision::default();
        }
    };
    let (provision, problems) = parse(&text);
    for problem in &problems {
        log!("provisioning {}: {problem}", saved_file.display());
    }
    applied(provision, saved_file)
}

/// Logs where the settings came from, keeps a provisioned seed, returns them.
fn applied(provision: Provision, source: &Path) -> Provision {
    if let Some(seed) = &provision.update.seed {
        keep_seed(Path::new(berth_format::layout::UPDATE_SEED_PATH), seed);
    }
    if !provision.is_empty() {
        log!("provisioning from {} applied", source.display());
    }
    provision
}

/// Keeps the accepted settings on the data partition, atomically: a cut leaves
/// the old copy or the new one, never a torn one.
fn keep(saved_file: &Path, provision: &Provision) {
    let text = provision.render();
    if std::fs::read_to_string(saved_file).ok().as_deref() == Some(text.as_str()) {
        return;
    }
    if let Err(err) = write_atomically(saved_file, text.as_bytes()) {
        log!("keeping provisioning in {}: {err}", saved_file.display());
    }
}

/// Writes a provisioned rollout seed where the update agent reads it (unless
/// it is there already), atomically.
fn keep_seed(path: &Path, seed: &str) {
    let text = format!("{seed}\n");
    if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return;
    }
    match write_atomically(path, text.as_bytes()) {
        Ok(()) => log!("provisioning: rollout seed set"),
        Err(err) => log!(
            "provisioning: keeping the rollout seed in {}: {err}",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
hostname = "edge-17"
[network]
ipv4 = { interface = "eth1", address = "192.168.1.17/24", gateway = "192.168.1.1" }
dns = ["192.168.1.1", "9.9.9.9"]
[env]
SITE = "north"
[time]
ntp = ["10.0.2.2"]
[update]
repository = "https://updates.example/edge"
channel = "beta"
interval = "6h"
reboot = "manual"
report = "http://10.0.2.2:9000/report"
device = "edge-17"
seed = "00000000000000000000000000000000000000000000000000000000000000AB"
"#;

    fn config() -> ImageConfig {
        ImageConfig::parse("[image]\nname='a'\nversion='1'\ncompatible='a'\nhostname='a'\n")
            .unwrap()
    }

    #[test]
    fn parses_every_field() {
        let (p, problems) = parse(FULL);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(p.hostname.as_deref(), Some("edge-17"));
        let ipv4 = p.ipv4.clone().unwrap();
        assert_eq!(
            (ipv4.interface.as_str(), ipv4.address.as_str(), ipv4.prefix),
            ("eth1", "192.168.1.17", 24)
        );
        assert_eq!(ipv4.gateway.as_deref(), Some("192.168.1.1"));
        assert_eq!(
            p.dns.as_deref(),
            Some(&["192.168.1.1".to_string(), "9.9.9.9".to_string()][..])
        );
        assert_eq!(p.env.get("SITE").map(String::as_str), Some("north"));
        assert_eq!(p.ntp_servers(), [Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(
            p.update.repository.as_deref(),
            Some("https://updates.example/edge")
        );
        assert_eq!(p.update.channel.as_deref(), Some("beta"));
        assert_eq!(p.update.interval_s, Some(6 * 3600));
        assert_eq!(p.update.reboot.as_deref(), Some("manual"));
        assert_eq!(
            p.update.report.as_deref(),
            Some("http://10.0.2.2:9000/report")
        );
        assert_eq!(p.update.device.as_deref(), Some("edge-17"));
        assert_eq!(
            p.update.seed.as_deref(),
            Some("00000000000000000000000000000000000000000000000000000000000000ab")
        );
        // What is kept on the data partition reads back the same.
        let (again, problems) = parse(&p.render());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(again, p);
    }

    #[test]
    fn invalid_fields_are_reported_and_skipped_one_by_one() {
        let text = r#"
hostname = "not a host name!"
color = "blue"
[network]
dhcp = "yes"
dns = ["192.168.1.1", "dns.example"]
ipv4 = { address = "10.0.0.5" }
[env]
GOOD = "1"
BAD = 2
[time]
ntp = ["pool.example"]
zone = "UTC"
[update]
repository = "ftp://x"
channel = "../beta"
interval = "5s"
reboot = "later"
color = 1
"#;
        let (p, problems) = parse(text);
        assert_eq!(p.env.get("GOOD").map(String::as_str), Some("1"));
        assert_eq!(p.env.len(), 1);
        assert_eq!(p.hostname, None);
        assert_eq!(p.dhcp, None);
        assert_eq!(p.dns, None);
        assert_eq!(p.ipv4, None);
        assert_eq!(p.update, ProvisionedUpdate::default());
        assert!(p.ntp.is_empty());
        assert_eq!(problems.len(), 13, "{problems:#?}");
        assert!(problems
            .iter()
            .any(|m| m.contains("color is not a setting")));
        for field in ["channel", "interval", "reboot", "color"] {
            assert!(
                problems
                    .iter()
                    .any(|m| m.contains(&format!("update.{field}"))),
                "{field}: {problems:#?}"
            );
        }
    }

    #[test]
    fn a_provisioned_seed_is_kept_where_the_agent_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("var/lib/berth/update/seed");
        let seed = "ab".repeat(32);
        keep_seed(&path, &seed);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{seed}\n"));
        let other = "cd".repeat(32);
        keep_seed(&path, &other);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{other}\n")
        );
    }

    #[test]
    fn not_toml_is_ignored_whole() {
        let (p, problems) = parse("hostname = \n[[[");
        assert!(p.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("not TOML"), "{problems:?}");
    }

    #[test]
    fn applies_over_the_recipe() {
        let mut c = config();
        let (p, _) = parse(FULL);
        p.apply(&mut c);
        assert_eq!(c.image.hostname, "edge-17");
        assert!(!c.network.dhcp);
        assert_eq!(c.network.ipv4.unwrap().interface, "eth1");
        assert_eq!(c.network.dns.len(), 2);
        assert_eq!(
            c.update.repository.as_deref(),
            Some("https://updates.example/edge")
        );
        assert_eq!(c.update.channel.as_deref(), Some("beta"));
        assert_eq!(c.update.interval_s, Some(6 * 3600));

        let mut c = config();
        let (p, _) = parse("hostname = \"b\"\n");
        p.apply(&mut c);
        assert_eq!(c.image.hostname, "b");
        assert!(c.network.dhcp);
    }

    #[test]
    fn loads_the_esp_file_keeps_it_and_falls_back_to_the_kept_copy() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("efi/berth/provision.toml");
        let saved = dir.path().join("var/lib/berth/provision.toml");
        assert!(load(&esp, &saved).is_empty());
        std::fs::create_dir_all(esp.parent().unwrap()).unwrap();
        std::fs::write(&esp, "hostname = \"edge-1\"\nbogus = 1\n").unwrap();
        assert_eq!(load(&esp, &saved).hostname.as_deref(), Some("edge-1"));
        std::fs::remove_file(&esp).unwrap();
        assert_eq!(load(&esp, &saved).hostname.as_deref(), Some("edge-1"));
    }

    /// Writes `hostname = "edge-1"` and a static address through the ESP, so
    /// the kept copy holds them.
    fn provisioned(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let esp = dir.join("efi/berth/provision.toml");
        let saved = dir.join("var/lib/berth/provision.toml");
        std::fs::create_dir_all(esp.parent().unwrap()).unwrap();
        std::fs::write(
            &esp,
            "hostname = \"edge-1\"\n[network]\nipv4 = { address = \"192.168.1.17/24\" }\n",
        )
        .unwrap();
        let first = load(&esp, &saved);
        assert_eq!(first.hostname.as_deref(), Some("edge-1"));
        assert!(first.ipv4.is_some());
        (esp, saved)
    }

    #[test]
    fn a_wholly_invalid_esp_file_leaves_the_kept_settings_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (esp, saved) = provisioned(dir.path());
        let kept = std::fs::read_to_string(&saved).unwrap();
        for bad in [
            "this is not toml [[[",
            "",
            "\0\0\0\0\0\0\0\0",
            "hostname = 7\n[network]\ndns = \"nope\"\n",
        ] {
            std::fs::write(&esp, bad).unwrap();
            let provision = load(&esp, &saved);
            assert_eq!(provision.hostname.as_deref(), Some("edge-1"), "{bad:?}");
            assert!(provision.ipv4.is_some(), "{bad:?}");
            assert_eq!(std::fs::read_to_string(&saved).unwrap(), kept, "{bad:?}");
        }
    }

    #[test]
    fn an_unreadable_esp_file_leaves_the_kept_settings_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (esp, saved) = provisioned(dir.path());
        let kept = std::fs::read_to_string(&saved).unwrap();
        // Not UTF-8: read_to_string fails as an unreadable file does.
        std::fs::write(&esp, b"hostname = \"\xff\xfe\"\n").unwrap();
        assert_eq!(load(&esp, &saved).hostname.as_deref(), Some("edge-1"));
        // A folder where the file should be: EISDIR, as an I/O error reads.
        std::fs::remove_file(&esp).unwrap();
        std::fs::create_dir(&esp).unwrap();
        assert_eq!(load(&esp, &saved).hostname.as_deref(), Some("edge-1"));
        assert_eq!(std::fs::read_to_string(&saved).unwrap(), kept);
    }

    #[test]
    fn the_kept_copy_is_replaced_whole_and_no_temporary_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (esp, saved) = provisioned(dir.path());
        std::fs::write(&esp, "hostname = \"edge-2\"\n").unwrap();
        assert_eq!(load(&esp, &saved).hostname.as_deref(), Some("edge-2"));
        std::fs::remove_file(&esp).unwrap();
        let again = load(&esp, &saved);
        assert_eq!(again.hostname.as_deref(), Some("edge-2"));
        assert_eq!(again.ipv4, None, "the new file replaced the old settings");
        let names: Vec<_> = std::fs::read_dir(saved.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("provision.toml")]);
    }
}
