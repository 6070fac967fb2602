//! The core conformance suite against the mock registry cloud, plus wire faults.
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use idbridge_core::conformance;
use idbridge_core::{CallContext, Connector, DeviceIdentity, ErrorKind, RegisterOutcome, Source};
use idbridge_mock::{MockConfig, MockConnector};
use idbridge_mock_clouds::server::{Fault, FaultRule, RunningServer};
use idbridge_mock_clouds::{Registry, RegistryConfig, TestPki};
use secrecy::SecretString;

fn devices(n: u64) -> Vec<DeviceIdentity> {
    let pki = TestPki::infineon_like().unwrap();
    (0..n)
        .map(|i| {
            let d = pki.device(i + 1).unwrap();
            DeviceIdentity::from_der(d.cert_der, Source::default()).unwrap()
        })
        .collect()
}

async fn remote(token: &str) -> (RunningServer, Registry, MockConnector) {
    let reg = Registry::new(RegistryConfig {
        token: "right".into(),
        quota: None,
    });
    let server = reg.serve("127.0.0.1:0").await.unwrap();
    let c = MockConnector::new(MockConfig {
        url: Some(server.url.clone()),
        token: Some(SecretString::from(token)),
        allow_http: true,
        ..Default::default()
    })
    .await
    .unwrap();
    (server, reg, c)
}

#[tokio::test]
async fn conformance_in_process() {
    let c = MockConnector::new(MockConfig::default()).await.unwrap();
    let d = devices(3);
    conformance::register_then_lookup(&c, &d[0]).await;
    conformance::reregister_is_idempotent(&c, &d[1]).await;
    conformance::deregister_is_idempotent(&c, &d[2]).await;
    let reg = c.registry().unwrap();
    assert_eq!(reg.stats().devices, 2);
    assert_eq!(
        reg.by_fingerprint(d[0].device_id.as_str()).unwrap().name,
        d[0].device_id.as_str()
    );
}

#[tokio::test]
async fn throttling_and_server_errors_map_to_temporary_kinds() {
    let (server, _reg, c) = remote("right").await;
    let d = devices(2);
    server.faults.push(FaultRule::once(Fault::Status {
        status: 429,
        headers: vec![("Retry-After".into(), "2".into())],
        body: r#"{"error":"throttled","message":"rate exceeded"}"#.into(),
    }));
    conformance::throttling_is_rate_limited(&c, &d[0]).await;
    server.faults.push(FaultRule::once(Fault::Status {
        status: 503,
        headers: vec![],
        body: String::new(),
    }));
    let e = c
        .register(&CallContext::unpaced(), &d[..1])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ServerError);
    assert!(e.is_temporary());
    // A lost answer: the device was created, the client cannot know.
    server
        .faults
        .push(FaultRule::once(Fault::LoseResponse).on_method("POST"));
    let e = c
        .register(&CallContext::unpaced(), &d[1..])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    assert!(
        c.lookup(&CallContext::unpaced(), &d[1])
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn bad_credentials_are_permanent() {
    let (_server, _reg, c) = remote("wrong").await;
    conformance::bad_credentials_are_permanent(&c, &devices(1)[0]).await;
}

#[tokio::test]
async fn a_different_certificate_under_the_name_is_a_conflict() {
    let (server, _reg, c) = remote("right").await;
    let d = devices(2);
    // Put device 1's certificate under device 0's name, directly on the wire.
    let body =
        serde_json::json!({"name": d[0].device_id.as_str(), "certificate_pem": d[1].to_pem()});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/devices", server.url))
        .bearer_auth("right")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let out = c.register(&CallContext::unpaced(), &d[..1]).await.unwrap();
    assert!(
        matches!(out[0], RegisterOutcome::Conflict { .. }),
        "{out:?}"
    );
    let remote = c
        .lookup(&CallContext::unpaced(), &d[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(remote.device_id.as_ref(), Some(&d[1].device_id));
}

#[tokio::test]
async fn plain_http_needs_allow_http() {
    let e = MockConnector::new(MockConfig {
        url: Some("http://127.0.0.1:1".into()),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
    assert!(e.to_string().contains("allow_http"), "{e}");
}
