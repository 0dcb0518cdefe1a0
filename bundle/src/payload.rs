//! A payload's zstd framing and the reader that decompresses it with its size
//! capped at the manifest's, hashing it as it streams.

use std::fmt;
use std::io::{self, BufReader, Read};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::tar::Archive;
use crate::{BundleError, PayloadInfo};

/// Largest zstd window a payload may ask for: the decoder allocates its window up
/// front, so this bounds the memory a hostile payload can claim. The levels
/// `berth bundle` uses need at most 8 MiB.
pub const MAX_ZSTD_WINDOW: u64 = 32 * 1024 * 1024;
/// log2 of [`MAX_ZSTD_WINDOW`], the decoder's own limit (the frame header is
/// checked first, for a clearer error).
const MAX_ZSTD_WINDOW_LOG: u32 = 25;
/// Read-ahead between a payload member and the zstd decoder.
const DECODER_BUFFER: usize = 128 * 1024;

/// Why the member being streamed could not be read, kept beside the decompressor
/// because it turns the errors of its source into plain text.
type Failure = Arc<Mutex<Option<BundleError>>>;

fn take_failure(failure: &Failure) -> Option<BundleError> {
    failure.lock().unwrap_or_else(|e| e.into_inner()).take()
}

fn set_failure(failure: &Failure, error: BundleError) {
    *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
}

/// The compressed bytes of one tar member.
struct MemberReader<'a, R> {
    archive: &'a mut Archive<R>,
    name: String,
    size: u64,
    remaining: u64,
    /// None when stored digests are not checked.
    hasher: Option<Sha256>,
    failure: Failure,
}

impl<R: Read> Read for MemberReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = loop {
            match self.archive.reader.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let kind = e.kind();
                    set_failure(&self.failure, BundleError::Io(e));
                    return Err(io::Error::new(kind, "reading the bundle failed"));
                }
                Ok(n) => break n,
            }
        };
        if n == 0 {
            let error = BundleError::Truncated(format!(
                "inside {} (got {} of {} bytes)",
                self.name,
                self.size - self.remaining,
                self.size
            ));
            let message = error.to_string();
            set_failure(&self.failure, error);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, message));
        }
        self.archive.offset += n as u64;
        self.remaining -= n as u64;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Reads the zstd frame header at the start of a payload member and returns its
/// bytes, refusing anything but one plain frame with a window of at most
/// [`MAX_ZSTD_WINDOW`].
fn zstd_frame_header<R: Read>(member: &mut MemberReader<'_, R>) -> Result<Vec<u8>, BundleError> {
    let name = member.name.clone();
    let bad = |reason: String| BundleError::Payload {
        file: name.clone(),
        reason,
    };
    let mut head = vec![0u8; 5];
    let read = |member: &mut MemberReader<'_, R>, buf: &mut [u8]| {
        member.read_exact(buf).map_err(|_| {
            take_failure(&member.failure).unwrap_or_else(|| BundleError::Payload {
                file: member.name.clone(),
                reason: "the compressed data ends inside its zstd frame header".into(),
            })
        })
    };
    read(member, &mut head)?;
    if head[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Err(bad("not zstd-compressed data".into()));
    }
    let descriptor = head[4];
    let single_segment = descriptor & 0x20 != 0;
    let dictionary = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let content_size_len = match descriptor >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    head.resize(
        5 + usize::from(!single_segment) + dictionary + content_size_len,
        0,
    );
    read(member, &mut head[5..])?;
    if dictionary != 0 {
        return Err(bad("the zstd frame needs a dictionary".into()));
    }
    let window = if single_segment {
        let size = head[5..]
            .iter()
            .rev()
            .fold(0u64, |n, b| (n << 8) | u64::from(*b));
        if content_size_len == 2 {
            size + 256
        } else {
            size
        }
    } else {
        let exponent = u32::from(head[5] >> 3);
        let base = 1u64 << (10 + exponent);
        base + (base >> 3) * u64::from(head[5] & 7)
    };
    if window > MAX_ZSTD_WINDOW {
        return Err(bad(format!(
            "the zstd frame asks for a {window}-byte window, more than the {MAX_ZSTD_WINDOW} allowed"
        )));
    }
    Ok(head)
}

