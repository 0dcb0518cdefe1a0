//! A window onto part of a file or device: a partition of a disk image seen as a
//! disk of its own. Reads stop at its end, writes past it fail, seeks are relative
//! to its start. Used to format and read the ESP in place, and to write slots.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// `[start, start + len)` of `inner`.
#[derive(Debug)]
pub struct Window<F> {
    inner: F,
    start: u64,
    len: u64,
    pos: u64,
}

impl<F> Window<F> {
    /// The window `[start, start + len)` of `inner`; `inner` can be a `File` or a
    /// `&File`. Over a file opened read-only, writes fail with the OS's error.
    pub fn new(inner: F, start: u64, len: u64) -> Window<F> {
        Window {
            inner,
            start,
            len,
            pos: 0,
        }
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn room(&self, want: usize) -> usize {
        let left = self.len.saturating_sub(self.pos);
        usize::try_from(left).map_or(want, |left| left.min(want))
    }
}

impl<F: Read + Seek> Read for Window<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = self.room(buf.len());
        if want == 0 {
            return Ok(0);
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.inner.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<F: Write + Seek> Write for Window<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let want = self.room(buf.len());
        if want == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.inner.write(&buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<F> Seek for Window<F> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        match target {
            Some(target) => {
                self.pos = target;
                Ok(target)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_and_writes_only_its_range() {
        let mut window = Window::new(Cursor::new(b"0123456789abcdef".to_vec()), 4, 8);
        let mut all = Vec::new();
        window.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"456789ab");
        window.seek(SeekFrom::End(-2)).unwrap();
        let mut two = [0u8; 4];
        assert_eq!(window.read(&mut two).unwrap(), 2);
        assert_eq!(&two[..2], b"ab");
        assert!(window.seek(SeekFrom::Current(-11)).is_err());
        window.seek(SeekFrom::Start(6)).unwrap();
        assert_eq!(window.write(b"XYZ").unwrap(), 2);
        assert!(window.write(b"Z").is_err());
        assert_eq!(window.inner.into_inner(), b"0123456789XYcdef");
    }
}
