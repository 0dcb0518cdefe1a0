//! `berth build --check-reproducible`: the same recipe built twice, in two
//! different temporary folders and with different umasks, must give the same
//! bytes. When the disk images differ, the partitions that differ are named.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::build::{build, BuildError, BuildOptions, Built};
use crate::progress::Progress;

/// The umasks of the two builds: the usual one, then a private one.
pub const UMASKS: [u32; 2] = [0o022, 0o077];

/// One artifact of both builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compared {
    /// `disk`, `kernel`, `initramfs`, `root`, `verity root hash`.
    pub name: String,
    pub first: String,
    pub second: String,
}

impl Compared {
    pub fn identical(&self) -> bool {
        self.first == self.second
    }
}

/// What the two builds gave.
#[derive(Debug, Clone)]
pub struct Reproducibility {
    /// The image's file name (`hello-1.0.0.img`).
    pub image: String,
    pub artifacts: Vec<Compared>,
    /// When the disk images differ: the regions that do (`gpt`, a partition
    /// label, `backup gpt`).
    pub differing_regions: Vec<String>,
}

impl Reproducibility {
    pub fn is_reproducible(&self) -> bool {
        self.artifacts.iter().all(Compared::identical)
    }

    /// The artifacts that differ.
    pub fn differing(&self) -> Vec<&Compared> {
        self.artifacts.iter().filter(|a| !a.identical()).collect()
    }
}

/// Sets the process umask for as long as it lives.
struct Umask(rustix::fs::Mode);

impl Umask {
    fn set(mask: u32) -> Umask {
        Umask(rustix::process::umask(
            rustix::fs::Mode::from_bits_truncate(mask),
        ))
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        rustix::process::umask(self.0);
    }
}

/// Builds `options.recipe` twice into two fresh folders under `options.out_dir`
/// (at different depths, with the umasks of [`UMASKS`]), compares the outputs and
/// removes both builds. `options.out_dir` itself gets nothing.
pub fn check(
    options: &BuildOptions,
    progress: &mut Progress,
) -> Result<Reproducibility, BuildError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io { path, source }
    };
    std::fs::create_dir_all(&options.out_dir).map_err(io_err(&options.out_dir))?;
    let scratch = tempfile::Builder::new()
        .prefix(".berth-reproducible-")
        .tempdir_in(&options.out_dir)
        .map_err(io_err(&options.out_dir))?;
    let folders = [
        scratch.path().join("first"),
        scratch
            .path()
            .join("second")
            .join("a")
            .join("deeper")
            .join("folder"),
    ];
    let mut builds: Vec<Built> = Vec::new();
    for (i, (folder, umask)) in folders.iter().zip(UMASKS).enumerate() {
        progress.say(&format!(
            "build {} of 2 in {} (umask {umask:03o})",
            i + 1,
            folder.display()
        ));
        let _umask = Umask::set(umask);
        let built = build(
            &BuildOptions {
                out_dir: folder.clone(),
                fresh: true,
                ..options.clone()
            },
            progress,
        )?;
        builds.push(built);
    }
    let [first, second] = [&builds[0], &builds[1]];
    let (a, b) = (&first.report_data.outputs, &second.report_data.outputs);
    let pair = |name: &str, x: &str, y: &str| Compared {
        name: name.to_string(),
        first: x.to_string(),
        second: y.to_string(),
    };
    let root_hash = |o: &crate::report::Outputs| {
        o.root
            .verity
            .as_ref()
            .map_or_else(|| "(no verity)".to_string(), |v| v.root_hash.clone())
    };
    let bmap_sha = |built: &Built| {
        crate::sources::cache::sha256_file(&built.bmap).map_err(io_err(&built.bmap))
    };
    let artifacts = vec![
        pair("disk", &a.disk.sha256, &b.disk.sha256),
        pair("block map", &bmap_sha(first)?, &bmap_sha(second)?),
        pair("kernel", &a.kernel.sha256, &b.kernel.sha256),
        pair("initramfs", &a.initramfs.sha256, &b.initramfs.sha256),
        pair("root", &a.root.sha256, &b.root.sha256),
        pair("verity root hash", &root_hash(a), &root_hash(b)),
    ];
    let mut differing_regions = Vec::new();
    if !artifacts[0].identical() {
        // the disk
        let mut regions = vec![("gpt".to_string(), 0, first_partition(first))];
        regions.extend(
            first
                .report_data
                .partitions
                .iter()
                .map(|p| (p.label.clone(), p.offset, p.size)),
        );
        let end = first.report_data.outputs.disk.size;
        let last = regions.last().map_or(0, |(_, o, s)| o + s);
        regions.push(("backup gpt".to_string(), last, end.saturating_sub(last)));
        for (label, offset, size) in regions {
            let x = hash_range(&first.image, offset, size).map_err(io_err(&first.image))?;
            let y = hash_range(&second.image, offset, size).map_err(io_err(&second.image))?;
            if x != y {
                differing_regions.push(label);
            }
        }
    }
    let image = first
        .image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    drop(builds);
    scratch.close().map_err(io_err(&options.out_dir))?;
    Ok(Reproducibility {
        image,
        artifacts,
        differing_regions,
    })
}

/// Bytes before the first partition (protective MBR and primary GPT).
fn first_partition(built: &Built) -> u64 {
    built
        .report_data
        .partitions
        .iter()
        .map(|p| p.offset)
        .min()
        .unwrap_or(0)
}

fn hash_range(path: &Path, offset: u64, size: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut h = Sha256::new();
    io::copy(&mut file.take(size), &mut h)?;
    Ok(hex::encode(h.finalize()))
}
