//! Reading `.deb` files: an `ar` archive whose `data.tar.{xz,zst,gz}` member holds
//! the files.

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};

/// Failure to read a package file.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a Debian package: no data.tar member")]
    NoData { path: PathBuf },
    #[error("{path}: unsupported data member {member}")]
    Compression { path: PathBuf, member: String },
}

/// Maintainer scripts that run when a package is installed (dpkg's names).
const INSTALL_SCRIPTS: [&str; 2] = ["preinst", "postinst"];

/// Whether the package has a `preinst` or `postinst`: then unpacking its files
/// is not installing it (users, folders and links those scripts make would be
/// missing).
pub fn has_install_scripts(path: &Path) -> Result<bool, DebError> {
    let io = |source| DebError::Io {
        path: path.to_path_buf(),
        source,
    };
    let Some(mut control) = member_tar(path, "control.tar")? else {
        return Ok(false);
    };
    for item in control.entries().map_err(io)? {
        let item = item.map_err(io)?;
        let name = item.path().map_err(io)?;
        let name = name.to_string_lossy();
        if INSTALL_SCRIPTS.contains(&name.trim_start_matches("./")) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The `data.tar` of a package, decompressed as it is read.
pub fn data_tar(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, DebError> {
    member_tar(path, "data.tar")?.ok_or_else(|| DebError::NoData {
        path: path.to_path_buf(),
    })
}

/// The first `ar` member of the package named `prefix` (`data.tar`,
/// `control.tar`) with any compression suffix, as a tar archive decompressed
/// as it is read; `None` when there is none.
fn member_tar(path: &Path, prefix: &str) -> Result<Option<tar::Archive<Box<dyn Read>>>, DebError> {
    let io = |source| DebError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut archive = ar::Archive::new(file);
    while let Some(entry) = archive.next_entry() {
        let mut entry = entry.map_err(io)?;
        let member = String::from_utf8_lossy(entry.header().identifier()).to_string();
        if !member.starts_with(prefix) {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(io)?;
        let reader = decompress(path, &member, Cursor::new(bytes))?;
        return Ok(Some(tar::Archive::new(reader)));
    }
    Ok(None)
}

/// A member's bytes, decompressed as they are read, by the member's suffix
/// (`data.tar`, `.xz`, `.zst`, `.gz`).
fn decompress(
    path: &Path,
    member: &str,
    cursor: Cursor<Vec<u8>>,
) -> Result<Box<dyn Read>, DebError> {
    let io = |source| DebError::Io {
        path: path.to_path_buf(),
        source,
    };
    Ok(match member.rsplit_once('.').map(|(_, ext)| ext) {
        None | Some("tar") => Box::new(cursor),
        Some("xz") => Box::new(xz2::read::XzDecoder::new_multi_decoder(cursor)),
        Some("zst") => Box::new(zstd::stream::read::Decoder::new(cursor).map_err(io)?),
        Some("gz") => Box::new(flate2::read::GzDecoder::new(cursor)),
        _ => {
            return Err(DebError::Compression {
                path: path.to_path_buf(),
                member: member.to_string(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `.deb` whose control.tar.gz holds `control` and the named scripts.
    fn deb(dir: &Path, scripts: &[&str]) -> PathBuf {
        let mut control = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for name in std::iter::once("control").chain(scripts.iter().copied()) {
            let body = b"#!/bin/sh\n";
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o755);
            header.set_cksum();
            control
                .append_data(&mut header, format!("./{name}"), &body[..])
                .unwrap();
        }
        let control = control.into_inner().unwrap().finish().unwrap();
        let path = dir.join(format!("{}.deb", scripts.join("-")));
        let mut archive = ar::Builder::new(File::create(&path).unwrap());
        for (name, bytes) in [
            ("debian-binary", &b"2.0\n"[..]),
            ("control.tar.gz", &control[..]),
        ] {
            let header = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
            archive.append(&header, bytes).unwrap();
        }
        path
    }

    #[test]
    fn install_scripts_are_told_from_other_control_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(has_install_scripts(&deb(dir.path(), &["postinst"])).unwrap());
        assert!(has_install_scripts(&deb(dir.path(), &["preinst", "prerm"])).unwrap());
        // Removal scripts and triggers do not run on an install.
        assert!(!has_install_scripts(&deb(dir.path(), &["prerm", "postrm", "triggers"])).unwrap());
        assert!(!has_install_scripts(&deb(dir.path(), &[])).unwrap());
    }
}
