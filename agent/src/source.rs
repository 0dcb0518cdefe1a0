//! Where a bundle comes from: a file on the device or an `http://` or `https://`
//! URL, read as a stream (nothing is staged: the bundle is verified and written
//! as it arrives).
//!
//! HTTPS is rustls (with ring; no OpenSSL on the device). The trusted CAs are
//! the image's: `/etc/berth/update-ca.pem` (the recipe's `[update] ca`) when
//! the image has one, else Mozilla's root store compiled into the agent. A
//! server whose certificate does not chain to them is refused, with that said
//! plainly. The signatures make the content trusted either way: TLS adds
//! privacy and keeps a network from serving old (but validly signed) files.
//!
//! A download cannot hang: connecting is bounded, each read waits at most
//! [`READ_TIMEOUT`], and a [`StallGuard`] ends a transfer that moves less than
//! [`MIN_BYTES_PER_WINDOW`] in any [`STALL_WINDOW`] — a server trickling one
//! byte every few seconds would otherwise keep an install open for days.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use berth_format::layout::UPDATE_CA_PATH;

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
    #[error("{0}: only http:// and https:// URLs are supported (or a file on the device)")]
    Scheme(String),
    #[error("the trusted CAs {path}: {message}")]
    Trust { path: String, message: String },
}

/// An HTTP(S) client with berth's timeouts and the image's trusted CAs.
pub fn http_agent() -> Result<ureq::Agent, SourceError> {
    Ok(http_agent_trusting(Path::new(UPDATE_CA_PATH))?
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .build())
}

/// A client builder trusting the CAs of the PEM file `ca` if it exists, else
/// the compiled-in Mozilla roots.
pub fn http_agent_trusting(ca: &Path) -> Result<ureq::AgentBuilder, SourceError> {
    static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = if ca.exists() {
        tls_config(&load_roots(ca)?)?
    } else {
        DEFAULT
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                tls_config(&roots).expect("ring supports the default protocol versions")
            })
            .clone()
    };
    Ok(ureq::AgentBuilder::new().tls_config(config))
}

/// The certificates of a PEM file as a root store.
fn load_roots(path: &Path) -> Result<rustls::RootCertStore, SourceError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let trust = |message: String| SourceError::Trust {
        path: path.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| trust(e.to_string()))? {
        let cert = cert.map_err(|e| trust(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| trust(format!("a certificate is not usable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(trust("no certificate in the file".into()));
    }
    Ok(roots)
}

fn tls_config(roots: &rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, SourceError> {
    // ring, named: other crates of the workspace may enable another provider.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SourceError::Trust {
            path: "(TLS)".into(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A transport error in words an operator acts on: a certificate that does not
/// chain to the trusted CAs says so.
pub fn describe(err: ureq::Error) -> String {
    match err {
        ureq::Error::Status(code, response) => {
            format!("server answered {code} {}", response.status_text())
        }
        ureq::Error::Transport(transport) => {
            let text = transport.to_string();
            if text.contains("UnknownIssuer")
                || text.contains("invalid peer certificate")
                || text.contains("NotValidForName")
            {
                let trusted = if Path::new(UPDATE_CA_PATH).exists() {
                    UPDATE_CA_PATH
                } else {
                    "the compiled-in Mozilla roots"
                };
                format!("the server's certificate is not trusted (it must chain to a CA in {trusted}): {text}")
            } else {
                text
            }
        }
    }
}

/// Opens `spec`: a URL (`http://…`, `https://…`) or a path.
pub fn open(spec: &str) -> Result<Box<dyn Read>, SourceError> {
    if spec.starts_with("http://") || spec.starts_with("https://") {
        let response = http_agent()?
            .get(spec)
            .call()
            .map_err(|err| SourceError::Http {
                url: spec.to_string(),
                message: describe(err),
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

    /// A CA, and a certificate for 127.0.0.1 it signed.
    fn ca_and_server() -> (String, rcgen::CertifiedKey) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        (
            ca.pem(),
            rcgen::CertifiedKey {
                cert: server,
                key_pair: server_key,
            },
        )
    }

    /// An HTTPS server on loopback (rustls) answering one request with `body`.
    fn https_server(server: rcgen::CertifiedKey, body: &'static str) -> u16 {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server.cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server.key_pair.serialize_der())),
        )
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let Ok(mut tcp) = stream else { continue };
                let mut conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                let mut head = [0u8; 1024];
                if tls.read(&mut head).is_err() {
                    continue; // a client that refused our certificate
                }
                let _ = write!(
                    tls,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.flush();
            }
        });
        port
    }

    #[test]
    fn https_trusts_the_images_ca_and_refuses_another() {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, server) = ca_and_server();
        let (other_ca_pem, _) = ca_and_server();
        let trusted = dir.path().join("update-ca.pem");
        let other = dir.path().join("other-ca.pem");
        std::fs::write(&trusted, ca_pem).unwrap();
        std::fs::write(&other, other_ca_pem).unwrap();
        let port = https_server(server, "signed index");
        let url = format!("https://127.0.0.1:{port}/stable.json");

        let body = http_agent_trusting(&trusted)
            .unwrap()
            .build()
            .get(&url)
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        assert_eq!(body, "signed index");

        let err = http_agent_trusting(&other)
            .unwrap()
            .build()
            .get(&url)
            .call()
            .unwrap_err();
        let text = describe(err);
        assert!(text.contains("certificate is not trusted"), "{text}");

        // A CA file that holds no certificate is an error, not "trust nothing".
        std::fs::write(&other, "not a certificate\n").unwrap();
        let err = http_agent_trusting(&other).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
    }

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
