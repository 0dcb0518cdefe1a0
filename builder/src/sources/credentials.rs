//! Registry credentials from the standard files, as skopeo and docker read them:
//! `$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`. An `auths` entry (`auth` = base64 `user:password`, or
//! `username` and `password`) or a credential helper (`credHelpers`, `credsStore`:
//! `docker-credential-NAME get`) answers for a registry.
//!
//! Credentials only ever live in memory: nothing here is serialized, and
//! [`Credential`]'s `Debug` hides the secret.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;

/// Failure to read credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The auth file exists but cannot be read.
    #[error("reading registry credentials {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The auth file is not the JSON docker and skopeo write.
    #[error("registry credentials {path} are not valid JSON: {reason}")]
    Json { path: PathBuf, reason: String },
    /// An `auth` value is not base64 of `user:password`.
    #[error("registry credentials {path}: the entry for {registry} has an `auth` that is not base64 of USER:PASSWORD")]
    BadAuth { path: PathBuf, registry: String },
    /// A credential helper failed.
    #[error("credential helper docker-credential-{helper} for {registry} failed: {reason}")]
    Helper {
        helper: String,
        registry: String,
        reason: String,
    },
}

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

/// The credentials file berth reads, if any: `$REGISTRY_AUTH_FILE`, else
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn auth_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// The names an auth file may use for `registry` (Docker Hub has several).
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        format!("https://{registry}/v1/"),
        format!("https://{registry}/v2/"),
    ];
    if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        keys.extend(
            [
                "https://index.docker.io/v1/",
                "docker.io",
                "index.docker.io",
                "registry-1.docker.io",
            ]
            .map(String::from),
        );
    }
    keys
}

/// Credentials for `registry` (`HOST[:PORT]`) from `file`; `None` when the file
/// does not exist or names nothing for it (anonymous access).
pub fn lookup(file: &Path, registry: &str) -> Result<Option<Credential>, CredentialsError> {
    let text = match std::fs::read(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CredentialsError::Read {
                path: file.to_path_buf(),
                source,
            })
        }
    };
    let parsed: AuthFile = serde_json::from_slice(&text).map_err(|e| CredentialsError::Json {
        path: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let keys = keys_for(registry);
    for key in &keys {
        if let Some(helper) = parsed.cred_helpers.get(key) {
            return helper_get(helper, registry);
        }
    }
    for key in &keys {
        let Some(entry) = parsed.auths.get(key) else {
            continue;
        };
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bad = || CredentialsError::BadAuth {
                path: file.to_path_buf(),
                registry: registry.to_string(),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad())?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credential {
                username: user.to_string(),
                password: password.to_string(),
            }));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credential {
                username: u.clone(),
                password: p.clone(),
            }));
        }
    }
    match &parsed.creds_store {
        Some(store) => helper_get(store, registry),
        None => Ok(None),
    }
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// Asks `docker-credential-NAME get` (the docker credential helper protocol).
fn helper_get(helper: &str, registry: &str) -> Result<Option<Credential>, CredentialsError> {
    let fail = |reason: String| CredentialsError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        reason,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(registry.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let output = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // The protocol's answer for "nothing stored": anonymous access.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!(
            "{} {}",
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let answer: HelperAnswer =
        serde_json::from_str(&stdout).map_err(|e| fail(format!("unreadable answer: {e}")))?;
    Ok(Some(Credential {
        username: answer.username,
        password: answer.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_and_user_password_entries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth.json");
        // "alice:s3cr:et" in base64: the password may contain ':'.
        std::fs::write(
            &file,
            r#"{"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6czNjcjpldA=="},
                "https://index.docker.io/v1/":{"username":"bob","password":"pw"}}}"#,
        )
        .unwrap();
        let c = lookup(&file, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cr:et")
        );
        let hub = lookup(&file, "docker.io").unwrap().unwrap();
        assert_eq!(hub.username, "bob");
        assert_eq!(lookup(&file, "other.example:443").unwrap(), None);
        assert!(!format!("{c:?}").contains("s3cr"), "{c:?}");
    }

    #[test]
    fn missing_file_is_anonymous_and_bad_entries_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lookup(&dir.path().join("none.json"), "x").unwrap(), None);
        let file = dir.path().join("bad.json");
        std::fs::write(&file, r#"{"auths":{"x":{"auth":"!!!"}}}"#).unwrap();
        assert!(matches!(
            lookup(&file, "x"),
            Err(CredentialsError::BadAuth { .. })
        ));
        std::fs::write(&file, "not json").unwrap();
        assert!(matches!(
            lookup(&file, "x"),
            Err(CredentialsError::Json { .. })
        ));
    }
}
