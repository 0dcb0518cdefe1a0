//! Containers from local OCI images, end to end: an image layout written from
//! scratch here (one gzip layer with the host's static busybox), built into an
//! image from a layout folder and from an archive of one, booted in QEMU, and
//! checked with `unsquashfs`; corrupt blobs and unknown tags are refused.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_tests::{
    binaries, boot, build_image, extract_partition as extract, literal, run_tool as run,
    BootOptions, BOOT_TIMEOUT,
};
use flate2::write::GzEncoder;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The tag the written layout's only manifest carries.
const TAG: &str = "1.0";
/// The image's command, after its `["/bin/sh", "-c"]` entrypoint.
const IMAGE_CMD: &str = "echo Hello from an OCI image; echo env=$GREETING";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Stores `bytes` as a blob of the layout at `dir` and returns its descriptor.
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

/// The uncompressed layer: `bin/`, `bin/busybox` (the host's static one, 0755)
/// and `bin/sh -> busybox`.
fn layer_tar() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("reading the host's static /bin/busybox");
    let mut tar = tar::Builder::new(Vec::new());

    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_uid(0);
    dir.set_gid(0);
    dir.set_mtime(1_700_000_000);
    dir.set_size(0);
    tar.append_data(&mut dir, "bin/", std::io::empty())
        .expect("tar: bin/");

    let mut file = tar::Header::new_ustar();
    file.set_entry_type(tar::EntryType::Regular);
    file.set_mode(0o755);
    file.set_uid(0);
    file.set_gid(0);
    file.set_mtime(1_700_000_000);
    file.set_size(busybox.len() as u64);
    tar.append_data(&mut file, "bin/busybox", busybox.as_slice())
        .expect("tar: bin/busybox");

    let mut link = tar::Header::new_ustar();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_mode(0o777);
    link.set_uid(0);
    link.set_gid(0);
    link.set_mtime(1_700_000_000);
    link.set_size(0);
    tar.append_link(&mut link, "bin/sh", "busybox")
        .expect("tar: bin/sh");

    tar.into_inner().expect("finishing the layer tar")
}

/// Paths of what [`write_layout`] wrote that tests tamper with.
struct Layout {
    /// The gzip layer blob.
    layer_blob: PathBuf,
}

/// Writes an OCI image layout into `dir` (which must exist): one linux/amd64
/// manifest tagged [`TAG`], one gzip layer, and a config with an entrypoint, a
/// command and an environment.
fn write_layout(dir: &Path) -> Layout {
    fs::create_dir_all(dir.join("blobs/sha256")).expect("creating blobs/sha256");
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");

    let tar = layer_tar();
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let layer = write_blob(dir, "application/vnd.oci.image.layer.v1.tar+gzip", &gz);

    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": [IMAGE_CMD],
            "Env": ["PATH=/bin", "GREETING=from-image"],
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [diff_id],
        },
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
        "layers": [layer.clone()],
    });
    let mut manifest = write_blob(
        dir,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).expect("manifest JSON"),
    );
    manifest["annotations"] = json!({ "org.opencontainers.image.ref.name": TAG });

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

    let layer_hex = layer["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .expect("layer digest");
    Layout {
        layer_blob: dir.join("blobs/sha256").join(layer_hex),
    }
}

/// Tars the layout folder `dir` into `archive`, paths relative to its root
/// (`oci-layout`, `index.json`, `blobs/sha256/<hex>`).
fn write_archive(dir: &Path, archive: &Path) {
    let file = File::create(archive).unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
    let mut tar = tar::Builder::new(file);
    for name in ["oci-layout", "index.json"] {
        tar.append_path_with_name(dir.join(name), name)
            .unwrap_or_else(|e| panic!("archiving {name}: {e}"));
    }
    for folder in ["blobs", "blobs/sha256"] {
        tar.append_dir(folder, dir.join(folder))
            .unwrap_or_else(|e| panic!("archiving {folder}: {e}"));
    }
    let mut blobs: Vec<_> = fs::read_dir(dir.join("blobs/sha256"))
        .expect("listing the blobs")
        .map(|entry| entry.expect("a blob").file_name())
        .collect();
    blobs.sort();
    for blob in blobs {
        let name = Path::new("blobs/sha256").join(&blob);
        tar.append_path_with_name(dir.join(&name), &name)
            .unwrap_or_else(|e| panic!("archiving {}: {e}", name.display()));
    }
    tar.into_inner()
        .and_then(|mut f| f.flush())
        .expect("finishing the archive");
}

/// A recipe with one container `name` running `image`, plus `extra` lines in the
/// container table.
fn recipe(image_name: &str, name: &str, image: &str, extra: &str) -> String {
    format!(
        "[image]\nname = \"{image_name}\"\nversion = \"1.0.0\"\n\n\
         [[container]]\nname = \"{name}\"\nimage = \"{image}\"\n{extra}restart = \"never\"\n"
    )
}

