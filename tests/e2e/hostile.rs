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

/// What a trickling client saw.
struct Trickle {
    /// The server closed the connection before the client had sent everything.
    dropped: bool,
    /// What the server wrote before closing (a 408 or nothing).
    answer: String,
}

/// Sends `head` on a fresh connection, then `rest` one byte every 300 ms (a slowloris).
async fn trickle(addr: std::net::SocketAddr, head: Vec<u8>, rest: Vec<u8>) -> Trickle {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(&head).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    while sent < rest.len() {
        tokio::select! {
            r = c.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    return Trickle { dropped: true, answer: String::from_utf8_lossy(&got).into_owned() };
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(std::time::Duration::from_millis(300)) => {
                if c.write_all(&rest[sent..sent + 1]).await.is_err() {
                    return Trickle { dropped: true, answer: String::from_utf8_lossy(&got).into_owned() };
                }
                sent += 1;
            }
        }
    }
    Trickle {
        dropped: false,
        answer: String::from_utf8_lossy(&got).into_owned(),
    }
}

/// Slowloris clients (a head or a body one byte at a time) are dropped by the server's
/// timeouts (2 s here) long before they finish (~90 s of trickling), while a normal client
/// is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_heads_and_bodies_are_dropped_while_others_are_served() {
    let s = start("header_read_timeout_secs = 2\nbody_timeout_secs = 2").await;
    let addr = s.addr();
    let (devices, _) = s.fx.devices("batch.pem", 1..2);
    let slow_head = || {
        trickle(
            addr,
            b"POST /interop HTTP/1.1\r\n".to_vec(),
            b"X-Slow: "
                .iter()
                .chain([b'a'; 300].iter())
                .copied()
                .collect(),
        )
    };
    let slow_body = || {
        let head = format!(
            "POST /interop HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 300\r\n\r\n",
            s.bearer().unwrap()
        );
        trickle(addr, head.into_bytes(), vec![b' '; 300])
    };
    let normal = async {
        let (code, res) = s.post(s.bearer(), &json!({"action": "info"})).await;
        assert_eq!(code, 200, "{res}");
        let (code, res) = s
            .post(
                s.bearer(),
                &json!({"action": "provision", "certs": [{"ref": "a", "cert": cert(&devices[0].cert_pem)}]}),
            )
            .await;
        assert_eq!(code, 200, "{res}");
        res
    };
    let (heads, bodies, res) = tokio::join!(
        futures::future::join_all((0..4).map(|_| slow_head())),
        futures::future::join_all((0..4).map(|_| slow_body())),
        normal
    );
    for t in heads.iter().chain(bodies.iter()) {
        assert!(t.dropped, "a slow client was kept: {}", t.answer);
    }
    assert!(
        bodies.iter().all(|t| !t.answer.starts_with("HTTP/1.1 2")),
        "a slow body was handled"
    );
    assert_eq!(res[0]["status"], "SUCCESS", "{res}");
    assert_eq!(s.registry.devices().len(), 1);
}

