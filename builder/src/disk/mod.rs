//! The disk image: GPT with the ESP (FAT32: systemd-boot, loader.conf, slot A's
//! entry, kernel and initramfs), root-a (the squashfs and its verity hash tree),
//! an empty root-b of the same size, and the ext4 data partition.
//!
//! Takes the plan's partition sizes, the kernel, the initramfs and the root
//! filesystem with its hash tree; gives one raw disk image.

use crate::progress::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_format::layout::{self, BootEntry, Slot};
use berth_format::window::Window;
use uuid::Uuid;

use crate::recipe::DiskSizes;

pub mod bmap;

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = layout::SECTOR_SIZE;

/// Failure writing the disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk image {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("partition table: {0}")]
    Gpt(String),
    #[error("ESP: {0}")]
    Fat(io::Error),
    #[error("the {what} ({size} bytes) does not fit its partition ({room} bytes): raise [disk] {key} in the recipe")]
    TooBig {
        what: &'static str,
        key: &'static str,
        size: u64,
        room: u64,
    },
    #[error("mkfs.ext4 failed on the data partition: {0}")]
    Mkfs(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Partition GUIDs and the disk GUID, derived from the image's name and version
/// so the same recipe always gives the same disk.
#[derive(Debug, Clone)]
pub struct DiskIds {
    pub disk: Uuid,
    pub esp: Uuid,
    pub root_a: Uuid,
    pub root_b: Uuid,
    pub data: Uuid,
}

impl DiskIds {
    pub fn derive(name: &str, version: &str) -> DiskIds {
        // A fixed namespace for berth's name-based (v5) UUIDs.
        const NS: Uuid = Uuid::from_u128(0x6265_7274_682d_4000_8000_6469_736b_6964);
        let id = |what: &str| Uuid::new_v5(&NS, format!("{name}\0{version}\0{what}").as_bytes());
        DiskIds {
            disk: id("disk"),
            esp: id(layout::ESP_LABEL),
            root_a: id(Slot::A.partition_label()),
            root_b: id(Slot::B.partition_label()),
            data: id(layout::DATA_LABEL),
        }
    }
}

/// What goes into the disk image.
#[derive(Debug)]
pub struct DiskInput<'a> {
    pub sizes: DiskSizes,
    pub ids: DiskIds,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    /// The slot's content: the filesystem, then its hash tree if any.
    pub root: &'a Path,
    /// The slot's boot entry; its architecture names the root partitions' type
    /// and the firmware's boot file.
    pub entry: BootEntry,
    /// systemd-boot's EFI binary for that architecture.
    pub boot_loader: &'a Path,
    /// Fixed time for the data filesystem (reproducibility).
    pub epoch: u64,
}

/// Offsets (bytes) of the partitions.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    esp: u64,
    root_a: u64,
    root_b: u64,
    data: u64,
    total: u64,
}

fn offsets(sizes: &DiskSizes) -> Offsets {
    // 1 MiB alignment; the last MiB holds the backup GPT.
    let esp = MIB;
    let root_a = esp + sizes.esp;
    let root_b = root_a + sizes.root;
    let data = root_b + sizes.root;
    let total = data + sizes.data + MIB;
    Offsets {
        esp,
        root_a,
        root_b,
        data,
        total,
    }
}

