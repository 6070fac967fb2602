//! `idbridge provision` through the CLI into a Standard Webhooks receiver (the mock, verifying
//! signatures and the replay window), and the engine's faults against it.
#![allow(clippy::unwrap_used)] // test helpers

use std::path::PathBuf;

use idbridge_mock_clouds::webhook::{MockWebhook, WebhookState};
use idbridge_mock_clouds::{Fault, FaultRule};

use super::interop::{Fixture, admitted, device_id, provision, states};

struct Hook {
    fx: Fixture,
    mock: MockWebhook,
    config: PathBuf,
}

async fn setup(secret_in_config: Option<&str>) -> Hook {
    let fx = Fixture::new();
    let secret = WebhookState::random_secret();
    super::test_logs::note_secret("webhook-secret", &secret);
    let mock = MockWebhook::start("127.0.0.1:0", WebhookState::new(&secret).unwrap(), true)
        .await
        .unwrap();
    let ca = fx.write("hook-ca.pem", mock.ca.cert_pem());
    let config = fx.write(
        "idbridge.toml",
        &format!(
            r#"
[targets.hook]
kind = "webhook"
url = "{url}"
secret = "{secret}"
ca_file = "{ca}"

[targets.hook.engine]
max_attempts = 5
"#,
            url = mock.url(),
            secret = secret_in_config.unwrap_or(&secret),
            ca = ca.display()
        ),
    );
    Hook { fx, mock, config }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_delivers_signed_events_over_https_and_devices_are_admitted() {
    let h = setup(None).await;
    assert!(h.mock.url().starts_with("https://"));
    let (devices, input) = h.fx.devices("batch.pem", 1..4);
    let (code, report) = provision(&h.fx, &h.config, "hook", &input, "provision").await;
    assert_eq!(code, 0, "{report}");
    assert!(
        states(&report).iter().all(|(_, s, _)| s == "done"),
        "{report}"
    );
    let events = h.mock.state.accepted();
    let provisioned: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == "device.provisioned")
        .collect();
    assert_eq!(provisioned.len(), 3);
    for d in &devices {
        assert!(admitted(h.mock.devices.addr, h.mock.ca.cert_pem(), d).await);
    }
    assert_eq!(h.mock.state.refused(), 0);

    let (code, report) = provision(&h.fx, &h.config, "hook", &input, "deprovision").await;
    assert_eq!(code, 0, "{report}");
    assert!(h.mock.state.provisioned().is_empty());
    assert!(!admitted(h.mock.devices.addr, h.mock.ca.cert_pem(), &devices[0]).await);

    // Provisioned again: a third state, a third event per device, which the de-duplicating
    // receiver applies (the webhook-id carries the state version).
    let (code, report) = provision(&h.fx, &h.config, "hook", &input, "provision").await;
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        h.mock.state.duplicates(),
        0,
        "no event taken for a duplicate"
    );
    for d in &devices {
        let id = device_id(d);
        let ids: Vec<_> = h
            .mock
            .state
            .accepted()
            .into_iter()
            .filter(|e| e.body["data"]["deviceId"] == id.as_str())
            .map(|e| (e.event_type, e.id))
            .collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        let mut distinct: Vec<_> = ids.iter().map(|(_, i)| i.clone()).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "three distinct webhook-ids: {ids:?}");
        assert!(admitted(h.mock.devices.addr, h.mock.ca.cert_pem(), d).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_faults_429_500_reset_end_in_the_exact_state() {
    let h = setup(None).await;
    let (devices, input) = h.fx.devices("batch.pem", 10..14);
    let f = &h.mock.server.faults;
    f.push(FaultRule::once(Fault::Status {
        status: 429,
        headers: vec![("Retry-After".into(), "0".into())],
        body: String::new(),
    }));
    f.push(FaultRule::once(Fault::Status {
        status: 500,
        headers: vec![],
        body: String::new(),
    }));
    f.push(FaultRule::once(Fault::Reset));
    f.push(FaultRule::once(Fault::LoseResponse));
    // One device meets a 409 conflict: permanent, reported, not retried into success.
    h.mock.state.script(&device_id(&devices[3]), 409, 10);
    let (code, report) = provision(&h.fx, &h.config, "hook", &input, "provision").await;
    assert_eq!(code, 1, "{report}");
    let st = states(&report);
    for (i, d) in devices.iter().enumerate() {
        let id = device_id(d);
        let (_, state, outcome) = st.iter().find(|(x, _, _)| *x == id).unwrap();
        if i == 3 {
            assert_eq!(
                (state.as_str(), outcome.as_str()),
                ("failed", "conflict"),
                "{report}"
            );
        } else {
            assert_eq!(state, "done", "device {i}: {report}");
        }
    }
    let mut provisioned = h.mock.state.provisioned();
    provisioned.sort();
    let mut want: Vec<String> = devices[..3].iter().map(device_id).collect();
    want.sort();
    assert_eq!(provisioned, want, "exactly the three");
    assert_eq!(
        f.take("POST", "/hook"),
        None,
        "every scripted fault was met"
    );
    let ids: Vec<_> = h.mock.state.accepted().into_iter().map(|e| e.id).collect();
    let mut dedup = ids.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        ids.len(),
        dedup.len(),
        "each event accepted once (retries de-duplicated)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_disables_the_target() {
    let h = setup(None).await;
    let (devices, input) = h.fx.devices("batch.pem", 20..24);
    // Only the first device meets 410: the others would be accepted if they were sent.
    h.mock.state.script(&device_id(&devices[0]), 410, 1);
    let (code, report) = provision(&h.fx, &h.config, "hook", &input, "provision").await;
    assert_ne!(code, 0, "{report}");
    let aborted = report["job"]["aborted"].as_str().unwrap_or_default();
    assert!(
        aborted.contains("target_disabled"),
        "the job stopped: {report}"
    );
    assert!(
        h.mock.state.provisioned().is_empty(),
        "nothing sent after 410: {report}"
    );
    let kinds: Vec<_> = report["job"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["error_kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(kinds.iter().any(|k| k == "target_disabled"), "{report}");
    // Every device stays pending (resumable), none failed for good.
    assert!(
        states(&report).iter().all(|(_, s, _)| s == "pending"),
        "{report}"
    );
    // The endpoint is back: the same command finishes the same job.
    let (code, again) = provision(&h.fx, &h.config, "hook", &input, "provision").await;
    assert_eq!(code, 0, "{again}");
    assert_eq!(again["job"]["job_id"], report["job"]["job_id"], "{again}");
    assert_eq!(h.mock.state.provisioned().len(), devices.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_by_the_receiver() {
    let other = WebhookState::random_secret();
    let h = setup(Some(&other)).await;
    let (_, input) = h.fx.devices("batch.pem", 30..31);
    let (code, report) = provision(&h.fx, &h.config, "hook", &input, "provision").await;
    assert_ne!(code, 0, "{report}");
    assert!(h.mock.state.provisioned().is_empty());
    assert!(h.mock.state.refused() >= 1);
}
