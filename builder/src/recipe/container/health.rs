//! `[container.health]`: one probe (`exec`, `http` or `tcp`) and its timing.

use std::ops::Range;
use std::time::Duration;

use berth_format::image_config::{
    DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_RETRIES, DEFAULT_HEALTH_TIMEOUT_CHECK_MS,
};
use berth_format::{HealthCheck, HealthProbe};
use serde::Deserialize;
use toml::Spanned;

use crate::recipe::{RecipeError, Validator};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(default)]
    exec: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    http: Option<Spanned<String>>,
    #[serde(default)]
    tcp: Option<Spanned<i64>>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    retries: Option<Spanned<i64>>,
    #[serde(default)]
    start_period: Option<Spanned<String>>,
}

impl Validator<'_> {
    pub(super) fn health(
        &self,
        raw: Spanned<RawHealth>,
        name: &str,
    ) -> Result<HealthCheck, RecipeError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let kinds = [
            raw.exec.as_ref().map(|e| e.span()),
            raw.http.as_ref().map(|h| h.span()),
            raw.tcp.as_ref().map(|t| t.span()),
        ];
        let given: Vec<&Range<usize>> = kinds.iter().flatten().collect();
        if given.is_empty() {
            return self.err(
                &span,
                format!("the health check of container {name:?} needs one of `exec = [...]`, `http = \"http://127.0.0.1:PORT/\"` or `tcp = PORT`"),
            );
        }
        if given.len() > 1 {
            return self.err(
                given[1],
                format!("the health check of container {name:?} takes exactly one of `exec`, `http` and `tcp`"),
            );
        }
        let probe = if let Some(exec) = raw.exec {
            if exec.get_ref().is_empty() || exec.get_ref()[0].is_empty() {
                return self.err(
                    &exec.span(),
                    "`exec` is empty: name the program to run in the container",
                );
            }
            HealthProbe::Exec {
                argv: exec.into_inner(),
            }
        } else if let Some(http) = raw.http {
            let (port, path) = parse_local_http_url(http.get_ref()).map_err(|why| {
                self.at(&http.span())
                    .error(format!("health check url {:?} {why}", http.get_ref()))
            })?;
            HealthProbe::Http { port, path }
        } else if let Some(tcp) = raw.tcp {
            HealthProbe::Tcp {
                port: self.port(&tcp)?,
            }
        } else {
            return self.err(&span, "no health check kind");
        };
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let interval = match &raw.interval {
            Some(i) => {
                let d = self.duration(i, "interval")?;
                if d.is_zero() {
                    return self.err(&i.span(), "interval must be more than 0 s");
                }
                millis(d)
            }
            None => DEFAULT_HEALTH_INTERVAL_MS,
        };
        let timeout = match &raw.timeout {
            Some(t) => {
                let d = self.duration(t, "timeout")?;
                if d.is_zero() {
                    return self.err(&t.span(), "timeout must be more than 0 s");
                }
                millis(d)
            }
            None => DEFAULT_HEALTH_TIMEOUT_CHECK_MS,
        };
        let retries = match &raw.retries {
            Some(r) => match u32::try_from(*r.get_ref()) {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    return self.err(
                        &r.span(),
                        "retries must be a whole number from 1 to 100 (consecutive failures before unhealthy)",
                    )
                }
            },
            None => DEFAULT_HEALTH_RETRIES,
        };
        let start_period = match &raw.start_period {
            Some(p) => millis(self.duration(p, "start_period")?),
            None => 0,
        };
        Ok(HealthCheck {
            probe,
            interval_ms: interval,
            timeout_ms: timeout,
            retries,
            start_period_ms: start_period,
        })
    }

    fn port(&self, value: &Spanned<i64>) -> Result<u16, RecipeError> {
        match u16::try_from(*value.get_ref()) {
            Ok(port) if port > 0 => Ok(port),
            _ => self.err(&value.span(), "a port is a number from 1 to 65535"),
        }
    }
}

/// The port and path of a health check URL, which must be plain `http://` to the
/// device itself (`127.0.0.1` or `localhost`): containers share the host's network.
/// The error completes "health check url \"…\" …".
pub fn parse_local_http_url(url: &str) -> Result<(u16, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("must start with http:// (https is not supported)".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host != "127.0.0.1" && host != "localhost" {
        return Err(format!(
            "must name 127.0.0.1 or localhost, not {host:?} (containers share the device's network)"
        ));
    }
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("has a bad port {p:?}")),
        },
    };
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) || path.contains('#') {
        return Err("has a path with spaces, control characters or a fragment".into());
    }
    Ok((port, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_http_urls() {
        assert_eq!(
            parse_local_http_url("http://127.0.0.1:8080/health?x=1"),
            Ok((8080, "/health?x=1".to_string()))
        );
        assert_eq!(
            parse_local_http_url("http://localhost"),
            Ok((80, "/".to_string()))
        );
        assert!(parse_local_http_url("https://127.0.0.1/").is_err());
        assert!(parse_local_http_url("http://10.0.2.2/").is_err());
        assert!(parse_local_http_url("http://127.0.0.1:0/").is_err());
        assert!(parse_local_http_url("http://127.0.0.1:x/").is_err());
        assert!(parse_local_http_url("http://127.0.0.1/a b").is_err());
    }

    #[test]
    fn each_setting_is_refused_in_its_own_words() {
        use std::path::Path;

        use crate::recipe::parse;

        for (line, says) in [
            ("tcp = 0", "a port is a number from 1 to 65535"),
            ("tcp = 70000", "a port is a number from 1 to 65535"),
            (
                "tcp = 80\nretries = 0",
                "retries must be a whole number from 1 to 100",
            ),
            (
                "tcp = 80\ninterval = \"0s\"",
                "interval must be more than 0 s",
            ),
            (
                "tcp = 80\ntimeout = \"0ms\"",
                "timeout must be more than 0 s",
            ),
            (
                "tcp = 80\nstart_period = \"soon\"",
                "start_period \"soon\" is not a duration",
            ),
        ] {
            let recipe = format!(
                "[image]\nname = \"x\"\nversion = \"1.0.0\"\n[[container]]\nname = \"c\"\nimage = \"docker.io/library/busybox:1\"\n[container.health]\n{line}\n"
            );
            let message = parse(Path::new("x.toml"), &recipe)
                .expect_err(line)
                .to_string();
            assert!(message.contains(says), "{line}: {message}");
        }
    }
}