/// Writes the disk image to `out` (replacing it), counting the root
/// partition's bytes on `bytes`.
pub fn write(out: &Path, input: &DiskInput<'_>, bytes: &Bytes) -> Result<(), DiskError> {
    let sd_boot = input.boot_loader;
    let root_size = fs::metadata(input.root).map_err(io_err(input.root))?.len();
    if root_size > input.sizes.root {
        return Err(DiskError::TooBig {
            what: "root filesystem",
            key: "root",
            size: root_size,
            room: input.sizes.root,
        });
    }
    let o = offsets(&input.sizes);
    let _ = fs::remove_file(out);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(io_err(out))?;
    file.set_len(o.total).map_err(io_err(out))?;
    write_gpt(&file, input, &o)?;
    write_esp(&file, input, &o, sd_boot)?;
    // root-a: the squashfs; root-b stays zero (sparse) until the first update.
    let mut src = File::open(input.root).map_err(io_err(input.root))?;
    let mut dst = Window::new(&file, o.root_a, input.sizes.root);
    io::copy(&mut bytes.reader(&mut src), &mut dst).map_err(io_err(out))?;
    file.sync_all().map_err(io_err(out))?;
    drop(file);
    mkfs_data(out, input, &o)?;
    Ok(())
}

fn write_gpt(file: &File, input: &DiskInput<'_>, o: &Offsets) -> Result<(), DiskError> {
    use gpt::partition::Partition;
    use gpt::partition_types::{OperatingSystem, Type};
    let gpt_err = |e: gpt::GptError| DiskError::Gpt(e.to_string());
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(o.total / SECTOR - 1).unwrap_or(u32::MAX),
    );
    let mut device = file;
    mbr.overwrite_lba0(&mut device)
        .map_err(|e| DiskError::Gpt(e.to_string()))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .change_partition_count(true)
        .create_from_device(device, Some(input.ids.disk))
        .map_err(gpt_err)?;
    let ty = |guid: &str| Type {
        guid: Uuid::parse_str(guid).expect("constant GUID"),
        os: OperatingSystem::Linux,
    };
    let part = |t: Type, id: Uuid, start: u64, size: u64, name: &str| Partition {
        part_type_guid: t,
        part_guid: id,
        first_lba: start / SECTOR,
        last_lba: (start + size) / SECTOR - 1,
        flags: 0,
        name: name.to_string(),
    };
    let s = &input.sizes;
    let ids = &input.ids;
    // (number, type, PARTUUID, offset, size, label): the layout of updater::layout.
    let table = [
        (
            1,
            layout::ESP_TYPE_GUID,
            ids.esp,
            o.esp,
            s.esp,
            layout::ESP_LABEL,
        ),
        (
            2,
            input.entry.arch.root_type_guid(),
            ids.root_a,
            o.root_a,
            s.root,
            Slot::A.partition_label(),
        ),
        (
            3,
            input.entry.arch.root_type_guid(),
            ids.root_b,
            o.root_b,
            s.root,
            Slot::B.partition_label(),
        ),
        (
            4,
            layout::VAR_TYPE_GUID,
            ids.data,
            o.data,
            s.data,
            layout::DATA_LABEL,
        ),
    ];
    let parts = table
        .into_iter()
        .map(|(n, t, id, start, size, name)| (n, part(ty(t), id, start, size, name)))
        .collect();
    disk.update_partitions(parts).map_err(gpt_err)?;
    disk.write().map_err(gpt_err)?;
    Ok(())
}

/// Every ESP entry gets the FAT epoch, 1980-01-01 00:00 (reproducible builds).
#[derive(Debug)]
struct FatEpoch;

