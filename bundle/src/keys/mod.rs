//! Trust anchors and minisign's key and signature formats: key ids, the public
//! key file, signature files, and checking a signature with a trusted key; the
//! secret key that makes signatures is in [`secret`].

use std::path::Path;

use crate::BundleError;

pub mod secret;

pub use secret::{SecretKey, SecretKeyError};

/// The minisign key id of an 8-byte key number: 16 uppercase hex digits of the
/// number read little-endian, as `minisign` prints it.
pub fn key_id(keynum: [u8; 8]) -> String {
    format!("{:016X}", u64::from_le_bytes(keynum))
}

/// A decoder for the standard base64 alphabet with padding, enough for minisign's
/// key and signature lines.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for c in &chunk[..4 - pad] {
            n = (n << 6) | value(*c)?;
        }
        n <<= 6 * pad;
        let [_, a, b, c] = n.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..3 - pad]);
    }
    Some(out)
}

/// The key number named by a minisign signature or public key line.
fn keynum_of(line: &str, expected_len: usize) -> Option<[u8; 8]> {
    let raw = base64_decode(line)?;
    if raw.len() != expected_len {
        return None;
    }
    raw[2..10].try_into().ok()
}

/// One trusted minisign public key.
#[derive(Debug, Clone)]
struct TrustedKey {
    id: String,
    key: minisign_verify::PublicKey,
}

/// The update trust anchors: minisign public keys.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    /// Every `*.pub` file in `dir`, in name order. An empty folder gives an empty
    /// set (which verifies nothing).
    pub fn load_dir(dir: &Path) -> Result<TrustedKeys, BundleError> {
        let io_err = |source| BundleError::KeyIo {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err)? {
            let path = entry.map_err(io_err)?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut out = TrustedKeys::default();
        for path in paths {
            out.extend(TrustedKeys::load_file(&path)?);
        }
        Ok(out)
    }

    /// One minisign `.pub` file.
    pub fn load_file(path: &Path) -> Result<TrustedKeys, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|source| BundleError::KeyIo {
            path: path.to_path_buf(),
            source,
        })?;
        TrustedKeys::parse_named(&text, &path.display().to_string())
    }

    /// The text of one minisign `.pub` file: an `untrusted comment:` line, then the
    /// base64 key line.
    pub fn parse(text: &str) -> Result<TrustedKeys, BundleError> {
        TrustedKeys::parse_named(text, "public key")
    }

    fn parse_named(text: &str, origin: &str) -> Result<TrustedKeys, BundleError> {
        let bad = |reason: &str| BundleError::BadKey {
            origin: origin.to_string(),
            reason: reason.to_string(),
        };
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().ok_or_else(|| bad("the file is empty"))?;
        let key_line = if first.starts_with("untrusted comment:") {
            lines
                .next()
                .ok_or_else(|| bad("no key line after the comment"))?
        } else {
            first
        };
        if lines.next().is_some() {
            return Err(bad("more than one key line"));
        }
        let key_line = key_line.trim();
        let keynum =
            keynum_of(key_line, 42).ok_or_else(|| bad("the key line is not 42 bytes of base64"))?;
        let key = minisign_verify::PublicKey::from_base64(key_line)
            .map_err(|e| bad(&format!("{e:?}")))?;
        Ok(TrustedKeys {
            keys: vec![TrustedKey {
                id: key_id(keynum),
                key,
            }],
        })
    }

    /// Adds the keys of `other`.
    pub fn extend(&mut self, other: TrustedKeys) {
        for key in other.keys {
            if !self.keys.iter().any(|k| k.id == key.id && k.key == key.key) {
                self.keys.push(key);
            }
        }
    }

    /// Whether there are no keys (then no bundle verifies).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, minisign style (16 uppercase hex digits).
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Checks a minisign signature file (`signature`, pre-hashed `ED`) over the
    /// exact bytes of `data` with one of these keys. Returns the signing key's id
    /// and the signature's trusted comment (both covered by the signature).
    /// The errors are [`BundleError::BadSignatureFormat`],
    /// [`BundleError::UntrustedKey`] and [`BundleError::SignatureMismatch`].
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<Verified, BundleError> {
        let signature = parse_signature(signature)?;
        self.verify_parsed(data, &signature)?;
        Ok(Verified {
            key_id: signature.key_id,
            trusted_comment: signature.trusted_comment,
        })
    }

    pub(crate) fn verify_parsed(
        &self,
        data: &[u8],
        signature: &ParsedSignature,
    ) -> Result<(), BundleError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == signature.key_id)
            .ok_or_else(|| BundleError::UntrustedKey {
                key_id: signature.key_id.clone(),
                trusted: if self.is_empty() {
                    "no trusted keys are installed".into()
                } else {
                    format!("trusted: {}", self.key_ids().join(", "))
                },
            })?;
        key.key
            .verify(data, &signature.signature, false)
            .map_err(|_| BundleError::SignatureMismatch)
    }
}

