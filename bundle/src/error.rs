//! The error of reading a bundle.
//!
//! One enum for every stage of reading (tar structure, signature, manifest,
//! payloads): the agent and `berth bundle inspect` report whichever stage
//! failed, and a payload's reader hands it through `io::Error` (see
//! [`BundleError::from_io`]).

use std::io;
use std::path::PathBuf;

/// Failure reading, checking or verifying a bundle, or loading trusted keys.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle could not be read.
    #[error("reading the bundle: {0}")]
    Io(#[source] io::Error),
    /// A trusted key file or folder could not be read.
    #[error("reading trusted keys {path}: {source}")]
    KeyIo { path: PathBuf, source: io::Error },
    /// A trusted key is not a minisign public key.
    #[error("{origin}: not a minisign public key ({reason})")]
    BadKey { origin: String, reason: String },
    /// The archive does not start like a bundle.
    #[error("not a berth bundle: {0}")]
    NotABundle(String),
    /// The archive ends early.
    #[error("bundle is truncated: it ends {0}")]
    Truncated(String),
    /// The tar structure is broken or holds something a bundle never does.
    #[error("bundle archive is malformed: {0}")]
    Malformed(String),
    /// The manifest or signature member is larger than allowed.
    #[error("bundle member {name} is {size} bytes, more than the {limit} allowed")]
    TooLarge { name: String, size: u64, limit: u64 },
    /// The signature member is not a minisign signature.
    #[error("bundle signature is malformed: {0}")]
    BadSignatureFormat(String),
    /// The signature names a key that is not trusted.
    #[error("bundle is signed by key {key_id} which is not one of the trusted keys ({trusted})")]
    UntrustedKey { key_id: String, trusted: String },
    /// The signature does not match the manifest.
    #[error("bundle signature does not verify: the manifest or its signature was altered")]
    SignatureMismatch,
    /// The manifest does not parse or breaks a rule.
    #[error("bundle manifest is invalid: {0}")]
    InvalidManifest(String),
    /// A payload's bytes do not have the manifest's digest.
    #[error("payload {file}: sha256 mismatch (expected {expected}, got {actual})")]
    HashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    /// A payload's compressed member does not have the manifest's digest.
    #[error("payload {file}: sha256 mismatch of the compressed data (expected {expected}, got {actual})")]
    StoredHashMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    /// A payload is damaged: wrong size, bad compressed data, trailing bytes.
    #[error("payload {file}: {reason}")]
    Payload { file: String, reason: String },
    /// The next payload was asked for before the previous one was finished.
    #[error("payload {0} was not finished before the next member was read")]
    Unfinished(String),
    /// Something follows the last payload.
    #[error("bundle has an extra member {0:?} after the last payload")]
    ExtraMember(String),
}

impl BundleError {
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            BundleError::Truncated(_) => io::Error::new(io::ErrorKind::UnexpectedEof, self),
            _ => io::Error::new(io::ErrorKind::InvalidData, self),
        }
    }

    /// The `BundleError` inside an `io::Error` a [`PayloadReader`] returned, if any.
    pub fn from_io(error: &io::Error) -> Option<&BundleError> {
        error.get_ref()?.downcast_ref::<BundleError>()
    }
}
