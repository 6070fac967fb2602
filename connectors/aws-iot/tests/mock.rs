//! The AWS IoT connector against the mock AWS IoT, over a socket, through the real aws-sdk-iot.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;

use aws_sdk_iot::config::{BehaviorVersion, Credentials, Region};
use idbridge_aws_iot::{AwsIot, AwsIotConfig};
use idbridge_core::conformance;
use idbridge_core::{
    CallContext, Connector, DeregisterOutcome, DeviceIdentity, ErrorKind, RegisterOutcome, Source,
};
use idbridge_mock_clouds::aws::{
    AwsMockConfig, MockAws, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY,
};
use idbridge_mock_clouds::tls::{Connect, connect_device};
use idbridge_mock_clouds::{Fault, FaultRule, TestDevice, TestPki};

struct Fixture {
    mock: MockAws,
    pki: TestPki,
}

async fn fixture() -> Fixture {
    Fixture {
        mock: MockAws::start(AwsMockConfig::default()).await.unwrap(),
        pki: TestPki::infineon_like().unwrap(),
    }
}

async fn sdk_config(mock: &MockAws, secret: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(mock.region().to_owned()))
        .credentials_provider(Credentials::new(
            TEST_ACCESS_KEY_ID,
            secret,
            None,
            None,
            "test",
        ))
        .endpoint_url(mock.endpoint_url())
        .load()
        .await
}

fn base_config() -> AwsIotConfig {
    AwsIotConfig {
        allow_http: true,
        create_policy: true,
        ..Default::default()
    }
}

async fn connector_with(mock: &MockAws, cfg: AwsIotConfig) -> AwsIot {
    AwsIot::from_sdk_config(cfg, &sdk_config(mock, TEST_SECRET_ACCESS_KEY).await).unwrap()
}

async fn connector(mock: &MockAws) -> AwsIot {
    connector_with(mock, base_config()).await
}

fn identity(d: &TestDevice) -> DeviceIdentity {
    let mut id = DeviceIdentity::from_der(d.cert_der.clone(), Source::default()).unwrap();
    id.vendor.vendor = Some("infineon".into());
    id
}

fn thing_of(d: &DeviceIdentity) -> String {
    format!("Infineon_{}", d.serial_hex)
}

async fn connect(mock: &MockAws, d: &TestDevice, sni: Option<&str>) -> Connect {
    connect_device(
        mock.device_addr(),
        mock.device_ca_pem(),
        &d.cert_pem,
        &d.key_pem,
        sni,
    )
    .await
    .unwrap()
}

fn one(out: Vec<RegisterOutcome>) -> RegisterOutcome {
    assert_eq!(out.len(), 1);
    out.into_iter().next().unwrap()
}

fn ctx() -> CallContext {
    CallContext::unpaced()
}

/// The exact end state of a provisioned device: ACTIVE, attached to its thing, policy attached.
fn assert_provisioned(mock: &MockAws, d: &DeviceIdentity) {
    let r = mock.registry();
    let id = d.device_id.as_str();
    assert_eq!(r.certificate_status(id).as_deref(), Some("ACTIVE"));
    assert_eq!(r.certificate_things(id), vec![thing_of(d)]);
    assert_eq!(
        r.certificate_policies(id),
        vec!["idbridge-device".to_owned()]
    );
    assert!(
        r.orphan_certificates().is_empty(),
        "orphans: {:?}",
        r.orphan_certificates()
    );
    assert!(r.things_without_principal().is_empty());
}

#[tokio::test]
async fn conformance_suite() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let devs: Vec<DeviceIdentity> = (1..=5)
        .map(|s| identity(&f.pki.device(s).unwrap()))
        .collect();
    conformance::register_then_lookup(&c, &devs[0]).await;
    conformance::reregister_is_idempotent(&c, &devs[1]).await;
    conformance::deregister_is_idempotent(&c, &devs[2]).await;
    // Throttling by the mock's quota: one token, used by the first register.
    f.mock
        .set_quota("RegisterCertificateWithoutCA", Some(0.001));
    let first = one(c.register(&ctx(), &devs[3..4]).await.unwrap());
    assert!(matches!(first, RegisterOutcome::Created(_)), "{first:?}");
    conformance::throttling_is_rate_limited(&c, &devs[4]).await;
    assert_eq!(f.mock.throttled(), 1);
    f.mock.set_quota("RegisterCertificateWithoutCA", None);

    let bad =
        AwsIot::from_sdk_config(base_config(), &sdk_config(&f.mock, "wrong-secret").await).unwrap();
    conformance::bad_credentials_are_permanent(&bad, &devs[4]).await;
    let e = bad.health_check(&ctx()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert_eq!(e.context("code"), Some("InvalidSignatureException"), "{e}");
    assert!(e.request_id().is_some(), "request id recorded: {e}");
    assert!(!format!("{bad:?}").contains("wrong-secret"));
}

