//! `/etc/berth/image.toml`: the resolved recipe the init runs from. The builder
//! writes it from its validated build plan; the init reads it at boot. Only what the
//! device needs at run time is here (container bundles carry their own OCI config).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The image configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub image: ImageInfo,
    #[serde(default)]
    pub network: NetworkConfig,
    /// The boot assessment of a counting slot.
    #[serde(default)]
    pub update: UpdateConfig,
    /// Development switches (all off by default).
    #[serde(default)]
    pub debug: DebugConfig,
    /// Log file rotation.
    #[serde(default)]
    pub logs: LogsConfig,
    /// Containers in start order.
    #[serde(default, rename = "container")]
    pub containers: Vec<ContainerConfig>,
}

/// Identity of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    pub name: String,
    pub version: String,
    pub compatible: String,
    pub hostname: String,
    /// The build's fixed timestamp (seconds since 1970; 0 when the build had
    /// none): the init never lets the clock start before it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// How the init configures the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Static IPv4 configuration of the first wired interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<StaticIpv4>,
    /// Without `ipv4`: whether the first wired interface gets its address by
    /// DHCPv4 (the default) or stays down, leaving only loopback.
    #[serde(default = "yes")]
    pub dhcp: bool,
    /// Static DNS servers (dotted quads) for `/run/berth/resolv.conf`; when set,
    /// they win over the servers a DHCP lease offers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

impl Default for NetworkConfig {
    /// DHCP on the first wired interface.
    fn default() -> Self {
        NetworkConfig {
            ipv4: None,
            dhcp: true,
            dns: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// A static IPv4 address on the first wired interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticIpv4 {
    /// Interface name, e.g. `eth0`.
    pub interface: String,
    /// Address, dotted quad.
    pub address: String,
    /// Prefix length, 0..=32.
    pub prefix: u8,
    /// Default gateway, dotted quad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// Updates: how long a counting slot has to become healthy, and where the
/// device's own update agent looks for new releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Deadline, from the start of the main stage's event loop, for every critical
    /// container to be healthy; after it the init reboots (default 120 s).
    #[serde(default = "default_health_timeout_ms")]
    pub health_timeout_ms: u64,
    /// The update repository (`http://` or `https://`): with one (here or in the
    /// provisioning file) the init runs the update agent as a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The repository's channel ([`DEFAULT_CHANNEL`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Seconds between two checks of the repository ([`DEFAULT_INTERVAL_S`] when
    /// absent); the agent adds random jitter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<u64>,
    /// Boot tries the agent gives an update it installs (the agent's default,
    /// 3, when absent; 1 to [`MAX_TRIES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    /// When the agent reboots into an installed update: [`RebootPolicy`]'s text
    /// (`auto`, `manual` or a window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<String>,
    /// A URL the agent POSTs its status JSON to after each step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

/// The most boot tries an update may get: each failed try is a full boot
/// before the device is back on the release that worked.
pub const MAX_TRIES: u32 = 10;

/// The channel a device follows unless told otherwise.
pub const DEFAULT_CHANNEL: &str = "stable";
/// Seconds between two checks unless told otherwise: 30 minutes, Mender's
/// default; Zincati polls every 5 minutes, but a static repository behind a CDN
/// is better served by fewer, jittered requests.
pub const DEFAULT_INTERVAL_S: u64 = 1800;
/// The shortest interval a recipe or provisioning file may set.
pub const MIN_INTERVAL_S: u64 = 10;

pub use crate::reboot::{RebootPolicy, RebootWindow};

/// Parses a duration: a whole number followed by `ms`, `s`, `m` or `h` (`"500ms"`,
/// `"5s"`, `"2m"`, `"6h"`). Anything else is `None`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return None;
    }
    let number: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => number,
        "s" => number.checked_mul(1000)?,
        "m" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

/// Default of [`UpdateConfig::health_timeout_ms`]: 120 s.
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 120_000;

fn default_health_timeout_ms() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_MS
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            health_timeout_ms: DEFAULT_HEALTH_TIMEOUT_MS,
            repository: None,
            channel: None,
            interval_s: None,
            tries: None,
            reboot: None,
            report: None,
        }
    }
}

