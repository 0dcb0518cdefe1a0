//! The bundle reader against bundles made by the test kit.

use std::io::{Cursor, Read};

use super::*;
use crate::keys::base64_decode;
use crate::tar::padding;
use crate::testkit::*;
use crate::PayloadKind;

#[test]
fn a_signed_bundle_reads_back_every_payload() {
    let key = Key::new();
    let made = make(&key);
    let mut reader = BundleReader::open(made.bytes.as_slice(), &key.trusted()).unwrap();
    assert!(reader.verified());
    assert_eq!(reader.manifest(), &made.manifest);
    assert_eq!(reader.manifest_bytes(), made.manifest.to_json().as_slice());
    assert_eq!(reader.signature_key_id(), key.trusted().key_ids()[0]);
    assert_eq!(
        reader.trusted_comment(),
        "timestamp:1700000000\tfile:manifest.json\thashed"
    );
    let mut kinds = Vec::new();
    while let Some(mut p) = reader.next_payload().unwrap() {
        kinds.push(p.info().kind);
        let mut data = Vec::new();
        p.read_to_end(&mut data).unwrap();
        p.finish().unwrap();
        assert_eq!(data, made.payloads[kinds.len() - 1]);
    }
    assert_eq!(kinds, PayloadKind::ALL);
    reader.finish().unwrap();
}

#[test]
fn open_reads_nothing_after_the_signature() {
    let key = Key::new();
    let made = make(&key);
    let (sig_at, sig_len) = made.member(SIGNATURE_MEMBER);
    let head_end = sig_at + sig_len + us(padding(sig_len as u64));
    let mut source = Cursor::new(made.bytes.clone());
    let reader = BundleReader::open(&mut source, &key.trusted()).unwrap();
    assert_eq!(reader.offset(), head_end as u64);
    drop(reader);
    assert_eq!(source.position(), head_end as u64);
}

#[test]
fn unverified_open_names_the_signing_key() {
    let key = Key::new();
    let made = make(&key);
    let reader = BundleReader::open_unverified(made.bytes.as_slice()).unwrap();
    assert!(!reader.verified());
    assert_eq!(reader.signature_key_id(), key.trusted().key_ids()[0]);
}

#[test]
fn another_key_is_refused_with_both_ids() {
    let (signer, other) = (Key::new(), Key::new());
    let made = make(&signer);
    let err = read_all(&made.bytes, &other.trusted()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BundleError::UntrustedKey { .. }), "{text}");
    assert!(
        text.contains(&signer.trusted().key_ids()[0])
            && text.contains(&other.trusted().key_ids()[0]),
        "{text}"
    );
    let err = read_all(&made.bytes, &TrustedKeys::default()).unwrap_err();
    assert!(err.to_string().contains("no trusted keys"), "{err}");
}

#[test]
fn a_key_with_the_same_id_but_other_bytes_does_not_verify() {
    let (signer, other) = (Key::new(), Key::new());
    let made = make(&signer);
    // The other key's ed25519 bytes under the signer's key number.
    let mut raw = base64_decode(signer.public_text().lines().nth(1).unwrap()).unwrap();
    let theirs = base64_decode(other.public_text().lines().nth(1).unwrap()).unwrap();
    raw[10..].copy_from_slice(&theirs[10..]);
    let forged = format!("untrusted comment: forged\n{}\n", encode64(&raw));
    let keys = TrustedKeys::parse(&forged).unwrap();
    let err = read_all(&made.bytes, &keys).unwrap_err();
    assert!(matches!(err, BundleError::SignatureMismatch), "{err}");
}

#[test]
fn every_flipped_byte_of_the_manifest_is_refused() {
    let key = Key::new();
    let made = make(&key);
    let (at, len) = made.member(MANIFEST_MEMBER);
    for i in (at..at + len).step_by(7) {
        let mut bytes = made.bytes.clone();
        bytes[i] ^= 0x01;
        let err = read_all(&bytes, &key.trusted()).unwrap_err();
        assert!(
            matches!(err, BundleError::SignatureMismatch),
            "byte {i}: {err}"
        );
    }
}

#[test]
fn every_flipped_bit_of_the_signature_is_refused() {
    let key = Key::new();
    let made = make(&key);
    let (at, len) = made.member(SIGNATURE_MEMBER);
    let text = std::str::from_utf8(&made.bytes[at..at + len]).unwrap();
    // The untrusted comment is, by design, not covered by the signature.
    let signed_from = at + text.find('\n').unwrap() + 1;
    for i in signed_from..at + len {
        for bit in [0x01, 0x10, 0x40] {
            let mut bytes = made.bytes.clone();
            bytes[i] ^= bit;
            let err = read_all(&bytes, &key.trusted()).expect_err(&format!("byte {i} bit {bit}"));
            assert!(
                matches!(
                    err,
                    BundleError::SignatureMismatch
                        | BundleError::BadSignatureFormat(_)
                        | BundleError::UntrustedKey { .. }
                ),
                "byte {i}: {err}"
            );
        }
    }
}

