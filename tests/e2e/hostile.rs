//! The hostile-client suite against a real `idbridge serve` process: slow clients, floods,
//! oversized and deeply nested JSON, replayed and over-long tokens, tokens of other issuers,
//! huge status requests during a job, control characters in `ref`, TLS and mutual TLS.
//! No test asserts a duration: timeouts are configured short and only outcomes are checked.
#![allow(clippy::unwrap_used)] // test helpers

use idbridge_mock_clouds::interop::{InteropSender, TokenKind};
use serde_json::json;

use super::interop::{AUD, device_id};
use super::serve_support::{CLOUD_TOKEN, Launch, cert, launch, start};

/// A replayed token, a year-long token, tokens without `iss` or `jti`, and tokens of
/// another issuer are refused with Infineon's 401; nothing reaches the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_tokens_are_refused() {
    let s = start("").await;
    let (devices, _) = s.fx.devices("batch.pem", 1..2);
    let body =
        json!({"action": "provision", "certs": [{"ref": "a", "cert": cert(&devices[0].cert_pem)}]});
    let refused = json!({"error": "Cannot verify and decode token", "code": "unauthorized"});

    let once = format!("Bearer {}", s.sender.token(TokenKind::Valid));
    let (code, res) = s.post(Some(once.clone()), &json!({"action": "info"})).await;
    assert_eq!(code, 200, "{res}");
    let (code, res) = s.post(Some(once), &body).await;
    assert_eq!((code, res), (401, refused.clone()), "replayed token");

    for kind in [TokenKind::YearLong, TokenKind::NoIssuer, TokenKind::NoJti] {
        let (code, res) = s
            .post(Some(format!("Bearer {}", s.sender.token(kind))), &body)
            .await;
        assert_eq!((code, res), (401, refused.clone()), "{kind:?}");
    }
    // Another issuer: unknown to the receiver, and a known `iss` signed by the other key.
    let other = InteropSender::with_issuer(AUD, "someone-else").unwrap();
    let (code, res) = s
        .post(
            Some(format!("Bearer {}", other.token(TokenKind::Valid))),
            &body,
        )
        .await;
    assert_eq!((code, res), (401, refused.clone()), "unknown issuer");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let forged = other.sign_claims(&json!({
        "iss": s.sender.issuer(), "aud": AUD, "iat": now, "exp": now + 60, "jti": "forged-1"
    }));
    let (code, res) = s.post(Some(format!("Bearer {forged}")), &body).await;
    assert_eq!(
        (code, res),
        (401, refused),
        "iss of the configured issuer, other key"
    );
    assert!(s.registry.devices().is_empty(), "nothing provisioned");

    // The reasons are in the log, the tokens are not.
    let log = s.log();
    for reason in [
        "replayed token",
        "lifetime exp - iat above",
        "no iss claim",
        "no jti",
        "iss is not a configured issuer",
    ] {
        assert!(log.contains(reason), "log names {reason:?}:\n{log}");
    }
    assert!(!log.contains(&forged), "a token reached the log");

    // A fresh token still works.
    let (code, res) = s.post(s.bearer(), &body).await;
    assert_eq!(code, 200, "{res}");
    assert_eq!(res[0]["status"], "SUCCESS", "{res}");
}

/// Deprovision is off unless the issuer's scopes list it; a status-only issuer cannot provision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_enforced_per_issuer() {
    let s = launch(Launch {
        issuer: r#"scopes = ["status"]"#,
        ..Default::default()
    })
    .await;
    let (devices, _) = s.fx.devices("batch.pem", 1..2);
    let certs = json!([{"ref": "a", "cert": cert(&devices[0].cert_pem)}]);
    for action in ["provision", "deprovision"] {
        let (code, res) = s
            .post(s.bearer(), &json!({"action": action, "certs": certs}))
            .await;
        assert_eq!(code, 403, "{action}: {res}");
        assert_eq!(res["code"], "forbidden", "{res}");
    }
    let (code, res) = s
        .post(
            s.bearer(),
            &json!({"action": "status", "fingerprints": [device_id(&devices[0])]}),
        )
        .await;
    assert_eq!(code, 200, "{res}");
    assert_eq!(res["devices"][0]["status"], "ABSENT");

    // Default scopes: provision and status, no deprovision.
    let d = launch(Launch {
        issuer: "",
        ..Default::default()
    })
    .await;
    let (devices, _) = d.fx.devices("batch.pem", 1..2);
    let certs = json!([{"ref": "a", "cert": cert(&devices[0].cert_pem)}]);
    let (code, _) = d
        .post(d.bearer(), &json!({"action": "provision", "certs": certs}))
        .await;
    assert_eq!(code, 200);
    let (code, res) = d
        .post(
            d.bearer(),
            &json!({"action": "deprovision", "certs": certs}),
        )
        .await;
    assert_eq!(code, 403, "{res}");
    assert_eq!(d.registry.devices().len(), 1, "still provisioned");
}

