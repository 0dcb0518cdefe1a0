//! Reading `.deb` files: an `ar` archive whose `data.tar.{xz,zst,gz}` member holds
//! the files.
//!
//! The `ar` reader is berth's own, for the one form dpkg-deb writes (the
//! common format: the `!<arch>\n` magic, then each member's 60-byte header —
//! name, mtime, uid, gid, mode, decimal size, `` `\n `` — and its data, padded
//! to an even length). Fuzzing found the `ar` crate panicking on a name that
//! points into a GNU name table the file does not have; a `.deb` has no such
//! names, so they are not looked up here, just never matched.

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
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
    #[error("{path} is not a Debian package: {reason}")]
    Malformed { path: PathBuf, reason: &'static str },
}

/// The `ar` archive's magic.
const AR_MAGIC: &[u8; 8] = b"!<arch>\n";
/// An `ar` member header's length and its closing bytes.
const AR_HEADER: usize = 60;
const AR_HEADER_END: &[u8; 2] = b"`\n";

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
    let malformed = |reason| DebError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = BufReader::new(File::open(path).map_err(io)?);
    let mut magic = [0u8; AR_MAGIC.len()];
    if read_full(&mut file, &mut magic).map_err(io)? != magic.len() || &magic != AR_MAGIC {
        return Err(malformed("no ar archive magic"));
    }
    loop {
        let mut header = [0u8; AR_HEADER];
        match read_full(&mut file, &mut header).map_err(io)? {
            0 => return Ok(None),
            AR_HEADER if header[58..] == AR_HEADER_END[..] => {}
            _ => return Err(malformed("a cut or damaged ar member header")),
        }
        // GNU ar ends names with '/', the common format pads them with spaces.
        let name = String::from_utf8_lossy(&header[..16]);
        let name = name.trim_end_matches(' ').trim_end_matches('/');
        let size: u64 = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim_end_matches(' ').parse().ok())
            .ok_or_else(|| malformed("an ar member size that is not a number"))?;
        if name.starts_with(prefix) {
            // Grows as bytes arrive: a size larger than the file costs nothing.
            let mut bytes = Vec::new();
            (&mut file).take(size).read_to_end(&mut bytes).map_err(io)?;
            if bytes.len() as u64 != size {
                return Err(malformed("an ar member cut short"));
            }
            let member = name.to_string();
            let reader = decompress(path, &member, Cursor::new(bytes))?;
            return Ok(Some(tar::Archive::new(reader)));
        }
        // The data and the padding byte of an odd size.
        let skip = size + (size & 1);
        let skipped = io::copy(&mut (&mut file).take(skip), &mut io::sink()).map_err(io)?;
        if skipped < size {
            return Err(malformed("an ar member cut short"));
        }
    }
}

/// Reads until `buf` is full or the file ends; how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
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
        std::fs::write(
            &path,
            ar(&[
                ("debian-binary", &b"2.0\n"[..]),
                ("control.tar.gz", &control),
            ]),
        )
        .unwrap();
        path
    }

    /// An `ar` archive as dpkg-deb writes one (GNU names, ending in '/').
    fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = AR_MAGIC.to_vec();
        for (name, bytes) in members {
            let header = format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                format!("{name}/"),
                0,
                0,
                0,
                100_644,
                bytes.len()
            );
            assert_eq!(header.len(), AR_HEADER);
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(bytes);
            if bytes.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    #[test]
    fn broken_archives_are_refused_without_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let control = std::fs::read(deb(dir.path(), &["postinst"])).unwrap();
        let check = |bytes: &[u8], reason: &str| {
            let path = dir.path().join("broken.deb");
            std::fs::write(&path, bytes).unwrap();
            let err = has_install_scripts(&path).unwrap_err();
            assert!(err.to_string().contains(reason), "{err}");
        };
        check(b"not an archive", "no ar archive magic");
        check(
            &control[..AR_MAGIC.len() + 30],
            "a cut or damaged ar member header",
        );
        check(&control[..control.len() - 10], "an ar member cut short");
        let mut bad_size = control.clone();
        bad_size[AR_MAGIC.len() + 48] = b'x';
        check(&bad_size, "an ar member size that is not a number");
        // What the fuzzer found: a GNU name-table reference ("/60") with no
        // table in the file (the ar crate indexed past its end).
        let mut table_ref = ar(&[("debian-binary", &b"2.0\n"[..])]);
        table_ref.extend_from_slice(
            b"/60             0           0     0     100644  4         `\n2.0\n",
        );
        let path = dir.path().join("table.deb");
        std::fs::write(&path, &table_ref).unwrap();
        assert!(!has_install_scripts(&path).unwrap());
        assert!(matches!(data_tar(&path), Err(DebError::NoData { .. })));
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
