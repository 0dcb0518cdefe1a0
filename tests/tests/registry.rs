//! Images from a real registry on loopback (Debian's docker-registry, started
//! here) and from skopeo's archives: pull by tag and by digest, build again with
//! the registry stopped (the lock file pins the digest, the cache has the
//! blobs), `--locked` naming a moved tag, a resumed download, and a docker and
//! an OCI archive booted in QEMU.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use berth_tests::images::{
    busybox_layer, default_cache, nonce, write_layout, write_multi_arch_layout, Compression,
    ImageSpec, TestRegistry,
};
use berth_tests::{
    binaries, boot, build_image, extract_partition, literal, run_tool, BootOptions, BOOT_TIMEOUT,
};
use serde_json::{json, Value};

/// An image whose container prints `message`; `nonce` makes its digest new.
fn greeter(message: &str, nonce: &str) -> ImageSpec {
    ImageSpec {
        layers: vec![(
            busybox_layer(&[("etc/berth-test-nonce", nonce.as_bytes(), 0o644)]),
            Compression::Gzip,
        )],
        config: json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": [format!("echo {message}; echo cwd=$(pwd)")],
            "Env": ["PATH=/bin", "GREETING=from-image"],
            "WorkingDir": "/bin",
            "User": "0:0",
            "ExposedPorts": { "8080/tcp": {} },
        }),
    }
}

/// A recipe with one container per `(name, image)`, plain HTTP for `insecure`.
fn recipe(name: &str, insecure: Option<&str>, containers: &[(&str, &str)]) -> String {
    let mut text = format!("[image]\nname = \"{name}\"\nversion = \"1.0.0\"\n\n");
    if let Some(host) = insecure {
        text.push_str(&format!("[registry.\"{host}\"]\ninsecure = true\n\n"));
    }
    for (container, image) in containers {
        text.push_str(&format!(
            "[[container]]\nname = \"{container}\"\nimage = \"{image}\"\nrestart = \"never\"\n\n"
        ));
    }
    text
}

fn berth(args: &[&str], recipe: &Path) -> Output {
    let berth = &binaries().berth;
    let mut cmd = Command::new(berth);
    cmd.args(args).arg(recipe);
    cmd.output()
        .unwrap_or_else(|e| panic!("running {}: {e}", berth.display()))
}

/// `berth ARGS RECIPE AFTER...`.
fn berth_then(args: &[&str], recipe: &Path, after: &[&str]) -> Output {
    let berth = &binaries().berth;
    Command::new(berth)
        .args(args)
        .arg(recipe)
        .args(after)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", berth.display()))
}