/// What a good signature said (see [`TrustedKeys::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signing key's id (16 uppercase hex digits).
    pub key_id: String,
    /// The signature's trusted comment.
    pub trusted_comment: String,
}

/// A parsed minisign signature file.
pub(crate) struct ParsedSignature {
    pub(crate) key_id: String,
    pub(crate) trusted_comment: String,
    pub(crate) signature: minisign_verify::Signature,
}

pub(crate) fn parse_signature(bytes: &[u8]) -> Result<ParsedSignature, BundleError> {
    let bad = |reason: &str| BundleError::BadSignatureFormat(reason.to_string());
    let text = std::str::from_utf8(bytes).map_err(|_| bad("it is not UTF-8 text"))?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != 4 {
        return Err(bad(&format!(
            "a minisign signature has 4 lines, this one {}",
            lines.len()
        )));
    }
    if !lines[0].starts_with("untrusted comment:") {
        return Err(bad("the first line is not an untrusted comment"));
    }
    let keynum = keynum_of(lines[1], 74)
        .ok_or_else(|| bad("the signature line is not 74 bytes of base64"))?;
    let raw = base64_decode(lines[1]).unwrap_or_default();
    if raw.get(..2) != Some(b"ED".as_slice()) {
        return Err(bad(
            "the signature is not a pre-hashed ed25519 signature (algorithm ED)",
        ));
    }
    let signature = minisign_verify::Signature::decode(text).map_err(|e| bad(&format!("{e:?}")))?;
    Ok(ParsedSignature {
        key_id: key_id(keynum),
        trusted_comment: signature.trusted_comment().to_string(),
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    #[test]
    fn base64_decodes_what_it_should_and_refuses_the_rest() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            assert_eq!(base64_decode(&encode64(data)).as_deref(), Some(data));
        }
        assert_eq!(base64_decode("Zm9v!"), None);
        assert_eq!(base64_decode("Zg==Zg=="), None);
        assert_eq!(base64_decode("Z==="), None);
    }

    #[test]
    fn trusted_keys_load_from_files_and_folders() {
        let (a, b) = (Key::new(), Key::new());
        let dir = tempfile::tempdir().unwrap();
        assert!(TrustedKeys::load_dir(dir.path()).unwrap().is_empty());
        std::fs::write(dir.path().join("a.pub"), a.public_text()).unwrap();
        std::fs::write(dir.path().join("b.pub"), b.public_text()).unwrap();
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        let keys = TrustedKeys::load_dir(dir.path()).unwrap();
        let mut ids = keys.key_ids();
        ids.sort();
        let mut expected = vec![
            a.trusted().key_ids()[0].clone(),
            b.trusted().key_ids()[0].clone(),
        ];
        expected.sort();
        assert_eq!(ids, expected);
        // minisign prints the same id in the public key's comment.
        let comment = a.public_text().lines().next().unwrap().to_string();
        assert!(comment.ends_with(&a.trusted().key_ids()[0]), "{comment}");
        assert!(ids.iter().all(|id| id.len() == 16
            && id
                .bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())));
        // Either key verifies its own bundle.
        read_all(&make(&b).bytes, &keys).unwrap();
        let single = TrustedKeys::load_file(&dir.path().join("a.pub")).unwrap();
        assert_eq!(single.key_ids(), a.trusted().key_ids());

        std::fs::write(
            dir.path().join("c.pub"),
            "untrusted comment: x\nnot base64!\n",
        )
        .unwrap();
        let err = TrustedKeys::load_dir(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("c.pub: not a minisign public key"),
            "{err}"
        );
        assert!(TrustedKeys::parse("").is_err());
        let err = TrustedKeys::load_dir(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, BundleError::KeyIo { .. }), "{err}");
    }
}
