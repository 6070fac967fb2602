//! `idbridge provision` / `deprovision` through the CLI into Google's Firestore emulator (a
//! `gcp-firestore` target found through `FIRESTORE_EMULATOR_HOST`, as Google's tools find it),
//! and a job with wrong credentials that stops with the emulator's reason.
#![allow(clippy::unwrap_used)] // test helpers

use std::path::Path;
use std::time::Duration;

use idbridge_mock_clouds::{Emulator, EmulatorKind};
use serde_json::Value;

use super::interop::{Fixture, bin, device_id, states};

async fn run(
    fx: &Fixture,
    emulator: &Emulator,
    config: &Path,
    op: &str,
    input: &Path,
) -> (i32, Value, String) {
    let mut args = vec![
        op.to_owned(),
        "--config".into(),
        config.display().to_string(),
        "--target".into(),
        "allowlist".into(),
        "--output".into(),
        "json".into(),
    ];
    args.extend(fx.trust_args());
    args.push(input.display().to_string());
    let out = tokio::process::Command::new(bin())
        .args(&args)
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env("FIRESTORE_EMULATOR_HOST", emulator.host_port())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        report,
        format!("{stdout}\n{stderr}"),
    )
}

fn service_account(fx: &Fixture) -> std::path::PathBuf {
    use aws_lc_rs::encoding::AsDer;
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> = key.as_der().unwrap();
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "e2e",
        "private_key_id": "kid",
        "private_key": pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec())),
        "client_email": "provisioner@e2e.iam.gserviceaccount.com",
        "token_uri": "http://127.0.0.1:9/token",
    });
    fx.write("sa.json", &json.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_provisions_and_deprovisions_a_firestore_allowlist_and_stops_on_wrong_credentials() {
    let emulator = tokio::task::spawn_blocking(|| {
        Emulator::start(EmulatorKind::Firestore, Duration::from_secs(180))
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e:#}"));
    let fx = Fixture::new();
    let (devices, input) = fx.devices("batch.pem", 1..5);
    let config = fx.write(
        "idbridge.toml",
        "[targets.allowlist]\nkind = \"gcp-firestore\"\nproject = \"e2e\"\n",
    );
    let (code, report, out) = run(&fx, &emulator, &config, "provision", &input).await;
    assert_eq!(code, 0, "{out}");
    let st = states(&report);
    assert_eq!(st.len(), 4, "{out}");
    assert!(
        st.iter().all(|(_, s, o)| s == "done" && o == "created"),
        "{out}"
    );
    let doc = |d| {
        format!(
            "{}/v1/projects/e2e/databases/(default)/documents/device_allowlist/{}",
            emulator.url(),
            device_id(d)
        )
    };
    let r = reqwest::get(doc(&devices[0])).await.unwrap();
    assert_eq!(r.status(), 200);

    let (code, report, out) = run(&fx, &emulator, &config, "deprovision", &input).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        states(&report)
            .iter()
            .all(|(_, s, o)| s == "done" && o == "deleted"),
        "{out}"
    );
    assert_eq!(reqwest::get(doc(&devices[0])).await.unwrap().status(), 404);

    // Real service-account credentials the emulator does not accept as its admin: the job stops
    // on the first batchWrite with the emulator's reason and a non-zero exit.
    let sa = service_account(&fx);
    let config = fx.write(
        "wrong.toml",
        &format!(
            "[targets.allowlist]\nkind = \"gcp-firestore\"\nproject = \"e2e\"\ncredentials_file = \"{}\"\n",
            sa.display()
        ),
    );
    let (code, _report, out) = run(&fx, &emulator, &config, "provision", &input).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("permission_denied")
            && out.contains("Batch writes require admin authentication"),
        "the reason is shown: {out}"
    );
    assert!(!out.contains("PRIVATE KEY"), "the key leaked: {out}");
    assert_eq!(reqwest::get(doc(&devices[0])).await.unwrap().status(), 404);
}
