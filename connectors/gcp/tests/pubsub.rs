//! The `gcp-pubsub` connector against Google's Pub/Sub emulator (one per test binary, each test
//! in its own project and topic). Tests read back what was published by pulling a subscription.
#![allow(clippy::unwrap_used)] // tests

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use idbridge_core::conformance;
use idbridge_core::engine::NoProgress;
use idbridge_core::journal::{Operation, Outcome};
use idbridge_core::{CallContext, Connector, ErrorKind, RegisterOutcome};
use idbridge_gcp::{EVENT_AUTHORIZED, EVENT_REVOKED, PubSubConnector};
use idbridge_mock_clouds::{Fault, FaultProxy, FaultRule, TestPki};
use serde_json::{Value, json};

fn ctx() -> CallContext {
    CallContext::unpaced()
}

/// One pulled message: attributes and decoded JSON data.
#[derive(Debug)]
struct Received {
    message_id: String,
    attributes: BTreeMap<String, String>,
    data: Value,
}

/// A topic with one subscription in a project of its own.
struct Topic {
    base: String,
    project: String,
    topic: String,
}

impl Topic {
    async fn create(test: &str) -> Topic {
        let emu = common::pubsub();
        let t = Topic {
            base: emu.url(),
            project: common::project(test),
            topic: "device-events".into(),
        };
        let http = reqwest::Client::new();
        let r = http
            .put(format!(
                "{}/v1/projects/{}/topics/{}",
                t.base, t.project, t.topic
            ))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "create topic: {}", r.status());
        let r = http
            .put(format!(
                "{}/v1/projects/{}/subscriptions/audit",
                t.base, t.project
            ))
            .json(&json!({"topic": format!("projects/{}/topics/{}", t.project, t.topic)}))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "create subscription: {}",
            r.status()
        );
        t
    }

    /// Pulls and acknowledges until `want` messages arrived (bounded), then checks that no
    /// more come: returns everything received.
    async fn drain(&self, want: usize) -> Vec<Received> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while out.len() < want && Instant::now() < deadline {
            out.extend(self.pull().await);
        }
        // Whatever else was published is there by now: a last pull must find nothing.
        out.extend(self.pull().await);
        out
    }

    async fn pull(&self) -> Vec<Received> {
        let sub = format!(
            "{}/v1/projects/{}/subscriptions/audit",
            self.base, self.project
        );
        let http = reqwest::Client::new();
        let v: Value = http
            .post(format!("{sub}:pull"))
            .json(&json!({"maxMessages": 1000, "returnImmediately": true}))
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
            return Vec::new();
        }
        let ack: Vec<&str> = msgs.iter().map(|m| m["ackId"].as_str().unwrap()).collect();
        let r = http
            .post(format!("{sub}:acknowledge"))
            .json(&json!({ "ackIds": ack }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        msgs.iter()
            .map(|m| {
                let m = &m["message"];
                let data = base64::engine::general_purpose::STANDARD
                    .decode(m["data"].as_str().unwrap())
                    .unwrap();
                Received {
                    message_id: m["messageId"].as_str().unwrap().to_owned(),
                    attributes: serde_json::from_value(m["attributes"].clone()).unwrap(),
                    data: serde_json::from_slice(&data).unwrap(),
                }
            })
            .collect()
    }

    fn connector(&self, url: &str) -> PubSubConnector {
        PubSubConnector::new(
            "device-events",
            common::pubsub_config(url, &self.project, &self.topic),
        )
        .unwrap()
    }
}

#[tokio::test]
async fn conformance_throttling_bad_credentials_and_health() {
    let t = Topic::create("conformance").await;
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::devices(&pki, 1, 2);
    let c = t.connector(&t.base);
    c.health_check(&ctx()).await.unwrap();
    let missing = common::pubsub_config(&t.base, &t.project, "no-such-topic");
    let missing = PubSubConnector::new("device-events", missing).unwrap();
    let e = missing.health_check(&ctx()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{e}");
    let e = missing.register(&ctx(), &devs[..1]).await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::ConfigInvalid,
        "a missing topic stops the job: {e}"
    );
    assert!(!e.is_temporary());

    let proxy = FaultProxy::start(&t.base).await.unwrap();
    proxy.server.faults.push(
        FaultRule::once(Fault::Status {
            status: 429,
            headers: vec![],
            body: r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#.into(),
        })
        .on_path(":publish"),
    );
    conformance::throttling_is_rate_limited(&t.connector(proxy.url()), &devs[0]).await;

    // The emulator accepts any credentials; Google's front end answers a bad token with 401,
    // which the proxy plays here for real google-cloud-auth service-account credentials.
    let dir = tempfile::tempdir().unwrap();
    let mut bad = common::pubsub_config(proxy.url(), &t.project, &t.topic);
    bad.emulator = None;
    bad.credentials_file = Some(common::service_account_file(dir.path(), &t.project));
    let bad = PubSubConnector::new("device-events", bad).unwrap();
    proxy.server.faults.push(FaultRule::once(Fault::Status {
        status: 401,
        headers: vec![],
        body: r#"{"error":{"code":401,"message":"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.","status":"UNAUTHENTICATED"}}"#.into(),
    }).times(10));
    conformance::bad_credentials_are_permanent(&bad, &devs[1]).await;
    assert!(t.drain(0).await.is_empty(), "nothing was published");
    assert!(
        c.lookup(&ctx(), &devs[0])
            .await
            .is_err_and(|e| e.kind() == ErrorKind::Unsupported)
    );
}

