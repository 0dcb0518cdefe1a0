//! Pulling from registries (the OCI distribution API) with the `oci-client` crate:
//! manifests and blobs land in the content-addressed [`Cache`], so a second build
//! asks the registry nothing for an image pinned by digest.
//!
//! Each blob download holds the cache's lock for that blob, keeps what it got in
//! `partial/<hex>` and, after a network error, asks again from where it stopped
//! (an HTTP range request) with a growing pause between tries. Every blob is
//! checked against its sha256 before it enters the cache. HTTPS unless the recipe
//! says `[registry."HOST"] insecure = true`; credentials come from
//! [`crate::sources::credentials`] and only ever live in memory.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::progress::Verbosity;
use crate::recipe::{RegistryRef, Transport};
use crate::sources::cache::{sha256_file, Cache, CacheError};
use crate::sources::credentials::{self, CredentialsError};

/// Tries of one request before giving up (the first and four retries).
const ATTEMPTS: u32 = 5;
/// Pause before the first retry; doubled before each next one.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
/// Largest manifest berth accepts (the distribution spec suggests 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;

/// Largest image configuration berth downloads (real ones are kilobytes).
pub const MAX_CONFIG: u64 = 8 << 20;
/// Largest layer berth downloads, as stored (compressed).
pub const MAX_LAYER: u64 = 8 << 30;

/// What a blob is, for the bound on its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// An image configuration: at most [`MAX_CONFIG`] bytes.
    Config,
    /// A layer: at most [`MAX_LAYER`] bytes.
    Layer,
}

impl BlobKind {
    /// The most bytes a blob of this kind may have.
    pub fn max(self) -> u64 {
        match self {
            BlobKind::Config => MAX_CONFIG,
            BlobKind::Layer => MAX_LAYER,
        }
    }
}

/// Media types berth asks for when it pulls a manifest.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Failure to pull from a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry said no, or could not be reached after every retry.
    #[error("{image}: {reason}{hint}")]
    Pull {
        image: String,
        reason: String,
        hint: String,
    },
    /// Bytes did not have the digest they were asked for.
    #[error("{image}: blob {digest} from the registry is corrupt (sha256 is {actual})")]
    Digest {
        image: String,
        digest: String,
        actual: String,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the registry client: {0}")]
    Runtime(std::io::Error),
}

/// What the client fetched over the network in this build.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Body bytes received (manifests and blobs).
    pub bytes: AtomicU64,
    /// Manifests and blobs requested from a registry.
    pub requests: AtomicU64,
}

