//! `[update]`: the keys an image trusts for updates, how long a new slot has to
//! prove itself healthy, and where the device's own agent looks for releases
//! (repository, channel, interval, reboot policy, status reports).

use std::path::PathBuf;
use std::time::Duration;

use berth_bundle::channel::ChannelName;
use berth_format::image_config::{
    RebootPolicy, DEFAULT_HEALTH_TIMEOUT_MS, MAX_TRIES, MIN_INTERVAL_S,
};
use serde::Deserialize;
use toml::Spanned;

use super::{RecipeError, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpdate {
    /// Minisign public keys (paths relative to the recipe) trusted for updates.
    #[serde(default)]
    keys: Vec<Spanned<String>>,
    /// How long a counting slot has to become healthy.
    #[serde(default)]
    health_timeout: Option<Spanned<String>>,
    /// The update repository the device's agent polls.
    #[serde(default)]
    repository: Option<Spanned<String>>,
    /// Its channel.
    #[serde(default)]
    channel: Option<Spanned<String>>,
    /// Time between two checks.
    #[serde(default)]
    interval: Option<Spanned<String>>,
    /// Boot tries an installed update gets.
    #[serde(default)]
    tries: Option<Spanned<i64>>,
    /// `auto`, `manual` or a maintenance window.
    #[serde(default)]
    reboot: Option<Spanned<String>>,
    /// A maintenance window (the same as `reboot = "<window>"`).
    #[serde(default)]
    reboot_window: Option<Spanned<String>>,
    /// Where the device POSTs its status.
    #[serde(default)]
    report: Option<Spanned<String>>,
    /// A PEM file of the CAs the agent trusts for https://.
    #[serde(default)]
    ca: Option<Spanned<String>>,
}

/// The recipe's `[update]` table, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePlan {
    /// Update signing keys, copied into the image as `/etc/berth/keys/<stem>.pub`.
    pub keys: Vec<PublicKeyFile>,
    /// How long a counting slot has to become healthy.
    pub health_timeout: Duration,
    /// The update repository (`http://` or `https://`); with one (here or provisioned) the
    /// device runs its agent. The other agent settings may come without it: an
    /// image built once for a fleet whose sites provision their repository.
    pub repository: Option<String>,
    /// The channel, when not the default.
    pub channel: Option<ChannelName>,
    /// Time between two checks, when not the default.
    pub interval: Option<Duration>,
    /// Boot tries the device's agent gives an update, when not its default.
    pub tries: Option<u32>,
    /// When the agent reboots into an update, when not the default.
    pub reboot: Option<RebootPolicy>,
    /// Where the device POSTs its status (`http://` or `https://`).
    pub report: Option<String>,
    /// The CAs (PEM) the agent trusts for https://, copied verbatim to
    /// `/etc/berth/update-ca.pem`; without it, the roots compiled into the agent.
    pub ca: Option<Vec<u8>>,
}

impl Default for UpdatePlan {
    fn default() -> Self {
        UpdatePlan {
            keys: Vec::new(),
            health_timeout: Duration::from_millis(DEFAULT_HEALTH_TIMEOUT_MS),
            repository: None,
            channel: None,
            interval: None,
            tries: None,
            reboot: None,
            report: None,
            ca: None,
        }
    }
}

/// A minisign public key file named in `[update] keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyFile {
    /// The file in the recipe's folder.
    pub path: PathBuf,
    /// Its file name without extension: the image gets `/etc/berth/keys/<stem>.pub`.
    pub stem: String,
    /// Its bytes, copied verbatim.
    pub content: Vec<u8>,
}

