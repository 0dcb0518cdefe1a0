//! Writes the generated seeds of the corpora (`corpus/NAME/seed-*`) with
//! berth's own writers: a bundle as `berth bundle` writes it, its manifest and
//! signature, a channel index and a chunk index as `berth publish` writes
//! them, DHCP and SNTP answers as a server sends them. Run by hand when a
//! format changes (`cargo test -p berth-fuzz --test seeds -- --ignored`);
//! the other seeds are real files copied in (see docs/testing.md).

use std::fs;
use std::path::{Path, PathBuf};

use berth_bundle::channel::ChannelIndex;
use berth_bundle::delta::{ChunkIndex, ChunkRef, ChunkedPayload, CHUNKING, CHUNK_INDEX_FORMAT};
use berth_bundle::reader::BundleReader;
use berth_bundle::testkit::{bundle_signed_by, content};
use berth_bundle::SecretKey;

fn corpus(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn sha256_hex(bytes: &[u8]) -> String {
    berth_bundle::delta::sha256_hex(bytes)
}

#[test]
#[ignore = "writes the corpora's generated seeds"]
fn write_seeds() {
    let key = SecretKey::generate().unwrap();
    let payloads = vec![content(1, 8192), content(2, 300), content(3, 200)];
    let bundle = bundle_signed_by(&key, "1.2.0", &payloads);
    fs::write(corpus("bundle").join("seed-bundle"), &bundle).unwrap();
    let reader = BundleReader::open_unverified(std::io::Cursor::new(&bundle)).unwrap();
    let manifest_bytes = reader.manifest_bytes().to_vec();
    let signature = reader.signature_bytes().to_vec();
    fs::write(corpus("manifest").join("seed-manifest"), &manifest_bytes).unwrap();
    fs::write(corpus("signature").join("seed-signature"), &signature).unwrap();
    fs::write(
        corpus("signature").join("seed-public-key"),
        key.public_key_text(),
    )
    .unwrap();

    let bundle_sha = sha256_hex(&bundle);
    let index = serde_json::json!({
        "format": 1,
        "channel": "stable",
        "generated": 1_700_000_000u64,
        "expires": 1_800_000_000u64,
        "bundles": [
            {
                "name": "hello", "compatible": "hello", "version": "1.0.0",
                "min_version": null,
                "path": format!("bundles/{}.bundle", "ab".repeat(32)),
                "size": 1000, "sha256": "ab".repeat(32)
            },
            {
                "name": "hello", "compatible": "hello", "version": "1.2.0",
                "min_version": "1.0.0",
                "path": format!("bundles/{bundle_sha}.bundle"),
                "size": bundle.len(), "sha256": bundle_sha,
                "rollout": {"start": 1_700_000_000u64, "waves": [{"percent": 10, "after": 0}, {"percent": 100, "after": 3600}]},
                "paused": true, "paused_since": 1_700_000_100u64
            }
        ]
    });
    let index_bytes = serde_json::to_vec_pretty(&index).unwrap();
    // Written only if berth reads it: a seed the parser refuses seeds little.
    let parsed = ChannelIndex::from_json(&index_bytes);
    let index_bytes = match parsed {
        Ok(i) => i.to_json(),
        Err(e) => panic!("the seed channel index is refused: {e}"),
    };
    fs::write(corpus("channel_index").join("seed-index"), index_bytes).unwrap();

    let manifest = berth_bundle::Manifest::from_json(&manifest_bytes).unwrap();
    let chunk_index = ChunkIndex {
        format: CHUNK_INDEX_FORMAT,
        bundle_sha256: bundle_sha,
        bundle_size: bundle.len() as u64,
        manifest: String::from_utf8(manifest_bytes.clone()).unwrap(),
        manifest_signature: String::from_utf8(signature).unwrap(),
        chunking: CHUNKING,
        payloads: manifest
            .payloads
            .iter()
            .zip(&payloads)
            .map(|(info, data)| ChunkedPayload {
                kind: info.kind,
                size: info.size,
                sha256: info.sha256.clone(),
                chunks: data
                    .chunks(CHUNKING.min as usize)
                    .map(|c| ChunkRef {
                        sha256: sha256_hex(c),
                        size: u32::try_from(c.len()).unwrap(),
                        stored_size: u32::try_from(c.len() / 2 + 1).unwrap(),
                    })
                    .collect(),
            })
            .collect(),
    };
    chunk_index.validate(&manifest).unwrap();
    fs::write(
        corpus("chunk_index").join("seed-chunk-index"),
        chunk_index.to_json(),
    )
    .unwrap();

    // DHCP: an OFFER, then an ACK, then a NAK, as berth_fuzz::dhcp reads them
    // (pieces of a u16 length and the datagram).
    let reply = |kind: u8, extra: &[u8]| {
        let mut m = vec![0u8; 236];
        m[0] = 2; // BOOTREPLY
        m[1] = 1;
        m[2] = 6;
        m[16..20].copy_from_slice(&[10, 0, 2, 15]);
        m.extend_from_slice(&[99, 130, 83, 99]);
        m.extend_from_slice(&[53, 1, kind, 54, 4, 10, 0, 2, 2]);
        m.extend_from_slice(extra);
        m.push(255);
        m
    };
    let lease = [
        1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1, 42, 4, 10, 0, 2,
        2, 51, 4, 0, 0, 0, 60, 58, 4, 0, 0, 0, 30, 59, 4, 0, 0, 0, 50, 12, 3, b'a', b'b', b'c',
    ];
    let mut dhcp = Vec::new();
    for (kind, extra) in [
        (2u8, &lease[..]),
        (5, &lease[..]),
        (5, &lease[..]),
        (6, &[][..]),
    ] {
        let m = reply(kind, extra);
        dhcp.extend_from_slice(&u16::try_from(m.len()).unwrap().to_le_bytes());
        dhcp.extend_from_slice(&m);
    }
    fs::write(corpus("dhcp").join("seed-offer-ack-nak"), dhcp).unwrap();

    // SNTP: a stratum 2 server's answer to a request sent at 2023-11-14.
    let secs = |s: u64| (s + berth_init::ntp::UNIX_OFFSET) << 32;
    let mut answer = [0u8; 48];
    answer[0] = (4 << 3) | 4;
    answer[1] = 2;
    answer[24..32].copy_from_slice(&secs(1_700_000_000).to_be_bytes());
    answer[32..40].copy_from_slice(&(secs(1_700_000_100) | 0x8000_0000).to_be_bytes());
    answer[40..48].copy_from_slice(&(secs(1_700_000_100) | 0x9000_0000).to_be_bytes());
    fs::write(corpus("sntp").join("seed-answer"), answer).unwrap();
}
