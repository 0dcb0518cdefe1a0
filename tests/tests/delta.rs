//! Delta updates without a VM: `berth publish` (the library) writes a real
//! repository, a loopback HTTP server serves it and logs every request, and the
//! agent (the library) installs onto a device made of scratch files — slot
//! partitions as files, an ESP folder — exactly as `berth-update update` does
//! on a device. The VM tests in update.rs and fleet.rs then show the same on a
//! booted image.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use berth_agent::install::{Checkpoint, InstallOptions, Observer};
use berth_agent::system::{RunningImage, SlotDevice, System};
use berth_agent::{update, Repository, UpdateOutcome};
use berth_builder::release::publish::{publish, PublishOptions};
use berth_bundle::channel::ChannelName;
use berth_bundle::delta;
use berth_bundle::testkit::{bundle_signed_by, content};
use berth_bundle::SecretKey;
use berth_format::entries::{self, EspState};
use berth_format::layout::{BootEntry, Slot, VerityParams};
use berth_format::state::{DeliveryMethod, InstallOutcome, UpdateState};
use berth_tests::FileServer;

/// What an install said; panics at `cut` (a power cut's stand-in: nothing
/// after that point runs).
#[derive(Default)]
struct Seen {
    steps: Vec<String>,
    cut: Option<Checkpoint>,
}

impl Observer for Seen {
    fn checkpoint(&mut self, point: Checkpoint) {
        if self.cut == Some(point) {
            panic!("power cut at {}", point.name());
        }
    }
    fn progress(&mut self, _what: &str, _done: u64, _total: u64) {}
    fn step(&mut self, message: &str) {
        self.steps.push(message.to_string());
    }
}

/// The payloads of a release: a 3 MiB root, a 1 MiB kernel, an initramfs.
fn payloads(root_seed: u32) -> Vec<Vec<u8>> {
    vec![
        content(root_seed, 3 << 20),
        content(2, 1 << 20),
        content(3, 300_000),
    ]
}

/// A repository folder, its key and the releases published into it.
struct Repo {
    dir: PathBuf,
    key_path: PathBuf,
    key: SecretKey,
}

impl Repo {
    fn new(dir: &Path) -> Repo {
        let key = SecretKey::generate().unwrap();
        let key_path = dir.join("release.key");
        fs::write(&key_path, key.secret_key_text()).unwrap();
        Repo {
            dir: dir.join("repo"),
            key_path,
            key,
        }
    }

    /// Publishes `version` with `payloads`; returns the bundle's sha256.
    fn publish(&self, version: &str, payloads: &[Vec<u8>]) -> String {
        let bundle = self.dir.with_file_name(format!("hello-{version}.bundle"));
        fs::write(&bundle, bundle_signed_by(&self.key, version, payloads)).unwrap();
        let published = publish(&PublishOptions {
            bundles: vec![bundle],
            repo: self.dir.clone(),
            key: self.key_path.clone(),
            channel: ChannelName::new("stable").unwrap(),
            lifetime: 86_400 * 365 * 100,
            now: berth_format::state::now(),
            rollout: None,
            change: None,
            prune: None,
        })
        .unwrap();
        published.added[0].sha256.clone()
    }

    /// The chunks of `sha256`'s release the device (running `running`) lacks.
    fn new_chunks(&self, sha256: &str, running: &[Vec<u8>]) -> BTreeSet<String> {
        let mut held = BTreeSet::new();
        for data in running {
            delta::cut(data.as_slice(), delta::CHUNKING, |_, bytes| {
                held.insert(delta::sha256_hex(bytes));
                Ok(())
            })
            .unwrap();
        }
        let index: delta::ChunkIndex = serde_json::from_slice(
            &fs::read(self.dir.join(delta::chunk_index_path(sha256))).unwrap(),
        )
        .unwrap();
        index
            .payloads
            .iter()
            .flat_map(|p| &p.chunks)
            .map(|c| c.sha256.clone())
            .filter(|h| !held.contains(h))
            .collect()
    }
}

