//! The IoT Hub connector against the IoT Hub mock: conformance, bulk, conflicts, faults,
//! quotas, listing, credentials and the device endpoint.
#![allow(clippy::unwrap_used)] // tests

mod common;

use idbridge_azure::{AzureConfig, EntraConfig, IotHubConnector};
use idbridge_core::conformance;
use idbridge_core::{CallContext, Connector, DeregisterOutcome, ErrorKind, RegisterOutcome};
use idbridge_mock_clouds::azure::{AzureMockConfig, ENTRA_CLIENT_ID, ENTRA_TENANT, QuotaSettings};
use idbridge_mock_clouds::tls::{Connect, connect_device};
use idbridge_mock_clouds::{Fault, FaultRule, TestPki};
use secrecy::SecretString;

fn ctx() -> CallContext {
    CallContext::unpaced()
}

#[tokio::test]
async fn conformance_suite() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::same_cn_devices(&pki, 1, 4);
    let c = IotHubConnector::new(&env.hub_config()).unwrap();
    conformance::register_then_lookup(&c, &devs[0].1).await;
    conformance::reregister_is_idempotent(&c, &devs[1].1).await;
    conformance::deregister_is_idempotent(&c, &devs[2].1).await;

    env.mock.hub_faults().push(
        FaultRule::once(Fault::Status {
            status: 429,
            headers: vec![("Retry-After".into(), "3".into()), ("iothub-errorcode".into(), "ThrottlingException".into())],
            body: r#"{"Message":"ErrorCode:ThrottlingException;Throttled","ExceptionMessage":"Tracking ID:ab-G:0-TimeStamp:x"}"#.into(),
        })
        .on_path("/devices"),
    );
    conformance::throttling_is_rate_limited(&c, &devs[3].1).await;

    let mut bad = env.hub_config();
    let wrong_key = env.mock.hub_connection_string();
    let wrong_key = format!(
        "{}{}",
        &wrong_key[..wrong_key.rfind('=').unwrap() - 4],
        "AAAA="
    );
    bad.connection_string = Some(SecretString::from(wrong_key));
    let bad = IotHubConnector::new(&bad).unwrap();
    conformance::bad_credentials_are_permanent(&bad, &devs[3].1).await;
    assert_eq!(env.mock.hub().device_count(), 2, "devices 0 and 1 remain");
}

#[tokio::test]
async fn bulk_of_100_is_one_call_with_selfsigned_sha256_thumbprints() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::same_cn_devices(&pki, 100, 100);
    let ids: Vec<_> = devs.iter().map(|d| d.1.clone()).collect();
    let c = IotHubConnector::new(&env.hub_config()).unwrap();
    // The service's limit whatever the quota: the engine's pacer wait does not count against
    // the attempt timeout, so no connector-side batch sizing (the old `batch_for`).
    assert_eq!(c.info().max_batch_size, 100);
    assert_eq!(
        c.info().max_deregister_batch_size,
        1,
        "one DELETE per device"
    );
    let mut cfg = env.hub_config();
    cfg.units = Some(10);
    let c = IotHubConnector::new(&cfg).unwrap();
    assert_eq!(c.info().max_batch_size, 100);
    assert_eq!(c.info().quotas[0].burst, 100);
    let before = env.mock.hub().stats().requests;
    let out = c.register(&ctx(), &ids).await.unwrap();
    assert_eq!(env.mock.hub().stats().requests - before, 1, "one bulk call");
    assert!(
        out.iter().all(|o| matches!(o, RegisterOutcome::Created(_))),
        "{out:?}"
    );
    let d = env
        .mock
        .hub()
        .device(&devs[7].0.serial_hex)
        .expect("device id = serial hex");
    let thumb = ids[7].device_id.as_str().to_ascii_uppercase();
    assert_eq!(d.auth_type, "selfSigned");
    assert_eq!(d.primary.as_deref(), Some(thumb.as_str()));
    assert_eq!(d.secondary.as_deref(), Some(thumb.as_str()));
    assert_eq!(d.status, "enabled");
    assert_eq!(d.tags["idbridge"]["fingerprint"], ids[7].device_id.as_str());
}

