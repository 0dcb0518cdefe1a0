//! The build report written next to the image: what went in, what came out.

use serde::Serialize;

/// `images/NAME-VERSION.json`.
#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub image: ImageId,
    pub berth_version: String,
    /// The fixed timestamp used for every file.
    pub epoch: u64,
    pub outputs: Outputs,
    pub partitions: Vec<PartitionReport>,
    pub inputs: InputsReport,
}

#[derive(Debug, Serialize)]
pub struct ImageId {
    pub name: String,
    pub version: String,
    pub compatible: String,
}

#[derive(Debug, Serialize)]
pub struct Artifact {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct Outputs {
    pub disk: DiskArtifact,
    pub kernel: Artifact,
    pub initramfs: Artifact,
    pub root: RootArtifact,
}

/// What goes into the slot partition: the squashfs, zero-padded to whole 4096-byte
/// blocks when a verity hash tree follows it, then the tree.
#[derive(Debug, Serialize)]
pub struct RootArtifact {
    pub size: u64,
    pub sha256: String,
    /// The hash tree's parameters (absent when `[image] verity = false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verity: Option<VerityReport>,
}

/// dm-verity parameters of the root, as the boot entry passes them to the init.
#[derive(Debug, Serialize)]
pub struct VerityReport {
    /// sha256 root hash, lowercase hex.
    pub root_hash: String,
    /// Salt, lowercase hex.
    pub salt: String,
    /// 4096-byte data blocks covered.
    pub data_blocks: u64,
    /// Byte offset of the hash tree in the partition.
    pub hash_offset: u64,
    /// Bytes of the squashfs as written (backhand already pads it to 4 KiB, so
    /// this is usually `hash_offset`).
    pub filesystem_size: u64,
}

#[derive(Debug, Serialize)]
pub struct DiskArtifact {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct PartitionReport {
    pub label: String,
    pub partuuid: String,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct InputsReport {
    pub kernel: KernelInput,
    pub init: Artifact,
    /// berth-update, the device agent.
    pub update_agent: Artifact,
    pub systemd_boot: Artifact,
    pub packages: Vec<PackageInput>,
    pub images: Vec<ImageInput>,
}

#[derive(Debug, Serialize)]
pub struct KernelInput {
    pub release: String,
    pub package: Option<PackageInput>,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackageInput {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct ImageInput {
    pub container: String,
    pub reference: String,
    /// What the reference stood for (index or manifest).
    pub digest: String,
    /// The linux/amd64 manifest used.
    pub manifest: String,
}