impl fatfs::TimeProvider for FatEpoch {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FAT_EPOCH: FatEpoch = FatEpoch;

fn write_esp(
    file: &File,
    input: &DiskInput<'_>,
    o: &Offsets,
    sd_boot: &Path,
) -> Result<(), DiskError> {
    let fat = |e: io::Error| DiskError::Fat(e);
    let mut window = Window::new(file, o.esp, input.sizes.esp);
    let volume_id = u32::from_le_bytes(
        input.ids.esp.as_bytes()[..4]
            .try_into()
            .expect("4 bytes of a UUID"),
    );
    fatfs::format_volume(
        &mut window,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_label(*b"ESP        ")
            .volume_id(volume_id),
    )
    .map_err(fat)?;
    window.seek(SeekFrom::Start(0)).map_err(fat)?;
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new().time_provider(&FAT_EPOCH))
        .map_err(fat)?;
    let root = fs.root_dir();
    let put = |path: &str, content: &mut dyn Read| -> Result<(), DiskError> {
        let mut dir = root.clone();
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().unwrap_or(path);
        for p in parts {
            dir = match dir.open_dir(p) {
                Ok(d) => d,
                Err(_) => dir.create_dir(p).map_err(fat)?,
            };
        }
        let mut f = dir.create_file(name).map_err(fat)?;
        f.truncate().map_err(fat)?;
        io::copy(content, &mut f).map_err(fat)?;
        Ok(())
    };
    let put_file = |path: &str, source: &Path| -> Result<(), DiskError> {
        put(path, &mut File::open(source).map_err(io_err(source))?)
    };
    // The removable-media path boots with a fresh firmware variable store.
    let arch = input.entry.arch;
    put_file(&arch.efi_boot_path(), sd_boot)?;
    put_file(
        &format!("EFI/systemd/{}", arch.systemd_boot_name()),
        sd_boot,
    )?;
    put("loader/loader.conf", &mut layout::LOADER_CONF.as_bytes())?;
    let slot = input.entry.slot;
    put_file(&slot.kernel_path(), input.kernel)?;
    put_file(&slot.initramfs_path(), input.initramfs)?;
    // The other slot's folder, empty: the first install then makes no folder on
    // the device (vfat cannot make a new folder's clusters durable before the
    // entry that names them; see berth_format::fatsync).
    root.open_dir("berth")
        .and_then(|berth| berth.create_dir(slot.other().letter()))
        .map_err(fat)?;
    put(
        &format!("loader/entries/{}.conf", slot.entry_id()),
        &mut input.entry.render().as_bytes(),
    )?;
    drop(root);
    fs.unmount().map_err(fat)?;
    fat32_fix_dot_entries(&mut Window::new(file, o.esp, input.sizes.esp)).map_err(fat)?;
    Ok(())
}

/// Writes `content` as `path` (`berth/provision.toml`) into the FAT file
/// system of an ESP that is `size` bytes at `offset` of `file` (a flashed disk),
/// creating its folders and replacing the file if it is there.
pub fn write_esp_file(
    file: &File,
    offset: u64,
    size: u64,
    path: &str,
    content: &[u8],
) -> Result<(), DiskError> {
    let fat = |e: io::Error| DiskError::Fat(e);
    {
        let window = Window::new(file, offset, size);
        let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new().time_provider(&FAT_EPOCH))
            .map_err(fat)?;
        let mut dir = fs.root_dir();
        let mut parts: Vec<&str> = path.split('/').collect();
        let name = parts.pop().unwrap_or(path);
        for p in parts {
            dir = match dir.open_dir(p) {
                Ok(d) => d,
                Err(_) => dir.create_dir(p).map_err(fat)?,
            };
        }
        let mut f = dir.create_file(name).map_err(fat)?;
        f.truncate().map_err(fat)?;
        f.write_all(content).map_err(fat)?;
        f.flush().map_err(fat)?;
        drop(f);
        drop(dir);
        fs.unmount().map_err(fat)?;
    }
    // A folder fatfs created needs the same repair as at build time.
    fat32_fix_dot_entries(&mut Window::new(file, offset, size)).map_err(fat)?;
    Ok(())
}

/// Reads `path` from the FAT file system of an ESP at `offset` of `file`.
pub fn read_esp_file(
    file: &File,
    offset: u64,
    size: u64,
    path: &str,
) -> Result<Vec<u8>, DiskError> {
    let fat = |e: io::Error| DiskError::Fat(e);
    let window = Window::new(file, offset, size);
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new()).map_err(fat)?;
    let mut out = Vec::new();
    fs.root_dir()
        .open_file(path)
        .map_err(fat)?
        .read_to_end(&mut out)
        .map_err(fat)?;
    Ok(out)
}