#[tokio::test]
async fn existing_same_thumbprint_is_present_other_is_conflict() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::same_cn_devices(&pki, 1, 3);
    let ids: Vec<_> = devs.iter().map(|d| d.1.clone()).collect();
    let hub = env.mock.hub();
    hub.insert_self_signed(&ids[0].serial_hex, ids[0].device_id.as_str());
    hub.insert_self_signed(&ids[1].serial_hex, &"AB".repeat(32));
    let c = IotHubConnector::new(&env.hub_config()).unwrap();
    let out = c.register(&ctx(), &ids).await.unwrap();
    assert!(
        matches!(out[0], RegisterOutcome::AlreadyPresent(_)),
        "{:?}",
        out[0]
    );
    match &out[1] {
        RegisterOutcome::Conflict { reason, .. } => {
            assert!(
                reason.contains(&ids[1].serial_hex) && reason.contains("ABAB"),
                "{reason}"
            )
        }
        o => panic!("expected conflict, got {o:?}"),
    }
    assert!(
        matches!(out[2], RegisterOutcome::Created(_)),
        "{:?}",
        out[2]
    );
    assert_eq!(
        hub.device(&ids[1].serial_hex).unwrap().primary.unwrap(),
        "AB".repeat(32),
        "not overwritten"
    );
}

#[tokio::test]
async fn per_device_bulk_errors_fail_only_that_device() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 3)
        .into_iter()
        .map(|d| d.1)
        .collect();
    env.mock
        .hub()
        .fail_item_once(&ids[1].serial_hex, "InternalServerError");
    let c = IotHubConnector::new(&env.hub_config()).unwrap();
    let out = c.register(&ctx(), &ids).await.unwrap();
    assert!(matches!(out[0], RegisterOutcome::Created(_)));
    match &out[1] {
        RegisterOutcome::Failed(e) => {
            assert_eq!(e.kind(), ErrorKind::ServerError);
            assert!(e.is_temporary());
        }
        o => panic!("{o:?}"),
    }
    assert!(matches!(out[2], RegisterOutcome::Created(_)));
    // Retrying just the failed device ends in the exact expected state.
    let again = c.register(&ctx(), &ids[1..2]).await.unwrap();
    assert!(
        matches!(again[0], RegisterOutcome::Created(_)),
        "{:?}",
        again[0]
    );
    assert_eq!(env.mock.hub().device_count(), 3);
}

#[tokio::test]
async fn server_errors_resets_and_lost_answers_end_in_the_expected_state() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 2)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let c = IotHubConnector::new(&env.hub_config()).unwrap();
    let faults = env.mock.hub_faults();

    faults.push(
        FaultRule::once(Fault::Status {
            status: 500,
            headers: vec![],
            body: String::new(),
        })
        .on_method("POST"),
    );
    let e = c.register(&ctx(), &ids).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ServerError);
    assert!(e.is_temporary());
    assert_eq!(env.mock.hub().device_count(), 0);

    faults.push(FaultRule::once(Fault::Reset).on_method("POST"));
    let e = c.register(&ctx(), &ids).await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert!(
        matches!(e.kind(), ErrorKind::OutcomeUnknown | ErrorKind::Network),
        "{e}"
    );
    assert_eq!(
        env.mock.hub().device_count(),
        0,
        "a reset request is not run"
    );

    faults.push(FaultRule::once(Fault::LoseResponse).on_method("POST"));
    let e = c.register(&ctx(), &ids).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    assert_eq!(
        env.mock.hub().device_count(),
        2,
        "the lost call took effect"
    );
    // The engine looks up, or re-registers: both see the devices as present.
    assert!(
        c.lookup(&ctx(), &ids[0])
            .await
            .unwrap()
            .unwrap()
            .differences
            .is_empty()
    );
    let out = c.register(&ctx(), &ids).await.unwrap();
    assert!(
        out.iter()
            .all(|o| matches!(o, RegisterOutcome::AlreadyPresent(_))),
        "{out:?}"
    );
}

