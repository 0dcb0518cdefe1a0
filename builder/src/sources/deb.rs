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

/// The `data.tar` of a package, decompressed as it is read.
pub fn data_tar(path: &Path) -> Result<tar::Archive<Box<dyn Read>>, DebError> {
    let io = |source| DebError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut archive = ar::Archive::new(file);
    while let Some(entry) = archive.next_entry() {
        let mut entry = entry.map_err(io)?;
        let member = String::from_utf8_lossy(entry.header().identifier()).to_string();
        if !member.starts_with("data.tar") {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(io)?;
        let cursor = Cursor::new(bytes);
        let reader: Box<dyn Read> = match member.as_str() {
            "data.tar" => Box::new(cursor),
            "data.tar.xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(cursor)),
            "data.tar.zst" => Box::new(zstd::stream::read::Decoder::new(cursor).map_err(io)?),
            "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(cursor)),
            _ => {
                return Err(DebError::Compression {
                    path: path.to_path_buf(),
                    member,
                })
            }
        };
        return Ok(tar::Archive::new(reader));
    }
    Err(DebError::NoData {
        path: path.to_path_buf(),
    })
}