#[tokio::test]
async fn provisioned_device_connects_unbound_is_refused_deprovisioned_is_refused() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let bound = f.pki.device(10).unwrap();
    let unbound = f.pki.device(11).unwrap();
    let id = identity(&bound);
    let out = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    assert!(matches!(out, RegisterOutcome::Created(_)), "{out:?}");
    assert_provisioned(&f.mock, &id);
    let host = f.mock.data_host().to_owned();
    assert_eq!(
        connect(&f.mock, &bound, Some(&host)).await,
        Connect::Accepted(thing_of(&id))
    );
    assert!(
        matches!(connect(&f.mock, &bound, None).await, Connect::Refused(_)),
        "SNI required"
    );
    assert!(matches!(
        connect(&f.mock, &unbound, Some(&host)).await,
        Connect::Refused(_)
    ));
    let gone = c
        .deregister(&ctx(), std::slice::from_ref(&id))
        .await
        .unwrap();
    assert!(
        matches!(gone[0], DeregisterOutcome::Deleted),
        "{:?}",
        gone[0]
    );
    assert!(matches!(
        connect(&f.mock, &bound, Some(&host)).await,
        Connect::Refused(_)
    ));
    let r = f.mock.registry();
    assert_eq!((r.certificate_count(), r.thing_count()), (0, 0));
}

#[tokio::test]
async fn policy_is_attached_last() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let dev = f.pki.device(20).unwrap();
    let id = identity(&dev);
    // The connection drops at AttachPolicy: everything before it happened, the policy did not.
    f.mock
        .faults()
        .push(FaultRule::once(Fault::Reset).on_path("/target-policies/"));
    let out = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    let RegisterOutcome::Failed(e) = out else {
        panic!("{out:?}")
    };
    assert!(e.is_temporary(), "{e}");
    assert_eq!(e.context("device_id"), Some(id.device_id.as_str()), "{e}");
    assert_eq!(
        f.mock
            .registry()
            .certificate_status(id.device_id.as_str())
            .as_deref(),
        Some("ACTIVE")
    );
    assert!(
        f.mock
            .registry()
            .certificate_policies(id.device_id.as_str())
            .is_empty()
    );
    let host = f.mock.data_host().to_owned();
    assert!(
        matches!(
            connect(&f.mock, &dev, Some(&host)).await,
            Connect::Refused(_)
        ),
        "half-provisioned device must not connect"
    );
    // The engine retries the device: it finishes, exactly once.
    let again = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    assert!(
        matches!(again, RegisterOutcome::AlreadyPresent(_)),
        "{again:?}"
    );
    assert_provisioned(&f.mock, &id);
    assert_eq!(f.mock.registry().certificate_count(), 1);
    assert!(matches!(
        connect(&f.mock, &dev, Some(&host)).await,
        Connect::Accepted(_)
    ));
}

#[tokio::test]
async fn a_fresh_device_is_four_calls_without_update_certificate() {
    // UpdateCertificate runs at 10/s in AWS: a fresh device must not need it, or no raised
    // quota could take a reel past 10 devices/s.
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let id = identity(&f.pki.device(25).unwrap());
    let out = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    assert!(matches!(out, RegisterOutcome::Created(_)), "{out:?}");
    assert_provisioned(&f.mock, &id);
    for api in [
        "RegisterCertificateWithoutCA",
        "CreateThing",
        "AttachThingPrincipal",
        "AttachPolicy",
    ] {
        assert_eq!(f.mock.calls(api), 1, "{api}");
    }
    assert_eq!(f.mock.calls("UpdateCertificate"), 0);
    assert_eq!(f.mock.calls("DescribeCertificate"), 0);
}