/// A device running 1.0.0 (`running`) from slot A, trusting the repository's key.
fn device(dir: &Path, repo: &Repo, running: &[Vec<u8>]) -> System {
    let esp = dir.join("esp");
    fs::create_dir_all(esp.join("loader/entries")).unwrap();
    let slot = |slot: Slot| {
        let node = dir.join(format!("root-{slot}"));
        fs::File::create(&node).unwrap().set_len(8 << 20).unwrap();
        SlotDevice {
            slot,
            node,
            partuuid: format!("0000000{}-0000-4000-8000-000000000000", slot as u8 + 1),
            size: 8 << 20,
        }
    };
    let system = System {
        esp,
        state_path: dir.join("var/lib/berth/update/state.toml"),
        data_report: dir.join("run/berth/data.toml"),
        keys_dir: dir.join("keys"),
        booted: Slot::A,
        image: RunningImage {
            name: "hello".into(),
            version: "1.0.0".into(),
            compatible: "berth-hello".into(),
        },
        slots: [slot(Slot::A), slot(Slot::B)],
        data_partuuid: "00000009-0000-4000-8000-000000000000".into(),
        warnings: Vec::new(),
    };
    fs::create_dir_all(&system.keys_dir).unwrap();
    fs::write(
        system.keys_dir.join("release.pub"),
        repo.key.public_key_text(),
    )
    .unwrap();
    // Slot A holds 1.0.0: its root at the start of the partition, its kernel
    // and initramfs on the ESP, a blessed entry.
    let mut root = running[0].clone();
    root.resize(8 << 20, 0);
    fs::write(&system.slot(Slot::A).node, root).unwrap();
    let kernel = system.esp.join(Slot::A.kernel_path());
    fs::create_dir_all(kernel.parent().unwrap()).unwrap();
    fs::write(&kernel, &running[1]).unwrap();
    fs::write(system.esp.join(Slot::A.initramfs_path()), &running[2]).unwrap();
    let entry = BootEntry {
        title: "berth hello 1.0.0".into(),
        version: "1.0.0".into(),
        slot: Slot::A,
        root_partuuid: system.slot(Slot::A).partuuid.clone(),
        data_partuuid: system.data_partuuid.clone(),
        verity: Some(exact_verity(running[0].len() as u64)),
        extra_cmdline: String::new(),
        arch: berth_format::Arch::native(),
    };
    entries::install_entry(&system.esp, &entry, 3).unwrap();
    entries::bless(&system.esp, Slot::A).unwrap();
    system
}

/// Verity parameters whose filesystem and tree span exactly `len` bytes: the
/// agent reads that much of the running root (its boot entry says how much).
fn exact_verity(len: u64) -> VerityParams {
    (1..=len / 4096)
        .rev()
        .map(|blocks| VerityParams {
            root_hash: "ab".repeat(32),
            salt: String::new(),
            data_blocks: blocks,
            hash_offset: blocks * 4096,
        })
        .find(|p| p.slot_bytes() == len)
        .expect("a tree that ends at the payload's end")
}

fn update_from(system: &System, server: &FileServer, seen: &mut Seen) -> UpdateOutcome {
    let repo = Repository::parse(&format!("http://127.0.0.1:{}", server.port)).unwrap();
    update(
        system,
        &repo,
        &ChannelName::new("stable").unwrap(),
        &InstallOptions::default(),
        seen,
    )
    .unwrap_or_else(|e| panic!("update: {e}; steps: {:#?}", seen.steps))
}

/// Slot B and its ESP files hold `release`, and its entry boots next.
fn assert_installed(system: &System, release: &[Vec<u8>]) {
    let slot = fs::read(&system.slot(Slot::B).node).unwrap();
    assert!(slot[..release[0].len()] == release[0][..], "slot B's root");
    assert_eq!(
        fs::read(system.esp.join(Slot::B.kernel_path())).unwrap(),
        release[1]
    );
    assert_eq!(
        fs::read(system.esp.join(Slot::B.initramfs_path())).unwrap(),
        release[2]
    );
    assert_eq!(
        EspState::read(&system.esp).unwrap().next_boot(),
        Some(Slot::B)
    );
}

