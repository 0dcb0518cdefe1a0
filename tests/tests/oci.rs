//! Containers from local OCI images, end to end: an image layout written from
//! scratch here (one gzip layer with the host's static busybox), built into an
//! image from a layout folder and from an archive of one, booted in QEMU, and
//! checked with `unsquashfs`; corrupt blobs and unknown tags are refused.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_tests::images::{self, busybox_layer, Compression, ImageSpec};
use berth_tests::{
    binaries, boot, build_image, extract_partition as extract, literal, run_tool as run,
    BootOptions, BOOT_TIMEOUT,
};
use serde_json::{json, Value};

/// The tag the written layout's only manifest carries.
const TAG: &str = "1.0";
/// The image's command, after its `["/bin/sh", "-c"]` entrypoint.
const IMAGE_CMD: &str = "echo Hello from an OCI image; echo env=$GREETING";

/// Paths of what [`write_layout`] wrote that tests tamper with.
struct Layout {
    /// The gzip layer blob.
    layer_blob: PathBuf,
}

/// Writes an OCI image layout into `dir`: one linux/amd64 manifest tagged
/// [`TAG`], one gzip layer with the host's static busybox, and a config with an
/// entrypoint, a command and an environment.
fn write_layout(dir: &Path) -> Layout {
    let spec = ImageSpec {
        layers: vec![(busybox_layer(&[]), Compression::Gzip)],
        config: json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": [IMAGE_CMD],
            "Env": ["PATH=/bin", "GREETING=from-image"],
        }),
    };
    let written = images::write_layout(dir, &spec, TAG);
    Layout {
        layer_blob: written.layers[0].1.clone(),
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
