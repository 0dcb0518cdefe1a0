//! A recipe may name a local kernel (a vmlinuz and its /lib/modules/<release>
//! folder) instead of a Debian package: the image boots with it.

use std::fs;
use std::path::PathBuf;

use berth_tests::{boot, build_image, literal, BootOptions, BOOT_TIMEOUT};

/// The builder's cache folder, as the builder finds it.
fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_CACHE") {
        return dir.into();
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("berth");
    }
    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/berth")
}

#[test]
fn local_kernel_and_modules_folder_boot() {
    // The hello image's kernel package, extracted by the builder into its cache,
    // stands in for a kernel a user built themselves.
    let hello = build_image("recipes/hello.toml");
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(hello.with_extension("json")).unwrap()).unwrap();
    let sha = report["inputs"]["kernel"]["package"]["sha256"]
        .as_str()
        .unwrap();
    let release = report["inputs"]["kernel"]["release"].as_str().unwrap();
    // `-2`: the builder's kernel::EXTRACT_FORMAT.
    let extracted = cache_root().join(format!("extracted/kernel-{sha}-2"));
    let vmlinuz = extracted.join(format!("boot/vmlinuz-{release}"));
    let modules = extracted.join(format!("lib/modules/{release}"));
    assert!(vmlinuz.is_file(), "{}", vmlinuz.display());

    let dir = tempfile::tempdir().unwrap();
    // Links stand in for copies; the recipe's relative paths resolve from its folder.
    std::os::unix::fs::symlink(&vmlinuz, dir.path().join("vmlinuz")).unwrap();
    fs::create_dir(dir.path().join("modules")).unwrap();
    std::os::unix::fs::symlink(&modules, dir.path().join("modules").join(release)).unwrap();
    let recipe = dir.path().join("local-kernel.toml");
    fs::write(
        &recipe,
        format!(
            r#"[image]
name = "localkernel"
version = "0.1.0"

[kernel]
path = "vmlinuz"
modules_dir = "modules/{release}"
cmdline = "quiet"

[[container]]
name = "hello"
packages = ["busybox-static"]
command = ["/bin/busybox", "echo", "local kernel says hi"]
"#
        ),
    )
    .unwrap();
    let image = build_image(&recipe);
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(image.with_extension("json")).unwrap()).unwrap();
    assert!(report["inputs"]["kernel"]["package"].is_null());
    assert_eq!(report["inputs"]["kernel"]["release"], release);
    let vm = boot(
        &image,
        BootOptions {
            direct: true,
            ..BootOptions::default()
        },
    );
    vm.expect(&literal("[hello] local kernel says hi"), BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    // The recipe's command line reached the kernel.
    let boot_files = berth_qemu::direct::extract_direct_boot(&image, dir.path()).unwrap();
    assert!(
        boot_files.cmdline.ends_with(" quiet"),
        "{}",
        boot_files.cmdline
    );
}