/// Runs `berth build recipe --out out --quiet`.
/// Writes a one-container recipe for `image` in `dir`, runs `berth build` on it,
/// asserts that it fails and returns its stderr.
fn build_refused(dir: &Path, image_name: &str, image: &str) -> String {
    let recipe_path = dir.join(format!("{image_name}.toml"));
    fs::write(&recipe_path, recipe(image_name, "greeter", image, "")).unwrap();
    let output = berth_build(&recipe_path, &dir.join("out"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{image} was accepted:\n{stderr}");
    stderr
}

fn berth_build(recipe: &Path, out: &Path) -> Output {
    let berth = &binaries().berth;
    Command::new(berth)
        .arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", berth.display()))
}

#[test]
fn oci_layout_image_boots() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_layout(&layout);
    let recipe_path = dir.path().join("oci-layout.toml");
    fs::write(
        &recipe_path,
        recipe(
            "ocitest",
            "greeter",
            &format!("oci:{}:{TAG}", layout.display()),
            "env = { GREETING = \"from-recipe\" }\n",
        ),
    )
    .unwrap();

    let image = build_image(&recipe_path);
    let vm = boot(
        &image,
        BootOptions {
            direct: true,
            ..BootOptions::default()
        },
    );
    vm.expect(&literal("[greeter] Hello from an OCI image"), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    // The recipe's environment overrides the image's.
    vm.expect(&literal("env=from-recipe"), BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
}

#[test]
fn oci_archive_image_builds() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_layout(&layout);
    let archive = dir.path().join("image.tar");
    write_archive(&layout, &archive);
    let recipe_path = dir.path().join("oci-archive.toml");
    fs::write(
        &recipe_path,
        recipe(
            "ociarchive",
            "greeter",
            &format!("oci-archive:{}:{TAG}", archive.display()),
            "",
        ),
    )
    .unwrap();

    let image = build_image(&recipe_path);
    let root = dir.path().join("root.img");
    extract(&image, "root-a", &root);

    let container = "usr/lib/berth/containers/greeter";
    let listing = run(Command::new("unsquashfs").arg("-lln").arg(&root));
    let busybox = format!("squashfs-root/{container}/rootfs/bin/busybox");
    let line = listing
        .lines()
        .find(|l| l.ends_with(&busybox))
        .unwrap_or_else(|| panic!("{busybox} missing from root-a:\n{listing}"));
    assert!(line.starts_with("-rwxr-xr-x"), "{line}");
    let sh = format!("squashfs-root/{container}/rootfs/bin/sh -> busybox");
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with('l') && l.ends_with(&sh)),
        "{sh} missing from root-a:\n{listing}"
    );

    let config = run(Command::new("unsquashfs")
        .arg("-cat")
        .arg(&root)
        .arg(format!("{container}/config.json")));
    let config: Value = serde_json::from_str(&config)
        .unwrap_or_else(|e| panic!("config.json is not JSON ({e}):\n{config}"));
    assert_eq!(
        config["process"]["args"],
        json!(["/bin/sh", "-c", IMAGE_CMD]),
        "{config:#}"
    );
    let env = config["process"]["env"]
        .as_array()
        .unwrap_or_else(|| panic!("no process.env in {config:#}"));
    assert!(
        env.iter().any(|e| e == "GREETING=from-image"),
        "GREETING=from-image missing from {env:?}"
    );
}

#[test]
fn corrupt_oci_blob_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let layout_dir = dir.path().join("layout");
    let layout = write_layout(&layout_dir);
    let mut blob = fs::read(&layout.layer_blob).unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0xff;
    fs::write(&layout.layer_blob, &blob).unwrap();

    let stderr = build_refused(
        dir.path(),
        "corrupt",
        &format!("oci:{}:{TAG}", layout_dir.display()),
    );
    assert!(stderr.contains("corrupt"), "{stderr}");
    let name = layout.layer_blob.file_name().unwrap().to_string_lossy();
    assert!(
        stderr.contains(name.as_ref()),
        "the error does not name the layer {name}:\n{stderr}"
    );
}

#[test]
fn unknown_tag_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_layout(&layout);
    let stderr = build_refused(
        dir.path(),
        "unknowntag",
        &format!("oci:{}:2.0", layout.display()),
    );
    assert!(stderr.contains("\"2.0\""), "{stderr}");
    // The available tag, on its own (not a piece of another version number).
    let available = regex::Regex::new(r"(^|[^.\w])1\.0($|[^.\w])").unwrap();
    assert!(
        available.is_match(&stderr),
        "the available tag {TAG} is not named:\n{stderr}"
    );
}
