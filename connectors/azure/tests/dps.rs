//! The DPS connector against the DPS mock.
#![allow(clippy::unwrap_used)] // tests

mod common;

use idbridge_azure::DpsConnector;
use idbridge_azure::dps::check_batch;
use idbridge_core::conformance;
use idbridge_core::{CallContext, Connector, DeregisterOutcome, ErrorKind, RegisterOutcome};
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
    bad.connection_string = Some(secrecy::SecretString::from(format!(
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
        Some(env.mock.hub_host().as_str())
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

#[tokio::test]
async fn unprovision_deletes_the_device_dps_registered_in_its_hub() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::new("Test Root", "Test CA 306", "unused").unwrap();
    let devs = common::unique_cn_devices(&pki, 1, 2);
    let c = DpsConnector::new(&env.dps_config()).unwrap();
    let ids: Vec<_> = devs.iter().map(|d| d.1.clone()).collect();
    c.register(&ctx(), &ids).await.unwrap();
    let connect = |addr, i: usize| {
        let dev = &devs[i].0;
        connect_device(
            addr,
            env.mock.ca_pem(),
            &dev.cert_pem,
            &dev.key_pem,
            Some("localhost"),
        )
    };
    let hub = env.mock.hub_device_addr();
    let dps = env.mock.dps_device_addr();
    let reg_id = ids[0].subject_cn.clone().unwrap();
    assert!(
        matches!(connect(hub, 0).await.unwrap(), Connect::Refused(_)),
        "not registered yet"
    );
    // The device registers through DPS, which assigns it to the linked hub.
    assert!(matches!(
        connect(dps, 0).await.unwrap(),
        Connect::Accepted(_)
    ));
    let reg = env.mock.dps().registration(&reg_id).unwrap();
    assert_eq!(reg.assigned_hub, env.mock.hub_host());
    assert_eq!(
        connect(hub, 0).await.unwrap(),
        Connect::Accepted(reg.device_id.clone()),
        "it lives in the hub now"
    );

    let out = c.deregister(&ctx(), &ids[..1]).await.unwrap();
    assert!(matches!(out[0], DeregisterOutcome::Deleted), "{out:?}");
    assert!(
        matches!(connect(hub, 0).await.unwrap(), Connect::Refused(_)),
        "a deprovisioned device can no longer connect to the hub"
    );
    assert!(matches!(
        connect(dps, 0).await.unwrap(),
        Connect::Refused(_)
    ));
    assert!(env.mock.hub().device(&reg.device_id).is_none());
    assert!(env.mock.dps().registration(&reg_id).is_none());
    let again = c.deregister(&ctx(), &ids[..1]).await.unwrap();
    assert!(matches!(again[0], DeregisterOutcome::NotFound), "{again:?}");

    // Without the hub's connection string the hub device cannot be deleted: a configuration
    // error naming the hub, never a silent success.
    assert!(matches!(
        connect(dps, 1).await.unwrap(),
        Connect::Accepted(_)
    ));
    let mut cfg = env.dps_config();
    cfg.linked_hubs.clear();
    let blind = DpsConnector::new(&cfg).unwrap();
    match &blind.deregister(&ctx(), &ids[1..]).await.unwrap()[0] {
        DeregisterOutcome::Failed(e) => {
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{e}");
            assert!(e.to_string().contains(&env.mock.hub_host()), "{e}");
            assert!(e.to_string().contains("linked_hubs"), "{e}");
        }
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        connect(hub, 1).await.unwrap(),
        Connect::Accepted(_)
    ));
    // With it, the retry finishes the job (the registration state was kept for it).
    let out = c.deregister(&ctx(), &ids[1..]).await.unwrap();
    assert!(matches!(out[0], DeregisterOutcome::Deleted), "{out:?}");
    assert!(matches!(
        connect(hub, 1).await.unwrap(),
        Connect::Refused(_)
    ));
}

#[tokio::test]
async fn the_stable_dps_api_versions_are_accepted() {
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::new("Test Root", "Test CA 306", "unused").unwrap();
    let devs = common::unique_cn_devices(&pki, 1, 3);
    for (i, v) in ["2021-10-01", "2026-04-01", "2026-11-01"]
        .iter()
        .enumerate()
    {
        let mut cfg = env.dps_config();
        cfg.api_version = Some((*v).into());
        let c = DpsConnector::new(&cfg).unwrap();
        let out = c
            .register(&ctx(), std::slice::from_ref(&devs[i].1))
            .await
            .unwrap();
        assert!(
            matches!(out[0], RegisterOutcome::Created(_)),
            "{v}: {out:?}"
        );
        assert!(c.lookup(&ctx(), &devs[i].1).await.unwrap().is_some(), "{v}");
    }
    let mut cfg = env.dps_config();
    cfg.api_version = Some("2017-11-15".into());
    let e = DpsConnector::new(&cfg)
        .unwrap()
        .health_check(&ctx())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[tokio::test]
async fn the_unique_cn_check_runs_on_every_job_before_any_call() {
    use idbridge_core::engine::{Engine, EngineOptions, NoProgress};
    use idbridge_core::journal::{Operation, SqliteJournal};
    let env = common::start(AzureMockConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = std::sync::Arc::new(SqliteJournal::open(dir.path().join("j.sqlite")).unwrap());
    let pki = TestPki::new("Test Root", "Test CA 300", "InfineonIoTNode").unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 3)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let c = std::sync::Arc::new(DpsConnector::new(&env.dps_config()).unwrap());
    // One device per call: the duplicate CN would only meet the first in a later call.
    let opts = EngineOptions {
        batch_size: Some(1),
        concurrency: 1,
        ..Default::default()
    };
    let engine = Engine::new(c.clone(), journal.clone(), opts.clone());
    let e = engine
        .execute(
            Operation::Provision,
            "dps",
            ids[..2].to_vec(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("like"), "{e}");
    assert_eq!(
        env.mock.dps().stats().requests,
        0,
        "refused before any call"
    );
    assert_eq!(env.mock.dps().enrollment_count(), 0);

    // A job of one device, then another job of one device whose CN is now enrolled for
    // another certificate: refused before any call too.
    let r = engine
        .execute(
            Operation::Provision,
            "dps",
            ids[..1].to_vec(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.all_done(), "{r:?}");
    let requests = env.mock.dps().stats().requests;
    let e = engine
        .execute(
            Operation::Provision,
            "dps",
            ids[1..2].to_vec(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("already enrolled for certificate"),
        "{e}"
    );
    assert_eq!(env.mock.dps().stats().requests, requests, "no call");
    // Once the first is deprovisioned, its CN is free for the replacement part.
    let r = engine
        .execute(
            Operation::Deprovision,
            "dps",
            ids[..1].to_vec(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.all_done(), "{r:?}");
    let r = engine
        .execute(
            Operation::Provision,
            "dps",
            ids[1..2].to_vec(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.all_done(), "{r:?}");
}

#[tokio::test]
async fn one_cn_per_device_is_checked_across_the_chunks_of_a_streamed_job() {
    // A job read in chunks (a streamed open, a resume a page at a time): two devices with the
    // same CN in different chunks must refuse the job before any call, as in one chunk.
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::new("Test Root", "Test CA 301", "InfineonIoTNode").unwrap();
    let ids: Vec<_> = common::same_cn_devices(&pki, 1, 2)
        .into_iter()
        .map(|d| d.1)
        .collect();
    let c: std::sync::Arc<dyn Connector> =
        std::sync::Arc::new(DpsConnector::new(&env.dps_config()).unwrap());
    // Each chunk alone passes the per-chunk check...
    c.check_job(&ids[..1]).unwrap();
    c.check_job(&ids[1..]).unwrap();
    // ...the job's check across chunks does not.
    let mut check = idbridge_core::connector::ChunkedCheck::new(c.clone());
    check.check(&ids[..1]).unwrap();
    check.check(&ids[..1]).unwrap(); // the same device again is no conflict
    let e = check.check(&ids[1..]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("has CN \"infineoniotnode\""), "{e}");
    assert_eq!(env.mock.dps().stats().requests, 0);
}
