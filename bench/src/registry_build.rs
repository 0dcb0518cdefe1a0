//! Cold and warm build time of a recipe whose image (about 50 MB of layers, made
//! from Debian packages) comes from a registry on loopback; the registry's own
//! access log counts the bytes each build fetched.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One timed `berth build`; returns the time, berth's own "registries:" line and
/// what the registry served (blob requests, bytes) during it.
fn timed_build(
    registry: &berth_tests::images::TestRegistry,
    recipe: &Path,
    out: &Path,
) -> anyhow::Result<(Duration, String, usize, u64)> {
    let served_before = registry.blob_requests();
    let start = Instant::now();
    let output = std::process::Command::new(&berth_tests::binaries().berth)
        .arg("build")
        .arg(recipe)
        .arg("--out")
        .arg(out)
        .output()?;
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!("berth build {} failed:\n{stderr}", recipe.display());
    }
    for l in stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("fetched"))
    {
        println!("    berth: {}", l.trim());
    }
    for l in stderr
        .lines()
        .filter(|l| l.starts_with("    ") && l.ends_with(" s") && !l.contains("fetched"))
    {
        println!("    berth: {}", l.trim());
    }
    let line = stderr
        .lines()
        .find(|l| l.starts_with("registries:"))
        .unwrap_or("(no registries line)")
        .to_string();
    let served = registry.blob_requests();
    let new = &served[served_before.len()..];
    Ok((
        took,
        line,
        new.len(),
        new.iter().map(|(_, _, bytes)| bytes).sum(),
    ))
}

/// Runs the benchmark and prints its figures.
pub fn run() -> anyhow::Result<()> {
    use berth_tests::images::{
        busybox_layer, debian_package_tar, default_cache, nonce, write_layout, Compression,
        ImageSpec, TestRegistry,
    };
    let dir = tempfile::tempdir()?;
    // Layers from Debian packages, one per compression berth reads.
    let nonce = nonce();
    let layers = vec![
        (
            busybox_layer(&[("etc/bench-nonce", nonce.as_bytes(), 0o644)]),
            Compression::Gzip,
        ),
        (debian_package_tar("libicu72"), Compression::None),
        (debian_package_tar("libclang-cpp15"), Compression::Gzip),
        (debian_package_tar("perl-modules-5.36"), Compression::Gzip),
        (debian_package_tar("libperl5.36"), Compression::Zstd),
    ];
    let unpacked: u64 = layers.iter().map(|(t, _)| t.len() as u64).sum();
    let spec = ImageSpec {
        layers,
        config: serde_json::json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hello"],
        }),
    };
    let layout = write_layout(&dir.path().join("layout"), &spec, "1.0");
    let registry = TestRegistry::start();
    let host = registry.host();
    let digest = registry.push(&layout.dir, "1.0", "bench/big:1.0");
    // The manifest as the registry has it: skopeo gzips uncompressed layers on
    // the way in, so its layers are not all the layout's.
    let raw = berth_tests::run_tool(
        std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{host}/bench/big:1.0")),
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw)?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let pushed: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
    let mut blobs: Vec<String> = layers
        .iter()
        .filter_map(|l| l["digest"].as_str().map(str::to_string))
        .collect();
    blobs.extend(manifest["config"]["digest"].as_str().map(str::to_string));
    blobs.push(digest);
    // Cold: none of the image's blobs in the cache (the Debian packages of the
    // image itself, kernel and crun, stay cached: they do not come from the
    // registry).
    let cache = default_cache();
    for digest in &blobs {
        let _ = std::fs::remove_file(
            cache
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        );
    }
    // Built before the clock starts.
    berth_tests::binaries();
    let recipe = dir.path().join("bench-registry.toml");
    std::fs::write(
        &recipe,
        format!(
            "[image]\nname = \"bench-registry\"\nversion = \"1.0.0\"\n\n\
             [registry.\"{host}\"]\ninsecure = true\n\n\
             [[container]]\nname = \"big\"\nimage = \"{host}/bench/big:1.0\"\n"
        ),
    )?;
    let out = dir.path().join("out");
    let (cold, cold_line, cold_requests, cold_bytes) = timed_build(&registry, &recipe, &out)?;
    let (warm, warm_line, warm_requests, warm_bytes) = timed_build(&registry, &recipe, &out)?;
    let accel = berth_qemu::accel::detect(Path::new(berth_qemu::command::DEFAULT_QEMU))?;
    println!(
        "registry-build: image of {} layers from Debian packages, {:.1} MiB in the registry ({:.1} MiB unpacked), registry on loopback; {} cores, accelerator {accel}",
        layers.len(),
        mib(pushed),
        mib(unpacked),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "  cold build: {:.1} s; the registry served {cold_requests} blob requests, {:.1} MiB; berth says \"{cold_line}\"",
        cold.as_secs_f64(),
        mib(cold_bytes)
    );
    println!(
        "  warm build: {:.1} s; the registry served {warm_requests} blob requests, {:.1} MiB; berth says \"{warm_line}\"",
        warm.as_secs_f64(),
        mib(warm_bytes)
    );
    if warm_requests != 0 || warm_bytes != 0 || !warm_line.contains("0 requests") {
        bail!("the warm build fetched something");
    }
    Ok(())
}
