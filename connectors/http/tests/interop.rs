//! The interop client against the mock interop receiver (`idbridge_mock_clouds::interop`).
#![allow(clippy::unwrap_used)] // test helpers

use idbridge_core::conformance;
use idbridge_core::{
    CallContext, Connector, DeregisterOutcome, DeviceIdentity, ErrorKind, RegisterOutcome, Source,
};
use idbridge_http::{InteropConfig, InteropConnector};
use idbridge_mock_clouds::interop::{InteropSender, InteropState, ItemScript, MockInterop};
use idbridge_mock_clouds::tls::{Connect, connect_device};
use idbridge_mock_clouds::{Fault, FaultRule, TestDevice, TestPki};

const AUD: &str = "123456789012";

struct Setup {
    mock: MockInterop,
    sender: InteropSender,
    pki: TestPki,
    dir: tempfile::TempDir,
}

async fn setup(infineon_only: bool, tls: bool) -> Setup {
    let sender = InteropSender::new(AUD).unwrap();
    let state = InteropState::new(Some(AUD), &sender.public_key_pem(), infineon_only).unwrap();
    let mock = MockInterop::start("127.0.0.1:0", state, tls).await.unwrap();
    Setup {
        mock,
        sender,
        pki: TestPki::infineon_like().unwrap(),
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn config(&self) -> InteropConfig {
        let key = self.dir.path().join("key.pem");
        std::fs::write(&key, self.sender.private_key_pem()).unwrap();
        let ca = self.dir.path().join("ca.pem");
        std::fs::write(&ca, self.mock.ca.cert_pem()).unwrap();
        serde_json::from_value(serde_json::json!({
            "base_url": self.mock.server.url,
            "audience": AUD,
            "signing_key": key,
            "ca_file": ca,
            "allow_http": true,
            "batch_size": 3,
        }))
        .unwrap()
    }

    fn connector(&self) -> InteropConnector {
        InteropConnector::new("test-interop", self.config()).unwrap()
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
async fn conformance_suite() {
    let s = setup(false, false).await;
    let c = s.connector();
    c.health_check(&CallContext::unpaced()).await.unwrap();
    conformance::register_then_lookup(&c, &s.device(1).1).await;
    conformance::reregister_is_idempotent(&c, &s.device(2).1).await;
    conformance::deregister_is_idempotent(&c, &s.device(3).1).await;
    s.mock.server.faults.push(FaultRule::once(Fault::Status {
        status: 429,
        headers: vec![("Retry-After".into(), "2".into())],
        body: "{\"error\":\"Too Many Requests\"}".into(),
    }));
    conformance::throttling_is_rate_limited(&c, &s.device(4).1).await;

    // Bad credentials: a connector signing with a key the receiver does not trust.
    let other = InteropSender::new(AUD).unwrap();
    let key = s.dir.path().join("other.pem");
    std::fs::write(&key, other.private_key_pem()).unwrap();
    let mut cfg = s.config();
    cfg.signing_key = key.to_string_lossy().into_owned();
    let bad = InteropConnector::new("bad", cfg).unwrap();
    conformance::bad_credentials_are_permanent(&bad, &s.device(5).1).await;
}

#[tokio::test]
async fn provisioned_device_is_admitted_by_the_device_endpoint_over_https() {
    let s = setup(false, true).await;
    assert!(s.mock.server.url.starts_with("https://"));
    let c = s.connector();
    let (d, id) = s.device(10);
    let (stranger, _) = s.device(11);
    assert!(!s.connects(&d).await, "not yet provisioned");
    let out = c
        .register(&CallContext::unpaced(), std::slice::from_ref(&id))
        .await
        .unwrap();
    let RegisterOutcome::Created(remote) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        remote.endpoint.as_deref(),
        Some(format!("localhost:{}", s.mock.devices.addr.port()).as_str())
    );
    assert!(s.connects(&d).await, "admitted after interop provisioning");
    assert!(!s.connects(&stranger).await, "others still refused");
    let reg = s.mock.state.registered();
    assert_eq!(reg.len(), 1);
    assert_eq!(
        reg[0].reference,
        id.device_id.as_str(),
        "ref is the device id"
    );
    assert_eq!(
        reg[0].thing_name,
        format!("Infineon_{}", d.serial_hex.to_lowercase())
    );
}

#[tokio::test]
async fn batches_are_split_and_results_correlated_by_ref() {
    let s = setup(false, false).await;
    let c = s.connector();
    let ids: Vec<_> = (20..27).map(|n| s.device(n).1).collect();
    // Script: one item fails temporarily, one is left out of the answer.
    s.mock.state.script(
        ids[1].device_id.as_str(),
        ItemScript::Error {
            message: "Failed creating and registering thing".into(),
            code: None,
            times: 1,
        },
    );
    s.mock
        .state
        .script(ids[5].device_id.as_str(), ItemScript::Omit { times: 1 });
    let out = c.register(&CallContext::unpaced(), &ids).await.unwrap();
    assert_eq!(
        s.mock.state.provision_calls(),
        3,
        "7 devices at batch_size 3"
    );
    assert_eq!(out.len(), 7);
    for (i, o) in out.iter().enumerate() {
        match (i, o) {
            (1, RegisterOutcome::Failed(e)) => {
                assert_eq!(e.kind(), ErrorKind::ServerError, "{e}");
                assert!(e.is_temporary());
                assert!(e.to_string().contains(ids[1].device_id.as_str()), "{e}");
            }
            (5, RegisterOutcome::Failed(e)) => {
                assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "missing result: {e}");
            }
            (1 | 5, other) => panic!("{i}: {other:?}"),
            (_, RegisterOutcome::Created(_)) => {}
            (_, other) => panic!("{i}: {other:?}"),
        }
    }
    // Retrying only the failed ones completes the set; the rest are not re-created.
    let retry = c
        .register(
            &CallContext::unpaced(),
            &[ids[1].clone(), ids[5].clone(), ids[0].clone()],
        )
        .await
        .unwrap();
    assert!(
        matches!(retry[0], RegisterOutcome::Created(_)),
        "{:?}",
        retry[0]
    );
    assert!(
        matches!(retry[1], RegisterOutcome::Created(_)),
        "{:?}",
        retry[1]
    );
    assert!(
        matches!(retry[2], RegisterOutcome::AlreadyPresent(_)),
        "{:?}",
        retry[2]
    );
    assert_eq!(s.mock.state.registered().len(), 7);
}

#[tokio::test]
async fn expired_certificate_is_a_permanent_item_error() {
    let s = setup(false, false).await;
    let c = s.connector();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.not_before = rcgen::date_time_ymd(2010, 1, 1);
    p.not_after = rcgen::date_time_ymd(2011, 1, 1);
    let cert = p.self_signed(&key).unwrap();
    let id = DeviceIdentity::from_der(cert.der().to_vec(), Source::default()).unwrap();
    let out = c.register(&CallContext::unpaced(), &[id]).await.unwrap();
    let RegisterOutcome::Failed(e) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(!e.is_temporary());
    assert!(e.to_string().contains("notBefore or notAfter"), "{e}");
}

#[tokio::test]
async fn whole_call_faults_500_reset_and_lost_response() {
    let s = setup(false, false).await;
    let c = s.connector();
    let ctx = CallContext::unpaced();
    let (_, id) = s.device(30);

    s.mock.server.faults.push(FaultRule::once(Fault::Status {
        status: 500,
        headers: vec![],
        body: "{\"error\":\"boom\"}".into(),
    }));
    let e = c
        .register(&ctx, std::slice::from_ref(&id))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ServerError);
    assert!(e.is_temporary());
    assert!(s.mock.state.registered().is_empty());

    s.mock.server.faults.push(FaultRule::once(Fault::Reset));
    let e = c
        .register(&ctx, std::slice::from_ref(&id))
        .await
        .unwrap_err();
    assert!(e.is_temporary(), "reset: {e}");
    assert!(
        s.mock.state.registered().is_empty(),
        "reset before running: no effect"
    );

    s.mock
        .server
        .faults
        .push(FaultRule::once(Fault::LoseResponse));
    let e = c
        .register(&ctx, std::slice::from_ref(&id))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    assert_eq!(s.mock.state.registered().len(), 1, "the effect happened");
    // The engine may blindly retry (idempotent_register) and gets success.
    assert!(c.info().idempotent_register);
    let out = c.register(&ctx, &[id]).await.unwrap();
    assert!(
        matches!(out[0], RegisterOutcome::AlreadyPresent(_)),
        "{out:?}"
    );
}