/// fatfs 0.3.6 (the released version) writes long-name entries in front of the
/// `.` and `..` entries of every folder it creates, and points `..` of a folder in
/// the root at the root's cluster instead of 0; `fsck.fat` rejects both. This walks
/// every folder once after writing and puts `.` and `..` first, without long
/// names, with `..` = 0 where the parent is the root.
fn fat32_fix_dot_entries<D: Read + Write + Seek>(disk: &mut D) -> io::Result<()> {
    let mut boot = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut boot)?;
    let le16 = |o: usize| u64::from(u16::from_le_bytes([boot[o], boot[o + 1]]));
    let le32 = |o: usize| {
        u64::from(u32::from_le_bytes([
            boot[o],
            boot[o + 1],
            boot[o + 2],
            boot[o + 3],
        ]))
    };
    let sector = le16(11);
    let cluster_size = sector * u64::from(boot[13]);
    let fat_start = le16(14) * sector;
    let fats = u64::from(boot[16]);
    let fat_size = le32(36) * sector;
    let root_cluster = le32(44);
    let data_start = fat_start + fats * fat_size;
    let chain = |disk: &mut D, first: u64| -> io::Result<Vec<u64>> {
        let mut out = vec![first];
        let mut at = first;
        while out.len() < 1 << 16 {
            let mut raw = [0u8; 4];
            disk.seek(SeekFrom::Start(fat_start + at * 4))?;
            disk.read_exact(&mut raw)?;
            let next = u64::from(u32::from_le_bytes(raw) & 0x0fff_ffff);
            if !(2..0x0fff_fff8).contains(&next) {
                break;
            }
            out.push(next);
            at = next;
        }
        Ok(out)
    };
    let offset = |c: u64| data_start + (c - 2) * cluster_size;
    let mut todo = vec![(root_cluster, true)];
    while let Some((first, is_root)) = todo.pop() {
        let clusters = chain(disk, first)?;
        let mut data = Vec::new();
        for c in &clusters {
            let mut buf = vec![0u8; usize::try_from(cluster_size).unwrap_or(512)];
            disk.seek(SeekFrom::Start(offset(*c)))?;
            disk.read_exact(&mut buf)?;
            data.extend_from_slice(&buf);
        }
        let entries: Vec<[u8; 32]> = data
            .chunks_exact(32)
            .take_while(|e| e[0] != 0)
            .map(|e| e.try_into().expect("32 bytes"))
            .collect();
        let is_lfn = |e: &[u8; 32]| e[11] == 0x0f;
        let name = |e: &[u8; 32]| e[..11].to_vec();
        let (mut dots, mut rest): (Vec<[u8; 32]>, Vec<[u8; 32]>) = (Vec::new(), Vec::new());
        let mut pending_lfn: Vec<[u8; 32]> = Vec::new();
        for e in entries {
            if is_lfn(&e) {
                pending_lfn.push(e);
                continue;
            }
            if name(&e) == b".          " || name(&e) == b"..         " {
                dots.push(e);
                pending_lfn.clear();
                continue;
            }
            rest.append(&mut pending_lfn);
            if e[11] & 0x10 != 0 && e[0] != 0xe5 {
                let cluster = (u64::from(u16::from_le_bytes([e[20], e[21]])) << 16)
                    | u64::from(u16::from_le_bytes([e[26], e[27]]));
                if cluster >= 2 {
                    todo.push((cluster, false));
                }
            }
            rest.push(e);
        }
        if is_root {
            continue;
        }
        dots.sort_by_key(|e| e[1] == b'.');
        for e in dots.iter_mut() {
            if e[1] == b'.' {
                let cluster = (u64::from(u16::from_le_bytes([e[20], e[21]])) << 16)
                    | u64::from(u16::from_le_bytes([e[26], e[27]]));
                if cluster == root_cluster {
                    e[20..22].fill(0);
                    e[26..28].fill(0);
                }
            }
        }
        let mut fixed: Vec<u8> = dots.iter().chain(rest.iter()).flatten().copied().collect();
        fixed.resize(data.len(), 0);
        for (i, c) in clusters.iter().enumerate() {
            let size = usize::try_from(cluster_size).unwrap_or(512);
            disk.seek(SeekFrom::Start(offset(*c)))?;
            disk.write_all(&fixed[i * size..(i + 1) * size])?;
        }
    }
    disk.flush()
}

