//! The `gcp-firestore` connector against Google's Firestore emulator (one per test binary,
//! each test in its own project), with the fault proxy from mock-clouds where a test needs
//! throttling, lost answers or stalls.
#![allow(clippy::unwrap_used)] // tests

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use idbridge_core::conformance;
use idbridge_core::engine::NoProgress;
use idbridge_core::journal::{Operation, Outcome};
use idbridge_core::{CallContext, Connector, ErrorKind, RegisterOutcome};
use idbridge_gcp::FirestoreConnector;
use idbridge_mock_clouds::{Fault, FaultProxy, FaultRule, TestPki};

fn ctx() -> CallContext {
    CallContext::unpaced()
}

const QUOTA_BODY: &str = r#"{"error":{"code":429,"message":"Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute' of service 'firestore.googleapis.com'.","status":"RESOURCE_EXHAUSTED"}}"#;

/// Every document id of the collection, through `list` (the path `diff` takes).
async fn listed(c: &FirestoreConnector) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = c.list(&ctx(), cursor).await.unwrap();
        out.extend(page.devices.into_iter().map(|d| d.name));
        match page.next {
            Some(n) => cursor = Some(n),
            None => return out,
        }
    }
}

#[tokio::test]
async fn conformance_suite() {
    let emu = common::firestore();
    let project = common::project("conformance");
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::devices(&pki, 1, 4);
    let c = FirestoreConnector::new("allowlist", common::firestore_config(&emu.url(), &project))
        .unwrap();
    c.health_check(&ctx()).await.unwrap();
    conformance::register_then_lookup(&c, &devs[0]).await;
    conformance::reregister_is_idempotent(&c, &devs[1]).await;
    conformance::deregister_is_idempotent(&c, &devs[2]).await;

    let proxy = FaultProxy::start(&emu.url()).await.unwrap();
    proxy.server.faults.push(
        FaultRule::once(Fault::Status {
            status: 429,
            headers: vec![("Retry-After".into(), "1".into())],
            body: QUOTA_BODY.into(),
        })
        .on_path(":batchWrite"),
    );
    let throttled =
        FirestoreConnector::new("allowlist", common::firestore_config(proxy.url(), &project))
            .unwrap();
    conformance::throttling_is_rate_limited(&throttled, &devs[3]).await;

    // Real google-cloud-auth service-account credentials (a self-signed JWT): the emulator
    // refuses batchWrite to anyone but its admin, as Firestore refuses an unauthorised caller.
    let dir = tempfile::tempdir().unwrap();
    let mut bad = common::firestore_config(&emu.url(), &project);
    bad.emulator_admin = None;
    bad.credentials_file = Some(common::service_account_file(dir.path(), &project));
    let bad = FirestoreConnector::new("allowlist", bad).unwrap();
    conformance::bad_credentials_are_permanent(&bad, &devs[3]).await;

    let mut ids = listed(&c).await;
    ids.sort();
    let mut want = vec![devs[0].device_id.to_string(), devs[1].device_id.to_string()];
    want.sort();
    assert_eq!(
        ids, want,
        "devices 0 and 1 remain, nothing else was written"
    );
}

