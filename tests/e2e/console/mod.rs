//! The web console in a real browser: headless Chromium over WebDriver against a real
//! `idbridge serve` process on loopback.
#![allow(clippy::unwrap_used)] // test helpers

mod browser;

use std::time::Duration;

use fantoccini::Locator;
use idbridge_mock_clouds::server::RunningServer;
use idbridge_mock_clouds::{Registry, RegistryConfig};
use tokio::io::AsyncBufReadExt;

use self::browser::Browser;
use super::interop::{AUD, Fixture, bin};

/// A running `idbridge serve`, the mock cloud it provisions into, and what it was started with.
pub(crate) struct Server {
    pub _fx: Fixture,
    pub url: String,
    pub _registry: Registry,
    _cloud: RunningServer,
    _child: tokio::process::Child,
}

/// Starts `idbridge serve` on a free loopback port with the console mounted.
pub(crate) async fn serve() -> Server {
    let fx = Fixture::new();
    let registry = Registry::new(RegistryConfig {
        token: "console-token".into(),
        quota: None,
    });
    let cloud = registry.serve("127.0.0.1:0").await.unwrap();
    let sender = idbridge_mock_clouds::interop::InteropSender::new(AUD).unwrap();
    fx.write("issuer.jwks", &sender.jwks());
    let config = fx.write(
        "idbridge.toml",
        &format!(
            r#"
[serve]
allow_http = true
audience = "{AUD}"
targets = ["cloud"]

[serve.issuers.cirrent]
keys = ["issuer.jwks"]

[targets.cloud]
kind = "mock"
url = "{}"
allow_http = true
token = "console-token"
"#,
            cloud.url
        ),
    );
    let mut args = vec![
        "serve".to_owned(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(fx.trust_args());
    let mut child = tokio::process::Command::new(bin())
        .args(&args)
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve printed its address")
        .unwrap()
        .expect("serve exited before listening");
    assert!(first.starts_with("http://"), "{first}");
    Server {
        _fx: fx,
        url: first,
        _registry: registry,
        _cloud: cloud,
        _child: child,
    }
}

#[tokio::test]
async fn console_sign_in_refuses_a_bad_token_and_a_post_without_csrf() {
    let server = serve().await;
    let browser = Browser::start("console_sign_in", true).await;
    let c = &browser.client;
    c.goto(&format!("{}/console", server.url)).await.unwrap();
    // Not signed in: the console sends the browser to the sign-in page.
    browser.wait_text("Account token").await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/sign-in")
    );
    let field = c.find(Locator::Id("token")).await.unwrap();
    field.send_keys("not-a-token").await.unwrap();
    c.find(Locator::Css("main button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = browser.wait_text("That token was not accepted").await;
    assert!(!text.contains("not-a-token"), "the token is never echoed");
    browser.screenshot("sign-in.png").await;
    browser.close().await;

    // A form post without the CSRF token (a cross-site form) is refused.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/console/sign-in", server.url))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("security token"));
    let r = http
        .post(format!("{}/console/bind", server.url))
        .header("cookie", "idbridge_session=anything")
        .form(&[("scan", "https://x/?batch=a&reel=b")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Assets are served by idbridge itself, with a strict content security policy.
    let r = http
        .get(format!("{}/console/static/console.css", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
}
