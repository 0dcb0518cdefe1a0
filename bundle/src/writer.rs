//! Writing a bundle: payloads compressed with zstd, then the ustar archive of
//! the manifest, its signature by the release key and the payloads, every
//! member with fixed metadata. Single-threaded zstd and fixed tar metadata make
//! the same inputs and key give the same bytes.
//!
//! ```no_run
//! # use berth_bundle::{writer, Manifest, PayloadKind, SecretKey};
//! # fn demo(key: &SecretKey, rootfs: &[u8], dir: &std::path::Path,
//! #         mut manifest: Manifest, out: std::fs::File) -> Result<(), writer::WriteError> {
//! let mut payloads = vec![writer::compress(PayloadKind::Rootfs, rootfs, writer::ROOTFS_LEVEL, dir)?];
//! // … the kernel and the initramfs, then the manifest naming them:
//! manifest.payloads = payloads.iter().map(|p| p.info().clone()).collect();
//! writer::write_bundle(out, &manifest, key, &mut payloads)?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::keys::SecretKey;
use crate::manifest::{Manifest, PayloadInfo, PayloadKind, MANIFEST_MEMBER, SIGNATURE_MEMBER};
use crate::BundleError;

/// zstd level of the root filesystem payload: the squashfs is already
/// compressed, a higher level costs time and saves next to nothing.
pub const ROOTFS_LEVEL: i32 = 3;
/// zstd level of the kernel and initramfs payloads (small).
pub const BOOT_FILES_LEVEL: i32 = 19;
/// Permission bits of every member.
const MEMBER_MODE: u32 = 0o644;

/// Failure writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Reading a payload's source, or writing a temporary file or the bundle.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The manifest breaks a rule of the format.
    #[error(transparent)]
    Manifest(#[from] BundleError),
    /// The manifest does not describe the payloads given to write.
    #[error("the manifest's payloads do not match the compressed payloads: {0}")]
    PayloadMismatch(String),
}

/// Passes bytes through and hashes them (sha256).
pub struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    count: u64,
}

impl<T> std::fmt::Debug for Hashing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hashing")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Hashing<T> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner reader or writer, the sha256 (hex) and the byte count.
    pub fn digest(self) -> (T, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.count)
    }
}

impl<T: Read> Read for Hashing<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<T: Write> Write for Hashing<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A payload compressed into a temporary file, and its manifest entry.
#[derive(Debug)]
pub struct CompressedPayload {
    file: File,
    info: PayloadInfo,
}

impl CompressedPayload {
    /// The payload's manifest entry (sizes and digests, raw and compressed).
    pub fn info(&self) -> &PayloadInfo {
        &self.info
    }
}

/// Compresses `source` at zstd `level` into a new temporary file in `dir`
/// (removed when the payload is dropped).
pub fn compress(
    kind: PayloadKind,
    source: impl Read,
    level: i32,
    dir: &Path,
) -> io::Result<CompressedPayload> {
    let mut out = tempfile::tempfile_in(dir)?;
    let mut input = Hashing::new(source);
    let mut encoder = zstd::stream::Encoder::new(Hashing::new(&mut out), level)?;
    // Single-threaded with the size known up front: the same bytes every time.
    encoder.include_checksum(false)?;
    io::copy(&mut input, &mut encoder)?;
    let writer = encoder.finish()?;
    let (_, stored_sha256, stored_size) = writer.digest();
    let (_, sha256, size) = input.digest();
    out.seek(SeekFrom::Start(0))?;
    Ok(CompressedPayload {
        file: out,
        info: PayloadInfo {
            kind,
            file: kind.member_name().to_string(),
            size,
            sha256,
            stored_size,
            stored_sha256,
        },
    })
}

/// A tar header with berth's fixed metadata: mode 0644, owner 0:0, `mtime`.
fn tar_header(name: &str, size: u64, mtime: u64) -> io::Result<::tar::Header> {
    let mut header = ::tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(size);
    header.set_mode(MEMBER_MODE);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_entry_type(::tar::EntryType::Regular);
    header.set_cksum();
    Ok(header)
}

/// The signature's trusted comment: like minisign's own, plus what the bundle is.
pub fn trusted_comment(manifest: &Manifest) -> String {
    format!(
        "timestamp:{}\tfile:{MANIFEST_MEMBER}\thashed\tberth bundle {} {}",
        manifest.created, manifest.name, manifest.version
    )
}

/// Writes the bundle to `out`: the manifest (validated, and checked to describe
/// `payloads`), its signature by `key`, the payloads in order, the end of the
/// archive. Every member's mtime is the manifest's `created`. Returns `out`,
/// flushed.
pub fn write_bundle<W: Write>(
    out: W,
    manifest: &Manifest,
    key: &SecretKey,
    payloads: &mut [CompressedPayload],
) -> Result<W, WriteError> {
    manifest.validate()?;
    let given: Vec<&PayloadInfo> = payloads.iter().map(|p| &p.info).collect();
    let listed: Vec<&PayloadInfo> = manifest.payloads.iter().collect();
    if given != listed {
        return Err(WriteError::PayloadMismatch(format!(
            "the manifest lists {}, given {}",
            names(&listed),
            names(&given)
        )));
    }
    let json = manifest.to_json();
    let signature = key.sign(&json, &trusted_comment(manifest));
    let mtime = manifest.created;
    let mut tar = ::tar::Builder::new(out);
    tar.append(
        &tar_header(MANIFEST_MEMBER, json.len() as u64, mtime)?,
        json.as_slice(),
    )?;
    tar.append(
        &tar_header(SIGNATURE_MEMBER, signature.len() as u64, mtime)?,
        signature.as_bytes(),
    )?;
    for payload in payloads {
        payload.file.seek(SeekFrom::Start(0))?;
        tar.append(
            &tar_header(&payload.info.file, payload.info.stored_size, mtime)?,
            &mut payload.file,
        )?;
    }
    let mut out = tar.into_inner()?;
    out.flush()?;
    Ok(out)
}