/// Connections beyond `max_connections` are answered 503 with Retry-After and closed; the
/// server serves again once they are gone. (300 connections: safe under a default
/// `ulimit -n` of 1024 on a small CI box.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_is_capped_with_503() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const MAX: usize = 20;
    const FLOOD: usize = 300;
    let s = start(&format!("max_connections = {MAX}")).await;
    let addr = s.addr();
    let mut conns = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        conns.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Refused connections get their 503 without sending anything; the others get nothing
    // until they send a request, then a 200, and stay open (keep-alive).
    let outcomes = futures::future::join_all(conns.into_iter().map(|mut c| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        let first =
            tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut chunk)).await;
        match first {
            Ok(Ok(n)) if n > 0 => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                (text.lines().next().unwrap_or_default().to_owned(), text, c)
            }
            Ok(_) => ("closed".to_owned(), String::new(), c),
            Err(_) => {
                c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let n = c.read(&mut chunk).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
                (text.lines().next().unwrap_or("closed").to_owned(), text, c)
            }
        }
    }))
    .await;
    let ok = outcomes
        .iter()
        .filter(|o| o.0.starts_with("HTTP/1.1 200"))
        .count();
    let busy: Vec<_> = outcomes
        .iter()
        .filter(|o| o.0.starts_with("HTTP/1.1 503"))
        .collect();
    println!(
        "{FLOOD} connections: {ok} served, {} refused with 503",
        busy.len()
    );
    assert!(ok <= MAX, "{ok} connections served, cap {MAX}");
    assert!(ok >= 1, "the first connections are served");
    assert!(busy.len() >= FLOOD - MAX - 20, "{} refusals", busy.len());
    for b in &busy {
        assert!(b.1.to_ascii_lowercase().contains("retry-after:"), "{}", b.1);
    }
    drop(outcomes);
    // Once the flood is gone the server serves again (retry: closes are noticed asynchronously).
    let mut served = false;
    for _ in 0..100 {
        if let Ok(r) = s.http.get(format!("{}/", s.url)).send().await
            && r.status().as_u16() == 200
        {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(served, "the server recovered");
}

/// A 100,000-fingerprint status request while a provisioning job runs is refused before any
/// lookup (capped at max_certs), a 10,000-fingerprint one is answered, and the job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_status_requests_during_a_job() {
    let s = start("sync_deadline_secs = 0\nchunk_size = 25").await;
    let (devices, _) = s.fx.devices("batch.pem", 1..201);
    let certs: Vec<_> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"ref": format!("r{i}"), "cert": cert(&d.cert_pem)}))
        .collect();
    let (code, res) = s
        .post(s.bearer(), &json!({"action": "provision", "certs": certs}))
        .await;
    assert_eq!(code, 200, "{res}");
    let job = res
        .as_array()
        .unwrap()
        .iter()
        .find_map(|r| r["job"].as_str())
        .map(str::to_owned);
    let fps: Vec<String> = (0..100_000u32)
        .map(|i| format!("{:064x}", u128::from(i) * 0x9e37_79b9))
        .collect();
    let (code, res) = s
        .post(
            s.bearer(),
            &json!({"action": "status", "fingerprints": fps}),
        )
        .await;
    assert_eq!(code, 400, "{res}");
    assert_eq!(res["code"], "bad_request");
    let mut some: Vec<String> = fps[..9_999].to_vec();
    some.push(device_id(&devices[0]));
    let (code, res) = s
        .post(
            s.bearer(),
            &json!({"action": "status", "fingerprints": some}),
        )
        .await;
    assert_eq!(code, 200, "{res}");
    assert_eq!(res["devices"].as_array().unwrap().len(), 10_000);
    assert_eq!(res["devices"][0]["status"], "ABSENT");
    // The job completes (hang guard only).
    if let Some(job) = job {
        let mut done = false;
        for _ in 0..1500 {
            let (_, st) = s
                .post(s.bearer(), &json!({"action": "status", "job": job}))
                .await;
            if st["done"] == true {
                assert!(
                    st["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|r| r["status"] == "SUCCESS"),
                    "{st}"
                );
                done = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert!(done, "the job finished");
    }
    assert_eq!(s.registry.devices().len(), 200);
    let (_, res) = s
        .post(
            s.bearer(),
            &json!({"action": "status", "fingerprints": [device_id(&devices[199])]}),
        )
        .await;
    assert_eq!(res["devices"][0]["status"], "PRESENT", "{res}");
}

/// `serve` refuses `--allow-test-roots` (their private keys are public) unless the config
/// says `insecure_test_roots = true`, and then says so loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_test_roots_unless_the_config_insists() {
    let s = start("").await;
    let config = s.fx.path("idbridge.toml");
    let mut args = vec![
        "serve".to_owned(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--allow-test-roots".into(),
    ];
    args.extend(s.fx.trust_args());
    let out = super::interop::idbridge(&args).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("insecure_test_roots = true"), "{err}");

    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[serve]\n", "[serve]\ninsecure_test_roots = true\n");
    let insecure = s.fx.write("insecure.toml", &text);
    let (_child, url) =
        super::serve_support::spawn_serve(&s.fx, &insecure, &["--allow-test-roots"]).await;
    assert!(url.starts_with("http://"));
    let log = std::fs::read_to_string(super::serve_support::log_path(&s.fx)).unwrap();
    assert!(log.contains("INSECURE: test roots accepted"), "{log}");
}