fn delivery(system: &System) -> berth_format::state::Delivery {
    let install = UpdateState::load(&system.state_path)
        .unwrap()
        .install
        .unwrap();
    assert_eq!(install.outcome, InstallOutcome::Committed, "{install:?}");
    install
        .delivery
        .expect("a repository install records its delivery")
}

/// GETs of paths starting with `prefix` in the server's log.
fn gets(server: &FileServer, prefix: &str) -> Vec<String> {
    server
        .log()
        .requests
        .iter()
        .filter(|r| r.starts_with(&format!("GET /{prefix}")))
        .cloned()
        .collect()
}

#[test]
fn a_one_file_change_installs_by_delta_fetching_only_the_new_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new(dir.path());
    let v1 = payloads(1);
    let mut v2 = v1.clone();
    v2[0][1 << 20..(1 << 20) + 5000].fill(b'z');
    repo.publish("1.0.0", &v1);
    let sha = repo.publish("1.1.0", &v2);
    let system = device(dir.path(), &repo, &v1);
    let server = FileServer::start(&repo.dir);
    let mut seen = Seen::default();
    let outcome = update_from(&system, &server, &mut seen);
    assert!(matches!(outcome, UpdateOutcome::Installed(..)));
    assert_installed(&system, &v2);

    let d = delivery(&system);
    assert_eq!(d.method, DeliveryMethod::Delta, "{d:?}");
    // Only the chunk index and the chunks the device lacked came over the wire.
    assert!(gets(&server, "bundles/").is_empty(), "{:?}", server.log());
    let wanted = repo.new_chunks(&sha, &v1);
    assert!((1..=3).contains(&wanted.len()), "{wanted:?}");
    assert_eq!(gets(&server, "chunks/").len(), wanted.len());
    for hash in &wanted {
        assert_eq!(gets(&server, &delta::chunk_path(hash)).len(), 1, "{hash}");
    }
    // The index came compressed, not as its JSON.
    let index = delta::chunk_index_path(&sha);
    assert_eq!(gets(&server, &format!("{index}.zst")).len(), 1);
    assert_eq!(gets(&server, &format!("{index} ")).len(), 0);
    assert!(
        d.fetched * 100 <= d.bundle_size * 5,
        "fetched {} of {}",
        d.fetched,
        d.bundle_size
    );
    let status = berth_agent::status(&system).unwrap().render();
    assert!(status.contains("by delta"), "{status}");
    // The staging folder is gone once the slot holds the chunks.
    assert!(!system.state_path.with_file_name("delta-chunks").exists());
}

#[test]
fn a_tampered_or_missing_chunk_falls_back_to_the_full_bundle() {
    for damage in ["tampered", "missing"] {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::new(dir.path());
        let v1 = payloads(1);
        let mut v2 = v1.clone();
        v2[0][2 << 20..(2 << 20) + 3000].fill(b'q');
        repo.publish("1.0.0", &v1);
        let sha = repo.publish("1.1.0", &v2);
        for hash in repo.new_chunks(&sha, &v1) {
            let path = repo.dir.join(delta::chunk_path(&hash));
            match damage {
                // A valid zstd frame of other bytes: only the hash catches it.
                "tampered" => fs::write(&path, zstd::encode_all(&[7u8; 100][..], 3).unwrap()),
                _ => fs::remove_file(&path),
            }
            .unwrap();
        }
        let system = device(dir.path(), &repo, &v1);
        let server = FileServer::start(&repo.dir);
        update_from(&system, &server, &mut Seen::default());
        assert_installed(&system, &v2);
        let d = delivery(&system);
        assert_eq!(d.method, DeliveryMethod::Full, "{damage}: {d:?}");
        let why = if damage == "tampered" {
            "does not match its name"
        } else {
            "missing from the repository"
        };
        assert!(d.reason.contains(why), "{damage}: {}", d.reason);
        assert_eq!(gets(&server, "bundles/").len(), 1, "{:?}", server.log());
        let status = berth_agent::status(&system).unwrap().render();
        assert!(status.contains("as the full bundle"), "{status}");
    }
}