#[tokio::test]
async fn infineon_receiver_without_extensions() {
    let s = setup(true, false).await;
    let c = s.connector();
    let ctx = CallContext::unpaced();
    let (d, id) = s.device(40);
    let out = c.register(&ctx, std::slice::from_ref(&id)).await.unwrap();
    assert!(matches!(out[0], RegisterOutcome::Created(_)), "{out:?}");
    assert!(s.connects(&d).await);
    let e = c.lookup(&ctx, &id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let e = c.deregister(&ctx, &[id]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
}

#[tokio::test]
async fn deregister_removes_admission() {
    let s = setup(false, false).await;
    let c = s.connector();
    let ctx = CallContext::unpaced();
    let (d, id) = s.device(50);
    c.register(&ctx, std::slice::from_ref(&id)).await.unwrap();
    assert!(s.connects(&d).await);
    let out = c.deregister(&ctx, std::slice::from_ref(&id)).await.unwrap();
    assert!(matches!(out[0], DeregisterOutcome::Deleted), "{out:?}");
    assert!(!s.connects(&d).await, "refused after deprovision");
}

#[tokio::test]
async fn wire_body_is_infineon_shaped_and_token_verifies() {
    let s = setup(false, false).await;
    let c = s.connector();
    let (_, id) = s.device(60);
    c.register(&CallContext::unpaced(), std::slice::from_ref(&id))
        .await
        .unwrap();
    let reqs = s.mock.state.requests();
    let body = reqs.iter().find(|r| r["action"] == "provision").unwrap();
    let cert = body["certs"][0]["cert"].as_str().unwrap();
    use base64::Engine as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(cert)
        .unwrap();
    assert!(
        String::from_utf8(pem)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(body["certs"][0]["ref"], id.device_id.as_str());
}

#[test]
fn config_errors_are_clear() {
    let cfg: InteropConfig = serde_json::from_value(serde_json::json!({
        "base_url": "http://127.0.0.1:1",
        "audience": AUD,
        "signing_key": "/nonexistent/key.pem",
    }))
    .unwrap();
    let e = InteropConnector::new("t", cfg.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
    assert!(e.to_string().contains("allow_http"), "{e}");
    let mut cfg = cfg;
    cfg.allow_http = true;
    let e = InteropConnector::new("t", cfg).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/key.pem"), "{e}");
}
