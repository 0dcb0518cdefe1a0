//! [`BundleReader`]: reads a bundle front to back without seeking.

use std::fmt;
use std::io::Read;

use crate::keys::parse_signature;
use crate::payload::PayloadReader;
use crate::tar::{Archive, TAR_BLOCK};
use crate::{BundleError, Manifest, TrustedKeys, MANIFEST_MEMBER, SIGNATURE_MEMBER};

/// Largest manifest member accepted.
pub const MAX_MANIFEST_SIZE: u64 = 1024 * 1024;
/// Largest signature member accepted.
pub const MAX_SIGNATURE_SIZE: u64 = 4096;
/// Zero bytes tolerated after the end-of-archive marker (a tar record's padding).
const MAX_TRAILING_ZEROS: u64 = 20 * TAR_BLOCK;

/// Reads a bundle front to back: [`open`](BundleReader::open) checks the
/// signature and the manifest, [`next_payload`](BundleReader::next_payload) streams
/// each payload, [`finish`](BundleReader::finish) checks the end of the archive.
pub struct BundleReader<R: Read> {
    archive: Archive<R>,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signature_bytes: Vec<u8>,
    signature_key_id: String,
    trusted_comment: String,
    verified: bool,
    /// Whether each payload's stored (compressed) bytes are hashed and checked
    /// against `stored_sha256`, besides the decompressed bytes against `sha256`.
    stored_digests: bool,
    /// Index of the next payload in the manifest.
    next: usize,
}

impl<R: Read> fmt::Debug for BundleReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BundleReader")
            .field("manifest", &self.manifest)
            .field("signature_key_id", &self.signature_key_id)
            .field("verified", &self.verified)
            .field("offset", &self.archive.offset)
            .field("next", &self.next)
            .finish()
    }
}

/// Whether [`BundleReader::read_head`] checks the signature.
enum Check<'k> {
    Signature(&'k TrustedKeys),
    Unverified,
}

impl<R: Read> BundleReader<R> {
    /// Reads manifest + signature, verifies the signature (over the exact manifest
    /// bytes) with a key in `keys`, then parses and validates the manifest. Nothing
    /// after the signature is read.
    pub fn open(reader: R, keys: &TrustedKeys) -> Result<BundleReader<R>, BundleError> {
        BundleReader::read_head(reader, Check::Signature(keys))
    }

    /// Same without checking the signature (for `inspect` without a key); the
    /// signature must still be well-formed, and names the signing key id.
    pub fn open_unverified(reader: R) -> Result<BundleReader<R>, BundleError> {
        BundleReader::read_head(reader, Check::Unverified)
    }

    fn read_head(reader: R, check: Check<'_>) -> Result<BundleReader<R>, BundleError> {
        let mut archive = Archive {
            reader,
            offset: 0,
            open_payload: None,
        };
        let first = match archive.header("inside the header of its first member") {
            Err(BundleError::Malformed(reason)) => {
                return Err(BundleError::NotABundle(format!(
                    "it does not start with a tar header ({reason})"
                )))
            }
            other => other?,
        };
        let first = first.ok_or_else(|| BundleError::NotABundle("the archive is empty".into()))?;
        if first.name != MANIFEST_MEMBER {
            return Err(BundleError::NotABundle(format!(
                "first member is {} (expected {MANIFEST_MEMBER})",
                first.name
            )));
        }
        let manifest_bytes = archive.small_member(&first, MAX_MANIFEST_SIZE)?;
        let second = archive
            .header(&format!("after {MANIFEST_MEMBER}, before its signature"))?
            .ok_or_else(|| {
                BundleError::NotABundle(format!("{MANIFEST_MEMBER} is not followed by a signature"))
            })?;
        if second.name != SIGNATURE_MEMBER {
            return Err(BundleError::NotABundle(format!(
                "second member is {} (expected {SIGNATURE_MEMBER})",
                second.name
            )));
        }
        let signature_bytes = archive.small_member(&second, MAX_SIGNATURE_SIZE)?;
        let signature = parse_signature(&signature_bytes)?;
        let verified = match check {
            Check::Unverified => false,
            Check::Signature(keys) => {
                keys.verify_parsed(&manifest_bytes, &signature)?;
                true
            }
        };
        let manifest = Manifest::from_json(&manifest_bytes)?;
        Ok(BundleReader {
            archive,
            manifest,
            manifest_bytes,
            signature_bytes,
            signature_key_id: signature.key_id,
            trusted_comment: signature.trusted_comment,
            verified,
            stored_digests: true,
            next: 0,
        })
    }