#[test]
fn a_flipped_bit_in_a_payload_is_detected_while_streaming() {
    let key = Key::new();
    let made = make(&key);
    for info in &made.manifest.payloads {
        let (at, len) = made.member(&info.file);
        for i in (at..at + len).step_by(11) {
            let mut bytes = made.bytes.clone();
            bytes[i] ^= 0x04;
            let mut reader = BundleReader::open(bytes.as_slice(), &key.trusted()).unwrap();
            let err = (|| {
                while let Some(mut p) = reader.next_payload()? {
                    let mut data = Vec::new();
                    p.read_to_end(&mut data).map_err(bundle_error)?;
                    p.finish()?;
                }
                Ok::<(), BundleError>(())
            })()
            .expect_err(&format!("{} byte {} of {len}", info.file, i - at));
            assert!(
                matches!(
                    err,
                    BundleError::HashMismatch { .. }
                        | BundleError::StoredHashMismatch { .. }
                        | BundleError::Payload { .. }
                ),
                "{} byte {}: {err}",
                info.file,
                i - at
            );
            assert!(err.to_string().contains(&info.file), "{err}");
        }
    }
}

#[test]
fn a_flipped_bit_in_a_member_header_is_refused() {
    let key = Key::new();
    let made = make(&key);
    for name in [SIGNATURE_MEMBER, "vmlinuz.zst"] {
        let (at, _) = made.member(name);
        let mut bytes = made.bytes.clone();
        bytes[at - 512 + 3] ^= 0x02;
        let err = read_all(&bytes, &key.trusted()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{name}: {err}");
    }
}

#[test]
fn a_bundle_cut_anywhere_is_refused() {
    let key = Key::new();
    let made = make(&key);
    let total = made.bytes.len();
    let mut cuts: Vec<usize> = (0..total).step_by(61).collect();
    for name in [MANIFEST_MEMBER, SIGNATURE_MEMBER]
        .into_iter()
        .chain(PayloadKind::ALL.iter().map(|k| k.member_name()))
    {
        let (at, len) = made.member(name);
        cuts.extend([
            at - 512,
            at - 1,
            at,
            at + 1,
            at + len / 2,
            at + len - 1,
            at + len,
        ]);
    }
    // Before and inside the end-of-archive marker.
    cuts.extend([total - 1024, total - 513, total - 512, total - 1]);
    for cut in cuts {
        let err = read_all(&made.bytes[..cut], &key.trusted()).expect_err(&format!(
            "a bundle cut at {cut} of {total} bytes was accepted"
        ));
        assert!(
            matches!(
                err,
                BundleError::Truncated(_)
                    | BundleError::NotABundle(_)
                    | BundleError::Payload { .. }
            ),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn a_bundle_cut_inside_a_payload_says_where() {
    let key = Key::new();
    let made = make(&key);
    let (at, len) = made.member("rootfs.img.zst");
    let err = read_all(&made.bytes[..at + len / 2], &key.trusted()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "bundle is truncated: it ends inside rootfs.img.zst (got {} of {len} bytes)",
            len / 2
        )
    );
    let (at, len) = made.member(MANIFEST_MEMBER);
    let err = read_all(&made.bytes[..at + 10], &key.trusted()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("bundle is truncated: it ends inside manifest.json (got 10 of {len} bytes)")
    );
}

#[test]
fn an_extra_member_after_the_payloads_is_refused() {
    let key = Key::new();
    let made = make(&key);
    let mut bytes = made.bytes[..made.bytes.len() - 1024].to_vec();
    push_member(&mut bytes, "evil.sh", b"#!/bin/sh\n");
    end_archive(&mut bytes);
    let err = read_all(&bytes, &key.trusted()).unwrap_err();
    assert!(
        matches!(err, BundleError::ExtraMember(ref n) if n == "evil.sh"),
        "{err}"
    );
    // Zeros after the marker (a tar record's padding) are fine; data is not.
    let mut padded = made.bytes.clone();
    padded.resize(padded.len() + 8192, 0);
    read_all(&padded, &key.trusted()).unwrap();
    padded.push(1);
    assert!(read_all(&padded, &key.trusted()).is_err());
}

#[test]
fn a_bundle_must_start_with_the_manifest() {
    let mut bytes = Vec::new();
    push_member(&mut bytes, "rootfs.img.zst", b"x");
    end_archive(&mut bytes);
    let err = BundleReader::open_unverified(bytes.as_slice()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a berth bundle: first member is rootfs.img.zst (expected manifest.json)"
    );
    let err = BundleReader::open_unverified(&b"\x7fELF and more"[..]).unwrap_err();
    assert!(matches!(err, BundleError::Truncated(_)), "{err}");
    let err = BundleReader::open_unverified(&[b'x'; 2048][..]).unwrap_err();
    assert!(matches!(err, BundleError::NotABundle(_)), "{err}");
}

#[test]
fn oversized_small_members_are_refused_before_reading_them() {
    let mut bytes = header(MANIFEST_MEMBER, 4 * 1024 * 1024 * 1024).to_vec();
    bytes.extend_from_slice(&[b'{'; 512]);
    let err = BundleReader::open_unverified(bytes.as_slice()).unwrap_err();
    assert!(matches!(err, BundleError::TooLarge { .. }), "{err}");
    let mut bytes = Vec::new();
    push_member(&mut bytes, MANIFEST_MEMBER, b"{}");
    bytes.extend_from_slice(&header(SIGNATURE_MEMBER, 5000));
    let err = BundleReader::open_unverified(bytes.as_slice()).unwrap_err();
    assert!(matches!(err, BundleError::TooLarge { .. }), "{err}");
}

#[test]
fn a_payload_that_decompresses_past_its_size_is_stopped() {
    let key = Key::new();
    // A zstd bomb: 64 MiB of zeros, announced as 4096 bytes.
    let bomb = zstd::encode_all(&vec![0u8; 64 << 20][..], 3).unwrap();
    let made = make_with(&key, |m, stored| {
        m.verity = None;
        m.payloads[0].size = 4096;
        m.payloads[0].stored_size = bomb.len() as u64;
        stored[0] = bomb.clone();
    });
    let mut reader = BundleReader::open(made.bytes.as_slice(), &key.trusted()).unwrap();
    let mut p = reader.next_payload().unwrap().unwrap();
    let mut sink = Vec::new();
    let err = bundle_error(p.read_to_end(&mut sink).unwrap_err());
    assert!(
        err.to_string()
            .contains("more than the manifest's 4096 bytes"),
        "{err}"
    );
    assert!(sink.len() <= 4096, "{} bytes came out", sink.len());
}

#[test]
fn a_payload_shorter_than_its_size_is_refused() {
    let key = Key::new();
    let made = make_with(&key, |m, _| m.payloads[1].size += 1);
    let err = read_all(&made.bytes, &key.trusted()).unwrap_err();
    assert!(
        err.to_string()
            .contains("vmlinuz.zst: the compressed data ends after 5000 of 5001 bytes"),
        "{err}"
    );
}

#[test]
fn trailing_bytes_in_a_payload_member_are_refused() {
    let key = Key::new();
    let made = make_with(&key, |m, stored| {
        stored[2].extend_from_slice(b"junk");
        m.payloads[2].stored_size += 4;
    });
    let err = read_all(&made.bytes, &key.trusted()).unwrap_err();
    assert!(err.to_string().contains("initramfs.img.zst"), "{err}");
}

#[test]
fn payloads_must_be_finished_in_turn() {
    let key = Key::new();
    let made = make(&key);
    let mut reader = BundleReader::open(made.bytes.as_slice(), &key.trusted()).unwrap();
    let mut p = reader.next_payload().unwrap().unwrap();
    let mut half = [0u8; 100];
    p.read_exact(&mut half).unwrap();
    drop(p);
    let err = reader.next_payload().unwrap_err();
    assert!(
        matches!(err, BundleError::Unfinished(ref f) if f == "rootfs.img.zst"),
        "{err}"
    );
    let err = reader.finish().unwrap_err();
    assert!(matches!(err, BundleError::Unfinished(_)), "{err}");

    // finish() without reading to the end is refused too.
    let mut reader = BundleReader::open(made.bytes.as_slice(), &key.trusted()).unwrap();
    let p = reader.next_payload().unwrap().unwrap();
    let err = p.finish().unwrap_err();
    assert!(err.to_string().contains("only 0 of 12288 bytes"), "{err}");
}

#[test]
fn finish_after_an_exact_read_checks_the_end() {
    let key = Key::new();
    let made = make(&key);
    let mut reader = BundleReader::open(made.bytes.as_slice(), &key.trusted()).unwrap();
    for expected in &made.payloads {
        let mut p = reader.next_payload().unwrap().unwrap();
        let mut data = vec![0u8; expected.len()];
        p.read_exact(&mut data).unwrap();
        p.finish().unwrap();
        assert_eq!(&data, expected);
    }
    assert!(reader.next_payload().unwrap().is_none());
    reader.finish().unwrap();
}
