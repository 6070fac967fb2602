//! The mocks' wire behaviour, checked with raw HTTPS requests: SAS refusals with the real
//! bodies, api-version, If-Match semantics, bulk limits and DPS's certificate encodings.
#![allow(clippy::unwrap_used)] // tests

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::azure::{AzureMockConfig, sas};
use serde_json::{Value, json};

struct Raw {
    http: reqwest::Client,
    url: String,
    host: String,
    key: Vec<u8>,
    policy: String,
}

impl Raw {
    fn new(env: &common::Env, dps: bool) -> Self {
        let cs = if dps {
            env.mock.dps_connection_string()
        } else {
            env.mock.hub_connection_string()
        };
        let part = |k: &str| {
            cs.split(';')
                .find_map(|p| p.strip_prefix(k))
                .unwrap()
                .to_owned()
        };
        Raw {
            http: reqwest::Client::builder()
                .add_root_certificate(
                    reqwest::Certificate::from_pem(env.mock.ca_pem().as_bytes()).unwrap(),
                )
                .build()
                .unwrap(),
            url: if dps {
                env.mock.dps_url()
            } else {
                env.mock.hub_url()
            }
            .to_owned(),
            host: part("HostName="),
            key: STANDARD.decode(part("SharedAccessKey=")).unwrap(),
            policy: part("SharedAccessKeyName="),
        }
    }

    fn token(&self) -> String {
        sas::sign(&self.host, &self.key, &self.policy, now() + 600)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        auth: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut r = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .header("authorization", auth);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const HUB: &str = "?api-version=2021-04-12";
const DPS: &str = "?api-version=2021-10-01";

fn thumb_device(id: &str, t: &str) -> Value {
    json!({"deviceId": id, "status": "enabled", "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": t, "secondaryThumbprint": t}}})
}