#[test]
fn without_a_chunk_index_or_when_most_is_new_the_full_bundle_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new(dir.path());
    let v1 = payloads(1);
    repo.publish("1.0.0", &v1);
    // Everything new: a root, kernel and initramfs the device has none of.
    let v2 = vec![
        content(9, 3 << 20),
        content(8, 1 << 20),
        content(7, 300_000),
    ];
    repo.publish("1.1.0", &v2);
    let system = device(dir.path(), &repo, &v1);
    let server = FileServer::start(&repo.dir);
    update_from(&system, &server, &mut Seen::default());
    assert_installed(&system, &v2);
    let d = delivery(&system);
    assert_eq!(d.method, DeliveryMethod::Full);
    assert!(d.reason.contains("more than the 80 %"), "{}", d.reason);
    assert!(gets(&server, "chunks/").is_empty());

    // A repository written before delta updates (no chunk-index/).
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new(dir.path());
    repo.publish("1.0.0", &v1);
    let mut v3 = v1.clone();
    v3[0][0] ^= 1;
    repo.publish("1.1.0", &v3);
    fs::remove_dir_all(repo.dir.join(delta::CHUNK_INDEX_DIR)).unwrap();
    let system = device(dir.path(), &repo, &v1);
    let server = FileServer::start(&repo.dir);
    update_from(&system, &server, &mut Seen::default());
    assert_installed(&system, &v3);
    let d = delivery(&system);
    assert_eq!(d.method, DeliveryMethod::Full);
    assert!(d.reason.contains("no chunk index"), "{}", d.reason);
}

/// A repository published before indexes had a compressed copy: the device
/// reads the JSON, and publishing again adds the copy without cutting anything.
#[test]
fn an_index_without_its_compressed_copy_is_read_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new(dir.path());
    let v1 = payloads(1);
    let mut v2 = v1.clone();
    v2[0][1 << 20..(1 << 20) + 5000].fill(b'y');
    repo.publish("1.0.0", &v1);
    let sha = repo.publish("1.1.0", &v2);
    let index = delta::chunk_index_path(&sha);
    let compressed = delta::compressed_path(&repo.dir.join(&index));
    let json = fs::read(repo.dir.join(&index)).unwrap();
    assert_eq!(
        delta::decompress_index(&fs::read(&compressed).unwrap()).unwrap(),
        json
    );
    assert!(fs::metadata(&compressed).unwrap().len() * 2 < json.len() as u64);
    fs::remove_file(&compressed).unwrap();

    let system = device(dir.path(), &repo, &v1);
    let server = FileServer::start(&repo.dir);
    update_from(&system, &server, &mut Seen::default());
    assert_installed(&system, &v2);
    assert_eq!(delivery(&system).method, DeliveryMethod::Delta);
    assert_eq!(
        gets(&server, &format!("{index}.zst")),
        [format!("GET /{index}.zst 404")]
    );
    assert_eq!(gets(&server, &format!("{index} ")).len(), 1);

    repo.publish("1.2.0", &payloads(5));
    assert_eq!(
        delta::decompress_index(&fs::read(&compressed).unwrap()).unwrap(),
        json
    );
}

