//! `idbridge inspect` end to end: exit codes, output formats, errors naming the file.

use std::path::PathBuf;
use std::process::{Command, Output};

fn real(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real")
        .join(rel)
}

fn inspect(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_idbridge"))
        .arg("inspect")
        .args(args)
        .output()
        .expect("idbridge runs");
    super::test_logs::record(args, &out);
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn bundle_all_slots_is_600_valid_and_exit_0_without_leaking_the_batch_id() {
    let bundle = real("infineon/cloud-id-bundle/manifest-infineon.7z");
    for output in ["table", "json", "jsonl"] {
        let out = inspect(&[
            bundle.to_str().unwrap(),
            "--slot",
            "all",
            "--output",
            output,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(
            !all.to_lowercase().contains("b41425b9"),
            "batch ID leaked in {output}"
        );
        if output == "json" {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["devices"].as_array().unwrap().len(), 600);
            assert_eq!(v["summary"]["valid"], 600);
            assert_eq!(
                v["devices"][0]["batch"].as_str().unwrap().len(),
                "batch:".len() + 12
            );
        }
        if output == "table" {
            let last = text(&out.stdout).lines().last().unwrap().to_owned();
            assert!(
                last.starts_with("600 devices: 600 valid, 0 invalid"),
                "{last}"
            );
        }
    }
}

#[test]
fn microchip_manifests_exit_1_with_23_rows_and_reasons() {
    let dir = real("microchip/manifests");
    let out = inspect(&[dir.to_str().unwrap(), "--output", "jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 24);
    let summary = &lines[23]["summary"];
    assert_eq!(summary["valid"], 12);
    assert_eq!(summary["not_provisionable"], 10);
    assert_eq!(summary["invalid"], 1);
    let invalid = lines.iter().find(|l| l["status"] == "invalid").unwrap();
    assert!(invalid["reason"].as_str().unwrap().contains("test signer"));
    assert!(
        invalid["source"]["file"]
            .as_str()
            .unwrap()
            .ends_with("dummy-signer.json")
    );
    assert_eq!(invalid["source"]["entry"], 0);
}

#[test]
fn valid_devices_exit_0_and_table_lists_each() {
    let out = inspect(&[real("infineon/cloud-id-bundle/extracted-sample")
        .to_str()
        .unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1 + 9 + 1);
    assert!(stdout.contains("45e8362a0078") && stdout.contains("chip 0A091B5C001500070063 E0E0"));
}

#[test]
fn unusable_input_and_wrong_calls_exit_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let out = inspect(&[empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("empty.pem: empty file"),
        "{}",
        text(&out.stderr)
    );

    let cut = dir.path().join("cut.7z");
    let bytes = std::fs::read(real("infineon/cloud-id-bundle/manifest-infineon.7z")).unwrap();
    std::fs::write(&cut, &bytes[..4000]).unwrap();
    let out = inspect(&[cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cut.7z: not a readable 7z archive"),
        "{}",
        text(&out.stderr)
    );

    let out = inspect(&["--format", "zip", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown format \"zip\""),
        "{}",
        text(&out.stderr)
    );

    let out = inspect(&[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_truncated_pem_among_good_ones_exits_1_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good =
        std::fs::read_to_string(real("infineon/device/trust-m-v3-ca300-objdump-e0e0.pem")).unwrap();
    let p = dir.path().join("mixed.pem");
    std::fs::write(&p, format!("{good}-----BEGIN CERTIFICATE-----\nMIIB\n")).unwrap();
    let out = inspect(&[p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let line = good.lines().count() + 1;
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "mixed.pem:{line}: PEM block \"CERTIFICATE\" has no END line"
        )),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains(" valid "));
}

#[test]
fn test_roots_need_the_flag() {
    let f = real("microchip/manifests/pytrustplatform_tool-output_manifest_dummy-signer.json");
    let out = inspect(&[
        f.to_str().unwrap(),
        "--allow-test-roots",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = v["devices"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("precedes the validity of manifest signer \"Example Signer FFFF\""),
        "{reason}"
    );
}
