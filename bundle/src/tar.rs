//! The strict POSIX ustar reader a bundle is read with: plain short names,
//! regular files, checked header checksums, zero padding.

use std::io::{self, Read};

use crate::BundleError;

/// Size of a tar block.
pub const TAR_BLOCK: u64 = 512;

/// A ustar member header, as far as a bundle needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberHeader {
    pub(crate) name: String,
    pub(crate) size: u64,
}

/// Parses an octal tar number field (digits, then NUL or space padding).
fn octal(field: &[u8]) -> Option<u64> {
    let digits: &[u8] = {
        let start = field.iter().position(|b| *b != b' ')?;
        let rest = &field[start..];
        let end = rest
            .iter()
            .position(|b| *b == 0 || *b == b' ')
            .unwrap_or(rest.len());
        if rest[end..].iter().any(|b| *b != 0 && *b != b' ') {
            return None;
        }
        &rest[..end]
    };
    if digits.is_empty() || digits.len() > 11 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| match d {
        b'0'..=b'7' => Some(n * 8 + u64::from(d - b'0')),
        _ => None,
    })
}

/// Parses one header block; `None` for a zero block (end of archive).
pub(crate) fn parse_header(block: &[u8; 512]) -> Result<Option<MemberHeader>, BundleError> {
    if block.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let bad = |reason: String| BundleError::Malformed(reason);
    let stored = octal(&block[148..156])
        .ok_or_else(|| bad("a member header has an unreadable checksum".into()))?;
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if sum != stored {
        return Err(bad(format!(
            "a member header's checksum is wrong (stored {stored}, computed {sum}): the header was altered"
        )));
    }
    if &block[257..263] != b"ustar\0" || &block[263..265] != b"00" {
        return Err(bad("a member header is not POSIX ustar".into()));
    }
    let name_field = &block[0..100];
    let end = name_field.iter().position(|b| *b == 0).unwrap_or(100);
    if name_field[end..].iter().any(|b| *b != 0) || block[345..500].iter().any(|b| *b != 0) {
        return Err(bad("a member name is not a plain short name".into()));
    }
    let name = std::str::from_utf8(&name_field[..end])
        .map_err(|_| bad("a member name is not UTF-8".into()))?
        .to_string();
    if name.is_empty() || name.contains('/') || name.chars().any(|c| c.is_control()) {
        return Err(bad(format!(
            "member name {name:?} is not a plain file name"
        )));
    }
    if !matches!(block[156], b'0' | 0) {
        return Err(bad(format!(
            "member {name} is not a regular file (type {:?})",
            char::from(block[156])
        )));
    }
    let size = octal(&block[124..136])
        .ok_or_else(|| bad(format!("member {name} has an unreadable size")))?;
    Ok(Some(MemberHeader { name, size }))
}

/// Padding after a member of `size` bytes up to the next block.
pub(crate) fn padding(size: u64) -> u64 {
    (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK
}

/// The archive being read: the source and how far into it we are.
#[derive(Debug)]
pub(crate) struct Archive<R> {
    pub(crate) reader: R,
    /// Bytes read so far.
    pub(crate) offset: u64,
    /// The payload handed out and not finished yet.
    pub(crate) open_payload: Option<String>,
}

impl<R: Read> Archive<R> {
    /// Fills `buf` as far as the source goes; returns the bytes read.
    pub(crate) fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BundleError::Io(e)),
            }
        }
        self.offset += got as u64;
        Ok(got)
    }

    /// Reads a header block. `what` says where the bundle ends if it is cut here.
    pub(crate) fn header(&mut self, what: &str) -> Result<Option<MemberHeader>, BundleError> {
        let mut block = [0u8; 512];
        let got = self.read_full(&mut block)?;
        if got < block.len() {
            return Err(BundleError::Truncated(format!(
                "{what} (got {got} of 512 header bytes)"
            )));
        }
        parse_header(&block)
    }

    /// Reads a whole small member and its padding.
    pub(crate) fn small_member(
        &mut self,
        header: &MemberHeader,
        limit: u64,
    ) -> Result<Vec<u8>, BundleError> {
        if header.size > limit {
            return Err(BundleError::TooLarge {
                name: header.name.clone(),
                size: header.size,
                limit,
            });
        }
        let mut data = vec![0u8; usize::try_from(header.size).unwrap_or(usize::MAX)];
        let got = self.read_full(&mut data)?;
        if got < data.len() {
            return Err(BundleError::Truncated(format!(
                "inside {} (got {got} of {} bytes)",
                header.name, header.size
            )));
        }
        self.padding(&header.name, header.size)?;
        Ok(data)
    }

    /// Reads and checks the zero padding after a member.
    pub(crate) fn padding(&mut self, name: &str, size: u64) -> Result<(), BundleError> {
        let mut pad = [0u8; 512];
        let want = usize::try_from(padding(size)).unwrap_or(0);
        let got = self.read_full(&mut pad[..want])?;
        if got < want {
            return Err(BundleError::Truncated(format!(
                "in the padding after {name}"
            )));
        }
        if pad[..want].iter().any(|b| *b != 0) {
            return Err(BundleError::Malformed(format!(
                "the padding after {name} is not zeros"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    #[test]
    fn tar_headers_are_checked_strictly() {
        let good = header("vmlinuz.zst", 1234);
        assert_eq!(
            parse_header(&good).unwrap(),
            Some(MemberHeader {
                name: "vmlinuz.zst".into(),
                size: 1234
            })
        );
        assert_eq!(parse_header(&[0u8; 512]).unwrap(), None);
        let resum = |mut h: [u8; 512]| {
            h[148..156].fill(b' ');
            let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            h
        };
        let mut symlink = good;
        symlink[156] = b'2';
        assert!(parse_header(&resum(symlink))
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        let mut path = header("../etc/passwd", 1);
        path[0] = b'.';
        assert!(parse_header(&resum(path)).is_err());
        let mut binary_size = good;
        binary_size[124] = 0x80;
        assert!(parse_header(&resum(binary_size))
            .unwrap_err()
            .to_string()
            .contains("size"));
        let mut gnu = good;
        gnu[257..265].copy_from_slice(b"ustar  \0");
        assert!(parse_header(&resum(gnu))
            .unwrap_err()
            .to_string()
            .contains("ustar"));
        let mut prefixed = good;
        prefixed[345] = b'x';
        assert!(parse_header(&resum(prefixed)).is_err());
        assert_eq!(octal(b"0000644\0"), Some(0o644));
        assert_eq!(octal(b"  644 \0\0"), Some(0o644));
        assert_eq!(octal(b"0008\0"), None);
        assert_eq!(octal(b"\0\0\0"), None);
    }
}