    /// Stops checking the payloads' `stored_sha256` (the digest of their
    /// compressed bytes); `sha256`, over what they decompress to, is still
    /// checked. For installing: the stored digest only catches changed bits the
    /// decoder ignores, which cannot change what is written, and hashing the
    /// compressed stream too costs a device a second sha256 pass.
    pub fn without_stored_digests(mut self) -> Self {
        self.stored_digests = false;
        self
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's exact bytes (what the signature covers).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }

    /// The signature member's exact bytes (a minisign signature file).
    pub fn signature_bytes(&self) -> &[u8] {
        &self.signature_bytes
    }

    /// The key id named in the signature (16 uppercase hex digits).
    pub fn signature_key_id(&self) -> &str {
        &self.signature_key_id
    }

    /// The signature's trusted comment (covered by the signature when verified).
    pub fn trusted_comment(&self) -> &str {
        &self.trusted_comment
    }

    /// Whether the signature was checked against a trusted key.
    pub fn verified(&self) -> bool {
        self.verified
    }

    /// Bytes of the bundle read so far.
    pub fn offset(&self) -> u64 {
        self.archive.offset
    }

    /// The next payload in manifest order; checks the tar member name and stored
    /// size against the manifest. `None` after the last one.
    pub fn next_payload(&mut self) -> Result<Option<PayloadReader<'_, R>>, BundleError> {
        if let Some(name) = &self.archive.open_payload {
            return Err(BundleError::Unfinished(name.clone()));
        }
        let Some(info) = self.manifest.payloads.get(self.next).cloned() else {
            return Ok(None);
        };
        let previous = match self.next {
            0 => SIGNATURE_MEMBER,
            n => &self.manifest.payloads[n - 1].file,
        };
        let header = self
            .archive
            .header(&format!("after {previous}, before {}", info.file))?
            .ok_or_else(|| {
                BundleError::Truncated(format!(
                    "after {previous}: the archive ends without {}",
                    info.file
                ))
            })?;
        if header.name != info.file {
            return Err(BundleError::Malformed(format!(
                "member {} where the manifest has {}",
                header.name, info.file
            )));
        }
        if header.size != info.stored_size {
            return Err(BundleError::Malformed(format!(
                "member {} is {} bytes, the manifest says {}",
                header.name, header.size, info.stored_size
            )));
        }
        self.next += 1;
        self.archive.open_payload = Some(info.file.clone());
        PayloadReader::open(&mut self.archive, info, self.stored_digests).map(Some)
    }

    /// After the last payload: the archive must end cleanly (two zero blocks),
    /// with no extra members.
    pub fn finish(mut self) -> Result<(), BundleError> {
        if let Some(name) = &self.archive.open_payload {
            return Err(BundleError::Unfinished(name.clone()));
        }
        if let Some(missing) = self.manifest.payloads.get(self.next) {
            return Err(BundleError::Payload {
                file: missing.file.clone(),
                reason: "was never read".into(),
            });
        }
        let last = self
            .manifest
            .payloads
            .last()
            .map_or(SIGNATURE_MEMBER, |p| p.file.as_str())
            .to_string();
        for _ in 0..2 {
            if let Some(extra) = self
                .archive
                .header(&format!("after {last}, before the end-of-archive marker"))?
            {
                return Err(BundleError::ExtraMember(extra.name));
            }
        }
        // A tar record may be padded with zeros; nothing else may follow.
        let mut rest = [0u8; 512];
        let mut trailing = 0u64;
        loop {
            let got = self.archive.read_full(&mut rest)?;
            if rest[..got].iter().any(|b| *b != 0) {
                return Err(BundleError::Malformed(
                    "data follows the end-of-archive marker".into(),
                ));
            }
            trailing += got as u64;
            if got < rest.len() {
                return Ok(());
            }
            if trailing > MAX_TRAILING_ZEROS {
                return Err(BundleError::Malformed(
                    "too much data follows the end-of-archive marker".into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
