//! Container images for the tests, made from real parts: the host's static busybox
//! and Debian packages (`apt-get download`, `dpkg-deb --fsys-tarfile`), written
//! as OCI image layouts, and a real registry on loopback (Debian's
//! `docker-registry`) that `skopeo` pushes them to.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{free_port, run_tool};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(tar).expect("gzip");
                gz.finish().expect("gzip")
            }
            Compression::Zstd => zstd::stream::encode_all(tar, 3).expect("zstd"),
        }
    }
}

/// An image to write: layers (uncompressed tars) and its configuration.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    pub layers: Vec<(Vec<u8>, Compression)>,
    /// The image configuration's `config` object (Entrypoint, Cmd, ...).
    pub config: Value,
}

/// What [`write_layout`] wrote.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    /// `(digest, blob path, size)` of each layer blob.
    pub layers: Vec<(String, PathBuf, u64)>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn write_blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Value {
    let hex = sha256_hex(bytes);
    let path = dir.join("blobs/sha256").join(&hex);
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{hex}"),
        "size": bytes.len(),
    })
}

/// Writes an OCI image layout of `spec` into `dir` (created), its one manifest
/// (linux/amd64) tagged `tag`.
pub fn write_layout(dir: &Path, spec: &ImageSpec, tag: &str) -> Layout {
    fs::create_dir_all(dir.join("blobs/sha256")).expect("creating blobs/sha256");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
    let mut layers = Vec::new();
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, compression) in &spec.layers {
        diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
        let blob = compression.compress(tar);
        let d = write_blob(dir, compression.media_type(), &blob);
        let digest = d["digest"].as_str().unwrap_or_default().to_string();
        let hex = digest.trim_start_matches("sha256:").to_string();
        layers.push((
            digest,
            dir.join("blobs/sha256").join(hex),
            blob.len() as u64,
        ));
        descriptors.push(d);
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": spec.config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = write_blob(
        dir,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).expect("config JSON"),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": descriptors,
    });
    let mut manifest = write_blob(
        dir,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).expect("manifest JSON"),
    );
    let manifest_digest = manifest["digest"].as_str().unwrap_or_default().to_string();
    manifest["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    manifest["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest],
    });
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).expect("index JSON"),
    )
    .expect("writing index.json");
    Layout {
        dir: dir.to_path_buf(),
        manifest_digest,
        layers,
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// A layer with `bin/busybox` (the host's static one), `bin/sh -> busybox`
/// and `files` (path, content, mode).
pub fn busybox_layer(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("reading the host's static /bin/busybox");
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = vec!["bin/".into()];
    for (path, _, _) in files {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let d = format!("{}/", &path[..at + i]);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
            at += i + 1;
        }
    }
    for d in &dirs {
        tar.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            d,
            std::io::empty(),
        )
        .expect("tar dir");
    }
    tar.append_data(
        &mut header(tar::EntryType::Regular, 0o755, busybox.len() as u64),
        "bin/busybox",
        busybox.as_slice(),
    )
    .expect("tar busybox");
    tar.append_link(
        &mut header(tar::EntryType::Symlink, 0o777, 0),
        "bin/sh",
        "busybox",
    )
    .expect("tar sh");
    for (path, content, mode) in files {
        tar.append_data(
            &mut header(tar::EntryType::Regular, *mode, content.len() as u64),
            path,
            *content,
        )
        .expect("tar file");
    }
    tar.into_inner().expect("finishing the layer")
}

/// The files of a Debian package as one tar (its `data.tar`, uncompressed),
/// through the host's apt configuration and `dpkg-deb`.
pub fn debian_package_tar(name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    run_tool(
        Command::new("apt-get")
            .args(["download", "-q=2", "-o", "APT::Sandbox::User=root", name])
            .current_dir(dir.path())
            .env("LC_ALL", "C"),
    );
    let deb = fs::read_dir(dir.path())
        .expect("listing the download")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .unwrap_or_else(|| panic!("apt-get download {name} left no .deb"));
    let output = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .output()
        .expect("running dpkg-deb");
    assert!(
        output.status.success(),
        "dpkg-deb --fsys-tarfile {}: {}",
        deb.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A random-enough nonce, so each test run pushes images with new digests.
pub fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{}-{}",
        std::process::id(),
        t.as_secs(),
        t.subsec_nanos()
    )
}

/// The blob cache `berth` uses by default (`BERTH_CACHE`, else
/// `$XDG_CACHE_HOME/berth`, else `~/.cache/berth`).
pub fn default_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("BERTH_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("berth");
    }
    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/berth")
}

