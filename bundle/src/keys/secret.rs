//! The release key's secret half in minisign's format, so the standard `minisign`
//! tool reads it: an unencrypted secret key file (as `minisign -G -W` writes it,
//! so CI can sign without a password), and signatures of the pre-hashed kind
//! (`ED`, minisign's default).
//!
//! Signatures are deterministic (plain RFC 8032 ed25519, no added noise), so the
//! same manifest signed with the same key gives the same bytes: bundles are
//! reproducible.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use blake2::digest::consts::U32;
use blake2::{Blake2b, Blake2b512, Digest};
use ed25519_dalek::{Signer, SigningKey};

use super::key_id;

/// minisign's signature algorithm tag for keys (`Ed`).
const SIG_ALG: [u8; 2] = *b"Ed";
/// minisign's tag for pre-hashed signatures (`ED`): ed25519 over blake2b-512.
const SIG_ALG_PREHASHED: [u8; 2] = *b"ED";
/// Checksum algorithm of secret keys (`B2`: blake2b-256).
const CHK_ALG: [u8; 2] = *b"B2";
/// Key derivation "none": the secret key is stored unencrypted.
const KDF_NONE: [u8; 2] = [0, 0];
/// Bytes of a decoded secret key line.
const SECRET_KEY_BYTES: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;

/// Failure making, reading or using a secret key.
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    /// The key file could not be read.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// The file is not a minisign secret key berth can use.
    #[error("{path} is not a usable minisign secret key: {reason}")]
    Format { path: PathBuf, reason: String },
    /// The system's random number source failed.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// A minisign secret key. Its `Debug` shows only the key id.
pub struct SecretKey {
    keynum: [u8; 8],
    signing: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<[u8; N], SecretKeyError> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(|e| SecretKeyError::Random(e.to_string()))?;
    Ok(out)
}

