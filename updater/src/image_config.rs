//! `/etc/berth/image.toml`: the resolved recipe the init runs from. The builder
//! writes it from its validated build plan; the init reads it at boot. Only what the
//! device needs at run time is here (container bundles carry their own OCI config).

use serde::{Deserialize, Serialize};

/// The image configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub image: ImageInfo,
    #[serde(default)]
    pub network: NetworkConfig,
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
}

impl Default for NetworkConfig {
    /// DHCP on the first wired interface.
    fn default() -> Self {
        NetworkConfig {
            ipv4: None,
            dhcp: true,
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

/// One container the init starts; its OCI bundle is
/// `/usr/lib/berth/containers/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerConfig {
    pub name: String,
    pub restart: RestartPolicy,
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
    fn round_trips() {
        let config = ImageConfig {
            image: ImageInfo {
                name: "web".into(),
                version: "1.0.0".into(),
                compatible: "web".into(),
                hostname: "web".into(),
            },
            network: NetworkConfig {
                ipv4: Some(StaticIpv4 {
                    interface: "eth0".into(),
                    address: "10.0.2.15".into(),
                    prefix: 24,
                    gateway: Some("10.0.2.2".into()),
                }),
                dhcp: false,
            },
            containers: vec![ContainerConfig {
                name: "httpd".into(),
                restart: RestartPolicy::OnFailure,
            }],
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
    fn refuses_unknown_keys() {
        let text = "[image]\nname='a'\nversion='1'\ncompatible='a'\nhostname='a'\nfoo=1\n";
        assert!(ImageConfig::parse(text).is_err());
    }
}