/// The time mkfs.ext4 stamps the data filesystem with. e2fsprogs takes
/// `E2FSPROGS_FAKE_TIME=0` as "no fake time" and uses the clock, so epoch 0 (the
/// default) becomes one second past it: still fixed, and the build reproducible.
fn mkfs_time(epoch: u64) -> u64 {
    epoch.max(1)
}

/// Makes the ext4 data filesystem in place with `mkfs.ext4 -E offset=`.
fn mkfs_data(out: &Path, input: &DiskInput<'_>, o: &Offsets) -> Result<(), DiskError> {
    // `-m 5`: mkfs.ext4's default, said outright: the init keeps these
    // reserved blocks for the system (see `layout::DATA_RESERVE_UID`).
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "5", "-L", layout::DATA_LABEL, "-U"])
        .arg(input.ids.data.to_string())
        .arg("-E")
        .arg(format!(
            "offset={},hash_seed={},lazy_itable_init=1,root_owner=0:0",
            o.data, input.ids.data
        ))
        .arg(out)
        .arg(format!("{}k", input.sizes.data / 1024))
        .env("E2FSPROGS_FAKE_TIME", mkfs_time(input.epoch).to_string())
        .env("MKE2FS_DEVICE_SECTSIZE", "512")
        .output()
        .map_err(|e| DiskError::Mkfs(format!("cannot run mkfs.ext4 (install e2fsprogs): {e}")))?;
    if !output.status.success() {
        return Err(DiskError::Mkfs(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Where each partition sits, for tests and tools.
pub fn partition_offsets(sizes: &DiskSizes) -> [(u64, u64); 4] {
    let o = offsets(sizes);
    [
        (o.esp, sizes.esp),
        (o.root_a, sizes.root),
        (o.root_b, sizes.root),
        (o.data, sizes.data),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data filesystem made twice, a clock second apart, at epoch 0 and at
    /// another epoch: the same bytes each time.
    #[test]
    fn data_filesystem_is_the_same_at_any_time() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = DiskSizes {
            esp: MIB,
            root: MIB,
            data: 8 * MIB,
        };
        let o = offsets(&sizes);
        for epoch in [0, 1_700_000_000] {
            let make = |name: &str| {
                let path = dir.path().join(name);
                File::create(&path).unwrap().set_len(o.total).unwrap();
                let input = DiskInput {
                    sizes,
                    ids: DiskIds::derive("t", "1.0.0"),
                    kernel: Path::new("/nonexistent"),
                    initramfs: Path::new("/nonexistent"),
                    root: Path::new("/nonexistent"),
                    entry: BootEntry {
                        title: String::new(),
                        version: String::new(),
                        slot: Slot::A,
                        root_partuuid: String::new(),
                        data_partuuid: String::new(),
                        verity: None,
                        extra_cmdline: String::new(),
                        arch: berth_format::Arch::X86_64,
                    },
                    boot_loader: Path::new("/nonexistent"),
                    epoch,
                };
                mkfs_data(&path, &input, &o).unwrap();
                fs::read(&path).unwrap()
            };
            let first = make("a.img");
            // mkfs.ext4 reads the clock in whole seconds: let it tick.
            std::thread::sleep(std::time::Duration::from_millis(1100));
            let second = make("b.img");
            assert!(
                first == second,
                "epoch {epoch}: two data filesystems differ"
            );
        }
    }
}