/// A registry client for one build.
pub struct Registries {
    runtime: tokio::runtime::Runtime,
    client: Client,
    transports: BTreeMap<String, Transport>,
    auth: std::sync::Mutex<BTreeMap<String, RegistryAuth>>,
    verbosity: Verbosity,
    pub stats: FetchStats,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registries")
            .field("transports", &self.transports)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// An error and its causes, each shown once.
fn chain_text(e: &OciDistributionError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}

/// Whether an error is TLS failing (plain HTTP on the other side, or a
/// certificate berth does not trust): no retry will change that.
fn is_tls_failure(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "tls",
        "certificate",
        "corrupt message",
        "invalidcontenttype",
        "handshake",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

/// Whether a failed request is worth another try.
fn retryable(e: &OciDistributionError) -> bool {
    if is_tls_failure(&chain_text(e)) {
        return false;
    }
    match e {
        OciDistributionError::RequestError(r) => {
            r.is_connect() || r.is_timeout() || r.is_body() || r.is_request()
        }
        OciDistributionError::IoError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

fn reference(r: &RegistryRef) -> Reference {
    match (&r.tag, &r.digest) {
        (_, Some(d)) => Reference::with_digest(r.registry.clone(), r.repository.clone(), d.clone()),
        (Some(t), None) => Reference::with_tag(r.registry.clone(), r.repository.clone(), t.clone()),
        (None, None) => Reference::with_tag(
            r.registry.clone(),
            r.repository.clone(),
            "latest".to_string(),
        ),
    }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// "12.3 MiB".
pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

impl Registries {
    /// A client that uses plain HTTP for exactly the registries in `transports`
    /// marked [`Transport::PlainHttp`].
    pub fn new(
        transports: &BTreeMap<String, Transport>,
        verbosity: Verbosity,
    ) -> Result<Registries, RegistryError> {
        // rustls needs one process-wide crypto provider; a second install fails
        // harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plain: Vec<String> = transports
            .iter()
            .filter(|(_, t)| **t == Transport::PlainHttp)
            .map(|(h, _)| h.clone())
            .collect();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RegistryError::Runtime)?;
        Ok(Registries {
            runtime,
            client: Client::new(config),
            transports: transports.clone(),
            auth: std::sync::Mutex::new(BTreeMap::new()),
            verbosity,
            stats: FetchStats::default(),
        })
    }

    fn auth_for(&self, registry: &str) -> Result<RegistryAuth, RegistryError> {
        let mut known = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = known.get(registry) {
            return Ok(a.clone());
        }
        let auth = match credentials::auth_file() {
            Some(file) => match credentials::lookup(&file, registry)? {
                Some(c) => RegistryAuth::Basic(c.username, c.password),
                None => RegistryAuth::Anonymous,
            },
            None => RegistryAuth::Anonymous,
        };
        known.insert(registry.to_string(), auth.clone());
        Ok(auth)
    }

    fn pull_error(&self, image: &RegistryRef, e: &OciDistributionError) -> RegistryError {
        let reason = chain_text(e);
        let plain = self.transports.get(&image.registry) == Some(&Transport::PlainHttp);
        let hint = if !plain && is_tls_failure(&reason) {
            format!(
                " (berth speaks HTTPS to every registry; if {reg} serves plain HTTP, say so in the recipe: [registry.\"{reg}\"] insecure = true)",
                reg = image.registry
            )
        } else if matches!(
            e,
            OciDistributionError::UnauthorizedError { .. }
                | OciDistributionError::AuthenticationFailure(_)
        ) {
            " (log in with `skopeo login` or `docker login`, or set REGISTRY_AUTH_FILE)".to_string()
        } else {
            String::new()
        };
        RegistryError::Pull {
            image: image.to_string(),
            reason,
            hint,
        }
    }

    /// Runs `request` up to [`ATTEMPTS`] times while it fails in a way worth
    /// another try.
    fn with_retries<T>(
        &self,
        image: &RegistryRef,
        mut request: impl FnMut() -> Result<T, OciDistributionError>,
    ) -> Result<T, RegistryError> {
        let mut pause = FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            match request() {
                Ok(v) => return Ok(v),
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    if self.verbosity != Verbosity::Quiet {
                        eprintln!(
                            "{image}: {e}; trying again in {:.1} s ({attempt}/{})",
                            pause.as_secs_f64(),
                            ATTEMPTS - 1
                        );
                    }
                    std::thread::sleep(pause);
                    pause *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(self.pull_error(image, &e)),
            }
        }
    }

    /// The manifest (or index) `image` names, and its digest: from the cache when
    /// `image` carries a digest and the cache has it, else from the registry (and
    /// then kept in the cache).
    pub fn manifest(
        &self,
        image: &RegistryRef,
        cache: &Cache,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        if let Some(digest) = &image.digest {
            if let Some(path) = cache.get(hex_of(digest))? {
                let bytes = fs::read(&path).map_err(|source| RegistryError::Io {
                    path: path.clone(),
                    source,
                })?;
                return Ok((bytes, digest.clone()));
            }
        }
        let reference = reference(image);
        let auth = self.auth_for(&image.registry)?;
        let (bytes, digest) = self.with_retries(image, || {
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.runtime.block_on(
                self.client
                    .pull_manifest_raw(&reference, &auth, MANIFEST_TYPES),
            )
        })?;
        self.stats
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() > MAX_MANIFEST {
            return Err(RegistryError::Pull {
                image: image.to_string(),
                reason: format!("manifest of {} bytes is too large", bytes.len()),
                hint: String::new(),
            });
        }
        let actual = crate::sources::cache::sha256_bytes(&bytes);
        if Some(actual.as_str()) != digest.strip_prefix("sha256:") {
            return Err(RegistryError::Digest {
                image: image.to_string(),
                digest,
                actual,
            });
        }
        cache.insert_bytes(&bytes, &actual, &format!("manifest of {}", image.name()))?;
        Ok((bytes.to_vec(), digest))
    }

    /// The blob `digest` of `image`'s repository in the cache, downloaded (or
    /// its download resumed) if it is not there yet.
    ///
    /// `size` is the descriptor's, and it binds: a descriptor claiming more than
    /// `kind` allows is refused before any request, and the registry may send no
    /// byte past `size` (so a descriptor claiming 0, or leaving the size out,
    /// which reads as 0, takes an empty blob and nothing else).
    pub fn blob(
        &self,
        image: &RegistryRef,
        (digest, size): (&str, u64),
        kind: BlobKind,
        what: &str,
        cache: &Cache,
    ) -> Result<PathBuf, RegistryError> {
        let hex = hex_of(digest).to_string();
        if let Some(path) = cache.get(&hex)? {
            return Ok(path);
        }
        if size > kind.max() {
            return Err(RegistryError::Pull {
                image: image.to_string(),
                reason: format!(
                    "{what}: its descriptor says {size} bytes, more than the {} berth accepts",
                    human_bytes(kind.max())
                ),
                hint: String::new(),
            });
        }
        let _lock = cache.lock_blob(&hex)?;
        // Another build may have fetched it while this one waited for the lock.
        if let Some(path) = cache.get(&hex)? {
            return Ok(path);
        }
        let reference = reference(image);
        let auth = self.auth_for(&image.registry)?;
        let partial = cache.partial_path(&hex);
        let bar = self.bar(what, size);
        let started = Instant::now();
        let mut fetched_here = 0u64;
        let mut restarted = false;
        loop {
            let mut pause = FIRST_PAUSE;
            let mut attempt = 1;
            loop {
                let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
                if size > 0 && have >= size {
                    break;
                }
                if let Some(bar) = &bar {
                    bar.set_position(have);
                }
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                let result = self.runtime.block_on(self.download(
                    &reference,
                    &auth,
                    (digest, size),
                    have,
                    &partial,
                    bar.as_ref(),
                    &mut fetched_here,
                ));
                match result {
                    Ok(()) => break,
                    Err(DownloadError::Local(path, source)) => {
                        return Err(RegistryError::Io { path, source })
                    }
                    Err(DownloadError::TooLarge) => {
                        let _ = fs::remove_file(&partial);
                        return Err(RegistryError::Pull {
                            image: image.to_string(),
                            reason: format!(
                                "{what}: the registry sent more than the {size} bytes its descriptor says"
                            ),
                            hint: String::new(),
                        });
                    }
                    Err(DownloadError::Remote(e)) if attempt < ATTEMPTS && retryable(&e) => {
                        if self.verbosity != Verbosity::Quiet {
                            let now = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
                            eprintln!(
                                "{image}: {what}: {e}; resuming at byte {now} in {:.1} s ({attempt}/{})",
                                pause.as_secs_f64(),
                                ATTEMPTS - 1
                            );
                        }
                        std::thread::sleep(pause);
                        pause *= 2;
                        attempt += 1;
                    }
                    Err(DownloadError::Remote(e)) => return Err(self.pull_error(image, &e)),
                }
            }
            let actual = sha256_file(&partial).map_err(|source| RegistryError::Io {
                path: partial.clone(),
                source,
            })?;
            if actual == hex {
                break;
            }
            // A resumed download can only be wrong if the kept part was: start
            // over once from byte 0, then give up.
            let _ = fs::remove_file(&partial);
            if restarted {
                return Err(RegistryError::Digest {
                    image: image.to_string(),
                    digest: digest.to_string(),
                    actual,
                });
            }
            restarted = true;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if self.verbosity != Verbosity::Quiet {
            let millis = u64::try_from(started.elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            eprintln!(
                "    fetched {what}: {} in {:.1} s ({}/s)",
                human_bytes(fetched_here),
                millis as f64 / 1000.0,
                human_bytes(fetched_here.saturating_mul(1000) / millis)
            );
        }
        Ok(cache.insert(&partial, &hex, what)?)
    }

    fn bar(&self, what: &str, size: u64) -> Option<ProgressBar> {
        if self.verbosity == Verbosity::Quiet || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new(size);
        bar.set_style(
            ProgressStyle::with_template(
                "    {msg} {bar:30.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_string());
        Some(bar)
    }

    /// One request for the blob from byte `offset` on, appended to `partial`.
    #[allow(clippy::too_many_arguments)]
    async fn download(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        (digest, size): (&str, u64),
        offset: u64,
        partial: &std::path::Path,
        bar: Option<&ProgressBar>,
        fetched: &mut u64,
    ) -> Result<(), DownloadError> {
        self.client
            .store_auth_if_needed(reference.resolve_registry(), auth)
            .await;
        let local = |source| DownloadError::Local(partial.to_path_buf(), source);
        let (mut stream, append) = if offset == 0 {
            (
                self.client
                    .pull_blob_stream(reference, digest)
                    .await
                    .map_err(DownloadError::Remote)?,
                false,
            )
        } else {
            match self
                .client
                .pull_blob_stream_partial(reference, digest, offset, None)
                .await
                .map_err(DownloadError::Remote)?
            {
                BlobResponse::Partial(s) => (s, true),
                // The registry ignored the range: start over.
                BlobResponse::Full(s) => (s, false),
            }
        };
        let mut file = if append {
            File::options().append(true).open(partial).map_err(local)?
        } else {
            File::create(partial).map_err(local)?
        };
        let mut position = if append { offset } else { 0 };
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| DownloadError::Remote(OciDistributionError::IoError(e)))?;
            position += chunk.len() as u64;
            // Never more than the descriptor says (none when it says 0): a
            // registry cannot fill the disk.
            if position > size {
                return Err(DownloadError::TooLarge);
            }
            file.write_all(&chunk).map_err(local)?;
            *fetched += chunk.len() as u64;
            self.stats
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if let Some(bar) = bar {
                bar.set_position(position);
            }
        }
        file.flush().map_err(local)?;
        Ok(())
    }
}

enum DownloadError {
    Remote(OciDistributionError),
    Local(PathBuf, std::io::Error),
    /// More bytes than the blob's descriptor says.
    TooLarge,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    /// A registry on loopback that lies about nothing but what its manifests'
    /// descriptors would: it serves `blob` (with its true digest) to whoever
    /// asks for it, and records every request line.
    struct HostileRegistry {
        host: String,
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl HostileRegistry {
        fn start(blob: Vec<u8>) -> HostileRegistry {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let host = listener.local_addr().unwrap().to_string();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&requests);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let _ = serve(stream, &blob, &seen);
                }
            });
            HostileRegistry { host, requests }
        }

        fn blob_requests(&self) -> usize {
            let requests = self.requests.lock().unwrap();
            requests.iter().filter(|r| r.contains("/blobs/")).count()
        }

        fn client(&self) -> Registries {
            let transports = BTreeMap::from([(self.host.clone(), Transport::PlainHttp)]);
            Registries::new(&transports, Verbosity::Quiet).unwrap()
        }

        fn image(&self) -> RegistryRef {
            RegistryRef {
                registry: self.host.clone(),
                repository: "hostile/app".into(),
                tag: Some("1".into()),
                digest: None,
            }
        }
    }

    /// Answers one connection: the blob for `/blobs/`, `{}` for anything else.
    fn serve(stream: TcpStream, blob: &[u8], seen: &Mutex<Vec<String>>) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut stream = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            seen.lock().unwrap().push(line.trim().to_string());
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                    break;
                }
            }
            let body: &[u8] = if line.contains("/blobs/") {
                blob
            } else {
                b"{}"
            };
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                body.len()
            )?;
            stream.write_all(body)?;
        }
    }

    #[test]
    fn a_descriptor_claiming_size_zero_gets_no_bytes() {
        // Two MiB whose digest is right: only the size in the descriptor lies.
        let blob = vec![7u8; 2 << 20];
        let digest = format!("sha256:{}", crate::sources::cache::sha256_bytes(&blob));
        let registry = HostileRegistry::start(blob);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let client = registry.client();
        let image = registry.image();
        for kind in [BlobKind::Layer, BlobKind::Config] {
            let err = client
                .blob(&image, (&digest, 0), kind, "layer 1/1", &cache)
                .unwrap_err()
                .to_string();
            assert!(err.contains("more than the 0 bytes"), "{err}");
        }
        assert!(registry.blob_requests() >= 1);
        assert!(cache.get(hex_of(&digest)).unwrap().is_none());
        // Nothing of it is kept for a resumed download either.
        assert!(!cache.partial_path(hex_of(&digest)).exists());
    }

    #[test]
    fn a_descriptor_claiming_too_much_is_refused_before_any_request() {
        let blob = vec![1u8; 1024];
        let digest = format!("sha256:{}", crate::sources::cache::sha256_bytes(&blob));
        let registry = HostileRegistry::start(blob);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let client = registry.client();
        let image = registry.image();
        for (kind, size) in [
            (BlobKind::Config, MAX_CONFIG + 1),
            (BlobKind::Layer, MAX_LAYER + 1),
            (BlobKind::Layer, u64::MAX),
        ] {
            let err = client
                .blob(&image, (&digest, size), kind, "config", &cache)
                .unwrap_err()
                .to_string();
            assert!(err.contains("more than the"), "{err}");
        }
        assert_eq!(registry.blob_requests(), 0);
        // The true size is fetched.
        let path = client
            .blob(&image, (&digest, 1024), BlobKind::Config, "config", &cache)
            .unwrap();
        assert_eq!(fs::read(path).unwrap().len(), 1024);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(50 << 20), "50.0 MiB");
    }

    #[test]
    fn references_keep_tag_or_digest() {
        let r = RegistryRef::parse("127.0.0.1:5000/team/app:1.4").unwrap();
        assert_eq!(reference(&r).whole(), "127.0.0.1:5000/team/app:1.4");
        let d = format!("sha256:{}", "a".repeat(64));
        let pinned = r.pinned(&d);
        assert_eq!(
            reference(&pinned).whole(),
            format!("127.0.0.1:5000/team/app@{d}")
        );
    }
}
