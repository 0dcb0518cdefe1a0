//! Signed update bundles: the manifest, the trust anchors and the streaming reader
//! the device agent installs from.
//!
//! A bundle is a POSIX ustar archive with exactly these members, in this order:
//! `manifest.json`, `manifest.json.minisig` (a minisign signature of the manifest's
//! exact bytes), then one zstd-compressed member per payload in manifest order:
//! `rootfs.img.zst`, `vmlinuz.zst`, `initramfs.img.zst`. The archive ends with two
//! zero blocks. Anyone can check a bundle by hand with `tar xf` and
//! `minisign -Vm manifest.json -p KEY.pub`.
//!
//! [`BundleReader`] reads the archive front to back without seeking, so it works
//! on a download as it arrives: the signature is checked before any payload byte
//! is read, each payload is decompressed with its size capped at the manifest's and
//! hashed as it streams, and every member name, size and header checksum is
//! checked. Sizes of the manifest and signature members are capped, so a hostile
//! bundle cannot make the device allocate without bound.
//!
//! [`writer`] writes bundles (the builder's `berth bundle`), signed with a
//! [`SecretKey`]. [`channel`] holds the signed channel index of an update
//! repository.

pub mod channel;
pub mod delta;
mod error;
pub mod keys;
pub mod manifest;
pub mod payload;
pub mod reader;
pub mod rollout;
pub mod tar;
#[doc(hidden)]
pub mod testkit;
pub mod version;
pub mod writer;

pub use error::BundleError;
pub use keys::{key_id, SecretKey, SecretKeyError, TrustedKeys, Verified};
pub use manifest::{
    Manifest, PayloadInfo, PayloadKind, VerityInfo, BUNDLE_FORMAT, MANIFEST_MEMBER,
    SIGNATURE_MEMBER,
};
pub use payload::{PayloadReader, MAX_ZSTD_WINDOW};
pub use reader::{BundleReader, MAX_MANIFEST_SIZE, MAX_SIGNATURE_SIZE};
pub use tar::TAR_BLOCK;
pub use version::{ImageVersion, VersionError};