#[tokio::test]
async fn provision_deprovision_provision_are_three_distinct_messages_each_once() {
    let t = Topic::create("events").await;
    let pki = TestPki::infineon_like().unwrap();
    let mut devs = common::devices(&pki, 1, 2);
    for d in &mut devs {
        d.batch = Some(idbridge_core::BatchRef::new(
            "b41425b9-b42b-47fd-95c2-f981b4c61561",
        ));
    }
    let c = Arc::new(t.connector(&t.base));
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(c.clone(), dir.path(), Duration::from_secs(30));
    let mut jobs = Vec::new();
    for op in [
        Operation::Provision,
        Operation::Deprovision,
        Operation::Provision,
    ] {
        let r = engine
            .execute(op, "device-events", devs.clone(), Value::Null, &NoProgress)
            .await
            .unwrap();
        assert!(r.all_done(), "{r:?}");
        let want = if op == Operation::Provision {
            Outcome::Created
        } else {
            Outcome::Deleted
        };
        assert!(r.devices.iter().all(|d| d.outcome == Some(want)), "{r:?}");
        jobs.push(r.job_id);
    }
    assert_eq!(jobs.iter().collect::<HashSet<_>>().len(), 3, "three jobs");

    let got = t.drain(6).await;
    assert_eq!(
        got.len(),
        6,
        "three messages per device, each once: {got:?}"
    );
    for d in &devs {
        let mut mine: Vec<&Received> = got
            .iter()
            .filter(|m| m.attributes["deviceId"] == d.device_id.as_str())
            .collect();
        assert_eq!(mine.len(), 3);
        mine.sort_by_key(|m| m.message_id.parse::<u64>().unwrap_or(u64::MAX));
        let types: Vec<&str> = mine
            .iter()
            .map(|m| m.attributes["eventType"].as_str())
            .collect();
        assert_eq!(
            types,
            vec![EVENT_AUTHORIZED, EVENT_REVOKED, EVENT_AUTHORIZED]
        );
        let keys: HashSet<&str> = mine
            .iter()
            .map(|m| m.attributes["idempotencyKey"].as_str())
            .collect();
        assert_eq!(
            keys.len(),
            3,
            "provisioning again is a new event with a new key"
        );
        for (m, job) in mine.iter().zip(&jobs) {
            assert_eq!(
                m.attributes["idempotencyKey"],
                c.idempotency_key(&m.attributes["eventType"], d, job)
            );
            assert_eq!(m.data["deviceId"], d.device_id.as_str());
            assert_eq!(m.data["type"], m.attributes["eventType"].as_str());
            assert_eq!(m.data["certificate"]["pem"], d.to_pem());
            assert_eq!(m.attributes["batch"], d.batch.as_ref().unwrap().tag());
            let text = format!("{:?} {}", m.attributes, m.data);
            assert!(
                !text.contains("b41425b9"),
                "batch ID published in clear: {text}"
            );
        }
    }
}

#[tokio::test]
async fn a_call_of_2500_devices_is_three_publishes_of_at_most_1000() {
    let t = Topic::create("bulk").await;
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::devices(&pki, 1, 2500);
    let proxy = FaultProxy::start(&t.base).await.unwrap();
    let c = t.connector(proxy.url());
    assert_eq!(c.info().max_batch_size, 1000);
    let out = c.register(&ctx(), &devs).await.unwrap();
    assert!(out.iter().all(|o| matches!(o, RegisterOutcome::Created(_))));
    let publishes = proxy
        .forwarded_requests()
        .iter()
        .filter(|r| r.contains(":publish"))
        .count();
    assert_eq!(publishes, 3);
    let got = t.drain(2500).await;
    assert_eq!(got.len(), 2500);
    let ids: HashSet<&str> = got
        .iter()
        .map(|m| m.attributes["deviceId"].as_str())
        .collect();
    assert_eq!(ids.len(), 2500, "every device once");
}

#[tokio::test]
async fn a_lost_answer_is_republished_with_the_same_key() {
    let t = Topic::create("lost").await;
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::devices(&pki, 1, 12);
    let proxy = FaultProxy::start(&t.base).await.unwrap();
    let mut cfg = common::pubsub_config(proxy.url(), &t.project, &t.topic);
    cfg.batch_size = 4;
    let c = Arc::new(PubSubConnector::new("device-events", cfg).unwrap());
    proxy.server.faults.push(
        FaultRule::once(Fault::LoseResponse)
            .on_path(":publish")
            .after(1),
    );
    proxy.server.faults.push(FaultRule::once(Fault::Status {
        status: 503,
        headers: vec![],
        body: r#"{"error":{"code":503,"message":"The service is currently unavailable.","status":"UNAVAILABLE"}}"#.into(),
    }).on_path(":publish"));
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(c.clone(), dir.path(), Duration::from_secs(30));
    let r = engine
        .execute(
            Operation::Provision,
            "device-events",
            devs.clone(),
            Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.all_done(), "{r:?}");
    // At-least-once: the 4 devices of the lost answer were published twice, with the same
    // idempotency key; the 503 published nothing. After de-duplication on the key, every
    // device is there exactly once.
    let got = t.drain(16).await;
    assert_eq!(got.len(), 16, "{got:?}");
    let mut per_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for m in &got {
        per_key
            .entry(m.attributes["idempotencyKey"].as_str())
            .or_default()
            .push(m.attributes["deviceId"].as_str());
    }
    assert_eq!(per_key.len(), 12, "one key per device");
    assert_eq!(per_key.values().filter(|v| v.len() == 2).count(), 4);
    assert!(per_key.values().all(|v| v.iter().all(|id| *id == v[0])));
    let devices: HashSet<&str> = per_key.values().map(|v| v[0]).collect();
    assert_eq!(devices.len(), 12);
}