/// A new build cache at `dir` holding only the downloads of the user's cache
/// ([`default_cache`]'s `blobs/`, hard-linked: blobs are named by their sha256
/// and never rewritten). A build with it (`BERTH_CACHE`) installs, unpacks and
/// builds everything again, without the network.
pub fn downloads_only_cache(dir: &Path) -> PathBuf {
    let blobs = default_cache().join("blobs");
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    if blobs.is_dir() {
        let status = Command::new("cp")
            .arg("-al")
            .arg(&blobs)
            .arg(dir.join("blobs"))
            .status()
            .unwrap_or_else(|e| panic!("running cp: {e}"));
        assert!(
            status.success(),
            "cp -al {} {}: {status}",
            blobs.display(),
            dir.display()
        );
    }
    dir.to_path_buf()
}

/// Debian's `docker-registry` (distribution 2.8) serving plain HTTP on a free
/// loopback port, storing in a temporary folder; stopped on drop.
#[derive(Debug)]
pub struct TestRegistry {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl TestRegistry {
    /// Starts a registry and waits until it answers.
    pub fn start() -> TestRegistry {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("registry.log");
        let mut registry = TestRegistry {
            child: None,
            port: 0,
            dir,
            log,
        };
        let mut last = String::new();
        for _ in 0..5 {
            registry.port = free_port();
            match registry.spawn() {
                Ok(()) => return registry,
                Err(why) => last = why,
            }
        }
        panic!("docker-registry would not start: {last}");
    }

    /// Starts the registry again on the same port and storage (after [`stop`]).
    ///
    /// [`stop`]: TestRegistry::stop
    pub fn restart(&mut self) {
        self.stop();
        self.spawn()
            .unwrap_or_else(|why| panic!("docker-registry would not start again: {why}"));
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port;
        let config = self.dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                self.dir.path().join("storage").display()
            ),
        )
        .expect("writing the registry config");
        // Appended to, so a restart keeps the earlier requests.
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the registry log");
        let err = out.try_clone().expect("log");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("starting docker-registry (apt-get install docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "exited with {status}: {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            if crate::http_get_once(port, "/v2/").is_ok_and(|r| r.contains(" 200 ")) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("did not answer within 30 s".into())
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the layout's manifest tagged `tag` as `REPO:TAG` (with skopeo)
    /// and returns the digest the registry has for it.
    pub fn push(&self, layout: &Path, tag: &str, repo_tag: &str) -> String {
        let digest_file = self.dir.path().join("digest");
        run_tool(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false", "--digestfile"])
                .arg(&digest_file)
                .arg(format!("oci:{}:{tag}", layout.display()))
                .arg(format!("docker://{}/{repo_tag}", self.host())),
        );
        fs::read_to_string(&digest_file)
            .expect("skopeo --digestfile")
            .trim()
            .to_string()
    }

    /// The registry's access log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Blob requests answered so far: `(path, status, bytes)`.
    pub fn blob_requests(&self) -> Vec<(String, u16, u64)> {
        let re = regex::Regex::new(
            r#""GET (/v2/[^ ]*/blobs/sha256:[0-9a-f]{64}) HTTP/[0-9.]+" (\d{3}) (\d+)"#,
        )
        .expect("regex");
        re.captures_iter(&self.log())
            .map(|c| {
                (
                    c[1].to_string(),
                    c[2].parse().unwrap_or(0),
                    c[3].parse().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Stops the registry (its storage stays until drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a multi-architecture image into the layout `dir`: one image per
/// `(spec, architecture)` (linux), listed by an image index that `index.json`
/// tags `tag`. Returns the index's digest and each image's manifest digest.
pub fn write_multi_arch_layout(
    dir: &Path,
    images: &[(&ImageSpec, &str)],
    tag: &str,
) -> (String, Vec<String>) {
    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for (i, (spec, arch)) in images.iter().enumerate() {
        // Each image through write_layout, under a scratch tag, then listed.
        let mut spec = (*spec).clone();
        if let Some(config) = spec.config.as_object_mut() {
            config.insert("Labels".into(), json!({ "arch": arch }));
        }
        let one = write_layout(dir, &spec, &format!("scratch-{i}"));
        let manifest = fs::read(
            dir.join("blobs/sha256")
                .join(one.manifest_digest.trim_start_matches("sha256:")),
        )
        .expect("the manifest just written");
        entries.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": one.manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": arch, "os": "linux" },
        }));
        digests.push(one.manifest_digest);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let mut top = write_blob(
        dir,
        "application/vnd.oci.image.index.v1+json",
        &serde_json::to_vec(&index).expect("index JSON"),
    );
    let digest = top["digest"].as_str().unwrap_or_default().to_string();
    top["annotations"] = json!({ "org.opencontainers.image.ref.name": tag });
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&json!({ "schemaVersion": 2, "manifests": [top] }))
            .expect("index.json"),
    )
    .expect("writing index.json");
    (digest, digests)
}