#[tokio::test]
async fn sas_refusals_are_401_with_the_service_bodies() {
    let env = common::start(AzureMockConfig::default()).await;
    let hub = Raw::new(&env, false);
    let path = format!("/devices/a{HUB}");
    let ok = hub.send("GET", &path, &hub.token(), &[], None).await;
    assert_eq!(ok.0, 404, "authorised; device missing: {:?}", ok.2);
    assert_eq!(ok.1["iothub-errorcode"], "DeviceNotFound");
    let expired = sas::sign(&hub.host, &hub.key, "iothubowner", now() - 1);
    let wrong_key = sas::sign(&hub.host, b"not the key", "iothubowner", now() + 600);
    let wrong_resource = sas::sign(
        "otherhub.azure-devices.net",
        &hub.key,
        "iothubowner",
        now() + 600,
    );
    let scoped_elsewhere = sas::sign(
        &format!("{}/enrollments", hub.host),
        &hub.key,
        "iothubowner",
        now() + 600,
    );
    for auth in [
        expired,
        wrong_key,
        wrong_resource,
        scoped_elsewhere,
        String::new(),
    ] {
        let (status, headers, body) = hub.send("GET", &path, &auth, &[], None).await;
        assert_eq!(status, 401, "{auth}");
        assert_eq!(headers["iothub-errorcode"], "IotHubUnauthorizedAccess");
        assert_eq!(
            body["Message"],
            "ErrorCode:IotHubUnauthorizedAccess;Unauthorized"
        );
        assert!(
            body["ExceptionMessage"]
                .as_str()
                .unwrap()
                .starts_with("Tracking ID:")
        );
    }
    let dps = Raw::new(&env, true);
    let bad = sas::sign(&dps.host, b"nope", "provisioningserviceowner", now() + 600);
    let (status, headers, body) = dps
        .send("GET", &format!("/enrollments/x{DPS}"), &bad, &[], None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(headers["x-ms-error-code"], "401002");
    assert_eq!(body["errorCode"], 401002);
    assert!(body["trackingId"].is_string() && body["timestampUtc"].is_string());
}

#[tokio::test]
async fn api_version_is_required_and_checked() {
    let env = common::start(AzureMockConfig::default()).await;
    let hub = Raw::new(&env, false);
    for q in ["", "?api-version=2018-01-01"] {
        let (status, headers, _) = hub
            .send("GET", &format!("/devices/a{q}"), &hub.token(), &[], None)
            .await;
        assert_eq!(status, 400);
        assert_eq!(headers["iothub-errorcode"], "InvalidProtocolVersion");
    }
    let dps = Raw::new(&env, true);
    let (status, _, body) = dps
        .send(
            "GET",
            "/enrollments/a?api-version=2021-04-12",
            &dps.token(),
            &[],
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["errorCode"], 400001);
}

#[tokio::test]
async fn hub_if_match_semantics_and_thumbprint_rules() {
    let env = common::start(AzureMockConfig::default()).await;
    let hub = Raw::new(&env, false);
    let t = hub.token();
    let path = format!("/devices/d1{HUB}");
    let a = "A1".repeat(32);
    let (s, _, created) = hub
        .send("PUT", &path, &t, &[], Some(thumb_device("d1", &a)))
        .await;
    assert_eq!(s, 200);
    let etag = created["etag"].as_str().unwrap().to_owned();
    assert!(
        String::from_utf8(STANDARD.decode(&etag).unwrap())
            .unwrap()
            .parse::<u64>()
            .is_ok(),
        "etag = base64(version)"
    );
    let (s, h, _) = hub
        .send("PUT", &path, &t, &[], Some(thumb_device("d1", &a)))
        .await;
    assert_eq!(
        (s, h["iothub-errorcode"].to_str().unwrap()),
        (409, "DeviceAlreadyExists"),
        "no If-Match = create only"
    );
    let (s, h, _) = hub
        .send(
            "PUT",
            &path,
            &t,
            &[("if-match", "\"AAAA\"")],
            Some(thumb_device("d1", &a)),
        )
        .await;
    assert_eq!(
        (s, h["iothub-errorcode"].to_str().unwrap()),
        (412, "PreconditionFailed")
    );
    let quoted = format!("\"{etag}\"");
    let (s, _, updated) = hub
        .send(
            "PUT",
            &path,
            &t,
            &[("if-match", &quoted)],
            Some(thumb_device("d1", &"B2".repeat(32))),
        )
        .await;
    assert_eq!(s, 200, "quoted etag matches");
    assert_ne!(updated["etag"], created["etag"]);
    let (s, _, _) = hub
        .send(
            "PUT",
            &path,
            &t,
            &[("if-match", "\"*\"")],
            Some(thumb_device("d1", &a)),
        )
        .await;
    assert_eq!(s, 200, "\"*\" forces");
    let (s, _, _) = hub
        .send(
            "PUT",
            &path,
            &t,
            &[("if-match", "*")],
            Some(thumb_device("d1", &"Z".repeat(64))),
        )
        .await;
    assert_eq!(s, 400, "not hex");
    let mut mixed = thumb_device("d1", &a);
    mixed["authentication"]["x509Thumbprint"]["secondaryThumbprint"] = json!("C3".repeat(20));
    let (s, _, _) = hub
        .send("PUT", &path, &t, &[("if-match", "*")], Some(mixed))
        .await;
    assert_eq!(s, 400, "SHA-1 and SHA-256 mixed");
    let (s, _, _) = hub
        .send("DELETE", &path, &t, &[("if-match", "\"nope\"")], None)
        .await;
    assert_eq!(s, 412);
    let (s, _, _) = hub
        .send("DELETE", &path, &t, &[("if-match", "\"*\"")], None)
        .await;
    assert_eq!(s, 204);
    let (s, _, body) = hub
        .send("DELETE", &path, &t, &[("if-match", "\"*\"")], None)
        .await;
    assert_eq!(s, 404);
    assert!(
        body["Message"].as_str().unwrap().contains("404001"),
        "JSON inside Message: {body}"
    );
}

#[tokio::test]
async fn hub_bulk_limits_and_per_device_results() {
    let env = common::start(AzureMockConfig::default()).await;
    let hub = Raw::new(&env, false);
    let t = hub.token();
    let item = |i: usize, mode: &str| json!({"id": format!("b{i}"), "importMode": mode, "authentication": {"type": "selfSigned", "x509Thumbprint": {"primaryThumbprint": "A1".repeat(32)}}});
    let too_many: Vec<Value> = (0..101).map(|i| item(i, "create")).collect();
    let (s, h, _) = hub
        .send(
            "POST",
            &format!("/devices{HUB}"),
            &t,
            &[],
            Some(Value::Array(too_many)),
        )
        .await;
    assert_eq!(
        (s, h["iothub-errorcode"].to_str().unwrap()),
        (400, "TooManyDevices")
    );
    let (s, h, _) = hub
        .send(
            "POST",
            &format!("/devices{HUB}"),
            &t,
            &[],
            Some(json!([item(1, "create"), item(1, "create")])),
        )
        .await;
    assert_eq!(
        (s, h["iothub-errorcode"].to_str().unwrap()),
        (400, "DeviceDefinedMultipleTimes")
    );
    let (s, _, _) = hub
        .send(
            "POST",
            &format!("/devices{HUB}"),
            &t,
            &[],
            Some(json!({"devices": []})),
        )
        .await;
    assert_eq!(s, 400, "the body is a bare array");
    let (s, _, body) = hub
        .send(
            "POST",
            &format!("/devices{HUB}"),
            &t,
            &[],
            Some(json!([item(1, "create"), item(2, "Create")])),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body,
        json!({"isSuccessful": true, "errors": [], "warnings": []})
    );
    let (s, _, body) = hub
        .send(
            "POST",
            &format!("/devices{HUB}"),
            &t,
            &[],
            Some(json!([
                item(1, "create"),
                item(3, "Delete"),
                item(2, "delete")
            ])),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(body["isSuccessful"], false);
    let codes: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["deviceId"].as_str().unwrap().to_owned(),
                e["errorCode"].as_u64().unwrap(),
            )
        })
        .collect();
    // Integer codes, as the service sends them (the name is in errorStatus).
    assert_eq!(codes, vec![("b1".into(), 409001), ("b3".into(), 404001)]);
    assert!(
        body["errors"][0]["errorStatus"]
            .as_str()
            .unwrap()
            .contains("DeviceAlreadyExists"),
        "{body}"
    );
    assert!(env.mock.hub().device("b2").is_none(), "b2 deleted");
}