#[tokio::test]
async fn lost_response_on_register_ends_in_exact_state() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let id = identity(&f.pki.device(30).unwrap());
    f.mock
        .faults()
        .push(FaultRule::once(Fault::LoseResponse).on_path("/certificate/register-no-ca"));
    let out = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    let RegisterOutcome::Failed(e) = out else {
        panic!("{out:?}")
    };
    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{e}");
    assert!(e.is_temporary());
    // It did happen: the certificate is there, with nothing attached (so it authorises
    // nothing), and nothing else.
    assert_eq!(
        f.mock
            .registry()
            .certificate_status(id.device_id.as_str())
            .as_deref(),
        Some("ACTIVE")
    );
    assert!(
        f.mock
            .registry()
            .certificate_policies(id.device_id.as_str())
            .is_empty()
    );
    assert_eq!(f.mock.registry().thing_count(), 0);
    // lookup (what the engine calls after an unknown outcome) reports the half state.
    let seen = c.lookup(&ctx(), &id).await.unwrap().unwrap();
    assert!(!seen.differences.is_empty(), "{seen:?}");
    let again = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    assert!(
        matches!(again, RegisterOutcome::AlreadyPresent(_)),
        "{again:?}"
    );
    assert_provisioned(&f.mock, &id);
    assert!(
        c.lookup(&ctx(), &id)
            .await
            .unwrap()
            .unwrap()
            .differences
            .is_empty()
    );
}

#[tokio::test]
async fn server_error_and_quota_throttling_mid_flow_end_in_exact_state() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let a = identity(&f.pki.device(40).unwrap());
    let b = identity(&f.pki.device(41).unwrap());
    f.mock.faults().push(
        FaultRule::once(Fault::Status {
            status: 500,
            headers: vec![("x-amzn-ErrorType".into(), "InternalFailureException".into())],
            body: r#"{"message":"Internal failure"}"#.into(),
        })
        .on_method("POST")
        .on_path("/things/"),
    );
    let out = one(c.register(&ctx(), std::slice::from_ref(&a)).await.unwrap());
    let RegisterOutcome::Failed(e) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (e.kind(), e.is_temporary()),
        (ErrorKind::ServerError, true),
        "{e}"
    );
    assert_eq!(f.mock.registry().thing_count(), 0);
    let again = one(c.register(&ctx(), std::slice::from_ref(&a)).await.unwrap());
    assert!(
        matches!(again, RegisterOutcome::AlreadyPresent(_)),
        "{again:?}"
    );
    assert_provisioned(&f.mock, &a);

    // AttachPolicy at its quota: the one token is gone, the next device is throttled there.
    f.mock.set_quota("AttachPolicy", Some(0.001));
    let _ = c.register(&ctx(), std::slice::from_ref(&a)).await.unwrap(); // uses the token
    let out = one(c.register(&ctx(), std::slice::from_ref(&b)).await.unwrap());
    let RegisterOutcome::Failed(e) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (e.kind(), e.is_temporary()),
        (ErrorKind::RateLimited, true),
        "{e}"
    );
    assert_eq!(e.operation(), "AttachPolicy");
    assert!(
        f.mock
            .registry()
            .certificate_policies(b.device_id.as_str())
            .is_empty()
    );
    f.mock.set_quota("AttachPolicy", None);
    let again = one(c.register(&ctx(), std::slice::from_ref(&b)).await.unwrap());
    assert!(
        matches!(again, RegisterOutcome::AlreadyPresent(_)),
        "{again:?}"
    );
    assert_provisioned(&f.mock, &b);
    assert_eq!(f.mock.registry().certificate_count(), 2);
}

#[tokio::test]
async fn thing_with_different_configuration_is_a_conflict_and_leaves_nothing() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let id = identity(&f.pki.device(50).unwrap());
    let sdk = aws_sdk_iot::Client::new(&sdk_config(&f.mock, TEST_SECRET_ACCESS_KEY).await);
    sdk.create_thing()
        .thing_name(thing_of(&id))
        .send()
        .await
        .unwrap();
    let out = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    let RegisterOutcome::Conflict { reason, .. } = out else {
        panic!("{out:?}")
    };
    assert!(reason.contains("fingerprint"), "{reason}");
    assert_eq!(
        f.mock.registry().certificate_count(),
        0,
        "the certificate registered for it is removed"
    );
}

#[tokio::test]
async fn revoked_certificate_is_a_conflict() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let dev = f.pki.device(60).unwrap();
    let id = identity(&dev);
    let sdk = aws_sdk_iot::Client::new(&sdk_config(&f.mock, TEST_SECRET_ACCESS_KEY).await);
    sdk.register_certificate_without_ca()
        .certificate_pem(&dev.cert_pem)
        .status(aws_sdk_iot::types::CertificateStatus::Revoked)
        .send()
        .await
        .unwrap();
    let out = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    assert!(
        matches!(&out, RegisterOutcome::Conflict { reason, .. } if reason.contains("REVOKED")),
        "{out:?}"
    );
    assert_eq!(f.mock.registry().thing_count(), 0);
}

