//! The signed description of a bundle (`manifest.json`): what it is for and
//! each payload's size and digests, with the rules a device checks.

use std::fmt;

use serde::{Deserialize, Serialize};

use berth_format::layout::{VerityParams, VERITY_BLOCK_SIZE};

use crate::{BundleError, ImageVersion};

/// Version of the bundle format this crate reads and writes.
pub const BUNDLE_FORMAT: u32 = 1;
/// Name of the first member: the manifest.
pub const MANIFEST_MEMBER: &str = "manifest.json";
/// Name of the second member: the manifest's minisign signature.
pub const SIGNATURE_MEMBER: &str = "manifest.json.minisig";

/// What a payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// The slot's root filesystem: squashfs, zero padding to 4096 bytes and the
    /// dm-verity hash tree.
    Rootfs,
    /// The slot's kernel, installed on the ESP.
    Kernel,
    /// The slot's initramfs, installed on the ESP.
    Initramfs,
}

impl PayloadKind {
    /// Every kind, in the order payloads appear in a bundle.
    pub const ALL: [PayloadKind; 3] = [
        PayloadKind::Rootfs,
        PayloadKind::Kernel,
        PayloadKind::Initramfs,
    ];

    /// The tar member name of this payload: `rootfs.img.zst`, …
    pub fn member_name(self) -> &'static str {
        match self {
            PayloadKind::Rootfs => "rootfs.img.zst",
            PayloadKind::Kernel => "vmlinuz.zst",
            PayloadKind::Initramfs => "initramfs.img.zst",
        }
    }
}

impl fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PayloadKind::Rootfs => "rootfs",
            PayloadKind::Kernel => "kernel",
            PayloadKind::Initramfs => "initramfs",
        })
    }
}

/// One payload of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadInfo {
    pub kind: PayloadKind,
    /// Tar member name, e.g. `rootfs.img.zst`.
    pub file: String,
    /// Uncompressed bytes: what is written to the slot or the ESP.
    pub size: u64,
    /// sha256 of the uncompressed bytes, lowercase hex.
    pub sha256: String,
    /// Compressed bytes in the bundle.
    pub stored_size: u64,
    /// sha256 of the compressed bytes, lowercase hex: a decompressor may ignore
    /// some bits of its input, this catches a change to any of them.
    pub stored_sha256: String,
}

/// dm-verity parameters of the rootfs payload (see [`VerityParams`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityInfo {
    /// Root hash, lowercase hex.
    pub root_hash: String,
    /// Salt, lowercase hex (empty for none).
    pub salt: String,
    /// 4096-byte data blocks covered.
    pub data_blocks: u64,
    /// Byte offset of the hash tree in the slot.
    pub hash_offset: u64,
}

impl From<VerityParams> for VerityInfo {
    fn from(p: VerityParams) -> VerityInfo {
        VerityInfo {
            root_hash: p.root_hash,
            salt: p.salt,
            data_blocks: p.data_blocks,
            hash_offset: p.hash_offset,
        }
    }
}

impl From<VerityInfo> for VerityParams {
    fn from(v: VerityInfo) -> VerityParams {
        VerityParams {
            root_hash: v.root_hash,
            salt: v.salt,
            data_blocks: v.data_blocks,
            hash_offset: v.hash_offset,
        }
    }
}

/// The signed description of a bundle (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: u32,
    /// Image name.
    pub name: String,
    /// Devices accept only bundles with their own compatible string.
    pub compatible: String,
    /// Image version (semantic versioning).
    pub version: ImageVersion,
    /// [`berth_format::layout::ARCHITECTURE`].
    pub architecture: String,
    /// Lowest running version this bundle may update from.
    pub min_version: Option<ImageVersion>,
    /// Unix seconds: the image's build epoch.
    pub created: u64,
    /// Boot entry title, e.g. `berth hello 1.1.0`.
    pub title: String,
    /// The entry's extra (recipe) kernel command line.
    pub cmdline: String,
    /// dm-verity parameters of the rootfs payload, when it has a hash tree.
    pub verity: Option<VerityInfo>,
    /// Exactly rootfs, kernel and initramfs, in that order.
    pub payloads: Vec<PayloadInfo>,
}

