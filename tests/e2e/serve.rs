//! `idbridge serve` as a process: a CIRRENT-like client posts interop requests; the receiver
//! verifies the JWT and every certificate, and provisions through the engine into the mock
//! cloud, whose device endpoint then admits the devices.
#![allow(clippy::unwrap_used)] // test helpers

use std::time::{Duration, Instant};

use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::interop::TokenKind;
use serde_json::{Value, json};

use super::interop::{admitted, device_id};
use super::serve_support::{cert, start, start_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_provisions_into_the_mock_cloud_and_devices_are_admitted() {
    let s = start("").await;
    let (devices, _) = s.fx.devices("batch.pem", 1..3);
    let rogue = TestPki::infineon_like().unwrap().device(7).unwrap();

    let (code, info) = s.post(s.bearer(), &json!({"action": "info"})).await;
    assert_eq!(
        (code, info["compatibilityVersion"].clone()),
        (200, json!(1))
    );

    let body = json!({"action": "provision", "certs": [
        {"ref": "a", "cert": cert(&devices[0].cert_pem)},
        {"ref": "b", "cert": cert(&devices[1].cert_pem.replace('\n', "\r\n"))},
        {"ref": "rogue", "cert": cert(&rogue.cert_pem)},
        {"ref": "junk", "cert": "dGVzdGluZw=="},
    ]});
    let (code, res) = s.post(s.bearer(), &body).await;
    assert_eq!(code, 200, "{res}");
    let by_ref = |r: &str| {
        res.as_array()
            .unwrap()
            .iter()
            .find(|x| x["ref"] == r)
            .unwrap()
            .clone()
    };
    assert_eq!(by_ref("a")["status"], "SUCCESS", "{res}");
    assert_eq!(by_ref("a")["created"], true);
    assert_eq!(by_ref("b")["status"], "SUCCESS", "{res}");
    assert_eq!(by_ref("rogue")["status"], "ERROR");
    assert_eq!(by_ref("rogue")["code"], "untrusted", "{res}");
    assert_eq!(by_ref("junk")["message"], "Cannot decode certitifcate");

    assert_eq!(
        s.registry.devices().len(),
        2,
        "only the trusted two reached the cloud"
    );
    for d in &devices {
        assert!(
            admitted(s.devices.addr, s.ca.cert_pem(), d).await,
            "admitted by the mock cloud"
        );
    }
    assert!(!admitted(s.devices.addr, s.ca.cert_pem(), &rogue).await);

    // Status by fingerprint, from the journal.
    let (_, st) = s
        .post(
            s.bearer(),
            &json!({"action": "status", "fingerprints": [device_id(&devices[0]), device_id(&rogue)]}),
        )
        .await;
    assert_eq!(st["devices"][0]["status"], "PRESENT", "{st}");
    assert_eq!(st["devices"][1]["status"], "ABSENT", "{st}");

    // Re-provisioning is idempotent.
    let (_, again) = s
        .post(
            s.bearer(),
            &json!({"action": "provision", "certs": [{"ref": "a2", "cert": cert(&devices[0].cert_pem)}]}),
        )
        .await;
    assert_eq!(again[0]["status"], "SUCCESS", "{again}");
    assert_eq!(again[0]["created"], false, "{again}");
    assert_eq!(s.registry.devices().len(), 2);

    // Deprovision removes admission.
    let (_, gone) = s
        .post(
            s.bearer(),
            &json!({"action": "deprovision", "certs": [{"ref": "a", "cert": cert(&devices[0].cert_pem)}]}),
        )
        .await;
    assert_eq!(gone[0]["status"], "SUCCESS", "{gone}");
    assert!(!admitted(s.devices.addr, s.ca.cert_pem(), &devices[0]).await);
    assert!(admitted(s.devices.addr, s.ca.cert_pem(), &devices[1]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_matrix_against_the_running_receiver() {
    let s = start("").await;
    let (devices, _) = s.fx.devices("batch.pem", 1..2);
    let body =
        json!({"action": "provision", "certs": [{"ref": "a", "cert": cert(&devices[0].cert_pem)}]});
    for kind in [
        TokenKind::WrongAudience,
        TokenKind::Expired,
        TokenKind::OtherKey,
        TokenKind::AlgNone,
        TokenKind::Hs256WithPublicKey,
    ] {
        let (code, res) = s
            .post(Some(format!("Bearer {}", s.sender.token(kind))), &body)
            .await;
        assert_eq!(code, 401, "{kind:?}");
        assert_eq!(
            res,
            json!({"error": "Cannot verify and decode token", "code": "unauthorized"}),
            "{kind:?}"
        );
    }
    let (code, res) = s.post(None, &body).await;
    assert_eq!(
        (code, res),
        (
            401,
            json!({"error": "Missing Authorization Header", "code": "unauthorized"})
        )
    );
    let (code, res) = s.post(Some("Bearer a b".into()), &body).await;
    assert_eq!(
        (code, res),
        (
            401,
            json!({"error": "Token invalid", "code": "unauthorized"})
        )
    );
    let (code, res) = s.post(Some("Bearer not-a-jwt".into()), &body).await;
    assert_eq!(
        (code, res),
        (
            401,
            json!({"error": "Cannot verify and decode token", "code": "unauthorized"})
        )
    );
    assert!(
        s.registry.devices().is_empty(),
        "no refused call provisioned anything"
    );

    let health = s.http.get(format!("{}/", s.url)).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(health.text().await.unwrap(), "OK");
    let auth = s
        .http
        .get(format!("{}/auth", s.url))
        .header("authorization", s.bearer().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(auth.status().as_u16(), 200);

    let (code, res) = s.post(s.bearer(), &body).await;
    assert_eq!(code, 200, "the valid token works: {res}");
    assert_eq!(s.registry.devices().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_and_oversized_413() {
    let s = start("max_body_bytes = 200000").await;
    let (code, res) = s
        .post(
            s.bearer(),
            &json!({"action": "provision", "certs": [{"cert": "dGVzdGluZw=="}]}),
        )
        .await;
    assert_eq!(
        (code, res),
        (
            400,
            json!({"error": "\"certs[0].ref\" is required", "code": "bad_request"})
        )
    );
    let (code, res) = s
        .post(
            s.bearer(),
            &json!({"action": "provision", "certs": [{"ref": "x", "cert": "***"}]}),
        )
        .await;
    assert_eq!(code, 400);
    assert!(res["error"].as_str().unwrap().contains("base64"), "{res}");
    let resp = s
        .http
        .post(format!("{}/interop", s.url))
        .header("authorization", s.bearer().unwrap())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("not valid JSON"));
    let big = json!({"action": "provision", "certs": [{"ref": "x", "cert": "A".repeat(300_000)}]});
    let (code, res) = s.post(s.bearer(), &big).await;
    assert_eq!(code, 413, "{res}");
    assert!(res["error"].as_str().unwrap().contains("200000"), "{res}");
    assert!(s.registry.devices().is_empty());
}

/// Past the sync bound a v1 sender (CIRRENT) still gets only `SUCCESS`/`ERROR`: unfinished
/// items are `ERROR` with code `outcome_unknown`; only a caller that sent
/// `Prefer: respond-async` gets `ACCEPTED` and a job to poll. Both jobs finish either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_sync_bound_v1_senders_get_errors_and_async_callers_accepted() {
    let s = start("sync_deadline_secs = 0\nchunk_size = 50").await;
    let (devices, _) = s.fx.devices("batch.pem", 100..400);
    let certs = |range: std::ops::Range<usize>| -> Vec<Value> {
        range
            .map(|i| json!({"ref": format!("r{i}"), "cert": cert(&devices[i].cert_pem)}))
            .collect()
    };
    // With a sync bound of 0 s the answer does not wait for the job: items past the bound
    // are unfinished (asserted below), however slow the machine.
    let (code, headers, v1) = post_with(
        &s,
        &[],
        &json!({"action": "provision", "certs": certs(0..100)}),
    )
    .await;
    assert_eq!(code, 200, "{v1}");
    assert!(headers.get("preference-applied").is_none());
    let items = v1.as_array().unwrap();
    assert_eq!(items.len(), 100);
    for r in items {
        match r["status"].as_str() {
            Some("SUCCESS") => {}
            Some("ERROR") => assert_eq!(r["code"], "outcome_unknown", "{r}"),
            _ => panic!("a v1 sender knows only SUCCESS and ERROR: {r}"),
        }
    }
    let v1_job = items
        .iter()
        .find(|r| r["status"] == "ERROR")
        .expect("some items beyond the bound")["job"]
        .as_str()
        .unwrap()
        .to_owned();

    let (code, headers, res) = post_with(
        &s,
        &[("prefer", "respond-async")],
        &json!({"action": "provision", "certs": certs(100..300)}),
    )
    .await;
    assert_eq!(code, 200, "{res}");
    assert_eq!(headers["preference-applied"], "respond-async");
    let items = res.as_array().unwrap();
    assert_eq!(items.len(), 200);
    assert!(
        items
            .iter()
            .all(|r| r["status"] == "ACCEPTED" || r["status"] == "SUCCESS"),
        "{res}"
    );
    let async_job = items
        .iter()
        .find(|r| r["status"] == "ACCEPTED")
        .expect("some items beyond the bound")["job"]
        .as_str()
        .unwrap()
        .to_owned();
    for (job, n) in [(v1_job, 100), (async_job, 200)] {
        // A hang guard only (no rate or duration is asserted): generous for a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let (_, st) = s
                .post(s.bearer(), &json!({"action": "status", "job": job}))
                .await;
            if st["done"] == true {
                let results = st["results"].as_array().unwrap();
                assert_eq!(results.len(), n);
                assert!(results.iter().all(|r| r["status"] == "SUCCESS"), "{st}");
                break;
            }
            assert!(Instant::now() < deadline, "job never finished: {st}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(s.registry.devices().len(), 300);
    assert!(admitted(s.devices.addr, s.ca.cert_pem(), &devices[0]).await);
    assert!(admitted(s.devices.addr, s.ca.cert_pem(), &devices[299]).await);
}

/// POSTs `body` to `/interop` with a valid token and `headers`; status, headers and JSON.
async fn post_with(
    s: &super::serve_support::Served,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = s
        .http
        .post(format!("{}/interop", s.url))
        .header("authorization", s.bearer().unwrap())
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let (code, headers) = (resp.status().as_u16(), resp.headers().clone());
    (code, headers, resp.json().await.unwrap())
}

/// Two targets: success only when both hold the device; a failure in one is the item's ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_into_two_targets_mock_cloud_and_webhook() {
    use idbridge_mock_clouds::webhook::{MockWebhook, WebhookState};

    let secret = WebhookState::random_secret();
    super::test_logs::note_secret("webhook-secret", &secret);
    let hook = MockWebhook::start("127.0.0.1:0", WebhookState::new(&secret).unwrap(), false)
        .await
        .unwrap();
    let more = format!(
        "[targets.hook]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{secret}\"\nallow_http = true\n\n[targets.hook.engine]\nmax_attempts = 2\n",
        hook.url()
    );
    let s = start_with("", r#"["cloud", "hook"]"#, &more).await;
    let (devices, _) = s.fx.devices("batch.pem", 1..3);
    // The webhook receiver refuses the second device for good.
    hook.state.script(&device_id(&devices[1]), 422, 100);
    let body = json!({"action": "provision", "certs": [
        {"ref": "a", "cert": cert(&devices[0].cert_pem)},
        {"ref": "b", "cert": cert(&devices[1].cert_pem)},
    ]});
    let (code, res) = s.post(s.bearer(), &body).await;
    assert_eq!(code, 200, "{res}");
    assert_eq!(res[0]["status"], "SUCCESS", "{res}");
    assert_eq!(res[1]["status"], "ERROR", "{res}");
    let msg = res[1]["message"].as_str().unwrap();
    assert!(msg.contains("hook"), "names the target: {msg}");
    assert_eq!(hook.state.provisioned(), vec![device_id(&devices[0])]);
    assert!(admitted(hook.devices.addr, hook.ca.cert_pem(), &devices[0]).await);
    assert!(admitted(s.devices.addr, s.ca.cert_pem(), &devices[0]).await);
}
