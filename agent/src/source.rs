//! Where a bundle comes from: a file on the device or an `http://` URL, read as a
//! stream (nothing is staged: the bundle is verified and written as it arrives).
//!
//! A download cannot hang: connecting is bounded, each read waits at most
//! [`READ_TIMEOUT`], and a [`StallGuard`] ends a transfer that moves less than
//! [`MIN_BYTES_PER_WINDOW`] in any [`STALL_WINDOW`] — a server trickling one
//! byte every few seconds would otherwise keep an install open for days.

use std::fs::File;
use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Bound on connecting to a server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on one read.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The window a transfer must make progress in.
pub const STALL_WINDOW: Duration = Duration::from_secs(60);
/// Bytes a transfer must move per window (about 0.3 KiB/s: any real link does).
pub const MIN_BYTES_PER_WINDOW: u64 = 16 * 1024;

/// A bundle source that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{0}: only http:// URLs are supported; the bundle's signature, not the transport, is what makes it trusted — serve it over http or copy the file onto the device")]
    Scheme(String),
}

/// Opens `spec`: a URL (`http://…`) or a path.
pub fn open(spec: &str) -> Result<Box<dyn Read>, SourceError> {
    if spec.starts_with("http://") {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .build();
        let response = agent.get(spec).call().map_err(|err| SourceError::Http {
            url: spec.to_string(),
            message: match err {
                ureq::Error::Status(code, response) => {
                    format!("server answered {code} {}", response.status_text())
                }
                ureq::Error::Transport(transport) => transport.to_string(),
            },
        })?;
        Ok(Box::new(StallGuard::new(
            response.into_reader(),
            STALL_WINDOW,
            MIN_BYTES_PER_WINDOW,
        )))
    } else if spec.contains("://") {
        Err(SourceError::Scheme(spec.to_string()))
    } else {
        let file = File::open(spec).map_err(|source| SourceError::File {
            path: spec.to_string(),
            source,
        })?;
        Ok(Box::new(file))
    }
}

/// A reader that fails with [`io::ErrorKind::TimedOut`] when fewer than
/// `min_bytes` arrived in a `window` (and the stream has not ended).
#[derive(Debug)]
pub struct StallGuard<R> {
    inner: R,
    window: Duration,
    min_bytes: u64,
    window_start: Instant,
    window_bytes: u64,
}

impl<R> StallGuard<R> {
    pub fn new(inner: R, window: Duration, min_bytes: u64) -> StallGuard<R> {
        StallGuard {
            inner,
            window,
            min_bytes,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }
}

impl<R: Read> Read for StallGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.window_bytes += n as u64;
        let elapsed = self.window_start.elapsed();
        if elapsed >= self.window {
            if self.window_bytes < self.min_bytes && n > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the download stalled: {} bytes in the last {} s (at least {} needed)",
                        self.window_bytes,
                        elapsed.as_secs(),
                        self.min_bytes
                    ),
                ));
            }
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A real server on loopback that sends a response head, then one byte every
    /// 50 ms: the guard ends the transfer after about its window, with a clear
    /// error, while a fast transfer of the same stream passes.
    #[test]
    fn a_trickling_server_is_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
            for _ in 0..200 {
                if stream.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let response = ureq::get(&format!("http://127.0.0.1:{port}/b"))
            .call()
            .unwrap();
        let mut guard = StallGuard::new(response.into_reader(), Duration::from_millis(500), 1000);
        let err = io::copy(&mut guard, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("the download stalled"), "{err}");
        // (Without the guard the copy would succeed once the server's 10 s of
        // trickling end.)

        let fast = vec![7u8; 5000];
        let mut guard = StallGuard::new(&fast[..], Duration::ZERO, 1);
        let mut out = Vec::new();
        guard.read_to_end(&mut out).unwrap();
        assert_eq!(out, fast);
    }
}
