//! A running `idbridge serve` picks up a replaced CRL file without a restart: a device
//! accepted before is refused on the next request once the CRL revoking it is in place, and a
//! corrupt replacement keeps the revocations (logged, naming the file).
#![allow(clippy::unwrap_used)] // test helpers

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::serve_support::{Launch, Served, cert, launch};

/// The `[trust]` table of the server: the fixture CA's CRL, looked at on every verification.
const TRUST: &str = "[trust]\ncrls = [\"ca.crl\"]\ncrl_check_seconds = 0\n";
/// Ceiling of every wait on a condition (never a fixed sleep).
const CEILING: Duration = Duration::from_secs(60);

/// Replaces `name` in the fixture directory atomically (write, then rename).
fn replace(s: &Served, name: &str, text: &str) {
    let tmp = s.fx.path(&format!("{name}.new"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, s.fx.path(name)).unwrap();
}

async fn provision(s: &Served, pem: &str) -> Value {
    let (code, res) = s
        .post(
            s.bearer(),
            &json!({"action": "provision", "certs": [{"ref": "r", "cert": cert(pem)}]}),
        )
        .await;
    assert_eq!(code, 200, "{res}");
    res[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_crl_revokes_on_the_next_request_without_restart() {
    let mut s = launch(Launch {
        more: TRUST,
        crl: Some("ca.crl"),
        ..Default::default()
    })
    .await;
    let (devices, _) = s.fx.devices("batch.pem", 1..3);
    let first = provision(&s, &devices[0].cert_pem).await;
    assert_eq!(first["status"], "SUCCESS", "{first}");

    // The CA revokes device 1; nothing is sent to the server.
    replace(&s, "ca.crl", &s.fx.pki.crl(&[1]).unwrap());
    let started = Instant::now();
    let refused = loop {
        let r = provision(&s, &devices[0].cert_pem).await;
        if r["status"] == "ERROR" {
            break r;
        }
        assert!(
            started.elapsed() < CEILING,
            "the revoked device is still accepted: {r}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused["code"], "untrusted", "{refused}");
    let second = provision(&s, &devices[1].cert_pem).await;
    assert_eq!(
        second["status"], "SUCCESS",
        "another device still is: {second}"
    );
    assert!(
        s.log().contains("CRL changed on disk: reloaded"),
        "{}",
        s.log()
    );

    // A corrupt replacement: logged with the file's name, the revocation stays.
    replace(
        &s,
        "ca.crl",
        "-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n",
    );
    let started = Instant::now();
    loop {
        let r = provision(&s, &devices[0].cert_pem).await;
        assert_eq!(r["status"], "ERROR", "revocation dropped: {r}");
        let log = s.log();
        if log.contains("CRL reload failed") {
            assert!(
                log.lines()
                    .any(|l| l.contains("CRL reload failed") && l.contains("ca.crl")),
                "{log}"
            );
            break;
        }
        assert!(
            started.elapsed() < CEILING,
            "no reload failure logged:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.child_alive(), "the server survived the corrupt CRL");
}
