//! `examples/embed.rs` (the library facade, an AWS target built from config) run as its doc
//! comment shows: against a standalone `idbridge mock-cloud aws`, credentials from the
//! environment of the example's process. The devices must land in the mock.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use idbridge_core::{CallContext, Connector, DeviceIdentity, Source};
use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::aws::{TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY};

/// `target/debug/examples/embed`, built by cargo for `cargo test` (beside `deps/`).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug");
    dir.join("examples")
        .join(format!("embed{}", std::env::consts::EXE_SUFFIX))
}

#[test]
fn embed_example_provisions_into_the_mock_aws_iot() {
    let embed = example_binary();
    assert!(
        embed.exists(),
        "{} missing: `cargo test --test e2e` builds the examples (run it with --all-features)",
        embed.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut mock = Command::new(env!("CARGO_BIN_EXE_idbridge"))
        .args(["mock-cloud", "aws", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("idbridge mock-cloud aws starts");
    let mut lines = BufReader::new(mock.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap();
    let details: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let region = details["region"].as_str().unwrap().to_owned();

    let pki = TestPki::infineon_like().unwrap();
    let (devices, bundle) = pki.batch(1, 4).unwrap();
    std::fs::write(d.join("batch.pem"), &bundle).unwrap();
    std::fs::write(d.join("root.pem"), pki.root_pem()).unwrap();
    std::fs::write(d.join("ca.pem"), pki.ca_pem()).unwrap();
    // The example's own target table, plus the test PKI as trust anchors and a journal here.
    let example_toml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/embed.toml"))
            .unwrap();
    std::fs::write(
        d.join("embed.toml"),
        format!(
            "journal = \"sqlite:journal.sqlite\"\n\n[trust]\nanchors = [\"root.pem\", \"ca.pem\"]\n\n{example_toml}"
        ),
    )
    .unwrap();

    let out = Command::new(&embed)
        .current_dir(d)
        .args(["--config", "embed.toml", "--target", "aws", "batch.pem"])
        .env("AWS_ENDPOINT_URL", &url)
        .env("AWS_REGION", &region)
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(
        stdout.contains("4 done (4 created, 0 already present), 0 failed, 0 refused"),
        "{all}"
    );

    // In the mock: every certificate registered, looked up over the wire.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let found = rt.block_on(async {
        let c = idbridge_aws_iot::AwsIot::connect_with_static_credentials(
            idbridge_aws_iot::AwsIotConfig {
                region: Some(region.clone()),
                endpoint_url: Some(url.clone()),
                allow_http: true,
                ..Default::default()
            },
            TEST_ACCESS_KEY_ID,
            TEST_SECRET_ACCESS_KEY,
        )
        .await
        .unwrap();
        let mut found = 0;
        for dev in &devices {
            let id = DeviceIdentity::from_der(dev.cert_der.clone(), Source::default()).unwrap();
            if c.lookup(&CallContext::unpaced(), &id)
                .await
                .unwrap()
                .is_some()
            {
                found += 1;
            }
        }
        found
    });
    let _ = mock.kill();
    let _ = mock.wait();
    assert_eq!(found, devices.len(), "{all}");
}