#[tokio::test]
async fn quota_429_counts_each_device_of_a_bulk_call() {
    let env = common::start(AzureMockConfig::s1(1)).await;
    let pki = TestPki::infineon_like().unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 101)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let c = IotHubConnector::new(&env.hub_config()).unwrap();
    // The quota runs on the mock's clock, stopped: however slow the machine, nothing refills.
    env.mock.clock().freeze();
    let q = &c.info().quotas[0];
    assert_eq!(q.api, "registry");
    assert!((q.per_second - 100.0 / 60.0).abs() < 1e-9);
    let out = c.register(&ctx(), &ids[..100]).await.unwrap();
    assert!(out.iter().all(|o| matches!(o, RegisterOutcome::Created(_))));
    let e = c.register(&ctx(), &ids[100..]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited);
    assert!(e.retry_after().is_some_and(|d| d.as_secs() >= 1), "{e}");
    assert_eq!(env.mock.hub().stats().throttled, 1);
    assert_eq!(env.mock.hub().device_count(), 100);
    // With bulk counted as one operation the same call passes.
    env.mock.hub().set_quota(QuotaSettings {
        per_minute: Some(100.0),
        burst: 100.0,
        bulk_counts_per_device: false,
        shaping: std::time::Duration::from_millis(50),
    });
    assert!(matches!(
        c.register(&ctx(), &ids[100..]).await.unwrap()[0],
        RegisterOutcome::Created(_)
    ));
}

#[tokio::test]
async fn list_pages_with_continuation() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 150)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let c = IotHubConnector::new(&env.hub_config()).unwrap();
    c.register(&ctx(), &ids[..100]).await.unwrap();
    c.register(&ctx(), &ids[100..]).await.unwrap();
    let p1 = c.list(&ctx(), None).await.unwrap();
    assert_eq!(p1.devices.len(), 100);
    let p2 = c.list(&ctx(), p1.next.clone()).await.unwrap();
    assert_eq!(p2.devices.len(), 50);
    assert!(p2.next.is_none());
    let all: std::collections::HashSet<_> = p1
        .devices
        .iter()
        .chain(&p2.devices)
        .filter_map(|r| r.device_id.clone())
        .collect();
    assert_eq!(all.len(), 150, "every twin reports its SHA-256 thumbprint");
}

#[tokio::test]
async fn device_connects_only_while_registered_and_enabled() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::same_cn_devices(&pki, 1, 1);
    let (dev, id) = &devs[0];
    let c = IotHubConnector::new(&env.hub_config()).unwrap();
    let connect = || {
        connect_device(
            env.mock.hub_device_addr(),
            env.mock.ca_pem(),
            &dev.cert_pem,
            &dev.key_pem,
            Some("localhost"),
        )
    };
    assert!(matches!(connect().await.unwrap(), Connect::Refused(_)));
    c.register(&ctx(), std::slice::from_ref(id)).await.unwrap();
    assert_eq!(
        connect().await.unwrap(),
        Connect::Accepted(dev.serial_hex.clone())
    );
    env.mock.hub().set_status(&dev.serial_hex, "disabled");
    assert!(matches!(connect().await.unwrap(), Connect::Refused(_)));
    let diff = c.lookup(&ctx(), id).await.unwrap().unwrap().differences;
    assert_eq!(diff, vec!["status is disabled".to_owned()]);
    let out = c
        .deregister(&ctx(), std::slice::from_ref(id))
        .await
        .unwrap();
    assert!(matches!(out[0], DeregisterOutcome::Deleted));
    assert!(matches!(connect().await.unwrap(), Connect::Refused(_)));
}

