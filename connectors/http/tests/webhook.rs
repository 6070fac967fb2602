//! The webhook connector against the mock Standard Webhooks receiver.
#![allow(clippy::unwrap_used)] // test helpers

use idbridge_core::conformance;
use idbridge_core::{
    BatchRef, CallContext, Connector, DeregisterOutcome, DeviceIdentity, ErrorKind,
    RegisterOutcome, Source,
};
use idbridge_http::{WebhookConfig, WebhookConnector};
use idbridge_mock_clouds::tls::{Connect, connect_device};
use idbridge_mock_clouds::webhook::{MockWebhook, WebhookState};
use idbridge_mock_clouds::{Fault, FaultRule, TestDevice, TestPki};

struct Setup {
    mock: MockWebhook,
    secret: String,
    pki: TestPki,
    dir: tempfile::TempDir,
}

async fn setup(tls: bool) -> Setup {
    let secret = WebhookState::random_secret();
    let mock = MockWebhook::start("127.0.0.1:0", WebhookState::new(&secret).unwrap(), tls)
        .await
        .unwrap();
    Setup {
        mock,
        secret,
        pki: TestPki::infineon_like().unwrap(),
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn config(&self, secret: &str) -> WebhookConfig {
        let ca = self.dir.path().join("ca.pem");
        std::fs::write(&ca, self.mock.ca.cert_pem()).unwrap();
        serde_json::from_value(serde_json::json!({
            "url": self.mock.url(),
            "secret": secret,
            "ca_file": ca,
            "allow_http": true,
        }))
        .unwrap()
    }

    fn connector(&self) -> WebhookConnector {
        WebhookConnector::new("oem-hook", self.config(&self.secret)).unwrap()
    }

    fn device(&self, serial: u64) -> (TestDevice, DeviceIdentity) {
        let d = self.pki.device(serial).unwrap();
        let id = DeviceIdentity::from_der(d.cert_der.clone(), Source::default()).unwrap();
        (d, id)
    }

    async fn connects(&self, d: &TestDevice) -> bool {
        let r = connect_device(
            self.mock.devices.addr,
            self.mock.ca.cert_pem(),
            &d.cert_pem,
            &d.key_pem,
            Some("localhost"),
        )
        .await
        .unwrap();
        matches!(r, Connect::Accepted(_))
    }
}

#[tokio::test]
async fn provision_event_is_signed_admitted_and_deduplicated() {
    let s = setup(true).await;
    let c = s.connector();
    let ctx = CallContext::unpaced();
    c.health_check(&ctx).await.unwrap();
    let (d, mut id) = s.device(1);
    id.batch = Some(BatchRef::new("b41425b9-b42b-47fd-95c2-f981b4c61561"));
    assert!(!s.connects(&d).await);
    let out = c.register(&ctx, std::slice::from_ref(&id)).await.unwrap();
    assert!(matches!(out[0], RegisterOutcome::Created(_)), "{out:?}");
    assert!(s.connects(&d).await, "admitted after the webhook");
    let events: Vec<_> = s
        .mock
        .state
        .accepted()
        .into_iter()
        .filter(|e| e.event_type == "device.provisioned")
        .collect();
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(ev.id, c.message_id(&ctx, "webhook provision", &id));
    assert_eq!(ev.body["data"]["deviceId"], id.device_id.as_str());
    assert_eq!(ev.body["data"]["certificate"]["serial"], id.serial_hex);
    assert_eq!(ev.body["data"]["certificate"]["pem"], id.to_pem());
    let raw = ev.body.to_string();
    assert!(!raw.contains("b41425b9"), "batch ID leaked into the event");
    assert!(raw.contains("batch:"), "the batch tag is sent");

    // Re-run: same webhook-id, the receiver de-duplicates.
    let again = c.register(&ctx, std::slice::from_ref(&id)).await.unwrap();
    assert!(matches!(again[0], RegisterOutcome::Created(_)));
    assert_eq!(s.mock.state.duplicates(), 1);

    let out = c.deregister(&ctx, &[id]).await.unwrap();
    assert!(matches!(out[0], DeregisterOutcome::Deleted), "{out:?}");
    assert!(!s.connects(&d).await, "refused after device.deprovisioned");
}

#[tokio::test]
async fn conformance_throttling_and_bad_credentials() {
    let s = setup(false).await;
    let c = s.connector();
    s.mock.server.faults.push(FaultRule::once(Fault::Status {
        status: 429,
        headers: vec![("Retry-After".into(), "3".into())],
        body: String::new(),
    }));
    conformance::throttling_is_rate_limited(&c, &s.device(2).1).await;
    let wrong =
        WebhookConnector::new("oem-hook", s.config(&WebhookState::random_secret())).unwrap();
    conformance::bad_credentials_are_permanent(&wrong, &s.device(3).1).await;
    assert!(
        s.mock.state.refused() >= 2,
        "the receiver refused the bad signatures"
    );
    assert!(s.mock.state.provisioned().is_empty());
}

#[tokio::test]
async fn statuses_map_to_outcomes() {
    let s = setup(false).await;
    let c = s.connector();
    let ctx = CallContext::unpaced();
    let ids: Vec<_> = (10..14).map(|n| s.device(n).1).collect();
    s.mock.state.script(ids[0].device_id.as_str(), 409, 1);
    s.mock.state.script(ids[1].device_id.as_str(), 500, 1);
    let out = c.register(&ctx, &ids[..3]).await.unwrap();
    assert!(
        matches!(out[0], RegisterOutcome::Conflict { .. }),
        "{:?}",
        out[0]
    );
    match &out[1] {
        RegisterOutcome::Failed(e) => {
            assert_eq!(e.kind(), ErrorKind::ServerError);
            assert!(e.is_temporary());
            assert!(e.to_string().contains(ids[1].device_id.as_str()), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(out[2], RegisterOutcome::Created(_)),
        "{:?}",
        out[2]
    );

    // 410 Gone: this device and every later one of the call fail with TargetDisabled; the
    // later ones are not even sent.
    s.mock.state.script(ids[3].device_id.as_str(), 410, 1);
    let before = s.mock.state.accepted().len();
    let out = c
        .register(&ctx, &[ids[3].clone(), ids[0].clone()])
        .await
        .unwrap();
    for (o, d) in out.iter().zip([&ids[3], &ids[0]]) {
        match o {
            RegisterOutcome::Failed(e) => {
                assert_eq!(e.kind(), ErrorKind::TargetDisabled, "{e}");
                assert!(!e.is_temporary());
                // Each copy names its own device, and only it.
                assert_eq!(e.context("device_id"), Some(d.device_id.as_str()), "{e}");
                let other = if d.device_id == ids[0].device_id {
                    &ids[3]
                } else {
                    &ids[0]
                };
                assert!(!e.to_string().contains(other.device_id.as_str()), "{e}");
                assert!(!e.to_string().contains("(permanent)"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        s.mock.state.accepted().len(),
        before,
        "nothing delivered after 410"
    );
}

#[tokio::test]
async fn reset_and_lost_response_are_temporary_and_retry_is_deduplicated() {
    let s = setup(false).await;
    let c = s.connector();
    let ctx = CallContext::unpaced();
    let (_, id) = s.device(20);
    s.mock.server.faults.push(FaultRule::once(Fault::Reset));
    let out = c.register(&ctx, std::slice::from_ref(&id)).await.unwrap();
    match &out[0] {
        RegisterOutcome::Failed(e) => assert!(e.is_temporary(), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(s.mock.state.provisioned().is_empty());
    s.mock
        .server
        .faults
        .push(FaultRule::once(Fault::LoseResponse));
    let out = c.register(&ctx, std::slice::from_ref(&id)).await.unwrap();
    match &out[0] {
        RegisterOutcome::Failed(e) => assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.mock.state.provisioned().len(), 1, "effect happened");
    let out = c.register(&ctx, &[id]).await.unwrap();
    assert!(matches!(out[0], RegisterOutcome::Created(_)));
    assert_eq!(
        s.mock.state.duplicates(),
        1,
        "the retry carried the same webhook-id"
    );
}

#[tokio::test]
async fn stale_timestamp_is_refused() {
    let s = setup(false).await;
    let c = s.connector();
    s.mock.state.set_clock_offset(10 * 60);
    let (_, id) = s.device(30);
    let out = c.register(&CallContext::unpaced(), &[id]).await.unwrap();
    match &out[0] {
        RegisterOutcome::Failed(e) => assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(s.mock.state.provisioned().is_empty());
    assert_eq!(s.mock.state.refused(), 1);
}

#[tokio::test]
async fn lookup_is_unsupported_and_debug_hides_the_secret() {
    let s = setup(false).await;
    let c = s.connector();
    let (_, id) = s.device(40);
    let e = c.lookup(&CallContext::unpaced(), &id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(&s.secret[6..]), "secret in Debug: {dbg}");
}
