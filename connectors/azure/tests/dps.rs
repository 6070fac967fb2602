//! The DPS connector against the DPS mock.
#![allow(clippy::unwrap_used)] // tests

mod common;

use idbridge_azure::DpsConnector;
use idbridge_azure::dps::check_batch;
use idbridge_core::conformance;
use idbridge_core::{CallContext, Connector, ErrorKind, RegisterOutcome};
use idbridge_mock_clouds::azure::AzureMockConfig;
use idbridge_mock_clouds::tls::{Connect, connect_device};
use idbridge_mock_clouds::{Fault, FaultRule, TestPki};

fn ctx() -> CallContext {
    CallContext::unpaced()
}

#[tokio::test]
async fn conformance_suite() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::new("Test Root", "Test CA 306", "unused").unwrap();
    let devs = common::unique_cn_devices(&pki, 1, 4);
    let c = DpsConnector::new(&env.dps_config()).unwrap();
    conformance::register_then_lookup(&c, &devs[0].1).await;
    conformance::reregister_is_idempotent(&c, &devs[1].1).await;
    conformance::deregister_is_idempotent(&c, &devs[2].1).await;
    env.mock.dps_faults().push(
        FaultRule::once(Fault::Status {
            status: 429,
            headers: vec![("Retry-After".into(), "1".into()), ("x-ms-error-code".into(), "429001".into())],
            body: r#"{"errorCode":429001,"trackingId":"t","message":"Operations are being throttled for this tenant.","timestampUtc":"2024-01-01T00:00:00Z"}"#.into(),
        })
        .on_path("/enrollments"),
    );
    conformance::throttling_is_rate_limited(&c, &devs[3].1).await;
    let mut bad = env.dps_config();
    let cs = env.mock.dps_connection_string();
    bad.connection_string = Some(idbridge_azure::Secret::new(format!(
        "{}AAAA=",
        &cs[..cs.len() - 5]
    )));
    conformance::bad_credentials_are_permanent(&DpsConnector::new(&bad).unwrap(), &devs[3].1).await;

    let e = env
        .mock
        .dps()
        .enrollment(&devs[0].1.subject_cn.clone().unwrap())
        .unwrap();
    assert_eq!(e.cert_der, devs[0].0.cert_der);
    assert_eq!(
        e.iot_hub_host_name.as_deref(),
        Some("myhub.azure-devices.net")
    );
    assert_eq!(
        e.initial_twin["tags"]["idbridge"]["fingerprint"],
        devs[0].1.device_id.as_str()
    );
}

#[tokio::test]
async fn trust_m_v1_batch_is_refused_before_any_call() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 10)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let c = DpsConnector::new(&env.dps_config()).unwrap();
    let e = c.register(&ctx(), &ids).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(!e.is_temporary());
    let msg = e.to_string();
    assert!(msg.contains(ids[0].device_id.as_str()), "{msg}");
    assert!(msg.contains("Infineon IoT Node"), "{msg}");
    assert!(msg.contains("azure-iot-hub"), "{msg}");
    assert!(msg.contains("and 5 more"), "{msg}");
    assert_eq!(env.mock.dps().stats().requests, 0, "no call was made");
    assert!(check_batch(&ids).is_err());
}

#[tokio::test]
async fn same_valid_cn_on_every_chip_is_refused_within_and_across_batches() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::new("Test Root", "Test CA 300", "InfineonIoTNode").unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 3)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let c = DpsConnector::new(&env.dps_config()).unwrap();
    let e = c.register(&ctx(), &ids[..2]).await.unwrap_err();
    assert!(
        e.to_string().contains("has CN \"infineoniotnode\" like"),
        "{e}"
    );
    assert_eq!(env.mock.dps().stats().requests, 0);
    // One at a time: the first goes through, the second is refused before its call.
    assert!(matches!(
        c.register(&ctx(), &ids[..1]).await.unwrap()[0],
        RegisterOutcome::Created(_)
    ));
    let e = c.register(&ctx(), &ids[1..2]).await.unwrap_err();
    assert!(
        e.to_string().contains("already enrolled for certificate"),
        "{e}"
    );
    assert_eq!(env.mock.dps().stats().requests, 1);
    // A fresh connector (another run) is told by DPS: 409 → GET → another certificate.
    let c2 = DpsConnector::new(&env.dps_config()).unwrap();
    match &c2.register(&ctx(), &ids[2..3]).await.unwrap()[0] {
        RegisterOutcome::Conflict { reason, .. } => {
            assert!(reason.contains("another certificate"), "{reason}")
        }
        o => panic!("{o:?}"),
    }
}

#[tokio::test]
async fn bulk_of_10_and_device_registration_through_dps() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::new("Test Root", "Test CA 306", "unused").unwrap();
    let devs = common::unique_cn_devices(&pki, 1, 10);
    let ids: Vec<_> = devs.iter().map(|d| d.1.clone()).collect();
    let c = DpsConnector::new(&env.dps_config()).unwrap();
    assert_eq!(c.info().max_batch_size, 10);
    let out = c.register(&ctx(), &ids).await.unwrap();
    assert!(
        out.iter().all(|o| matches!(o, RegisterOutcome::Created(_))),
        "{out:?}"
    );
    assert_eq!(env.mock.dps().stats().requests, 1);
    assert_eq!(env.mock.dps().enrollment_count(), 10);
    let (dev, id) = &devs[4];
    let connect = || {
        connect_device(
            env.mock.dps_device_addr(),
            env.mock.ca_pem(),
            &dev.cert_pem,
            &dev.key_pem,
            Some("localhost"),
        )
    };
    assert_eq!(
        connect().await.unwrap(),
        Connect::Accepted(id.subject_cn.clone().unwrap())
    );
    c.deregister(&ctx(), std::slice::from_ref(id))
        .await
        .unwrap();
    assert!(matches!(connect().await.unwrap(), Connect::Refused(_)));
    let p = c.list(&ctx(), None).await.unwrap();
    assert_eq!(p.devices.len(), 9);
}

#[tokio::test]
async fn quota_and_faults() {
    let env = common::start(AzureMockConfig::s1(1)).await;
    let pki = TestPki::new("Test Root", "Test CA 306", "unused").unwrap();
    let ids: Vec<_> = common::unique_cn_devices(&pki, 1, 15)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let c = DpsConnector::new(&env.dps_config()).unwrap();
    // The quota runs on the mock's clock, moved by hand: no waiting a window out.
    env.mock.clock().freeze();
    c.register(&ctx(), &ids[..10]).await.unwrap();
    let e = c.register(&ctx(), &ids[10..]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(e.retry_after().is_some());
    assert_eq!(
        env.mock.dps().enrollment_count(),
        10,
        "throttled call not applied"
    );
    env.mock
        .dps_faults()
        .push(FaultRule::once(Fault::LoseResponse).on_method("POST"));
    // 1,000 operations/min refill the bucket of 10 in a second: the 5 devices and a lookup.
    env.mock.clock().advance(std::time::Duration::from_secs(1));
    let e = c.register(&ctx(), &ids[10..]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown);
    assert_eq!(env.mock.dps().enrollment_count(), 15);
    assert!(
        c.lookup(&ctx(), &ids[10])
            .await
            .unwrap()
            .unwrap()
            .differences
            .is_empty()
    );
}