#[tokio::test]
async fn provision_lookup_diff_deprovision() {
    let emu = common::firestore();
    let project = common::project("lifecycle");
    let pki = TestPki::infineon_like().unwrap();
    let mut devs = common::devices(&pki, 10, 6);
    for d in &mut devs {
        d.batch = Some(idbridge_core::BatchRef::new(
            "b41425b9-b42b-47fd-95c2-f981b4c61561",
        ));
        d.vendor.vendor = Some("infineon".into());
    }
    let c = Arc::new(
        FirestoreConnector::new("allowlist", common::firestore_config(&emu.url(), &project))
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(c.clone(), dir.path(), Duration::from_secs(30));

    // Before: all missing.
    let plan = engine.diff(&devs).await.unwrap();
    assert_eq!((plan.missing, plan.identical, plan.extra), (6, 0, 0));
    assert!(plan.listed);

    let report = engine
        .execute(
            Operation::Provision,
            "allowlist",
            devs[..4].to_vec(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(report.all_done(), "{report:?}");
    assert!(
        report
            .devices
            .iter()
            .all(|d| d.outcome == Some(Outcome::Created))
    );

    // Lookup: the document as written, with the batch tag, never the batch ID.
    let remote = c.lookup(&ctx(), &devs[0]).await.unwrap().expect("found");
    assert_eq!(remote.device_id.as_ref(), Some(&devs[0].device_id));
    assert!(remote.differences.is_empty(), "{:?}", remote.differences);
    assert!(c.lookup(&ctx(), &devs[5]).await.unwrap().is_none());
    let raw = reqwest::get(format!(
        "{}/v1/projects/{project}/databases/(default)/documents/device_allowlist/{}",
        emu.url(),
        devs[0].device_id
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(!raw.contains("b41425b9"), "batch ID stored in clear: {raw}");
    for field in [
        "fingerprint",
        "subject",
        "issuer",
        "serial",
        "not_after",
        "vendor",
        "batch",
        "provisioned_at",
        "pem",
    ] {
        assert!(
            raw.contains(&format!("\"{field}\"")),
            "field {field} missing: {raw}"
        );
    }

    // Diff: 4 identical, 2 missing, and one extra found by listing.
    let stranger = common::devices(&pki, 90, 1);
    c.register(&ctx(), &stranger).await.unwrap();
    let plan = engine.diff(&devs).await.unwrap();
    assert_eq!(
        (
            plan.missing,
            plan.identical,
            plan.different,
            plan.extra,
            plan.errors
        ),
        (2, 4, 0, 1, 0),
        "{plan:?}"
    );

    // Deprovision 0..4: deleted; again: not found; lookup finds nothing.
    let report = engine
        .execute(
            Operation::Deprovision,
            "allowlist",
            devs[..4].to_vec(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(report.all_done(), "{report:?}");
    assert!(
        report
            .devices
            .iter()
            .all(|d| d.outcome == Some(Outcome::Deleted)),
        "{report:?}"
    );
    for d in &devs[..4] {
        assert!(c.lookup(&ctx(), d).await.unwrap().is_none());
    }
    let again = c.deregister(&ctx(), &devs[..2]).await.unwrap();
    assert!(
        again
            .iter()
            .all(|o| matches!(o, idbridge_core::DeregisterOutcome::NotFound)),
        "{again:?}"
    );
    assert_eq!(listed(&c).await, vec![stranger[0].device_id.to_string()]);

    // A direct caller passing more than batch_size: split into batchWrites of at most that.
    let mut cfg = common::firestore_config(&emu.url(), &project);
    cfg.batch_size = 2;
    let small = FirestoreConnector::new("allowlist", cfg).unwrap();
    let out = small.register(&ctx(), &devs[..5]).await.unwrap();
    assert_eq!(out.len(), 5);
    assert!(
        out.iter().all(|o| matches!(o, RegisterOutcome::Created(_))),
        "{out:?}"
    );
    let out = small.deregister(&ctx(), &devs[..5]).await.unwrap();
    assert!(
        out.iter()
            .all(|o| matches!(o, idbridge_core::DeregisterOutcome::Deleted)),
        "{out:?}"
    );
}

#[tokio::test]
async fn bulk_1200_with_one_identical_and_one_conflicting_document() {
    let emu = common::firestore();
    let project = common::project("bulk");
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::devices(&pki, 1000, 1200);
    let proxy = FaultProxy::start(&emu.url()).await.unwrap();
    let c = Arc::new(
        FirestoreConnector::new("allowlist", common::firestore_config(proxy.url(), &project))
            .unwrap(),
    );
    assert_eq!(c.info().max_batch_size, 500);

    // Device 7 is there already, identical; under device 700's fingerprint someone stored a
    // different certificate.
    let out = c.register(&ctx(), &devs[7..8]).await.unwrap();
    assert!(matches!(out[0], RegisterOutcome::Created(_)));
    let other = common::devices(&pki, 5000, 1).remove(0);
    let conflicting = serde_json::json!({"fields": {
        "fingerprint": {"stringValue": devs[700].device_id.as_str()},
        "pem": {"stringValue": other.to_pem()},
        "subject": {"stringValue": other.subject},
    }});
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/v1/projects/{project}/databases/(default)/documents/device_allowlist?documentId={}",
            emu.url(),
            devs[700].device_id
        ))
        .header("Authorization", "Bearer owner")
        .json(&conflicting)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    let before = proxy.forwarded_requests().len();

    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(c.clone(), dir.path(), Duration::from_secs(60));
    let report = engine
        .execute(
            Operation::Provision,
            "allowlist",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    let writes = proxy.forwarded_requests()[before..]
        .iter()
        .filter(|r| r.contains(":batchWrite"))
        .count();
    assert_eq!(writes, 3, "1,200 devices in batchWrites of at most 500");
    assert!(report.finished);
    assert_eq!(report.counts.done, 1199, "{:?}", report.counts);
    let by_outcome = |o: Outcome| {
        report
            .devices
            .iter()
            .filter(|d| d.outcome == Some(o))
            .count()
    };
    assert_eq!(by_outcome(Outcome::Created), 1198);
    assert_eq!(by_outcome(Outcome::AlreadyPresent), 1);
    assert_eq!(by_outcome(Outcome::Conflict), 1);
    let conflict = report
        .devices
        .iter()
        .find(|d| d.outcome == Some(Outcome::Conflict))
        .unwrap();
    assert_eq!(conflict.device_id, devs[700].device_id);
    assert!(
        conflict.reason.as_deref().unwrap_or("").contains("pem"),
        "the reason names what differs: {conflict:?}"
    );
    let present = report
        .devices
        .iter()
        .find(|d| d.outcome == Some(Outcome::AlreadyPresent))
        .unwrap();
    assert_eq!(present.device_id, devs[7].device_id);

    // The conflicting document was not overwritten; every device has exactly one document.
    let remote = c.lookup(&ctx(), &devs[700]).await.unwrap().unwrap();
    assert!(
        remote.differences.iter().any(|d| d.starts_with("pem")),
        "{remote:?}"
    );
    let ids = listed(&c).await;
    assert_eq!(ids.len(), 1200);
    let unique: HashSet<_> = ids.into_iter().collect();
    assert_eq!(
        unique,
        devs.iter().map(|d| d.device_id.to_string()).collect()
    );
}

#[tokio::test]
async fn wrong_credentials_stop_the_job_with_a_clear_reason() {
    let emu = common::firestore();
    let project = common::project("wrongcreds");
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::devices(&pki, 1, 20);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::firestore_config(&emu.url(), &project);
    cfg.emulator_admin = None;
    cfg.credentials_file = Some(common::service_account_file(dir.path(), &project));
    cfg.batch_size = 5;
    let c = Arc::new(FirestoreConnector::new("allowlist", cfg).unwrap());
    let e = c.health_check(&ctx()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    let engine = common::engine(c.clone(), dir.path(), Duration::from_secs(30));
    let report = engine
        .execute(
            Operation::Provision,
            "allowlist",
            devs,
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    let reason = report.aborted.clone().expect("the job stopped");
    assert!(reason.contains("permission_denied"), "{reason}");
    assert!(
        reason.contains("Batch writes require admin authentication"),
        "{reason}"
    );
    assert!(!report.finished);
    assert_eq!(report.counts.done, 0);
    let admin =
        FirestoreConnector::new("allowlist", common::firestore_config(&emu.url(), &project))
            .unwrap();
    assert!(listed(&admin).await.is_empty(), "nothing was written");
}

#[tokio::test]
async fn faults_between_connector_and_emulator_leave_every_device_once() {
    let emu = common::firestore();
    let project = common::project("faults");
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::devices(&pki, 1, 300);
    let proxy = FaultProxy::start(&emu.url()).await.unwrap();
    let mut cfg = common::firestore_config(proxy.url(), &project);
    cfg.batch_size = 50;
    let c = Arc::new(FirestoreConnector::new("allowlist", cfg).unwrap());
    let f = &proxy.server.faults;
    let on_write = |fault| FaultRule::once(fault).on_path(":batchWrite");
    // First write: applied, its answer held back past the attempt timeout. Second write:
    // applied, answer lost. Then a 503, a throttle, a reset before forwarding, and a stall far
    // beyond the attempt timeout (the engine gives up on it; the stalled request would reach
    // the emulator only long after its retry, and create nothing).
    proxy.delay_responses(":batchWrite", 1, 30_000);
    f.push(on_write(Fault::LoseResponse).after(1));
    f.push(on_write(Fault::Status {
        status: 503,
        headers: vec![],
        body: r#"{"error":{"code":503,"message":"The service is currently unavailable.","status":"UNAVAILABLE"}}"#.into(),
    }));
    f.push(on_write(Fault::Status {
        status: 429,
        headers: vec![("Retry-After".into(), "1".into())],
        body: QUOTA_BODY.into(),
    }));
    f.push(on_write(Fault::Reset));
    f.push(on_write(Fault::Stall { millis: 120_000 }));
    let dir = tempfile::tempdir().unwrap();
    let engine = common::engine(c.clone(), dir.path(), Duration::from_secs(8));
    let report = engine
        .execute(
            Operation::Provision,
            "allowlist",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(
        report.all_done(),
        "{:?} {:?}",
        report.counts,
        report.aborted
    );
    let by_outcome = |o: Outcome| {
        report
            .devices
            .iter()
            .filter(|d| d.outcome == Some(o))
            .count()
    };
    // The 2 x 50 devices of the late and the lost answer were created by their first call; the
    // retry found them identical. Every other device was created exactly once.
    assert_eq!(
        by_outcome(Outcome::AlreadyPresent),
        100,
        "{:?}",
        report.counts
    );
    assert_eq!(by_outcome(Outcome::Created), 200);
    let ids = listed(&c).await;
    assert_eq!(ids.len(), 300, "one document per device");
    let unique: HashSet<_> = ids.into_iter().collect();
    assert_eq!(unique.len(), 300);
    let lost_then_present: Vec<_> = report
        .devices
        .iter()
        .filter(|d| d.outcome == Some(Outcome::AlreadyPresent))
        .map(|d| d.seq / 50)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        lost_then_present.len(),
        2,
        "exactly two whole batches took effect unseen: {lost_then_present:?}"
    );
    assert_eq!(
        f.take("POST", ":batchWrite"),
        None,
        "every scripted fault was met"
    );
}

#[tokio::test]
async fn service_account_credentials_sign_their_own_jwt_and_never_call_the_token_endpoint() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    // A token endpoint that counts connections, and a Firestore stand-in that records the
    // Authorization header and answers an empty batchWrite.
    let token = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}/token", token.local_addr().unwrap());
    let token_calls = Arc::new(AtomicU32::new(0));
    let tc = token_calls.clone();
    tokio::spawn(async move {
        while token.accept().await.is_ok() {
            tc.fetch_add(1, Ordering::SeqCst);
        }
    });
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s2 = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let s2 = s2.clone();
        async move {
            if let Some(v) = headers.get("authorization") {
                s2.lock().unwrap().push(v.to_str().unwrap().to_owned());
            }
            r#"{"writeResults":[],"status":[]}"#
        }
    });
    let server = idbridge_mock_clouds::server::serve(app, "127.0.0.1:0", None)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let (file, public_der) = common::service_account_with_key(dir.path(), "p", &token_url);
    let mut cfg = idbridge_gcp::FirestoreConfig::new("p");
    cfg.endpoint_url = Some(server.url.clone());
    cfg.allow_http = true;
    cfg.credentials_file = Some(file);
    assert!(!format!("{cfg:?}").contains("PRIVATE KEY"));
    let c = FirestoreConnector::new("allowlist", cfg).unwrap();
    assert!(!format!("{c:?}").contains("PRIVATE KEY"));
    c.health_check(&ctx()).await.unwrap();

    let auth = seen.lock().unwrap().pop().expect("an Authorization header");
    let jwt = auth.strip_prefix("Bearer ").expect("a bearer token");
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some("test-kid-1"));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.validate_aud = false;
    validation.required_spec_claims = ["exp", "iat"].iter().map(|s| s.to_string()).collect();
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        jwt,
        &jsonwebtoken::DecodingKey::from_rsa_der(&public_der),
        &validation,
    )
    .expect("the JWT verifies with the service account's public key")
    .claims;
    assert_eq!(claims["iss"], "provisioner@p.iam.gserviceaccount.com");
    assert_eq!(claims["sub"], claims["iss"]);
    assert_eq!(claims["scope"], idbridge_gcp::config::FIRESTORE_SCOPE);
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        0,
        "no token endpoint call"
    );
}