/// Size cap and rotated files of each log under /var/log/berth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// A log is rotated when it reaches this many bytes (default 1 MiB).
    #[serde(default = "default_log_max_size")]
    pub max_size: u64,
    /// Rotated files kept: `<name>.log.1` … `<name>.log.<keep>` (default 1).
    #[serde(default = "default_log_keep")]
    pub keep: u32,
}

/// Default of [`LogsConfig::max_size`]: 1 MiB.
pub const DEFAULT_LOG_MAX_SIZE: u64 = 1024 * 1024;
/// Default of [`LogsConfig::keep`].
pub const DEFAULT_LOG_KEEP: u32 = 1;

fn default_log_max_size() -> u64 {
    DEFAULT_LOG_MAX_SIZE
}

fn default_log_keep() -> u32 {
    DEFAULT_LOG_KEEP
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_size: DEFAULT_LOG_MAX_SIZE,
            keep: DEFAULT_LOG_KEEP,
        }
    }
}

/// Development switches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugConfig {
    /// A busybox shell on the serial console (development images only).
    #[serde(default)]
    pub console_shell: bool,
}

/// One container the init starts; its OCI bundle is
/// `/usr/lib/berth/containers/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    pub name: String,
    pub restart: RestartPolicy,
    /// The boot assessment waits for this container to be healthy.
    #[serde(default, skip_serializing_if = "is_false")]
    pub critical: bool,
    /// Its health check, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Named volumes it mounts: the init creates
    /// `/var/lib/berth/volumes/<name>` for each before the start (the bind mounts
    /// themselves are in the bundle's `config.json`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Its root is an overlay whose upper layer lives on the data partition
    /// (`/var/lib/berth/containers/<name>/`), wiped when the image version changes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub writable: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A container's health check: what to probe and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub probe: HealthProbe,
    /// Time between the end of one check and the start of the next.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// A check that takes longer fails (an exec check is killed).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive failures that make the container unhealthy.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Failures in this time after a start do not count.
    #[serde(default)]
    pub start_period_ms: u64,
}

/// Default check interval: 5 s.
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 5_000;
/// Default check timeout: 3 s.
pub const DEFAULT_HEALTH_TIMEOUT_CHECK_MS: u64 = 3_000;
/// Default consecutive failures before unhealthy: 3.
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;

fn default_interval_ms() -> u64 {
    DEFAULT_HEALTH_INTERVAL_MS
}

fn default_timeout_ms() -> u64 {
    DEFAULT_HEALTH_TIMEOUT_CHECK_MS
}

fn default_retries() -> u32 {
    DEFAULT_HEALTH_RETRIES
}

/// What a health check probes. Containers share the host's network, so http and
/// tcp checks go to the device's own loopback address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum HealthProbe {
    /// `crun exec <container> <argv…>`: exit status 0 passes.
    Exec { argv: Vec<String> },
    /// `GET <path>` on `127.0.0.1:<port>`: a 2xx or 3xx status passes.
    Http { port: u16, path: String },
    /// A TCP connection to `127.0.0.1:<port>` passes.
    Tcp { port: u16 },
}

/// What the init does when a container's process exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whatever the exit status.
    Always,
    /// Restart when the exit status is not 0 or the process was killed.
    OnFailure,
    /// Never restart.
    Never,
}

impl RestartPolicy {
    /// Whether a container that ended with `success` is to be started again.
    pub fn restarts(self, success: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        }
    }
}

