//! Certificates for HTTPS tests: a test CA kept in a folder (so images built to
//! trust it stay valid from one run to the next), and server certificates for
//! the address the guests reach the host at, signed by it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name every test CA certificate carries.
const CA_NAME: &str = "berth test CA";

/// A CA whose key lives in `dir`.
#[derive(Debug)]
pub struct TestCa {
    key: rcgen::KeyPair,
    /// The CA certificate (PEM): what an image's `[update] ca` names.
    pub pem: PathBuf,
}

impl TestCa {
    /// The CA in `dir` (`ca.key`, `ca.pem`), made the first time.
    pub fn in_dir(dir: &Path) -> TestCa {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let key_path = dir.join("ca.key");
        let pem = dir.join("ca.pem");
        let key = match fs::read_to_string(&key_path) {
            Ok(text) => rcgen::KeyPair::from_pem(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", key_path.display())),
            Err(_) => {
                let key = rcgen::KeyPair::generate().expect("a CA key");
                fs::write(&key_path, key.serialize_pem())
                    .unwrap_or_else(|e| panic!("{}: {e}", key_path.display()));
                let _ = fs::remove_file(&pem);
                key
            }
        };
        let ca = TestCa { key, pem };
        if !ca.pem.exists() {
            fs::write(&ca.pem, ca.certificate().pem())
                .unwrap_or_else(|e| panic!("{}: {e}", ca.pem.display()));
        }
        ca
    }

    /// The CA certificate. Made afresh from the kept key and the fixed name:
    /// what it signs chains to the kept `ca.pem` (same name, same key).
    fn certificate(&self) -> rcgen::Certificate {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, CA_NAME);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&self.key).expect("a CA certificate")
    }

    /// A server certificate for the host as guests see it (10.0.2.2) and as
    /// the host sees itself (127.0.0.1).
    pub fn server_certificate(&self) -> ServerCertificate {
        let key = rcgen::KeyPair::generate().expect("a server key");
        let params =
            rcgen::CertificateParams::new(vec!["10.0.2.2".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        let cert = params
            .signed_by(&key, &self.certificate(), &self.key)
            .expect("a server certificate");
        ServerCertificate {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}

/// A server's certificate and key.
#[derive(Debug)]
pub struct ServerCertificate {
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl ServerCertificate {
    /// A rustls server configuration presenting it.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(self.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
        .expect("a server configuration");
        Arc::new(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA made again from its kept key signs certificates that chain to the
    /// first run's `ca.pem`, and a second CA's certificates do not.
    #[test]
    fn a_kept_ca_signs_certificates_that_chain_to_its_first_pem() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let first = TestCa::in_dir(dir.path());
        let pem = fs::read(&first.pem).unwrap();
        let again = TestCa::in_dir(dir.path());
        assert_eq!(fs::read(&again.pem).unwrap(), pem, "ca.pem is kept");
        let server = crate::FileServer::start_tls(dir.path(), &again.server_certificate());
        fs::write(dir.path().join("hello.txt"), "over TLS").unwrap();

        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).unwrap();
        assert!(answer.ends_with("over TLS"), "{answer}");
        assert!(server.guest_url("x").starts_with("https://10.0.2.2:"));
    }
}
