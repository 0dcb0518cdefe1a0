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
    pub root: Artifact,
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
    pub reference: String,
    pub manifest: String,
}