#[tokio::test]
async fn dps_accepts_three_certificate_encodings_and_enforces_if_match_and_bulk_limit() {
    let env = common::start(AzureMockConfig::default()).await;
    let dps = Raw::new(&env, true);
    let t = dps.token();
    let pki = TestPki::new("r", "c", "x").unwrap();
    let enroll = |id: &str, cert: String| json!({"registrationId": id, "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": cert}}}}});
    let mut sha = Vec::new();
    for (i, enc) in ["pem", "b64pem", "b64der"].iter().enumerate() {
        let d = pki.device_with_cn(i as u64, &format!("dev-{i}")).unwrap();
        let cert = match *enc {
            "pem" => d.cert_pem.clone(),
            "b64pem" => STANDARD.encode(&d.cert_pem),
            _ => STANDARD.encode(&d.cert_der),
        };
        // Mixed-case path and id: DPS matches case-insensitively.
        let (s, _, body) = dps
            .send(
                "PUT",
                &format!("/Enrollments/DEV-{i}{DPS}"),
                &t,
                &[],
                Some(enroll(&format!("DEV-{i}"), cert)),
            )
            .await;
        assert_eq!(s, 200, "{enc}: {body}");
        let want = hex::encode_upper(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &d.cert_der,
        ));
        assert_eq!(
            body["attestation"]["x509"]["clientCertificates"]["primary"]["info"]["sha256Thumbprint"],
            want.as_str(),
            "{enc}"
        );
        assert!(
            body["etag"].as_str().unwrap().starts_with('"'),
            "quoted etag"
        );
        sha.push(body);
    }
    let d = pki.device_with_cn(9, "dev-0").unwrap();
    let (s, _, _) = dps
        .send(
            "PUT",
            &format!("/enrollments/dev-0{DPS}"),
            &t,
            &[],
            Some(enroll("dev-0", d.cert_pem.clone())),
        )
        .await;
    assert_eq!(s, 409, "no If-Match = create only");
    let (s, _, _) = dps
        .send(
            "PUT",
            &format!("/enrollments/dev-0{DPS}"),
            &t,
            &[("if-match", "\"stale\"")],
            Some(enroll("dev-0", d.cert_pem.clone())),
        )
        .await;
    assert_eq!(s, 412);
    let etag = sha[0]["etag"].as_str().unwrap().to_owned();
    let (s, _, _) = dps
        .send(
            "PUT",
            &format!("/enrollments/dev-0{DPS}"),
            &t,
            &[("if-match", &etag)],
            Some(enroll("dev-0", d.cert_pem.clone())),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, _) = dps
        .send(
            "PUT",
            &format!("/enrollments/dev-9{DPS}"),
            &t,
            &[],
            Some(enroll("dev-9", "not a certificate".into())),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _, _) = dps
        .send(
            "PUT",
            &format!("/enrollments/-bad{DPS}"),
            &t,
            &[],
            Some(enroll("-bad", d.cert_pem.clone())),
        )
        .await;
    assert_eq!(s, 400);
    let eleven: Vec<Value> = (0..11)
        .map(|i| enroll(&format!("n{i}"), d.cert_pem.clone()))
        .collect();
    let (s, _, _) = dps
        .send(
            "POST",
            &format!("/enrollments/{DPS}"),
            &t,
            &[],
            Some(json!({"mode": "create", "enrollments": eleven})),
        )
        .await;
    assert_eq!(s, 400, "more than 10");
    let two = vec![
        enroll("dev-1", d.cert_pem.clone()),
        enroll("n1", d.cert_pem.clone()),
    ];
    let (s, _, body) = dps
        .send(
            "POST",
            &format!("/enrollments/{DPS}"),
            &t,
            &[],
            Some(json!({"mode": "create", "enrollments": two})),
        )
        .await;
    assert_eq!(s, 200, "trailing slash accepted");
    assert_eq!(body["isSuccessful"], false);
    assert_eq!(body["errors"][0]["registrationId"], "dev-1");
    assert_eq!(body["errors"][0]["errorCode"].as_u64().unwrap() / 1000, 409);
    let (s, h, page) = dps
        .send(
            "POST",
            &format!("/enrollments/query{DPS}"),
            &t,
            &[("x-ms-max-item-count", "2")],
            Some(json!({"query": "*"})),
        )
        .await;
    assert_eq!((s, page.as_array().unwrap().len()), (200, 2));
    let cont = h["x-ms-continuation"].to_str().unwrap().to_owned();
    let (_, h2, page2) = dps
        .send(
            "POST",
            &format!("/enrollments/query{DPS}"),
            &t,
            &[("x-ms-max-item-count", "2"), ("x-ms-continuation", &cont)],
            Some(json!({"query": "*"})),
        )
        .await;
    assert_eq!(
        page2.as_array().unwrap().len(),
        2,
        "4 enrollments: dev-0..2, n1"
    );
    assert!(h2.get("x-ms-continuation").is_none());
    let (s, _, _) = dps
        .send(
            "DELETE",
            &format!("/enrollments/n1{DPS}"),
            &t,
            &[("if-match", "\"*\"")],
            None,
        )
        .await;
    assert_eq!(s, 204);
}
