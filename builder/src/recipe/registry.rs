//! `[registry."HOST"]`: how to reach a registry.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{RecipeError, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    /// Plain HTTP instead of HTTPS for this registry.
    #[serde(default)]
    insecure: Option<bool>,
}

/// How berth talks to a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTPS with certificate checks (the default).
    Https,
    /// Plain HTTP, no TLS at all: only when the recipe says `insecure = true`.
    PlainHttp,
}

impl Validator<'_> {
    /// Each registry's transport; refuses names that are not `HOST[:PORT]`.
    pub(super) fn registries(
        &self,
        raw: BTreeMap<Spanned<String>, RawRegistry>,
    ) -> Result<BTreeMap<String, Transport>, RecipeError> {
        let mut registries = BTreeMap::new();
        for (host, settings) in raw {
            if !is_registry_host(host.get_ref()) {
                return self.err(
                    &host.span(),
                    format!(
                        "registry {:?} is not HOST or HOST:PORT (as it appears in image references, without a scheme or path)",
                        host.get_ref()
                    ),
                );
            }
            let transport = match settings.insecure {
                Some(true) => Transport::PlainHttp,
                Some(false) | None => Transport::Https,
            };
            registries.insert(host.into_inner(), transport);
        }
        Ok(registries)
    }
}

/// Whether `text` is `HOST` or `HOST:PORT` as image references spell registries.
fn is_registry_host(text: &str) -> bool {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (text, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && !host.starts_with(['.', '-']);
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    host_ok && port_ok
}