/// Oversized bodies (declared or streamed) are 413; deeply nested JSON is a 400, never a
/// crash; the server still answers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deeply_nested_json() {
    let mut s = start("max_body_bytes = 100000").await;
    let big = json!({"action": "provision", "certs": [{"ref": "x", "cert": "A".repeat(150_000)}]});
    let (code, res) = s.post(s.bearer(), &big).await;
    assert_eq!(code, 413, "{res}");
    // Streamed without a length: counted while reading.
    let mut raw = format!(
        "POST /interop HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        s.bearer().unwrap()
    )
    .into_bytes();
    for _ in 0..20 {
        raw.extend_from_slice(format!("{:x}\r\n", 10_000).as_bytes());
        raw.extend_from_slice(&[b' '; 10_000]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(s.addr(), &raw).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    for depth in [200usize, 15_000] {
        let nested = format!(
            r#"{{"action":"provision","certs":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let (code, res) = s.post_raw(s.bearer(), nested.into_bytes()).await;
        assert_eq!(code, 400, "depth {depth}: {res}");
        let nested_obj = format!(
            r#"{{"action":"status","job":{}1{}}}"#,
            r#"{"a":"#.repeat(depth),
            "}".repeat(depth)
        );
        let (code, _) = s.post_raw(s.bearer(), nested_obj.into_bytes()).await;
        assert_eq!(code, 400, "depth {depth}");
    }
    let (code, _) = s.post(s.bearer(), &json!({"action": "info"})).await;
    assert_eq!(code, 200, "still serving");
    assert!(s.child_alive(), "the server survived");
}

/// Control characters (terminal escapes, newlines, bidi overrides) in `ref` never reach the
/// answer, the journal or the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_ref_are_stripped() {
    let s = start("").await;
    let (devices, _) = s.fx.devices("batch.pem", 1..3);
    let evil = "dev\u{1b}[31mRED\u{1b}[0m\nFAKE LOG LINE\r\u{202e}kcab\u{0}end";
    let body = json!({"action": "provision", "certs": [
        {"ref": evil, "cert": cert(&devices[0].cert_pem)},
        {"ref": format!("{evil}-junk"), "cert": "dGVzdGluZw=="},
    ]});
    let (code, res) = s.post(s.bearer(), &body).await;
    assert_eq!(code, 200, "{res}");
    let clean = "dev[31mRED[0mFAKE LOG LINEkcabend";
    assert_eq!(res[0]["ref"], clean, "{res}");
    assert_eq!(res[0]["status"], "SUCCESS", "{res}");
    assert_eq!(res[1]["ref"], format!("{clean}-junk"), "{res}");
    let log = s.log();
    for bad in ['\u{1b}', '\u{202e}', '\u{0}', '\r'] {
        assert!(!log.contains(bad), "{bad:?} reached the log");
    }
    assert!(
        !log.lines().any(|l| l.starts_with("FAKE LOG LINE")),
        "a ref forged a log line"
    );
    // Only control characters: an empty ref is refused.
    let (code, res) = s
        .post(
            s.bearer(),
            &json!({"action": "provision", "certs": [{"ref": "\u{1b}\n", "cert": cert(&devices[1].cert_pem)}]}),
        )
        .await;
    assert_eq!(code, 400, "{res}");
    assert!(
        !s.log().contains(CLOUD_TOKEN),
        "the cloud token reached the log"
    );
}

/// Writes `raw` to a fresh connection and reads the answer until the server closes it
/// (or 60 s pass: a hang guard, not a timing assertion).
pub(crate) async fn raw_exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (413) and close before everything is written.
    let _ = c.write_all(raw).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(60), c.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