#[test]
fn a_cut_delta_install_leaves_the_old_slot_booting_and_the_next_one_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new(dir.path());
    let v1 = payloads(1);
    let mut v2 = v1.clone();
    // Three changes far apart: several chunks to fetch.
    for at in [1usize << 19, 3 << 19, 5 << 19] {
        v2[0][at..at + 2000].fill(b'k');
    }
    repo.publish("1.0.0", &v1);
    let sha = repo.publish("1.1.0", &v2);
    let wanted: Vec<String> = repo.new_chunks(&sha, &v1).into_iter().collect();
    assert!(wanted.len() >= 3, "{wanted:?}");
    let system = device(dir.path(), &repo, &v1);
    let server = FileServer::start(&repo.dir);

    // Cut before the first chunk, in the middle of the fetch, while the root is
    // being written, and after the last chunk before the commit: the target
    // has no entry, slot A still boots.
    for cut in [
        Checkpoint::Chunks(0),
        Checkpoint::Chunks(50),
        Checkpoint::Rootfs(50),
        Checkpoint::EntryWritten,
    ] {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut seen = Seen {
                cut: Some(cut),
                ..Seen::default()
            };
            update_from(&system, &server, &mut seen);
        }));
        assert!(result.is_err(), "the cut at {} happened", cut.name());
        let esp = EspState::read(&system.esp).unwrap();
        assert_eq!(
            esp.next_boot(),
            Some(Slot::A),
            "after a cut at {}",
            cut.name()
        );
        assert!(esp.slot(Slot::B).is_none());
    }

    // Cut in the middle of the fetch: some chunks are staged, one of them
    // damaged by the cut. The next update fetches only what is not staged
    // intact.
    let staging = system.state_path.with_file_name("delta-chunks");
    fs::remove_dir_all(&staging).unwrap();
    fs::create_dir_all(&staging).unwrap();
    let chunk = |hash: &str| {
        zstd::decode_all(&fs::read(repo.dir.join(delta::chunk_path(hash))).unwrap()[..]).unwrap()
    };
    fs::write(staging.join(&wanted[0]), chunk(&wanted[0])).unwrap();
    fs::write(staging.join(&wanted[1]), &chunk(&wanted[1])[..100]).unwrap();
    let before = gets(&server, "chunks/").len();
    update_from(&system, &server, &mut Seen::default());
    assert_installed(&system, &v2);
    assert_eq!(delivery(&system).method, DeliveryMethod::Delta);
    let fetched: Vec<String> = gets(&server, "chunks/")[before..].to_vec();
    assert_eq!(fetched.len(), wanted.len() - 1, "{fetched:?}");
    assert!(
        !fetched.iter().any(|r| r.contains(&wanted[0])),
        "{fetched:?}"
    );
    assert!(
        fetched.iter().any(|r| r.contains(&wanted[1])),
        "{fetched:?}"
    );
}

#[test]
fn a_release_the_install_refuses_fetches_no_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new(dir.path());
    let v1 = payloads(1);
    let mut v2 = v1.clone();
    v2[0][0] ^= 1;
    repo.publish("1.0.0", &v1);
    repo.publish("1.1.0", &v2);
    let system = device(dir.path(), &repo, &v1);
    // The running slot is still on trial: every install is refused.
    let entry = fs::read_dir(system.esp.join("loader/entries"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = fs::read_to_string(&entry).unwrap();
    entries::remove_slot_entries(&system.esp, Slot::A).unwrap();
    entries::install_entry(&system.esp, &BootEntry::parse(&text).unwrap(), 3).unwrap();
    let server = FileServer::start(&repo.dir);
    let repository = Repository::parse(&format!("http://127.0.0.1:{}", server.port)).unwrap();
    let err = update(
        &system,
        &repository,
        &ChannelName::new("stable").unwrap(),
        &InstallOptions::default(),
        &mut Seen::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("is not marked good yet"), "{err}");
    assert!(gets(&server, "chunks/").is_empty(), "{:?}", server.log());
    let install = UpdateState::load(&system.state_path)
        .unwrap()
        .install
        .unwrap();
    assert_eq!(install.outcome, InstallOutcome::Failed);
    assert!(
        install.reason.contains("not marked good"),
        "{}",
        install.reason
    );
    assert!(EspState::read(&system.esp).unwrap().slot(Slot::B).is_none());
}