/// The zstd decoder (libzstd) over a payload member, after its frame header was
/// read to check it.
type PayloadDecoder<'a, R> = zstd::stream::read::Decoder<
    'static,
    BufReader<io::Chain<io::Cursor<Vec<u8>>, MemberReader<'a, R>>>,
>;

/// One payload, decompressed as it is read (`impl Read`), hashed on the way.
///
/// Reading fails (with an `io::Error` wrapping a [`BundleError`], see
/// [`BundleError::from_io`]) as soon as more than the manifest's size comes out,
/// the data ends early, or the bundle is cut. [`finish`](PayloadReader::finish)
/// checks the size and digest once everything was read.
pub struct PayloadReader<'a, R: Read> {
    info: PayloadInfo,
    decoder: PayloadDecoder<'a, R>,
    failure: Failure,
    hasher: Sha256,
    produced: u64,
    ended: bool,
}

impl<R: Read> fmt::Debug for PayloadReader<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadReader")
            .field("info", &self.info)
            .field("produced", &self.produced)
            .field("ended", &self.ended)
            .finish()
    }
}

impl<'a, R: Read> PayloadReader<'a, R> {
    /// Starts reading the payload `info` whose tar header was just read: checks
    /// its zstd frame header, then sets up the decoder. `stored_digests` says
    /// whether the compressed bytes are hashed too.
    pub(crate) fn open(
        archive: &'a mut Archive<R>,
        info: PayloadInfo,
        stored_digests: bool,
    ) -> Result<PayloadReader<'a, R>, BundleError> {
        let failure = Failure::default();
        let mut member = MemberReader {
            archive,
            name: info.file.clone(),
            size: info.stored_size,
            remaining: info.stored_size,
            hasher: stored_digests.then(Sha256::new),
            failure: Arc::clone(&failure),
        };
        let head = zstd_frame_header(&mut member)?;
        let input = BufReader::with_capacity(DECODER_BUFFER, io::Cursor::new(head).chain(member));
        let decoder = zstd::stream::read::Decoder::with_buffer(input)
            .and_then(|mut decoder| {
                decoder.window_log_max(MAX_ZSTD_WINDOW_LOG)?;
                Ok(decoder.single_frame())
            })
            .map_err(|e| {
                take_failure(&failure).unwrap_or(BundleError::Payload {
                    file: info.file.clone(),
                    reason: format!("not zstd-compressed data: {e}"),
                })
            })?;
        Ok(PayloadReader {
            info,
            decoder,
            failure,
            hasher: Sha256::new(),
            produced: 0,
            ended: false,
        })
    }
    /// The manifest's entry for this payload.
    pub fn info(&self) -> &PayloadInfo {
        &self.info
    }

    fn error(&self, reason: String) -> BundleError {
        BundleError::Payload {
            file: self.info.file.clone(),
            reason,
        }
    }

    /// One decoder read, with errors turned into `BundleError`s.
    fn decode(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        loop {
            match self.decoder.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(take_failure(&self.failure).unwrap_or_else(|| {
                        self.error(format!("the compressed data is corrupt: {e}"))
                    }));
                }
            }
        }
    }

    fn read_checked(&mut self, buf: &mut [u8]) -> Result<usize, BundleError> {
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        // Never let more than one byte past the declared size out of the decoder.
        let room = self.info.size - self.produced;
        let want = usize::try_from(room.saturating_add(1)).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.decode(&mut buf[..want])?;
        if n == 0 {
            self.ended = true;
            if self.produced != self.info.size {
                return Err(self.error(format!(
                    "the compressed data ends after {} of {} bytes",
                    self.produced, self.info.size
                )));
            }
            return Ok(0);
        }
        if n as u64 > room {
            return Err(self.error(format!(
                "decompresses to more than the manifest's {} bytes",
                self.info.size
            )));
        }
        self.produced += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    /// Checks the size and sha256 and that the compressed member was consumed
    /// exactly, then reads the member's tar padding. Call it after reading to EOF;
    /// it reads only to confirm the end of the compressed data.
    pub fn finish(mut self) -> Result<(), BundleError> {
        if !self.ended {
            if self.produced != self.info.size {
                return Err(self.error(format!(
                    "only {} of {} bytes were read before finishing",
                    self.produced, self.info.size
                )));
            }
            let mut probe = [0u8; 1];
            if self.read_checked(&mut probe)? != 0 {
                return Err(self.error(format!(
                    "decompresses to more than the manifest's {} bytes",
                    self.info.size
                )));
            }
        }
        let actual = hex::encode(self.hasher.finalize_reset());
        // The decoder stops at the end of its frame: whatever is left, read
        // ahead or not, follows the compressed data inside the member.
        let input = self.decoder.finish();
        let buffered = input.buffer().len() as u64;
        let (head, mut member) = input.into_inner().into_inner();
        let unread_head = head.get_ref().len() as u64 - head.position();
        let left = member.remaining + buffered + unread_head;
        if left != 0 {
            return Err(BundleError::Payload {
                file: member.name.clone(),
                reason: format!("{left} bytes of the member follow the end of its compressed data"),
            });
        }
        if actual != self.info.sha256 {
            return Err(BundleError::HashMismatch {
                file: self.info.file.clone(),
                expected: self.info.sha256.clone(),
                actual,
            });
        }
        if let Some(hasher) = member.hasher.take() {
            let stored = hex::encode(hasher.finalize());
            if stored != self.info.stored_sha256 {
                return Err(BundleError::StoredHashMismatch {
                    file: self.info.file.clone(),
                    expected: self.info.stored_sha256.clone(),
                    actual: stored,
                });
            }
        }
        member.archive.padding(&member.name, member.size)?;
        member.archive.open_payload = None;
        Ok(())
    }
}