#[tokio::test]
async fn device_id_template_and_invalid_ids_fail_per_device_before_the_call() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 2)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let mut cfg = env.hub_config();
    cfg.device_id = Some("{cn}".into());
    let c = IotHubConnector::new(&cfg).unwrap();
    let out = c.register(&ctx(), &ids).await.unwrap();
    for (o, d) in out.iter().zip(&ids) {
        match o {
            RegisterOutcome::Failed(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidInput);
                assert!(e.to_string().contains(d.device_id.as_str()), "{e}");
                assert!(
                    e.to_string().contains("not a valid IoT Hub device id"),
                    "{e}"
                );
            }
            o => panic!("{o:?}"),
        }
    }
    assert_eq!(env.mock.hub().stats().requests, 0, "nothing sent");
    cfg.device_id = Some("optiga-{device_id}".into());
    let c = IotHubConnector::new(&cfg).unwrap();
    c.register(&ctx(), &ids).await.unwrap();
    assert!(
        env.mock
            .hub()
            .device(&format!("optiga-{}", ids[0].device_id))
            .is_some()
    );
    cfg.device_id = Some("{nope}".into());
    assert_eq!(
        IotHubConnector::new(&cfg).unwrap_err().kind(),
        ErrorKind::ConfigInvalid
    );
}

#[tokio::test]
async fn read_only_policy_and_bad_api_version_are_permanent_errors() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 1)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let mut cfg = env.hub_config();
    cfg.connection_string = Some(SecretString::from(
        env.mock.hub_read_only_connection_string(),
    ));
    let ro = IotHubConnector::new(&cfg).unwrap();
    ro.health_check(&ctx()).await.expect("reads are allowed");
    let e = ro.register(&ctx(), &ids).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    assert!(!e.is_temporary());

    let mut cfg = env.hub_config();
    cfg.api_version = Some("1999-01-01".into());
    let e = IotHubConnector::new(&cfg)
        .unwrap()
        .health_check(&ctx())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("InvalidProtocolVersion"), "{e}");
}

#[tokio::test]
async fn entra_client_credentials_work_and_a_wrong_secret_is_refused() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 1)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let entra = |secret: &str| AzureConfig {
        kind: Some("azure-iot-hub".into()),
        host_name: Some(env.mock.hub_host()),
        entra: Some(EntraConfig {
            tenant_id: ENTRA_TENANT.into(),
            client_id: ENTRA_CLIENT_ID.into(),
            client_secret: SecretString::from(secret),
            authority_host: Some(env.mock.hub_url().to_owned()),
        }),
        ca_file: Some(env.ca_file.path().to_owned()),
        ..Default::default()
    };
    let c = IotHubConnector::new(&entra(env.mock.entra_client_secret())).unwrap();
    c.health_check(&ctx()).await.unwrap();
    assert!(matches!(
        c.register(&ctx(), &ids).await.unwrap()[0],
        RegisterOutcome::Created(_)
    ));
    let bad = IotHubConnector::new(&entra("wrong-secret")).unwrap();
    let e = bad.health_check(&ctx()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    assert!(!e.to_string().contains("wrong-secret"), "{e}");
    assert!(!format!("{bad:?}").contains("wrong-secret"));
}

#[tokio::test]
async fn secrets_never_appear_in_debug_or_errors() {
    let env = common::start(AzureMockConfig::default()).await;
    let cs = env.mock.hub_connection_string();
    let key = cs.rsplit_once("SharedAccessKey=").unwrap().1.to_owned();
    let cfg = env.hub_config();
    let c = IotHubConnector::new(&cfg).unwrap();
    for s in [format!("{cfg:?}"), format!("{c:?}")] {
        assert!(!s.contains(&key), "{s}");
        assert!(!s.contains("sig="), "{s}");
    }
    env.mock.hub_faults().push(FaultRule::once(Fault::Status {
        status: 500,
        headers: vec![],
        body: "boom".into(),
    }));
    let e = c.health_check(&ctx()).await.unwrap_err();
    assert!(!e.to_string().contains(&key));
}
