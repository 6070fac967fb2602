//! The manifest target: conformance, outputs, signature, and recovery from a partial write.
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::io::Write;

use idbridge_core::conformance;
use idbridge_core::{CallContext, Connector, DeviceIdentity, RegisterOutcome, Source};
use idbridge_manifest::{Format, ManifestConfig, ManifestConnector, SigningKey, verify_detached};

fn devices(n: u32) -> Vec<DeviceIdentity> {
    (0..n)
        .map(|i| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, format!("Infineon IoT Node {i}"));
            let c = p.self_signed(&key).unwrap();
            DeviceIdentity::from_der(
                c.der().to_vec(),
                Source {
                    file: "reel.pem".into(),
                    line: Some(u64::from(i) + 1),
                    entry: None,
                },
            )
            .unwrap()
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
    key_pem: String,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
        Setup { dir, key_pem }
    }

    fn config(&self) -> ManifestConfig {
        ManifestConfig::new(
            self.dir.path().join("out"),
            Some(self.dir.path().join("key.pem")),
        )
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("out").join(name)).unwrap()
    }
}

#[tokio::test]
async fn conformance() {
    let s = Setup::new();
    let c = ManifestConnector::new(s.config()).unwrap();
    // Files, not a cloud: the suite's pacing check does not apply (the report says so).
    let report = conformance::Suite::new(&c, devices(4))
        .wire(conformance::Wire::Local)
        .run()
        .await;
    assert_eq!(
        report.ran,
        [
            "register_then_lookup",
            "reregister_is_idempotent",
            "deregister_is_idempotent",
            "list_includes_registered"
        ]
    );
}

#[tokio::test]
async fn writes_every_format_once_per_device_and_signs() {
    let s = Setup::new();
    let d = devices(3);
    let ctx = CallContext::unpaced();
    {
        let c = ManifestConnector::new(s.config()).unwrap();
        c.register(&ctx, &d[..2]).await.unwrap();
    }
    // A new process: devices staged before are found, not written again.
    let c = ManifestConnector::new(s.config()).unwrap();
    let out = c.register(&ctx, &d).await.unwrap();
    assert!(matches!(out[0], RegisterOutcome::AlreadyPresent(_)));
    assert!(matches!(out[2], RegisterOutcome::Created(_)));
    c.finish(&ctx).await.unwrap();

    let manifest = s.read("manifest.jsonl");
    let lines: Vec<serde_json::Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["format"], "idbridge-manifest");
    assert_eq!(lines[0]["version"], 1);
    assert_eq!(lines[0]["devices"], 3);
    assert!(lines[0]["batch"].is_null());
    assert_eq!(lines.len(), 4);
    let ids: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l["device_id"].as_str().unwrap())
        .collect();
    for dev in &d {
        assert_eq!(
            ids.iter().filter(|i| **i == dev.device_id.as_str()).count(),
            1
        );
    }
    assert!(
        lines[1]["cert"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(lines[1]["source"]["file"], "reel.pem");

    let jws = s.read("manifest.jsonl.jws");
    let key = SigningKey::from_pem(&s.key_pem, "key").unwrap();
    verify_detached(manifest.as_bytes(), &jws, &key.public_point()).unwrap();
    let tampered = manifest.replacen("reel.pem", "reel.pen", 1);
    assert!(verify_detached(tampered.as_bytes(), &jws, &key.public_point()).is_err());

    let aws: Vec<serde_json::Value> = s
        .read("aws-bulk.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(aws.len(), 3);
    assert_eq!(aws[0]["CertificateId"], d[0].device_id.as_str());
    let template: serde_json::Value = serde_json::from_str(&s.read("aws-template.json")).unwrap();
    assert_eq!(
        template["Resources"]["certificate"]["Properties"]["CertificateId"]["Ref"],
        "CertificateId"
    );
    let azure: Vec<serde_json::Value> = s
        .read("azure-import-devices.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(azure[1]["importMode"], "create");
    assert_eq!(azure[1]["authentication"]["type"], "selfSigned");
    assert_eq!(
        azure[1]["authentication"]["x509Thumbprint"]["primaryThumbprint"],
        d[1].device_id.as_str().to_ascii_uppercase()
    );
    let text = s.read("devices.csv");
    let mut csv = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(csv.records().count(), 3);
}

#[tokio::test]
async fn a_partial_last_line_from_a_killed_run_is_cut_off() {
    let s = Setup::new();
    let d = devices(2);
    let ctx = CallContext::unpaced();
    {
        let c = ManifestConnector::new(s.config()).unwrap();
        c.register(&ctx, &d[..1]).await.unwrap();
    }
    let staging = s.dir.path().join("out/.idbridge-staging.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&staging)
        .unwrap();
    f.write_all(br#"{"device_id":"ab"#).unwrap();
    drop(f);
    let c = ManifestConnector::new(s.config()).unwrap();
    let out = c.register(&ctx, &d).await.unwrap();
    assert!(matches!(out[0], RegisterOutcome::AlreadyPresent(_)));
    assert!(matches!(out[1], RegisterOutcome::Created(_)));
    c.finish(&ctx).await.unwrap();
    assert_eq!(s.read("manifest.jsonl").lines().count(), 3);
}

#[tokio::test]
async fn configuration_errors_name_the_problem() {
    let s = Setup::new();
    let mut cfg = s.config();
    cfg.signing_key = None;
    let e = ManifestConnector::new(cfg.clone()).unwrap_err();
    assert!(e.to_string().contains("signing_key"), "{e}");
    cfg.formats = vec![Format::Csv];
    ManifestConnector::new(cfg).unwrap();
    let mut cfg = s.config();
    std::fs::write(s.dir.path().join("bad.pem"), "not a key").unwrap();
    cfg.signing_key = Some(s.dir.path().join("bad.pem"));
    let e = ManifestConnector::new(cfg).unwrap_err();
    assert!(e.to_string().contains("bad.pem"), "{e}");
}