fn names(infos: &[&PayloadInfo]) -> String {
    let names: Vec<&str> = infos.iter().map(|i| i.file.as_str()).collect();
    format!("[{}]", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{content, Key};
    use crate::{BundleReader, TrustedKeys, TAR_BLOCK};

    fn secret_key() -> SecretKey {
        SecretKey::generate().unwrap()
    }

    fn payloads(dir: &Path) -> Vec<CompressedPayload> {
        PayloadKind::ALL
            .iter()
            .zip([content(1, 3 * 4096), content(2, 5000), content(3, 777)])
            .map(|(kind, data)| compress(*kind, data.as_slice(), BOOT_FILES_LEVEL, dir).unwrap())
            .collect()
    }

    fn manifest(payloads: &[CompressedPayload]) -> Manifest {
        let mut manifest = crate::testkit::manifest_for(&[], &[]);
        manifest.payloads = payloads.iter().map(|p| p.info().clone()).collect();
        manifest
    }

    #[test]
    fn written_bundles_read_back_and_are_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let key = secret_key();
        let mut payloads = payloads(dir.path());
        let manifest = manifest(&payloads);
        let bytes = write_bundle(Vec::new(), &manifest, &key, &mut payloads).unwrap();
        assert_eq!(bytes.len() as u64 % TAR_BLOCK, 0);
        // Written twice, the same bytes (the payloads are rewound).
        let again = write_bundle(Vec::new(), &manifest, &key, &mut payloads).unwrap();
        assert_eq!(bytes, again);

        let trusted = TrustedKeys::parse(&key.public_key_text()).unwrap();
        let mut reader = BundleReader::open(bytes.as_slice(), &trusted).unwrap();
        assert_eq!(reader.manifest(), &manifest);
        assert_eq!(reader.signature_key_id(), key.key_id());
        assert_eq!(reader.trusted_comment(), trusted_comment(&manifest));
        let expected = [content(1, 3 * 4096), content(2, 5000), content(3, 777)];
        for data in expected {
            let mut payload = reader.next_payload().unwrap().unwrap();
            let mut read = Vec::new();
            payload.read_to_end(&mut read).unwrap();
            payload.finish().unwrap();
            assert_eq!(read, data);
        }
        assert!(reader.next_payload().unwrap().is_none());
        reader.finish().unwrap();

        // Another key's reader refuses it.
        let other = Key::new().trusted();
        assert!(BundleReader::open(bytes.as_slice(), &other).is_err());
    }

    #[test]
    fn members_have_fixed_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let key = secret_key();
        let mut payloads = payloads(dir.path());
        let manifest = manifest(&payloads);
        let bytes = write_bundle(Vec::new(), &manifest, &key, &mut payloads).unwrap();
        let mut archive = ::tar::Archive::new(bytes.as_slice());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mode().unwrap(), 0o644);
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            assert_eq!(header.mtime().unwrap(), manifest.created);
            assert!(header.as_ustar().is_some());
            names.push(entry.path().unwrap().display().to_string());
        }
        assert_eq!(
            names,
            [
                MANIFEST_MEMBER,
                SIGNATURE_MEMBER,
                "rootfs.img.zst",
                "vmlinuz.zst",
                "initramfs.img.zst"
            ]
        );
    }

    #[test]
    fn compressed_payloads_describe_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data = content(7, 10_000);
        let mut payload = compress(PayloadKind::Kernel, data.as_slice(), 3, dir.path()).unwrap();
        let info = payload.info().clone();
        assert_eq!(info.file, "vmlinuz.zst");
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(info.sha256, hex::encode(Sha256::digest(&data)));
        let mut stored = Vec::new();
        payload.file.read_to_end(&mut stored).unwrap();
        assert_eq!(info.stored_size, stored.len() as u64);
        assert_eq!(info.stored_sha256, hex::encode(Sha256::digest(&stored)));
        assert_eq!(zstd::decode_all(stored.as_slice()).unwrap(), data);
    }

    #[test]
    fn a_manifest_that_does_not_match_the_payloads_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = secret_key();
        let mut payloads = payloads(dir.path());
        let mut manifest = manifest(&payloads);
        manifest.payloads[1].sha256 = "00".repeat(32);
        let err = write_bundle(Vec::new(), &manifest, &key, &mut payloads).unwrap_err();
        assert!(matches!(err, WriteError::PayloadMismatch(_)), "{err}");
        let mut manifest = self::manifest(&payloads);
        manifest.name = String::new();
        let err = write_bundle(Vec::new(), &manifest, &key, &mut payloads).unwrap_err();
        assert!(matches!(err, WriteError::Manifest(_)), "{err}");
    }
}