impl<R: Read> Read for PayloadReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_checked(buf).map_err(BundleError::into_io)
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use crate::testkit::*;

    #[test]
    fn a_payload_asking_for_a_huge_window_is_refused_before_decoding() {
        let key = Key::new();
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        encoder.window_log(27).unwrap();
        std::io::Write::write_all(&mut encoder, &content(9, 4096)).unwrap();
        let huge = encoder.finish().unwrap();
        let made = make_with(&key, |m, stored| {
            m.payloads[1].stored_size = huge.len() as u64;
            stored[1] = huge.clone();
        });
        let err = read_all(&made.bytes, &key.trusted()).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "payload vmlinuz.zst: the zstd frame asks for a 134217728-byte window"
            ),
            "{err}"
        );
    }

    #[test]
    fn zstd_frame_headers_of_every_shape_are_read() {
        let key = Key::new();
        // Single-segment frames with content sizes of each field width, and a
        // streamed frame with a window descriptor.
        for len in [10usize, 300, 70_000] {
            let data = content(5, len);
            let single = zstd::bulk::compress(&data, 3).unwrap();
            let mut streamed = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
            std::io::Write::write_all(&mut streamed, &data).unwrap();
            let streamed = streamed.finish().unwrap();
            for packed in [single, streamed] {
                let made = make_with(&key, |m, stored| {
                    m.payloads[2].size = data.len() as u64;
                    m.payloads[2].sha256 = hex::encode(Sha256::digest(&data));
                    m.payloads[2].stored_size = packed.len() as u64;
                    stored[2] = packed.clone();
                });
                let payloads = read_all(&made.bytes, &key.trusted()).unwrap();
                assert_eq!(payloads[2], data);
            }
        }
    }
}
