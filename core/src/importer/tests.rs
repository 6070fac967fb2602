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
