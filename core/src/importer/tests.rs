use std::io::Cursor;

use super::json_array::{ArrayScanner, ScanError};
use super::lines::{LineError, LineReader};
use super::*;

#[test]
fn formats_are_detected_from_content() {
    let cases: &[(&[u8], Format)] = &[
        (b"-----BEGIN CERTIFICATE-----\r\nMII", Format::Pem),
        (b"subject=CN=x\n-----BEGIN CERTIFICATE-----\n", Format::Pem),
        (b"\x30\x82\x01\x00", Format::Der),
        (b"\xc0\x02\xc1", Format::Optiga),
        (b"c0 02 c1 00 02 be", Format::Optiga),
        (b"0x30, 0x82", Format::Optiga),
        (b"7z\xbc\xaf\x27\x1c\x00\x04", Format::CloudIdBundle),
        (b"  [\n {\"payload\"", Format::MicrochipManifest),
        (b"MAC,cn,cert\r\n", Format::EspressifCsv),
        (b"{\"format\":\"idbridge-manifest\",\"version\":1}\n{\"cert\":\"-----BEGIN CERTIFICATE-----\"}", Format::IdbridgeManifest),
        (b"{\n    \"e0f0\": {", Format::OptigaDump),
    ];
    for (head, want) in cases {
        assert_eq!(
            detect_bytes(head),
            Ok(*want),
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
    assert_eq!(detect_bytes(b""), Err("empty file".to_owned()));
    assert!(
        detect_bytes(b"hello")
            .unwrap_err()
            .contains("unknown format")
    );
    assert!(detect_bytes(b"{\"a\":1}").is_err());
}

#[test]
fn format_and_slot_names_round_trip() {
    for f in Format::ALL {
        assert_eq!(f.as_str().parse::<Format>().unwrap(), f);
    }
    assert!("zip".parse::<Format>().is_err());
    assert_eq!("e0e1".parse::<Slot>().unwrap(), Slot::E0E1);
    assert!(Slot::All.includes("e0e2"));
    assert!(!Slot::E0E0.includes("E0E1"));
    assert!("E0E3".parse::<Slot>().is_err());
}

#[test]
fn infineon_file_names() {
    assert_eq!(
        infineon_file_name("a.7z!b.7z!0A091B5C001500070063_E0E1.pem"),
        Some(("0A091B5C001500070063".to_owned(), "E0E1".to_owned()))
    );
    assert_eq!(infineon_file_name("device.pem"), None);
    assert_eq!(infineon_file_name("0A091B5C001500070063_E0F0.pem"), None);
}

#[test]
fn guids_are_redacted_to_batch_tags() {
    let name = "78211223032C7EFA_b41425b9-b42b-47fd-95c2-f981b4c61561_E0E0_Certs.7z";
    let red = bundle::redact_guids(name);
    assert!(!red.contains("b41425b9"));
    assert_eq!(
        red,
        format!(
            "78211223032C7EFA_{}_E0E0_Certs.7z",
            crate::identity::BatchRef::new("b41425b9-b42b-47fd-95c2-f981b4c61561").tag()
        )
    );
    assert_eq!(bundle::redact_guids("plain-ü.7z"), "plain-ü.7z");
}

fn scan(input: &str, max: usize) -> Vec<Result<String, String>> {
    let mut s = ArrayScanner::new(Box::new(Cursor::new(input.as_bytes().to_vec())), max);
    let mut out = Vec::new();
    for _ in 0..100 {
        match s.next_element() {
            Ok(Some(e)) => out.push(Ok(String::from_utf8(e.bytes).unwrap())),
            Ok(None) => break,
            Err(ScanError::Syntax { line, message }) => out.push(Err(format!("{line}: {message}"))),
            Err(ScanError::TooLarge { index, .. }) => out.push(Err(format!("too large {index}"))),
            Err(ScanError::Io(e)) => out.push(Err(e.to_string())),
        }
    }
    out
}

#[test]
fn json_array_scanner_splits_elements() {
    let got = scan("[ {\"a\":\"x]}\\\"\"}, [1,2],\n 3 , \"s,]\" ]", 100);
    assert_eq!(
        got,
        vec![
            Ok("{\"a\":\"x]}\\\"\"}".to_owned()),
            Ok("[1,2]".to_owned()),
            Ok("3".to_owned()),
            Ok("\"s,]\"".to_owned()),
        ]
    );
    assert_eq!(scan("[]", 10), vec![]);
    assert_eq!(
        scan("[{\"a\":1}", 10).last().unwrap().as_ref().unwrap_err(),
        "1: truncated: the array is never closed"
    );
    assert!(
        scan("{\"a\":1}", 10)[0]
            .as_ref()
            .unwrap_err()
            .contains("not a JSON array")
    );
    assert!(
        scan("[{\"a\":\"", 10)[0]
            .as_ref()
            .unwrap_err()
            .contains("truncated inside entry 0")
    );
    assert_eq!(
        scan("[\"0123456789abc\", 1]", 5),
        vec![Err("too large 0".to_owned()), Ok("1".to_owned())]
    );
    assert!(
        scan("[1] x", 5)[1]
            .as_ref()
            .unwrap_err()
            .contains("after the closing")
    );
}

#[test]
fn line_reader_bounds_lines_and_strips_crlf() {
    let mut r = LineReader::new(Box::new(Cursor::new(b"ab\r\nccccccccc\nd".to_vec())), 4);
    assert_eq!(r.next_line().unwrap().unwrap(), (1, &b"ab"[..]));
    assert!(matches!(
        r.next_line(),
        Err(LineError::TooLong { line: 2, max: 4 })
    ));
    assert_eq!(r.next_line().unwrap().unwrap(), (3, &b"d"[..]));
    assert!(r.next_line().unwrap().is_none());
}

#[test]
fn optiga_identity_tag_unwraps_a_chain() {
    let leaf = [0x30, 0x03, 0x02, 0x01, 0x01];
    let ca = [0x30, 0x03, 0x02, 0x01, 0x02];
    let mut chain = Vec::new();
    for c in [&leaf[..], &ca[..]] {
        chain.extend_from_slice(&[0, 0, c.len() as u8]);
        chain.extend_from_slice(c);
    }
    let mut body = vec![0, 0, chain.len() as u8];
    body.extend(chain);
    let mut tag = vec![0xC0, 0, body.len() as u8];
    tag.extend(body);
    let certs = optiga::decode_object(&tag).unwrap();
    assert_eq!(certs, vec![leaf.to_vec(), ca.to_vec()]);
    assert!(
        optiga::decode_object(&tag[..7])
            .unwrap_err()
            .contains("TLS identity")
    );
    assert!(
        optiga::decode_object(b"\x05\x00")
            .unwrap_err()
            .contains("0x05")
    );
}

/// Cloud ID bundles built in the test with the 7z writer: bombs, budgets, skipped blocks.
mod bundles {
    use std::io::Cursor;

    use sevenz_rust2::encoder_options::Lzma2Options;
    use sevenz_rust2::{ArchiveEntry, ArchiveWriter, EncoderConfiguration, EncoderMethod};

    use super::*;
    use crate::identity::BatchRef;

    const GUID: &str = "b41425b9-b42b-47fd-95c2-f981b4c61561";

    fn cert_pem(n: u32) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("chip {n}"));
        p.self_signed(&key).unwrap().pem().into_bytes()
    }

    /// A 7z with one block per entry (or one solid block), compressed with `method`.
    fn archive(entries: &[(&str, &[u8])], method: EncoderConfiguration, solid: bool) -> Vec<u8> {
        let mut w = ArchiveWriter::new(Cursor::new(Vec::new())).unwrap();
        w.set_content_methods(vec![method]);
        if solid {
            let names = entries
                .iter()
                .map(|(n, _)| ArchiveEntry::new_file(n))
                .collect();
            let readers = entries.iter().map(|(_, d)| (*d).into()).collect();
            w.push_archive_entries(names, readers).unwrap();
        } else {
            for (name, data) in entries {
                w.push_archive_entry(ArchiveEntry::new_file(name), Some(*data))
                    .unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    fn copy() -> EncoderConfiguration {
        EncoderMethod::COPY.into()
    }

    fn lzma2() -> EncoderConfiguration {
        Lzma2Options::from_level(1).into()
    }

    fn import(
        bytes: Vec<u8>,
        slot: Slot,
        limits: Limits,
    ) -> Vec<std::result::Result<Imported, EntryError>> {
        let opts = ImportOptions { slot, limits };
        open_reader(
            Box::new(Cursor::new(bytes)),
            "reel.7z".to_owned(),
            Format::CloudIdBundle,
            &opts,
        )
        .collect()
    }

    /// Entries of at most 1 MiB; the rest as default.
    fn small_entries() -> Limits {
        Limits {
            max_entry: 1 << 20,
            ..Limits::default()
        }
    }

    fn certs(items: &[std::result::Result<Imported, EntryError>]) -> usize {
        items
            .iter()
            .filter(|i| matches!(i, Ok(Imported::Cert(_))))
            .count()
    }

    fn errors(items: &[std::result::Result<Imported, EntryError>]) -> Vec<&EntryError> {
        items.iter().filter_map(|i| i.as_ref().err()).collect()
    }

    /// Flips the first byte of `marker` in `bytes` (stored, so it is there verbatim).
    fn corrupt(bytes: &mut [u8], marker: &[u8]) {
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker)
            .expect("the marker is stored verbatim");
        bytes[at] ^= 0xFF;
    }

    #[test]
    fn a_7z_bomb_is_refused_from_its_header_naming_the_file() {
        // 16 MiB of zeros in a few KiB, 16 times the entry limit (scaled down from the
        // default 64 MiB, which only makes building the bomb slower).
        let huge = vec![0u8; 16 << 20];
        let name = format!("78211223032C7EFA_{GUID}_E0E0_Certs.7z");
        let mut bomb = archive(&[(name.as_str(), &huge)], lzma2(), false);
        drop(huge);
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        // Corrupt the compressed data: were it decoded, the error would be another one.
        let mid = bomb.len() / 2;
        bomb[32..mid].iter_mut().for_each(|b| *b ^= 0x5A);

        let items = import(bomb, Slot::E0E0, small_entries());
        let errs = errors(&items);
        assert_eq!(items.len(), 1);
        assert!(errs[0].fatal);
        assert_eq!(errs[0].source.file, "reel.7z");
        let msg = errs[0].to_string();
        assert!(
            msg.contains("declares 16777216 bytes, more than the limit of 1048576 per entry"),
            "{msg}"
        );
        assert!(msg.contains("78211223032C7EFA_batch:"), "{msg}");
        assert!(!msg.contains(GUID), "the claim secret leaks: {msg}");
    }

    #[test]
    fn a_bomb_inside_an_inner_archive_is_refused_naming_both_archives() {
        let huge = vec![0u8; 16 << 20];
        let inner = archive(&[("0A091B5C001500070063_E0E0.pem", &huge)], lzma2(), false);
        drop(huge);
        let name = format!("78211223032C7EFA_{GUID}_E0E0_Certs.7z");
        let outer = archive(&[(name.as_str(), &inner)], copy(), false);
        let items = import(outer, Slot::E0E0, small_entries());
        let errs = errors(&items);
        assert_eq!(errs.len(), 1, "{items:?}");
        assert!(errs[0].fatal);
        assert_eq!(
            errs[0].source.file,
            format!(
                "reel.7z!78211223032C7EFA_{}_E0E0_Certs.7z",
                BatchRef::new(GUID).tag()
            )
        );
        assert!(
            errs[0]
                .message
                .contains("\"0A091B5C001500070063_E0E0.pem\" declares 16777216 bytes"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn one_budget_covers_the_outer_and_every_inner_archive() {
        let pems: Vec<Vec<u8>> = (0..3).map(cert_pem).collect();
        let inners: Vec<(String, Vec<u8>)> = ["E0E0", "E0E1", "E0E2"]
            .iter()
            .zip(&pems)
            .map(|(slot, pem)| {
                let entry = format!("0A091B5C00150007006{}_{slot}.pem", &slot[3..]);
                (
                    format!("78211223032C7EFA_{GUID}_{slot}_Certs.7z"),
                    archive(&[(entry.as_str(), pem)], copy(), false),
                )
            })
            .collect();
        let entries: Vec<(&str, &[u8])> = inners
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let outer = archive(&entries, copy(), false);
        let outer_cost: u64 = inners.iter().map(|(_, d)| d.len() as u64).sum();
        let pem_cost = |i: usize| pems[i].len() as u64;

        // Enough for the outer archive and two inner ones, not for the third: each level alone
        // fits, so a budget per archive would have read all three.
        let budget = outer_cost + pem_cost(0) + pem_cost(1) + pem_cost(2) / 2;
        let limits = Limits {
            max_decompressed: budget,
            ..Limits::default()
        };
        let items = import(outer.clone(), Slot::All, limits);
        assert_eq!(certs(&items), 2, "{items:?}");
        let errs = errors(&items);
        assert_eq!(errs.len(), 1, "{items:?}");
        assert!(errs[0].fatal);
        assert!(
            errs[0].source.file.ends_with("_E0E2_Certs.7z"),
            "{}",
            errs[0]
        );
        assert!(
            errs[0].message.contains(&format!(
                "needs {} bytes decompressed, more than the {} left of this input's limit of \
                 {budget} bytes",
                pem_cost(2),
                pem_cost(2) / 2
            )),
            "{}",
            errs[0]
        );
        assert!(!errs[0].to_string().contains(GUID));

        // Exactly enough: all three.
        let limits = Limits {
            max_decompressed: outer_cost + pem_cost(0) + pem_cost(1) + pem_cost(2),
            ..Limits::default()
        };
        let items = import(outer.clone(), Slot::All, limits);
        assert_eq!(certs(&items), 3, "{items:?}");

        // Not even the outer archive: refused before anything is decoded.
        let limits = Limits {
            max_decompressed: outer_cost - 1,
            ..Limits::default()
        };
        let items = import(outer, Slot::All, limits);
        assert_eq!(items.len(), 1);
        assert_eq!(errors(&items)[0].source.file, "reel.7z");
    }

    #[test]
    fn blocks_with_nothing_wanted_are_never_decoded() {
        let pem = cert_pem(1);
        let readme = b"README-MARKER: this block must never be decoded".repeat(20);
        let keys = b"KEYS-MARKER: the encrypted keys archive".repeat(20);
        let keys_name = format!("78211223032C7EFA_{GUID}_keys.7z");

        // One block per entry: the README's and the keys archive's blocks are corrupt, and
        // the certificate is still read.
        let mut bytes = archive(
            &[
                ("README.txt", &readme),
                (keys_name.as_str(), &keys),
                ("0A091B5C001500070063_E0E0.pem", &pem),
            ],
            copy(),
            false,
        );
        corrupt(&mut bytes, b"README-MARKER");
        corrupt(&mut bytes, b"KEYS-MARKER");
        let items = import(bytes, Slot::E0E0, Limits::default());
        assert_eq!(certs(&items), 1, "{items:?}");
        assert!(errors(&items).is_empty(), "{items:?}");

        // One solid block: what follows the last wanted entry is not decoded either.
        let mut bytes = archive(
            &[
                ("0A091B5C001500070063_E0E0.pem", &pem),
                ("README.txt", &readme),
            ],
            copy(),
            true,
        );
        corrupt(&mut bytes, b"README-MARKER");
        let items = import(bytes, Slot::E0E0, Limits::default());
        assert_eq!(certs(&items), 1, "{items:?}");
        assert!(errors(&items).is_empty(), "{items:?}");

        // But what precedes a wanted entry in a solid block is decoded, checked and counted.
        let mut bytes = archive(
            &[
                ("README.txt", &readme),
                ("0A091B5C001500070063_E0E0.pem", &pem),
            ],
            copy(),
            true,
        );
        let limits = Limits {
            max_decompressed: pem.len() as u64 + readme.len() as u64 - 1,
            ..Limits::default()
        };
        let items = import(bytes.clone(), Slot::E0E0, limits);
        assert!(
            errors(&items)[0].message.contains("decompressed"),
            "{items:?}"
        );
        corrupt(&mut bytes, b"README-MARKER");
        let items = import(bytes, Slot::E0E0, Limits::default());
        assert!(errors(&items)[0].fatal, "{items:?}");
    }
}