/// blake2b-256 over the parts minisign checksums a secret key with.
fn secret_checksum(keynum: &[u8; 8], sk: &[u8; 64]) -> [u8; 32] {
    let mut h = Blake2b::<U32>::new();
    h.update(SIG_ALG);
    h.update(keynum);
    h.update(sk);
    h.finalize().into()
}

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<SecretKey, SecretKeyError> {
        Ok(SecretKey {
            keynum: random::<8>()?,
            signing: SigningKey::from_bytes(&random::<32>()?),
        })
    }

    /// Reads an unencrypted minisign secret key file.
    pub fn load(path: &Path) -> Result<SecretKey, SecretKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretKeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        SecretKey::parse(&text).map_err(|reason| SecretKeyError::Format {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// The text of an unencrypted minisign secret key file; `Err` says why it
    /// is not one.
    pub fn parse(text: &str) -> Result<SecretKey, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().ok_or("the file is empty")?;
        if !first.starts_with("untrusted comment:") {
            return Err("it does not start with an `untrusted comment:` line".into());
        }
        let raw = BASE64
            .decode(lines.next().ok_or("no key line")?.trim())
            .map_err(|_| "the key line is not base64".to_string())?;
        if raw.len() != SECRET_KEY_BYTES {
            return Err(format!(
                "the key line holds {} bytes, a minisign secret key {SECRET_KEY_BYTES}",
                raw.len()
            ));
        }
        if raw[0..2] != SIG_ALG || raw[4..6] != CHK_ALG {
            return Err("not an ed25519 minisign key".into());
        }
        if raw[2..4] != KDF_NONE {
            return Err("it is encrypted with a password; berth signs with unencrypted keys (make one with `berth key generate` or `minisign -G -W`)".into());
        }
        let keys = &raw[54..];
        let keynum: [u8; 8] = keys[0..8].try_into().expect("8 bytes");
        let sk: [u8; 64] = keys[8..72].try_into().expect("64 bytes");
        let chk: [u8; 32] = keys[72..104].try_into().expect("32 bytes");
        // `minisign -G -W` (0.11) leaves the checksum of an unencrypted key zero.
        if chk != [0u8; 32] && secret_checksum(&keynum, &sk) != chk {
            return Err("its checksum does not match: the file is damaged".into());
        }
        let signing = SigningKey::from_bytes(&sk[..32].try_into().expect("32 bytes"));
        if signing.verifying_key().as_bytes()[..] != sk[32..] {
            return Err("its public half does not match its secret half".into());
        }
        Ok(SecretKey { keynum, signing })
    }

    /// The key id, minisign style: 16 uppercase hex digits.
    pub fn key_id(&self) -> String {
        key_id(self.keynum)
    }

    /// The public key file's text (`PATH.pub`).
    pub fn public_key_text(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(&SIG_ALG);
        raw.extend_from_slice(&self.keynum);
        raw.extend_from_slice(self.signing.verifying_key().as_bytes());
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.key_id(),
            BASE64.encode(raw)
        )
    }

    /// The secret key file's text (`PATH.key`), unencrypted.
    pub fn secret_key_text(&self) -> String {
        let mut sk = [0u8; 64];
        sk[..32].copy_from_slice(self.signing.as_bytes());
        sk[32..].copy_from_slice(self.signing.verifying_key().as_bytes());
        let mut raw = Vec::with_capacity(SECRET_KEY_BYTES);
        raw.extend_from_slice(&SIG_ALG);
        raw.extend_from_slice(&KDF_NONE);
        raw.extend_from_slice(&CHK_ALG);
        // Salt and limits of the (unused) key derivation: zero.
        raw.extend_from_slice(&[0u8; 32 + 8 + 8]);
        raw.extend_from_slice(&self.keynum);
        raw.extend_from_slice(&sk);
        raw.extend_from_slice(&secret_checksum(&self.keynum, &sk));
        format!(
            "untrusted comment: minisign secret key {} (unencrypted)\n{}\n",
            self.key_id(),
            BASE64.encode(raw)
        )
    }

    /// A minisign signature file of `data` (pre-hashed, `ED`), with
    /// `trusted_comment` (one line) covered by the signature.
    pub fn sign(&self, data: &[u8], trusted_comment: &str) -> String {
        let digest = Blake2b512::digest(data);
        let signature = self.signing.sign(&digest).to_bytes();
        let mut line = Vec::with_capacity(74);
        line.extend_from_slice(&SIG_ALG_PREHASHED);
        line.extend_from_slice(&self.keynum);
        line.extend_from_slice(&signature);
        let mut global = signature.to_vec();
        global.extend_from_slice(trusted_comment.as_bytes());
        let global = self.signing.sign(&global).to_bytes();
        format!(
            "untrusted comment: signature from berth secret key {}\n{}\ntrusted comment: {trusted_comment}\n{}\n",
            self.key_id(),
            BASE64.encode(line),
            BASE64.encode(global)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrustedKeys;

    #[test]
    fn keys_load_back_and_sign_verifiably() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let path = dir.path().join("release.key");
        std::fs::write(&path, key.secret_key_text()).unwrap();
        let loaded = SecretKey::load(&path).unwrap();
        assert_eq!(loaded.key_id(), key.key_id());
        assert!(!format!("{loaded:?}").contains(&BASE64.encode(loaded.signing.as_bytes())));
        let trusted = TrustedKeys::parse(&key.public_key_text()).unwrap();
        assert_eq!(trusted.key_ids(), vec![key.key_id()]);

        // The signature verifies with minisign-verify (what the device uses) and
        // is deterministic.
        let sig = loaded.sign(b"manifest bytes", "timestamp:0\tfile:manifest.json");
        assert_eq!(
            sig,
            key.sign(b"manifest bytes", "timestamp:0\tfile:manifest.json")
        );
        let pk = minisign_verify::PublicKey::decode(&key.public_key_text()).unwrap();
        let parsed = minisign_verify::Signature::decode(&sig).unwrap();
        pk.verify(b"manifest bytes", &parsed, false).unwrap();
        assert!(pk.verify(b"manifest bytez", &parsed, false).is_err());
        assert_eq!(parsed.trusted_comment(), "timestamp:0\tfile:manifest.json");
        let verified = trusted.verify(b"manifest bytes", sig.as_bytes()).unwrap();
        assert_eq!(verified.key_id, key.key_id());
    }

    #[test]
    fn unreadable_key_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.key");
        let err = SecretKey::load(&missing).unwrap_err();
        assert!(matches!(err, SecretKeyError::Io { .. }), "{err}");
        let public = dir.path().join("release.pub");
        std::fs::write(&public, SecretKey::generate().unwrap().public_key_text()).unwrap();
        let err = SecretKey::load(&public).unwrap_err();
        assert!(matches!(err, SecretKeyError::Format { .. }), "{err}");
        assert!(err.to_string().contains("release.pub"), "{err}");
    }

    #[test]
    fn damaged_or_encrypted_secret_keys_are_refused() {
        let key = SecretKey::generate().unwrap();
        let text = key.secret_key_text();
        let line = text.lines().nth(1).unwrap();
        let mut raw = BASE64.decode(line).unwrap();
        raw[100] ^= 1;
        let damaged = format!("untrusted comment: x\n{}\n", BASE64.encode(&raw));
        assert!(SecretKey::parse(&damaged).unwrap_err().contains("checksum"));
        // What `minisign -G -W` writes: no checksum.
        let mut raw = BASE64.decode(line).unwrap();
        raw[126..].fill(0);
        let unchecked = format!("untrusted comment: x\n{}\n", BASE64.encode(&raw));
        assert_eq!(SecretKey::parse(&unchecked).unwrap().key_id(), key.key_id());
        let mut raw = BASE64.decode(line).unwrap();
        raw[2..4].copy_from_slice(b"Sc");
        let encrypted = format!("untrusted comment: x\n{}\n", BASE64.encode(&raw));
        assert!(SecretKey::parse(&encrypted)
            .unwrap_err()
            .contains("encrypted"));
        assert!(SecretKey::parse(&key.public_key_text()).is_err());
        assert_eq!(SecretKey::parse(&text).unwrap().key_id(), key.key_id());
    }
}