fn ok(output: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{stderr}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

fn failed(output: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{what} succeeded:\n{stderr}");
    stderr
}

fn lock_digest(lock: &Path, container: &str) -> String {
    let text = fs::read_to_string(lock).unwrap_or_else(|e| panic!("{}: {e}", lock.display()));
    let value: toml_lite::Table = toml_lite::parse(&text);
    value
        .images
        .iter()
        .find(|(c, _)| c == container)
        .map(|(_, d)| d.clone())
        .unwrap_or_else(|| panic!("no image for {container} in {}:\n{text}", lock.display()))
}

/// Just enough of the lock file for the tests: `[[image]]` container and digest.
mod toml_lite {
    pub struct Table {
        pub images: Vec<(String, String)>,
    }
    pub fn parse(text: &str) -> Table {
        let mut images = Vec::new();
        let mut container = None;
        let mut in_image = false;
        for line in text.lines() {
            if line.starts_with("[[") {
                in_image = line == "[[image]]";
                container = None;
                continue;
            }
            let value = |key: &str| {
                line.strip_prefix(key)
                    .and_then(|r| r.trim().strip_prefix('='))
                    .map(|v| v.trim().trim_matches('"').to_string())
            };
            if in_image {
                if let Some(c) = value("container") {
                    container = Some(c);
                }
                if let (Some(d), Some(c)) = (value("digest"), &container) {
                    images.push((c.clone(), d));
                }
            }
        }
        Table { images }
    }
}

#[test]
fn pulls_by_tag_and_digest_and_builds_offline_from_the_lock() {
    let mut registry = TestRegistry::start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let layout = write_layout(
        &dir.path().join("layout"),
        &greeter("Hello from the registry", &nonce()),
        "1.0",
    );
    let digest = registry.push(&layout.dir, "1.0", "berth/hello:1.0");

    // By tag: the lock file appears next to the recipe with the digest.
    let by_tag = dir.path().join("bytag.toml");
    fs::write(
        &by_tag,
        recipe(
            "bytag",
            Some(&host),
            &[("greeter", &format!("{host}/berth/hello:1.0"))],
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let stderr = ok(
        &berth(&["build", "--out", out.to_str().unwrap()], &by_tag),
        "build by tag",
    );
    let lock = dir.path().join("bytag.lock");
    assert_eq!(lock_digest(&lock, "greeter"), digest, "{stderr}");
    let lock_text = fs::read_to_string(&lock).unwrap();
    assert!(
        lock_text.contains(&format!("reference = \"{host}/berth/hello:1.0\"")),
        "{lock_text}"
    );
    assert!(
        lock_text.contains("[[package]]\nname = \"crun\""),
        "{lock_text}"
    );
    let served = registry.blob_requests();
    assert!(
        served
            .iter()
            .any(|(path, status, _)| path.contains(&layout.layers[0].0) && *status == 200),
        "the layer was not pulled: {served:?}"
    );

    // The image's configuration became the container's defaults.
    let image = out.join("bytag-1.0.0.img");
    let root = dir.path().join("root.img");
    extract_partition(&image, "root-a", &root);
    let config = run_tool(
        Command::new("unsquashfs")
            .arg("-cat")
            .arg(&root)
            .arg("usr/lib/berth/containers/greeter/config.json"),
    );
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["process"]["args"],
        json!([
            "/bin/sh",
            "-c",
            "echo Hello from the registry; echo cwd=$(pwd)"
        ])
    );
    assert_eq!(config["process"]["cwd"], json!("/bin"));
    assert_eq!(
        config["annotations"]["org.opencontainers.image.exposedPorts"],
        json!("8080/tcp")
    );
    let env = config["process"]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "GREETING=from-image"), "{env:?}");
    let report: Value =
        serde_json::from_str(&fs::read_to_string(out.join("bytag-1.0.0.json")).unwrap()).unwrap();
    assert_eq!(report["inputs"]["images"][0]["digest"], json!(digest));

    // By digest: resolved to the same image.
    let by_digest = dir.path().join("bydigest.toml");
    fs::write(
        &by_digest,
        recipe(
            "bydigest",
            Some(&host),
            &[("greeter", &format!("{host}/berth/hello@{digest}"))],
        ),
    )
    .unwrap();
    ok(&berth(&["lock"], &by_digest), "lock by digest");
    assert_eq!(
        lock_digest(&dir.path().join("bydigest.lock"), "greeter"),
        digest
    );

    // `berth cache ls` names what the blobs are.
    let ls = Command::new(&binaries().berth)
        .args(["cache", "ls"])
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    let layer_hex = layout.layers[0].0.trim_start_matches("sha256:");
    assert!(
        ls.lines().any(|l| l.starts_with(layer_hex)
            && l.ends_with(&format!("layer 1/1 of {host}/berth/hello"))),
        "{ls}"
    );

    // A multi-architecture image: the index is pinned, its linux/amd64 image used.
    let multi = dir.path().join("multi");
    let arm = greeter("an arm64 image", &nonce());
    let amd = greeter("the amd64 image", &nonce());
    let (index, manifests) =
        write_multi_arch_layout(&multi, &[(&arm, "arm64"), (&amd, "amd64")], "1.0");
    run_tool(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:1.0", multi.display()))
            .arg(format!("docker://{host}/berth/multi:1.0")),
    );
    let multi_recipe = dir.path().join("multi.toml");
    fs::write(
        &multi_recipe,
        recipe(
            "multi",
            Some(&host),
            &[("greeter", &format!("{host}/berth/multi:1.0"))],
        ),
    )
    .unwrap();
    ok(&berth(&["lock"], &multi_recipe), "lock a multi-arch image");
    let lock_text = fs::read_to_string(dir.path().join("multi.lock")).unwrap();
    assert!(
        lock_text.contains(&format!(
            "digest = \"{index}\"\nmanifest = \"{}\"",
            manifests[1]
        )),
        "{lock_text}"
    );

    // The registry stops: the lock pins the digest and the cache has every
    // blob, so the build asks nothing of it.
    registry.stop();
    fs::remove_dir_all(&out).unwrap();
    let stderr = ok(
        &berth(&["build", "--out", out.to_str().unwrap()], &by_tag),
        "build with the registry stopped",
    );
    assert!(
        stderr.contains("registries: 0 requests, 0 B fetched"),
        "{stderr}"
    );
    assert!(out.join("bytag-1.0.0.img").is_file());
}