impl Manifest {
    /// The manifest's bytes as they go into a bundle: pretty JSON, fields in
    /// declaration order, one trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// Parses and validates a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::InvalidManifest(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every rule a manifest must follow.
    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |reason: String| Err(BundleError::InvalidManifest(reason));
        if self.format != BUNDLE_FORMAT {
            return bad(format!(
                "format {} is not supported (this berth reads format {BUNDLE_FORMAT})",
                self.format
            ));
        }
        for (field, value) in [
            ("name", &self.name),
            ("compatible", &self.compatible),
            ("architecture", &self.architecture),
            ("title", &self.title),
        ] {
            if value.trim().is_empty() {
                return bad(format!("{field} is empty"));
            }
            if value.chars().any(char::is_control) {
                return bad(format!("{field} holds a control character"));
            }
        }
        if self.cmdline.chars().any(char::is_control) {
            return bad("cmdline holds a control character".into());
        }
        // version and min_version are semantic versions by their type.
        let kinds: Vec<PayloadKind> = self.payloads.iter().map(|p| p.kind).collect();
        if kinds != PayloadKind::ALL {
            return bad(format!(
                "payloads must be exactly rootfs, kernel, initramfs in that order, not {}",
                kinds
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for p in &self.payloads {
            if p.file != p.kind.member_name() {
                return bad(format!(
                    "the {} payload must be stored as {}, not {:?}",
                    p.kind,
                    p.kind.member_name(),
                    p.file
                ));
            }
            if p.size == 0 || p.stored_size == 0 {
                return bad(format!("payload {} is empty", p.file));
            }
            for (field, value) in [("sha256", &p.sha256), ("stored_sha256", &p.stored_sha256)] {
                if !is_lower_hex(value, 64) {
                    return bad(format!(
                        "payload {}: {field} {value:?} is not 64 lowercase hex digits",
                        p.file
                    ));
                }
            }
        }
        if let Some(v) = &self.verity {
            let rootfs = &self.payloads[0];
            if !is_lower_hex(&v.root_hash, 64) {
                return bad("verity root_hash is not 64 lowercase hex digits".into());
            }
            if !is_lower_hex(&v.salt, v.salt.len()) || v.salt.len() % 2 != 0 {
                return bad("verity salt is not lowercase hex bytes".into());
            }
            if v.data_blocks == 0
                || v.hash_offset != v.data_blocks.saturating_mul(VERITY_BLOCK_SIZE)
                || rootfs.size < v.hash_offset
                || rootfs.size % VERITY_BLOCK_SIZE != 0
            {
                return bad(format!(
                    "verity parameters (data_blocks {}, hash_offset {}) do not fit the rootfs payload ({} bytes)",
                    v.data_blocks, v.hash_offset, rootfs.size
                ));
            }
        }
        Ok(())
    }

    /// The payload of a kind.
    pub fn payload(&self, kind: PayloadKind) -> Option<&PayloadInfo> {
        self.payloads.iter().find(|p| p.kind == kind)
    }
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    fn valid_manifest() -> Manifest {
        let key = Key::new();
        make(&key).manifest
    }

    #[test]
    fn manifest_round_trips_and_keeps_its_field_order() {
        let m = valid_manifest();
        let json = m.to_json();
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        let text = String::from_utf8(json).unwrap();
        let order: Vec<usize> = [
            "\"format\"",
            "\"name\"",
            "\"compatible\"",
            "\"version\"",
            "\"architecture\"",
            "\"min_version\"",
            "\"created\"",
            "\"title\"",
            "\"cmdline\"",
            "\"verity\"",
            "\"payloads\"",
        ]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains("\"kind\": \"rootfs\""), "{text}");
    }

    #[test]
    fn manifest_validation_refuses_what_a_device_cannot_use() {
        type Edit = fn(&mut Manifest);
        let cases: [(Edit, &str); 10] = [
            (|m| m.format = 2, "format 2 is not supported"),
            (|m| m.name.clear(), "name is empty"),
            (|m| m.compatible = " ".into(), "compatible is empty"),
            (
                |m| m.title = "a\nb".into(),
                "title holds a control character",
            ),
            (
                |m| {
                    m.payloads.swap(1, 2);
                },
                "payloads must be exactly rootfs, kernel, initramfs",
            ),
            (
                |m| {
                    m.payloads.pop();
                },
                "payloads must be exactly rootfs, kernel, initramfs",
            ),
            (
                |m| m.payloads[0].file = "../rootfs".into(),
                "must be stored as rootfs.img.zst",
            ),
            (|m| m.payloads[1].size = 0, "payload vmlinuz.zst is empty"),
            (
                |m| m.payloads[2].sha256 = "AB".repeat(32),
                "is not 64 lowercase hex",
            ),
            (
                |m| {
                    if let Some(v) = m.verity.as_mut() {
                        v.hash_offset = 4096 * 100;
                    }
                },
                "do not fit the rootfs payload",
            ),
        ];
        for (edit, message) in cases {
            let mut m = valid_manifest();
            edit(&mut m);
            let err = Manifest::from_json(&m.to_json()).unwrap_err();
            assert!(err.to_string().contains(message), "{message}: {err}");
        }
        // Versions are checked as they are parsed: the type holds only semver.
        for (field, value, message) in [
            ("version", "1.1", "\"1.1\" is not a semantic version"),
            ("version", "01.1.0", "leading zero"),
            (
                "min_version",
                "latest",
                "\"latest\" is not a semantic version",
            ),
        ] {
            let mut json = serde_json::to_value(valid_manifest()).unwrap();
            json[field] = serde_json::Value::String(value.into());
            let err = Manifest::from_json(json.to_string().as_bytes()).unwrap_err();
            assert!(matches!(err, BundleError::InvalidManifest(_)), "{err}");
            assert!(err.to_string().contains(message), "{message}: {err}");
        }
        let err = Manifest::from_json(b"{\"format\": 1, \"extra\": true}").unwrap_err();
        assert!(matches!(err, BundleError::InvalidManifest(_)), "{err}");
        let mut unknown = serde_json::to_value(valid_manifest()).unwrap();
        unknown["surprise"] = serde_json::Value::Bool(true);
        let err = Manifest::from_json(unknown.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
