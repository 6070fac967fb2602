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
    let env = [("FIRESTORE_EMULATOR_HOST", emulator.host_port())];
    run_env(fx, config, "allowlist", op, input, &env).await
}

async fn run_env(
    fx: &Fixture,
    config: &Path,
    target: &str,
    op: &str,
    input: &Path,
    env: &[(&str, String)],
) -> (i32, Value, String) {
    let mut args = vec![
        op.to_owned(),
        "--config".into(),
        config.display().to_string(),
        "--target".into(),
        target.into(),
        "--output".into(),
        "json".into(),
    ];
    args.extend(fx.trust_args());
    if op == "deprovision" {
        args.push("--yes".into());
    }
    args.push(input.display().to_string());
    let out = tokio::process::Command::new(bin())
        .args(&args)
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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

    // The same key found as Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS),
    // with an explicit endpoint: same refusal, same clear reason.
    let config = fx.write(
        "adc.toml",
        &format!(
            "[targets.allowlist]\nkind = \"gcp-firestore\"\nproject = \"e2e\"\nendpoint_url = \"{}\"\nallow_http = true\n",
            emulator.url()
        ),
    );
    let env = [("GOOGLE_APPLICATION_CREDENTIALS", sa.display().to_string())];
    let (code, _report, out) = run_env(&fx, &config, "allowlist", "provision", &input, &env).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("Batch writes require admin authentication"),
        "{out}"
    );
    assert_eq!(reqwest::get(doc(&devices[0])).await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_publishes_device_events_to_pubsub_found_through_the_emulator_variable() {
    let emulator = tokio::task::spawn_blocking(|| {
        Emulator::start(EmulatorKind::PubSub, Duration::from_secs(180))
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{e:#}"));
    let base = format!("{}/v1/projects/e2e", emulator.url());
    let http = reqwest::Client::new();
    assert!(
        http.put(format!("{base}/topics/devices"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let sub = http
        .put(format!("{base}/subscriptions/audit"))
        .json(&serde_json::json!({"topic": "projects/e2e/topics/devices"}))
        .send()
        .await
        .unwrap();
    assert!(sub.status().is_success());
    let fx = Fixture::new();
    let (devices, input) = fx.devices("batch.pem", 1..4);
    let config = fx.write(
        "idbridge.toml",
        "[targets.events]\nkind = \"gcp-pubsub\"\nproject = \"e2e\"\ntopic = \"devices\"\n",
    );
    let env = [("PUBSUB_EMULATOR_HOST", emulator.host_port())];
    let (code, report, out) = run_env(&fx, &config, "events", "provision", &input, &env).await;
    assert_eq!(code, 0, "{out}");
    assert!(states(&report).iter().all(|(_, s, _)| s == "done"), "{out}");
    let (code, _, out) = run_env(&fx, &config, "events", "deprovision", &input, &env).await;
    assert_eq!(code, 0, "{out}");

    let mut got: Vec<(String, String)> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < 6 && std::time::Instant::now() < deadline {
        let v: Value = http
            .post(format!("{base}/subscriptions/audit:pull"))
            .json(&serde_json::json!({"maxMessages": 100, "returnImmediately": true}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let msgs = v["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if msgs.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let acks: Vec<Value> = msgs.iter().map(|m| m["ackId"].clone()).collect();
        http.post(format!("{base}/subscriptions/audit:acknowledge"))
            .json(&serde_json::json!({ "ackIds": acks }))
            .send()
            .await
            .unwrap();
        for m in msgs {
            let a = &m["message"]["attributes"];
            got.push((
                a["deviceId"].as_str().unwrap().to_owned(),
                a["eventType"].as_str().unwrap().to_owned(),
            ));
        }
    }
    got.sort();
    let mut want: Vec<(String, String)> = devices
        .iter()
        .flat_map(|d| {
            [
                (device_id(d), "device.authorized".to_owned()),
                (device_id(d), "device.revoked".to_owned()),
            ]
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
}
