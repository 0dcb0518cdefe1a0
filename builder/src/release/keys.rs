//! `berth key generate`: a new release key pair written to files in minisign's
//! formats, so the standard `minisign` tool reads them: `PATH.pub` (public key)
//! and `PATH.key` (secret key, unencrypted as `minisign -G -W` writes it, so CI
//! can sign without a password).
//!
//! The key itself (generating, reading, signing) is
//! [`berth_bundle::keys::secret`]; this module only names and writes the files.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use berth_bundle::{SecretKey, SecretKeyError};

/// Failure generating a key pair.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// `berth key generate` would overwrite a key.
    #[error("{path} already exists: refusing to overwrite a key (pass --force to replace it)")]
    Exists { path: PathBuf },
    /// Making the key failed.
    #[error(transparent)]
    Secret(#[from] SecretKeyError),
}

/// Whether `generate` may replace existing key files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    Refuse,
    Replace,
}

/// The two files of a key pair named `PATH`: `PATH.pub` and `PATH.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPaths {
    pub public: PathBuf,
    pub secret: PathBuf,
}

impl KeyPaths {
    /// `PATH.pub` and `PATH.key` (a `.key` or `.pub` already on `PATH` is
    /// replaced rather than doubled).
    pub fn new(base: &Path) -> KeyPaths {
        let base = match base.extension() {
            Some(ext) if ext == "key" || ext == "pub" => base.with_extension(""),
            _ => base.to_path_buf(),
        };
        let with = |ext: &str| {
            let mut name = base.as_os_str().to_owned();
            name.push(ext);
            PathBuf::from(name)
        };
        KeyPaths {
            public: with(".pub"),
            secret: with(".key"),
        }
    }
}

/// A key pair written by [`generate`].
#[derive(Debug)]
pub struct Generated {
    pub paths: KeyPaths,
    pub key_id: String,
}

/// Writes a new key pair to `PATH.pub` and `PATH.key`. The secret key file is
/// created with mode 0600 before any secret byte is written.
pub fn generate(base: &Path, overwrite: Overwrite) -> Result<Generated, KeyError> {
    let paths = KeyPaths::new(base);
    for path in [&paths.secret, &paths.public] {
        if path.symlink_metadata().is_ok() {
            match overwrite {
                Overwrite::Refuse => return Err(KeyError::Exists { path: path.clone() }),
                Overwrite::Replace => fs::remove_file(path).map_err(|source| KeyError::Io {
                    path: path.clone(),
                    source,
                })?,
            }
        }
    }
    let key = SecretKey::generate()?;
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    if let Some(dir) = paths.secret.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut secret = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&paths.secret)
        .map_err(io_err(&paths.secret))?;
    secret
        .write_all(key.secret_key_text().as_bytes())
        .and_then(|()| secret.sync_all())
        .map_err(io_err(&paths.secret))?;
    let mut public = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&paths.public)
        .map_err(io_err(&paths.public))?;
    public
        .write_all(key.public_key_text().as_bytes())
        .and_then(|()| public.sync_all())
        .map_err(io_err(&paths.public))?;
    Ok(Generated {
        paths,
        key_id: key.key_id(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_bundle::TrustedKeys;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_keys_load_back_and_sign_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let made = generate(&dir.path().join("keys/release"), Overwrite::Refuse).unwrap();
        assert_eq!(made.paths.secret, dir.path().join("keys/release.key"));
        let mode = fs::metadata(&made.paths.secret)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let key = SecretKey::load(&made.paths.secret).unwrap();
        assert_eq!(key.key_id(), made.key_id);
        let secret_line = fs::read_to_string(&made.paths.secret).unwrap();
        let secret_line = secret_line.lines().nth(1).unwrap();
        assert!(!format!("{key:?}").contains(secret_line));
        let trusted = TrustedKeys::load_file(&made.paths.public).unwrap();
        assert_eq!(trusted.key_ids(), vec![made.key_id.clone()]);
        let sig = key.sign(b"manifest bytes", "timestamp:0\tfile:manifest.json");
        let verified = trusted.verify(b"manifest bytes", sig.as_bytes()).unwrap();
        assert_eq!(verified.key_id, made.key_id);
    }

    #[test]
    fn existing_keys_are_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("release");
        let first = generate(&base, Overwrite::Refuse).unwrap();
        let err = generate(&base, Overwrite::Refuse).unwrap_err();
        assert!(matches!(err, KeyError::Exists { .. }), "{err}");
        assert_eq!(
            SecretKey::load(&first.paths.secret).unwrap().key_id(),
            first.key_id
        );
        let second = generate(&base.with_extension("key"), Overwrite::Replace).unwrap();
        assert_eq!(second.paths, first.paths);
        assert_ne!(second.key_id, first.key_id);
    }
}
