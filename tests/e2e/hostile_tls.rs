//! TLS in `idbridge serve` itself: HTTPS with files from `[serve.tls]`, a new certificate
//! served after SIGHUP, and mutual TLS (callers without a certificate from `client_ca` never
//! reach a route). Certificates are generated with rcgen per test.
#![allow(clippy::unwrap_used)] // test helpers

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

use super::serve_support::{Launch, https_client, launch};

/// A CA: its PEM and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let pem = p.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(p, key),
    }
}

/// A leaf certificate and its PKCS#8 key, PEM: a server one for loopback, or a client one.
fn leaf(ca: &Ca, cn: &str, client: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names = if client {
        Vec::new()
    } else {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    };
    let mut p = CertificateParams::new(names).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

const TLS: &str = "[serve.tls]\ncert = \"server.pem\"\nkey = \"server.key\"\n";

/// HTTPS from `[serve.tls]`; after the files change and SIGHUP, new connections get the new
/// certificate (from another CA) while the old one is no longer served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_configured_certificate_and_reloads_on_sighup() {
    let old = ca("tls old CA");
    let (cert, key) = leaf(&old, "idbridge old", false);
    let s = launch(Launch {
        plain: false,
        more: TLS,
        files: vec![
            ("tls-ca.pem", old.pem.clone()),
            ("server.pem", format!("{cert}{}", old.pem)),
            ("server.key", key),
        ],
        ..Default::default()
    })
    .await;
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let (code, res) = s.post(s.bearer(), &json!({"action": "info"})).await;
    assert_eq!(code, 200, "{res}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/", s.addr()))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status().as_u16() != 200).unwrap_or(true),
        "plain HTTP served on the TLS port"
    );

    let new = ca("tls new CA");
    let (cert, key) = leaf(&new, "idbridge new", false);
    s.fx.write("server.pem", &format!("{cert}{}", new.pem));
    s.fx.write("server.key", &key);
    s.fx.write("tls-ca.pem", &new.pem);
    let trusts_new = https_client(&s.fx, false);
    // Before the signal the old certificate is still served.
    assert!(
        trusts_new.get(format!("{}/", s.url)).send().await.is_err(),
        "new certificate served before SIGHUP"
    );
    let pid = s.child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut reloaded = false;
    for _ in 0..300 {
        if let Ok(r) = trusts_new.get(format!("{}/", s.url)).send().await {
            assert_eq!(r.status().as_u16(), 200);
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        reloaded,
        "the new certificate was never served:\n{}",
        s.log()
    );
    assert!(
        s.log().contains("TLS certificate and key reloaded"),
        "{}",
        s.log()
    );
    s.fx.write("tls-ca.pem", &old.pem);
    let trusts_old = https_client(&s.fx, false);
    assert!(
        trusts_old.get(format!("{}/", s.url)).send().await.is_err(),
        "the old certificate is still served after the reload"
    );

    // A broken reload keeps the running certificate.
    s.fx.write("server.key", "not a key");
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    let mut logged = false;
    for _ in 0..300 {
        if s.log().contains("TLS reload failed") {
            logged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(logged, "{}", s.log());
    let r = trusts_new.get(format!("{}/", s.url)).send().await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "still serving the previous certificate"
    );
    assert!(
        !s.log().contains("not a key"),
        "key file content in the log"
    );
}

/// With `client_ca`, a caller without a certificate, or with one from another CA, fails the
/// handshake; a caller with a certificate from `client_ca` reaches the routes (and still
/// needs its token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_callers_of_the_client_ca() {
    let server_ca = ca("mtls server CA");
    let callers = ca("mtls callers CA");
    let stranger = ca("mtls stranger CA");
    let (cert, key) = leaf(&server_ca, "idbridge", false);
    let (ccert, ckey) = leaf(&callers, "cirrent caller", true);
    let (scert, skey) = leaf(&stranger, "stranger", true);
    let s = launch(Launch {
        plain: false,
        more: &format!("{TLS}client_ca = \"callers-ca.pem\"\n"),
        files: vec![
            ("tls-ca.pem", server_ca.pem.clone()),
            ("server.pem", cert),
            ("server.key", key),
            ("callers-ca.pem", callers.pem.clone()),
            ("client-identity.pem", format!("{ccert}{ckey}")),
        ],
        ..Default::default()
    })
    .await;
    // `s.http` presents the callers' certificate.
    let (code, res) = s.post(s.bearer(), &json!({"action": "info"})).await;
    assert_eq!(code, 200, "{res}");
    let (code, _) = s.post(None, &json!({"action": "info"})).await;
    assert_eq!(code, 401, "the certificate does not replace the token");

    let anonymous = https_client(&s.fx, false);
    assert!(
        anonymous.get(format!("{}/", s.url)).send().await.is_err(),
        "no client certificate: refused"
    );
    s.fx.write("client-identity.pem", &format!("{scert}{skey}"));
    let wrong = https_client(&s.fx, true);
    assert!(
        wrong.get(format!("{}/", s.url)).send().await.is_err(),
        "certificate of another CA: refused"
    );
    assert!(s.registry.devices().is_empty());
}
