//! The mock AWS IoT's semantics, driven by the plain aws-sdk-iot client (no connector): the AWS
//! behaviours the connector relies on, each checked against the mock's answer.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use aws_sdk_iot::Client;
use aws_sdk_iot::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_iot::error::ProvideErrorMetadata;
use aws_sdk_iot::types::{CertificateStatus, ThingPrincipalType};
use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::aws::{
    AwsMockConfig, MockAws, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY,
};

async fn client(mock: &MockAws) -> Client {
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(mock.region().to_owned()))
        .credentials_provider(Credentials::new(
            TEST_ACCESS_KEY_ID,
            TEST_SECRET_ACCESS_KEY,
            None,
            None,
            "t",
        ))
        .endpoint_url(mock.endpoint_url())
        .retry_config(aws_sdk_iot::config::retry::RetryConfig::disabled())
        .load()
        .await;
    Client::new(&conf)
}

fn code<E: ProvideErrorMetadata + std::fmt::Debug>(
    e: &aws_sdk_iot::error::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> (u16, String) {
    match e {
        aws_sdk_iot::error::SdkError::ServiceError(se) => (
            se.raw().status().as_u16(),
            se.err().code().unwrap_or("").to_owned(),
        ),
        other => panic!("not a service error: {other:?}"),
    }
}

#[tokio::test]
async fn certificate_lifecycle_follows_aws() {
    let mock = MockAws::start(AwsMockConfig::default()).await.unwrap();
    let iot = client(&mock).await;
    let pki = TestPki::infineon_like().unwrap();
    let dev = pki.device(1).unwrap();
    let id = idbridge_core::DeviceId::of_der(&dev.cert_der);

    // No status → INACTIVE; certificate id = SHA-256 of the DER; SNI_ONLY.
    let reg = iot
        .register_certificate_without_ca()
        .certificate_pem(&dev.cert_pem)
        .send()
        .await
        .unwrap();
    assert_eq!(reg.certificate_id(), Some(id.as_str()));
    let d = iot
        .describe_certificate()
        .certificate_id(id.as_str())
        .send()
        .await
        .unwrap();
    let d = d.certificate_description().unwrap();
    assert_eq!(d.status(), Some(&CertificateStatus::Inactive));
    assert_eq!(d.certificate_mode().map(|m| m.as_str()), Some("SNI_ONLY"));

    // The same certificate re-encoded (CRLF) is the same certificate: 409 with resourceId.
    let crlf = dev.cert_pem.replace('\n', "\r\n");
    let e = iot
        .register_certificate_without_ca()
        .certificate_pem(crlf)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "ResourceAlreadyExistsException".into()));
    match e.into_service_error() {
        aws_sdk_iot::operation::register_certificate_without_ca::RegisterCertificateWithoutCAError::ResourceAlreadyExistsException(x) => {
            assert_eq!(x.resource_id(), Some(id.as_str()));
            assert!(x.resource_arn().unwrap().ends_with(&format!(":cert/{id}")));
        }
        other => panic!("{other:?}"),
    }
    // Garbage is a CertificateValidationException, not a 500.
    let e = iot
        .register_certificate_without_ca()
        .certificate_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (400, "CertificateValidationException".into()));

    // ACTIVE cannot be deleted; a thing attached blocks deletion; REVOKED is final.
    iot.update_certificate()
        .certificate_id(id.as_str())
        .new_status(CertificateStatus::Active)
        .send()
        .await
        .unwrap();
    let e = iot
        .delete_certificate()
        .certificate_id(id.as_str())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (406, "CertificateStateException".into()));
    iot.create_thing().thing_name("t1").send().await.unwrap();
    iot.create_thing().thing_name("t2").send().await.unwrap();
    let arn = reg.certificate_arn().unwrap();
    iot.attach_thing_principal()
        .thing_name("t1")
        .principal(arn)
        .thing_principal_type(ThingPrincipalType::ExclusiveThing)
        .send()
        .await
        .unwrap();
    // Repeat: no-op. Exclusive to another thing: refused.
    iot.attach_thing_principal()
        .thing_name("t1")
        .principal(arn)
        .thing_principal_type(ThingPrincipalType::ExclusiveThing)
        .send()
        .await
        .unwrap();
    let e = iot
        .attach_thing_principal()
        .thing_name("t2")
        .principal(arn)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (400, "InvalidRequestException".into()));
    iot.update_certificate()
        .certificate_id(id.as_str())
        .new_status(CertificateStatus::Revoked)
        .send()
        .await
        .unwrap();
    let e = iot
        .update_certificate()
        .certificate_id(id.as_str())
        .new_status(CertificateStatus::Active)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (406, "CertificateStateException".into()));
    let e = iot
        .delete_certificate()
        .certificate_id(id.as_str())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "DeleteConflictException".into()));
    // A thing with a principal cannot be deleted; a missing thing can.
    let e = iot
        .delete_thing()
        .thing_name("t1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (400, "InvalidRequestException".into()));
    iot.delete_thing()
        .thing_name("never-existed")
        .send()
        .await
        .unwrap();
    iot.detach_thing_principal()
        .thing_name("t1")
        .principal(arn)
        .send()
        .await
        .unwrap();
    iot.delete_certificate()
        .certificate_id(id.as_str())
        .send()
        .await
        .unwrap();
    iot.delete_thing().thing_name("t1").send().await.unwrap();
    let e = iot
        .describe_certificate()
        .certificate_id(id.as_str())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (404, "ResourceNotFoundException".into()));
}