#[tokio::test]
async fn asynchronous_detach_is_retried_until_deleted() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let id = identity(&f.pki.device(70).unwrap());
    one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    f.mock.registry().set_async_detach_polls(2);
    let mut temporary_failures = 0;
    loop {
        let out = c
            .deregister(&ctx(), std::slice::from_ref(&id))
            .await
            .unwrap();
        match &out[0] {
            DeregisterOutcome::Deleted => break,
            DeregisterOutcome::Failed(e) if e.is_temporary() && e.kind() == ErrorKind::Conflict => {
                temporary_failures += 1;
                assert!(temporary_failures < 5, "never converged: {e}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        temporary_failures >= 1,
        "the scripted propagation delay was seen"
    );
    let r = f.mock.registry();
    assert_eq!((r.certificate_count(), r.thing_count()), (0, 0));
}

#[tokio::test]
async fn bad_thing_name_is_refused_before_any_call() {
    let f = fixture().await;
    let c = connector_with(
        &f.mock,
        AwsIotConfig {
            thing_name: Some("bad name {serial_hex}".into()),
            ..base_config()
        },
    )
    .await;
    let id = identity(&f.pki.device(80).unwrap());
    let out = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    let RegisterOutcome::Failed(e) = out else {
        panic!("{out:?}")
    };
    assert_eq!(
        (e.kind(), e.is_temporary()),
        (ErrorKind::InvalidInput, false),
        "{e}"
    );
    assert!(
        e.to_string().contains(id.device_id.as_str()),
        "names the device: {e}"
    );
    assert_eq!(f.mock.calls("RegisterCertificateWithoutCA"), 0);
    // Microchip default needs a unique id: missing → a clear error naming the device.
    let c = connector(&f.mock).await;
    let mut mc = identity(&f.pki.device(81).unwrap());
    mc.vendor.vendor = Some("microchip".into());
    mc.vendor.unique_id = Some("0123abcd".into());
    let ok = one(c.register(&ctx(), std::slice::from_ref(&mc)).await.unwrap());
    assert!(
        matches!(&ok, RegisterOutcome::Created(r) if r.name == "0123abcd"),
        "{ok:?}"
    );
}

#[tokio::test]
async fn thing_group_membership_and_list() {
    let f = fixture().await;
    f.mock.registry().put_thing_group("reel-7");
    let c = connector_with(
        &f.mock,
        AwsIotConfig {
            thing_group: Some("reel-7".into()),
            ..base_config()
        },
    )
    .await;
    let devs: Vec<DeviceIdentity> = (90..93)
        .map(|s| identity(&f.pki.device(s).unwrap()))
        .collect();
    for d in &devs {
        one(c.register(&ctx(), std::slice::from_ref(d)).await.unwrap());
    }
    let page = c.list(&ctx(), None).await.unwrap();
    let mut names: Vec<String> = page.devices.iter().map(|d| d.name.clone()).collect();
    names.sort();
    let mut want: Vec<String> = devs.iter().map(thing_of).collect();
    want.sort();
    assert_eq!(names, want);
    assert!(page.next.is_none());
    // Without a group, list pages through certificates.
    let all = connector(&f.mock).await.list(&ctx(), None).await.unwrap();
    assert_eq!(all.devices.len(), 3);
    assert!(all.devices.iter().all(|d| d.device_id.is_some()));
    // A missing group is a configuration error.
    let missing = connector_with(
        &f.mock,
        AwsIotConfig {
            thing_group: Some("no-such-group".into()),
            ..base_config()
        },
    )
    .await;
    let d = identity(&f.pki.device(99).unwrap());
    let out = one(missing
        .register(&ctx(), std::slice::from_ref(&d))
        .await
        .unwrap());
    assert!(
        matches!(&out, RegisterOutcome::Failed(e) if e.kind() == ErrorKind::ConfigInvalid),
        "{out:?}"
    );
}

#[tokio::test]
async fn paced_calls_name_each_api() {
    #[derive(Default)]
    struct Recorder(std::sync::Mutex<Vec<String>>);
    #[async_trait::async_trait]
    impl idbridge_core::connector::Pacer for Recorder {
        async fn acquire(&self, api: &str, _units: u32) {
            self.0.lock().unwrap().push(api.to_owned());
        }
    }
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let rec = Arc::new(Recorder::default());
    let ctx = CallContext::paced(rec.clone());
    let id = identity(&f.pki.device(100).unwrap());
    one(c.register(&ctx, std::slice::from_ref(&id)).await.unwrap());
    let apis = rec.0.lock().unwrap().clone();
    assert_eq!(
        apis,
        [
            "GetPolicy",
            "CreatePolicy",
            "RegisterCertificateWithoutCA",
            "CreateThing",
            "AttachThingPrincipal",
            "AttachPolicy"
        ]
    );
    let declared: Vec<String> = c.info().quotas.iter().map(|q| q.api.clone()).collect();
    for api in &apis {
        assert!(declared.contains(api), "{api} has a declared quota");
    }
}

#[tokio::test]
async fn plain_http_needs_allow_http() {
    let f = fixture().await;
    let sdk = sdk_config(&f.mock, TEST_SECRET_ACCESS_KEY).await;
    let e = AwsIot::from_sdk_config(
        AwsIotConfig {
            endpoint_url: Some(f.mock.endpoint_url().to_owned()),
            ..Default::default()
        },
        &sdk,
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{e}");
}

#[tokio::test]
async fn lost_policy_attach_and_lost_delete_end_in_exact_state() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let dev = f.pki.device(110).unwrap();
    let id = identity(&dev);
    // The last step, AttachPolicy, happened but its answer was lost.
    f.mock.faults().push(
        FaultRule::once(Fault::LoseResponse)
            .on_method("PUT")
            .on_path("/target-policies/"),
    );
    let out = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    assert!(
        matches!(&out, RegisterOutcome::Failed(e) if e.kind() == ErrorKind::OutcomeUnknown),
        "{out:?}"
    );
    // lookup finds it complete: the engine marks it done without sending it again.
    let seen = c.lookup(&ctx(), &id).await.unwrap().unwrap();
    assert!(seen.differences.is_empty(), "{seen:?}");
    assert_provisioned(&f.mock, &id);

    // Deregister: DeleteCertificate happens, its answer is lost; the retry finishes the undo.
    f.mock.faults().push(
        FaultRule::once(Fault::LoseResponse)
            .on_method("DELETE")
            .on_path("/certificates/"),
    );
    let out = c
        .deregister(&ctx(), std::slice::from_ref(&id))
        .await
        .unwrap();
    assert!(
        matches!(&out[0], DeregisterOutcome::Failed(e) if e.is_temporary()),
        "{:?}",
        out[0]
    );
    assert_eq!(f.mock.registry().certificate_count(), 0);
    assert_eq!(
        f.mock.registry().thing_count(),
        1,
        "the thing is still there"
    );
    let out = c
        .deregister(&ctx(), std::slice::from_ref(&id))
        .await
        .unwrap();
    assert!(matches!(out[0], DeregisterOutcome::Deleted), "{:?}", out[0]);
    let r = f.mock.registry();
    assert_eq!((r.certificate_count(), r.thing_count()), (0, 0));
}

#[tokio::test]
async fn exclusive_attach_conflict_is_found_by_code_and_leaves_no_thing() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let dev = f.pki.device(80).unwrap();
    let id = identity(&dev);
    // The certificate is already bound, exclusively, to a thing of somebody else's.
    let sdk = aws_sdk_iot::Client::new(&sdk_config(&f.mock, TEST_SECRET_ACCESS_KEY).await);
    let arn = sdk
        .register_certificate_without_ca()
        .certificate_pem(&dev.cert_pem)
        .status(aws_sdk_iot::types::CertificateStatus::Active)
        .send()
        .await
        .unwrap()
        .certificate_arn
        .unwrap();
    sdk.create_thing()
        .thing_name("other-thing")
        .send()
        .await
        .unwrap();
    sdk.attach_thing_principal()
        .thing_name("other-thing")
        .principal(&arn)
        .thing_principal_type(aws_sdk_iot::types::ThingPrincipalType::ExclusiveThing)
        .send()
        .await
        .unwrap();
    // AWS's wording is not ours to rely on: the refusal comes with another message.
    f.mock.faults().push(
        FaultRule::once(Fault::Status {
            status: 400,
            headers: vec![("x-amzn-ErrorType".into(), "InvalidRequestException".into())],
            body:
                r#"{"message":"The principal is bound to a thing with the EXCLUSIVE_THING type."}"#
                    .into(),
        })
        .on_method("PUT")
        .on_path("/principals"),
    );
    let out = one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    let RegisterOutcome::Conflict { reason, .. } = &out else {
        panic!("{out:?}")
    };
    assert!(reason.contains("other-thing"), "{reason}");
    let r = f.mock.registry();
    assert_eq!(
        r.thing_count(),
        1,
        "the thing created for it is removed, the other one kept"
    );
    assert_eq!(
        r.certificate_things(id.device_id.as_str()),
        vec!["other-thing".to_owned()]
    );
    assert!(r.things_without_principal().is_empty());
}

#[tokio::test]
async fn detach_policy_of_an_unattached_policy_is_success_in_deregister() {
    let f = fixture().await;
    let c = connector(&f.mock).await;
    let dev = f.pki.device(81).unwrap();
    let id = identity(&dev);
    one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    // Someone (or an earlier attempt whose answer was lost) detached the policy between our
    // list and our detach: the list still shows it, DetachPolicy answers 404.
    let sdk = aws_sdk_iot::Client::new(&sdk_config(&f.mock, TEST_SECRET_ACCESS_KEY).await);
    let arn = sdk
        .describe_certificate()
        .certificate_id(id.device_id.as_str())
        .send()
        .await
        .unwrap()
        .certificate_description
        .unwrap()
        .certificate_arn
        .unwrap();
    sdk.detach_policy()
        .policy_name("idbridge-device")
        .target(&arn)
        .send()
        .await
        .unwrap();
    f.mock.faults().push(
        FaultRule::once(Fault::Status {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: r#"{"policies":[{"policyName":"idbridge-device","policyArn":"arn:aws:iot:us-east-1:123456789012:policy/idbridge-device"}]}"#.into(),
        })
        .on_method("POST")
        .on_path("/attached-policies/"),
    );
    let out = c
        .deregister(&ctx(), std::slice::from_ref(&id))
        .await
        .unwrap();
    assert!(matches!(out[0], DeregisterOutcome::Deleted), "{out:?}");
    let r = f.mock.registry();
    assert_eq!((r.certificate_count(), r.thing_count()), (0, 0));
}

#[tokio::test]
async fn a_lookup_right_after_provisioning_waits_for_eventual_consistency() {
    use idbridge_core::engine::{DiffStatus, Engine, EngineOptions, RetryPolicy};
    use idbridge_core::journal::SqliteJournal;
    let f = fixture().await;
    let c = Arc::new(connector(&f.mock).await);
    let id = identity(&f.pki.device(82).unwrap());
    one(c.register(&ctx(), std::slice::from_ref(&id)).await.unwrap());
    // AWS IoT's registry has not caught up: the thing shows no principal yet, twice.
    let stale = || {
        FaultRule::once(Fault::Status {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: r#"{"principals":[]}"#.into(),
        })
        .on_method("GET")
        .on_path("/principals")
    };
    f.mock.faults().push(stale());
    let e = c.lookup(&ctx(), &id).await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert!(e.to_string().contains("eventual consistency"), "{e}");
    // Through the engine (diff after provisioning): looked up again, identical.
    f.mock.faults().push(stale());
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path().join("j.sqlite")).unwrap());
    let opts = EngineOptions {
        retry: RetryPolicy {
            base: std::time::Duration::from_millis(1),
            cap: std::time::Duration::from_millis(5),
            ..Default::default()
        },
        ..Default::default()
    };
    let engine = Engine::new(c.clone(), journal, opts);
    let report = engine.diff(std::slice::from_ref(&id)).await.unwrap();
    assert_eq!(
        report.entries[0].status,
        DiffStatus::Identical,
        "{report:?}"
    );
    assert_eq!(
        f.mock.faults().take("GET", "/principals"),
        None,
        "the stale answer was met"
    );
    // A device this connector did not just provision reports its difference at once.
    let other = identity(&f.pki.device(83).unwrap());
    let fresh = connector(&f.mock).await;
    one(fresh
        .register(&ctx(), std::slice::from_ref(&other))
        .await
        .unwrap());
    let later = connector(&f.mock).await;
    f.mock.faults().push(stale());
    let r = later.lookup(&ctx(), &other).await.unwrap().unwrap();
    assert!(!r.differences.is_empty(), "{r:?}");
}