#[test]
fn locked_build_names_the_moved_tag() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let first = write_layout(
        &dir.path().join("v1"),
        &greeter("version one", &nonce()),
        "1.0",
    );
    let d1 = registry.push(&first.dir, "1.0", "berth/app:1.0");
    let path = dir.path().join("moving.toml");
    let image = format!("{host}/berth/app:1.0");

    // Without `insecure = true` the plain-HTTP registry is not spoken to.
    fs::write(&path, recipe("moving", None, &[("app", &image)])).unwrap();
    let stderr = failed(&berth(&["lock"], &path), "lock without insecure");
    assert!(
        stderr.contains(&format!("[registry.\"{host}\"] insecure = true")),
        "{stderr}"
    );

    fs::write(&path, recipe("moving", Some(&host), &[("app", &image)])).unwrap();
    ok(&berth(&["lock"], &path), "lock");
    let lock = dir.path().join("moving.lock");
    assert_eq!(lock_digest(&lock, "app"), d1);

    // The tag moves to another image.
    let second = write_layout(
        &dir.path().join("v2"),
        &greeter("version two", &nonce()),
        "1.0",
    );
    let d2 = registry.push(&second.dir, "1.0", "berth/app:1.0");
    assert_ne!(d1, d2);
    let before = fs::read_to_string(&lock).unwrap();
    let stderr = failed(
        &berth(
            &[
                "build",
                "--locked",
                "--out",
                dir.path().join("out").to_str().unwrap(),
            ],
            &path,
        ),
        "build --locked after the tag moved",
    );
    assert!(
        stderr.contains(&format!(
            "image of container \"app\": {image} moved from {d1} (in the lock) to {d2} (now)"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--locked"), "{stderr}");
    assert_eq!(
        fs::read_to_string(&lock).unwrap(),
        before,
        "--locked wrote the lock"
    );
    assert!(!dir.path().join("out/moving-1.0.0.img").exists());

    // A plain `berth lock` keeps the pin; `--update app` takes the new image.
    let stderr = ok(&berth(&["lock"], &path), "lock again");
    assert!(stderr.contains("is up to date"), "{stderr}");
    assert_eq!(lock_digest(&lock, "app"), d1);
    let stderr = ok(
        &berth_then(&["lock", "--update"], &path, &["app"]),
        "lock --update app",
    );
    assert!(stderr.contains(&format!("moved from {d1}")), "{stderr}");
    assert_eq!(lock_digest(&lock, "app"), d2);
    let stderr = failed(
        &berth_then(&["lock", "--update"], &path, &["nosuch"]),
        "update unknown",
    );
    assert!(
        stderr.contains("no container or locked package is called \"nosuch\""),
        "{stderr}"
    );
}

#[test]
fn interrupted_download_resumes_where_it_stopped() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let layout = write_layout(
        &dir.path().join("layout"),
        &greeter("resumed", &nonce()),
        "1.0",
    );
    registry.push(&layout.dir, "1.0", "berth/resume:1.0");
    let (digest, blob, size) = layout.layers[0].clone();
    let hex = digest.trim_start_matches("sha256:");
    // Half of the layer, as an interrupted download leaves it.
    let cache = default_cache();
    fs::create_dir_all(cache.join("partial")).unwrap();
    let bytes = fs::read(&blob).unwrap();
    let half = bytes.len() / 2;
    fs::write(cache.join("partial").join(hex), &bytes[..half]).unwrap();

    let path = dir.path().join("resume.toml");
    fs::write(
        &path,
        recipe(
            "resume",
            Some(&host),
            &[("app", &format!("{host}/berth/resume:1.0"))],
        ),
    )
    .unwrap();
    let stderr = ok(&berth(&["lock"], &path), "lock with half a layer kept");
    let requests: Vec<(String, u16, u64)> = registry
        .blob_requests()
        .into_iter()
        .filter(|(p, _, _)| p.ends_with(&digest))
        .collect();
    assert_eq!(
        requests,
        vec![(
            format!("/v2/berth/resume/blobs/{digest}"),
            206,
            size - half as u64
        )],
        "{stderr}\n{}",
        registry.log()
    );
    assert_eq!(
        fs::read(cache.join("blobs/sha256").join(hex)).unwrap(),
        bytes
    );
    assert!(!cache.join("partial").join(hex).exists());
}

#[test]
fn docker_and_oci_archives_build_and_boot() {
    let dir = tempfile::tempdir().unwrap();
    let docker_layout = write_layout(
        &dir.path().join("docker-src"),
        &greeter("Hello from a docker archive", "docker"),
        "1.0",
    );
    let oci_layout = write_layout(
        &dir.path().join("oci-src"),
        &ImageSpec {
            layers: vec![(busybox_layer(&[]), Compression::Zstd)],
            config: json!({
                "Entrypoint": ["/bin/sh", "-c"],
                "Cmd": ["echo Hello from an OCI archive, zstd layer"],
            }),
        },
        "2.0",
    );
    let docker_archive = dir.path().join("docker.tar");
    let oci_archive = dir.path().join("oci.tar");
    run_tool(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:1.0", docker_layout.dir.display()))
            .arg(format!(
                "docker-archive:{}:berth/hello:1.0",
                docker_archive.display()
            )),
    );
    run_tool(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{}:2.0", oci_layout.dir.display()))
            .arg(format!("oci-archive:{}:2.0", oci_archive.display())),
    );
    let path = dir.path().join("archives.toml");
    fs::write(
        &path,
        recipe(
            "archives",
            None,
            &[
                (
                    "docker",
                    &format!("docker-archive:{}", docker_archive.display()),
                ),
                ("oci", &format!("oci-archive:{}:2.0", oci_archive.display())),
            ],
        ),
    )
    .unwrap();
    let image = build_image(&path);
    let vm = boot(
        &image,
        BootOptions {
            direct: true,
            ..BootOptions::default()
        },
    );
    // The two containers run side by side: their lines come in any order.
    let wanted = [
        literal("[docker] Hello from a docker archive"),
        literal("[docker] cwd=/bin"),
        literal("[oci] Hello from an OCI archive, zstd layer"),
    ];
    let mut seen = [false; 3];
    while !seen.iter().all(|s| *s) {
        let left: Vec<&regex::Regex> = wanted
            .iter()
            .zip(seen)
            .filter(|(_, s)| !s)
            .map(|(w, _)| w)
            .collect();
        let (i, _) = vm
            .expect_any(&left, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let matched = left[i].as_str().to_string();
        let k = wanted.iter().position(|w| w.as_str() == matched).unwrap();
        seen[k] = true;
    }
}

#[test]
fn concurrent_locks_fetch_each_blob_once_and_keep_credentials_out() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let layout = write_layout(
        &dir.path().join("layout"),
        &greeter("concurrent", &nonce()),
        "1.0",
    );
    let digest = registry.push(&layout.dir, "1.0", "berth/shared:1.0");
    // Credentials for the registry (it has no auth and ignores them): berth
    // must read them and write them nowhere.
    let secret = format!("s3cret-{}", nonce());
    let auth = dir.path().join("auth.json");
    let encoded = {
        use std::io::Write as _;
        let mut child = Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("tester:{secret}").as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    fs::write(
        &auth,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{encoded}"}}}}}}"#),
    )
    .unwrap();
    let image = format!("{host}/berth/shared:1.0");
    let recipes: Vec<_> = ["one", "two"]
        .iter()
        .map(|name| {
            let path = dir.path().join(format!("{name}.toml"));
            fs::write(&path, recipe(name, Some(&host), &[("app", &image)])).unwrap();
            path
        })
        .collect();
    let berth_bin = &binaries().berth;
    let children: Vec<_> = recipes
        .iter()
        .map(|r| {
            Command::new(berth_bin)
                .arg("lock")
                .arg(r)
                .env("REGISTRY_AUTH_FILE", &auth)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        ok(&child.wait_with_output().unwrap(), "concurrent lock");
    }
    for name in ["one", "two"] {
        let lock = dir.path().join(format!("{name}.lock"));
        assert_eq!(lock_digest(&lock, "app"), digest);
        let text = fs::read_to_string(&lock).unwrap();
        assert!(
            !text.contains(&secret) && !text.contains(&encoded),
            "{text}"
        );
    }
    let layer = &layout.layers[0].0;
    let pulls: Vec<_> = registry
        .blob_requests()
        .into_iter()
        .filter(|(p, _, _)| p.ends_with(layer.as_str()))
        .collect();
    assert_eq!(
        pulls.len(),
        1,
        "the layer was fetched {} times: {pulls:?}",
        pulls.len()
    );
    // Nothing in the cache's notes names the secret either.
    let cache = default_cache();
    for entry in fs::read_dir(cache.join("notes")).unwrap() {
        let text = fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        assert!(!text.contains(&secret), "{text}");
    }
}

#[test]
fn a_registry_that_comes_back_is_retried() {
    let mut registry = TestRegistry::start();
    let host = registry.host();
    let dir = tempfile::tempdir().unwrap();
    let layout = write_layout(
        &dir.path().join("layout"),
        &greeter("retried", &nonce()),
        "1.0",
    );
    let digest = registry.push(&layout.dir, "1.0", "berth/retry:1.0");
    let path = dir.path().join("retry.toml");
    fs::write(
        &path,
        recipe(
            "retry",
            Some(&host),
            &[("app", &format!("{host}/berth/retry:1.0"))],
        ),
    )
    .unwrap();
    // The registry goes away; berth's first request fails, and the registry
    // is back before its retries run out.
    registry.stop();
    let mut child = Command::new(&binaries().berth)
        .arg("lock")
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("trying again") {
            registry.restart();
            break;
        }
    }
    let rest: String = lines.map(|l| l.unwrap() + "\n").collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "berth lock failed:\n{seen}{rest}");
    assert!(seen.contains("trying again in 0.5 s (1/4)"), "{seen}");
    assert_eq!(lock_digest(&dir.path().join("retry.lock"), "app"), digest);
}