#[tokio::test]
async fn things_names_quotas_and_requests_follow_aws() {
    let mock = MockAws::start(AwsMockConfig::default()).await.unwrap();
    let iot = client(&mock).await;
    // Same config: 200 and the same thing; different config: 409.
    let a = iot
        .create_thing()
        .thing_name("dev-1")
        .attribute_payload(
            aws_sdk_iot::types::AttributePayload::builder()
                .attributes("fingerprint", "ab")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let b = iot
        .create_thing()
        .thing_name("dev-1")
        .attribute_payload(
            aws_sdk_iot::types::AttributePayload::builder()
                .attributes("fingerprint", "ab")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(a.thing_id(), b.thing_id());
    let e = iot
        .create_thing()
        .thing_name("dev-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (409, "ResourceAlreadyExistsException".into()));
    // The SDK sends any name; the mock refuses it as AWS does.
    let e = iot
        .create_thing()
        .thing_name("a b/c")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (400, "InvalidRequestException".into()));
    // More than 3 attributes without a thing type.
    let mut p = aws_sdk_iot::types::AttributePayload::builder();
    for k in ["a", "b", "c", "d"] {
        p = p.attributes(k, "v");
    }
    let e = iot
        .create_thing()
        .thing_name("dev-2")
        .attribute_payload(p.build())
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (400, "InvalidRequestException".into()));
    // Quota: ThrottlingException with HTTP 400 and a request id.
    mock.set_quota("DescribeThing", Some(0.001));
    iot.describe_thing()
        .thing_name("dev-1")
        .send()
        .await
        .unwrap();
    let e = iot
        .describe_thing()
        .thing_name("dev-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (400, "ThrottlingException".into()));
    if let aws_sdk_iot::error::SdkError::ServiceError(se) = &e {
        assert!(se.raw().headers().get("x-amzn-RequestId").is_some());
    }
    assert_eq!(mock.throttled(), 1);
}

#[tokio::test]
async fn unsigned_and_wrong_region_requests_are_refused() {
    let mock = MockAws::start(AwsMockConfig::default()).await.unwrap();
    // Unsigned: a raw HTTP request.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = mock.endpoint_url().trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!("GET /things/x HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    assert!(buf.starts_with("HTTP/1.1 403"), "{buf}");
    assert!(
        buf.to_ascii_lowercase()
            .contains("x-amzn-errortype: missingauthenticationtokenexception"),
        "{buf}"
    );
    // Signed for another region.
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            TEST_ACCESS_KEY_ID,
            TEST_SECRET_ACCESS_KEY,
            None,
            None,
            "t",
        ))
        .endpoint_url(mock.endpoint_url())
        .retry_config(aws_sdk_iot::config::retry::RetryConfig::disabled())
        .load()
        .await;
    let e = Client::new(&conf)
        .describe_thing()
        .thing_name("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (403, "InvalidSignatureException".into()));
    // Unknown key id.
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(mock.region().to_owned()))
        .credentials_provider(Credentials::new("AKIANOTKNOWN", "x", None, None, "t"))
        .endpoint_url(mock.endpoint_url())
        .load()
        .await;
    let e = Client::new(&conf)
        .describe_thing()
        .thing_name("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e), (403, "UnrecognizedClientException".into()));
}