impl Validator<'_> {
    pub(super) fn update(&self, raw: Option<RawUpdate>) -> Result<UpdatePlan, RecipeError> {
        let mut plan = UpdatePlan::default();
        let Some(raw) = raw else { return Ok(plan) };
        if let Some(timeout) = &raw.health_timeout {
            plan.health_timeout = self.duration(timeout, "health_timeout")?;
            if plan.health_timeout.is_zero() {
                return self.err(&timeout.span(), "health_timeout must be more than 0 s");
            }
        }
        let mut stems: Vec<String> = Vec::new();
        for key in &raw.keys {
            let path = self.local_path(key, "update key")?;
            let content = std::fs::read(&path).map_err(|e| {
                self.at(&key.span())
                    .error(format!("cannot read update key {}: {e}", path.display()))
            })?;
            if let Err(why) = check_minisign_public_key(&content) {
                return self.err(
                    &key.span(),
                    format!("{} is not a minisign public key: {why}", path.display()),
                );
            }
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let stem_ok = !stem.is_empty()
                && !stem.starts_with('.')
                && stem
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !stem_ok {
                return self.err(
                    &key.span(),
                    format!(
                        "update key file name {stem:?} must be letters, digits, '-', '_' or '.'"
                    ),
                );
            }
            if stems.contains(&stem) {
                return self.err(
                    &key.span(),
                    format!("two update keys would both be /etc/berth/keys/{stem}.pub: rename one"),
                );
            }
            stems.push(stem.clone());
            plan.keys.push(PublicKeyFile {
                path,
                stem,
                content,
            });
        }
        if let Some(url) = &raw.repository {
            plan.repository = Some(self.http_url(url, "repository")?);
            if plan.keys.is_empty() {
                return self.err(
                    &url.span(),
                    "a repository needs [update] keys: without a trusted key the device accepts no update",
                );
            }
        }
        if let Some(channel) = &raw.channel {
            plan.channel = Some(
                ChannelName::new(channel.get_ref())
                    .or_else(|e| self.err(&channel.span(), format!("channel: {e}")))?,
            );
        }
        if let Some(interval) = &raw.interval {
            let value = self.duration(interval, "interval")?;
            if value.as_secs() < MIN_INTERVAL_S {
                return self.err(
                    &interval.span(),
                    format!("interval must be at least {MIN_INTERVAL_S} s"),
                );
            }
            plan.interval = Some(value);
        }
        if let Some(tries) = &raw.tries {
            let value = *tries.get_ref();
            match u32::try_from(value) {
                Ok(n) if (1..=MAX_TRIES).contains(&n) => plan.tries = Some(n),
                _ => {
                    return self.err(
                        &tries.span(),
                        format!("tries must be 1 to {MAX_TRIES}, got {value}"),
                    )
                }
            }
        }
        if let (Some(_), Some(window)) = (&raw.reboot, &raw.reboot_window) {
            return self.err(
                &window.span(),
                "reboot and reboot_window both say when to reboot: keep one",
            );
        }
        if let Some(reboot) = raw.reboot.as_ref().or(raw.reboot_window.as_ref()) {
            plan.reboot = Some(
                RebootPolicy::parse(reboot.get_ref()).or_else(|e| self.err(&reboot.span(), e))?,
            );
        }
        if let Some(url) = &raw.report {
            plan.report = Some(self.http_url(url, "report")?);
        }
        if let Some(ca) = &raw.ca {
            let path = self.local_path(ca, "update CA file")?;
            let content = std::fs::read(&path).map_err(|e| {
                self.at(&ca.span())
                    .error(format!("cannot read the CA file {}: {e}", path.display()))
            })?;
            let text = String::from_utf8_lossy(&content);
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return self.err(
                    &ca.span(),
                    format!(
                        "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                        path.display()
                    ),
                );
            }
            plan.ca = Some(content);
        }
        Ok(plan)
    }

    /// An `http://HOST…` or `https://HOST…` URL.
    fn http_url(&self, url: &Spanned<String>, what: &str) -> Result<String, RecipeError> {
        let text = url.get_ref();
        match text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))
        {
            Some(rest)
                if !rest.is_empty()
                    && !rest.starts_with('/')
                    && !text.contains(char::is_whitespace) =>
            {
                Ok(text.clone())
            }
            _ => self.err(
                &url.span(),
                format!("{what} {text:?} is not an http:// or https:// URL"),
            ),
        }
    }
}

/// Checks that a file is a minisign public key, with the same parser the device
/// agent trusts keys with.
pub fn check_minisign_public_key(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not text".to_string())?;
    match berth_bundle::TrustedKeys::parse(text) {
        Ok(_) => Ok(()),
        Err(berth_bundle::BundleError::BadKey { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minisign_keys() {
        let key = "untrusted comment: minisign public key 1\nRWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\n";
        assert_eq!(check_minisign_public_key(key.as_bytes()), Ok(()));
        assert!(check_minisign_public_key(b"untrusted comment: x\naGVsbG8=\n").is_err());
    }
}