/// A configuration file that is not valid.
#[derive(Debug, thiserror::Error)]
#[error("invalid image configuration: {0}")]
pub struct ImageConfigError(#[from] toml::de::Error);

impl ImageConfig {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<ImageConfig, ImageConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Renders the file's text.
    pub fn render(&self) -> String {
        toml::to_string_pretty(self).expect("image config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("6h"), Some(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        for bad in [
            "",
            "5",
            "s",
            "1.5s",
            "5 s",
            "-1s",
            "5S",
            "99999999999999999999m",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trips() {
        let config = ImageConfig {
            image: ImageInfo {
                name: "web".into(),
                version: "1.0.0".into(),
                compatible: "web".into(),
                hostname: "web".into(),
                epoch: 1_700_000_000,
            },
            network: NetworkConfig {
                ipv4: Some(StaticIpv4 {
                    interface: "eth0".into(),
                    address: "10.0.2.15".into(),
                    prefix: 24,
                    gateway: Some("10.0.2.2".into()),
                }),
                dhcp: false,
                dns: vec!["10.0.2.3".into()],
            },
            update: UpdateConfig {
                health_timeout_ms: 20_000,
                repository: Some("http://10.0.2.2:8080/repo".into()),
                channel: Some("beta".into()),
                interval_s: Some(600),
                tries: Some(2),
                reboot: Some("manual".into()),
                report: Some("http://10.0.2.2:8081/report".into()),
            },
            debug: DebugConfig {
                console_shell: true,
            },
            logs: LogsConfig {
                max_size: 65536,
                keep: 3,
            },
            containers: vec![
                ContainerConfig {
                    name: "httpd".into(),
                    restart: RestartPolicy::OnFailure,
                    critical: true,
                    health: Some(HealthCheck {
                        probe: HealthProbe::Http {
                            port: 80,
                            path: "/health".into(),
                        },
                        interval_ms: 1000,
                        timeout_ms: 500,
                        retries: 2,
                        start_period_ms: 0,
                    }),
                    volumes: vec!["web-data".into()],
                    writable: true,
                },
                ContainerConfig {
                    name: "worker".into(),
                    restart: RestartPolicy::Always,
                    critical: false,
                    health: Some(HealthCheck {
                        probe: HealthProbe::Exec {
                            argv: vec!["/bin/busybox".into(), "true".into()],
                        },
                        interval_ms: 5000,
                        timeout_ms: 3000,
                        retries: 3,
                        start_period_ms: 10_000,
                    }),
                    volumes: Vec::new(),
                    writable: false,
                },
            ],
        };
        let text = config.render();
        assert!(text.contains("restart = \"on-failure\""), "{text}");
        assert_eq!(ImageConfig::parse(&text).unwrap(), config);
    }

    #[test]
    fn restart_policies() {
        assert!(RestartPolicy::Always.restarts(true));
        assert!(!RestartPolicy::OnFailure.restarts(true));
        assert!(RestartPolicy::OnFailure.restarts(false));
        assert!(!RestartPolicy::Never.restarts(false));
    }

    #[test]
    fn dhcp_is_the_default() {
        let text = "[image]\nname='a'\nversion='1'\ncompatible='a'\nhostname='a'\n";
        assert!(ImageConfig::parse(text).unwrap().network.dhcp);
        let text = format!("{text}[network]\n");
        assert!(ImageConfig::parse(&text).unwrap().network.dhcp);
        let off = format!("{text}dhcp = false\n");
        assert!(!ImageConfig::parse(&off).unwrap().network.dhcp);
    }

    #[test]
    fn old_files_get_the_defaults() {
        let text = "[image]\nname='a'\nversion='1'\ncompatible='a'\nhostname='a'\n\
                    [[container]]\nname='web'\nrestart='always'\n";
        let config = ImageConfig::parse(text).unwrap();
        assert_eq!(config.update.health_timeout_ms, 120_000);
        assert!(!config.debug.console_shell);
        assert_eq!(config.logs, LogsConfig::default());
        assert!(!config.containers[0].critical);
        assert_eq!(config.containers[0].health, None);
        assert!(config.containers[0].volumes.is_empty());
        assert!(!config.containers[0].writable);
        assert!(config.network.dns.is_empty());
    }

    #[test]
    fn health_defaults_and_unknown_probe_keys() {
        let base = "[image]\nname='a'\nversion='1'\ncompatible='a'\nhostname='a'\n\
                    [[container]]\nname='web'\nrestart='always'\n";
        let text = format!("{base}[container.health.probe]\nkind='tcp'\nport=80\n");
        let health = ImageConfig::parse(&text).unwrap().containers[0]
            .health
            .clone()
            .unwrap();
        assert_eq!(health.probe, HealthProbe::Tcp { port: 80 });
        assert_eq!(
            (health.interval_ms, health.timeout_ms, health.retries),
            (5000, 3000, 3)
        );
        let text = format!("{base}[container.health.probe]\nkind='tcp'\nport=80\nhost='x'\n");
        assert!(ImageConfig::parse(&text).is_err());
    }

    #[test]
    fn refuses_unknown_keys() {
        let text = "[image]\nname='a'\nversion='1'\ncompatible='a'\nhostname='a'\nfoo=1\n";
        assert!(ImageConfig::parse(text).is_err());
    }
}
