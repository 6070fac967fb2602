//! Starting a real `idbridge serve` process for the e2e tests (`serve.rs`, `hostile.rs`): a
//! mock cloud to provision into, a CIRRENT-like token sender, and the receiver itself on a
//! free loopback port, with its log captured in the run-wide test log directory.
#![allow(clippy::unwrap_used)] // test helpers

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use idbridge_mock_clouds::interop::{InteropSender, TokenKind};
use idbridge_mock_clouds::server::RunningServer;
use idbridge_mock_clouds::tls::DeviceEndpoint;
use idbridge_mock_clouds::{Registry, RegistryConfig, TestCa};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use super::interop::{AUD, Fixture, bin};

/// The mock cloud's bearer token (a secret the tests use: it must never appear in a log).
pub(crate) const CLOUD_TOKEN: &str = "e2e-token-5ecret-7c1e";

/// What to start: extra `[serve]` lines, target names, more tables.
pub(crate) struct Launch<'a> {
    /// Lines added to `[serve]` (e.g. `max_body_bytes = 200000`).
    pub serve: &'a str,
    /// The `targets` array (`cloud` is the mock registry).
    pub targets: &'a str,
    /// More tables after `[targets.cloud]`.
    pub more: &'a str,
    /// `[serve.issuers.cirrent]` lines after `keys` (default: every scope).
    pub issuer: &'a str,
    /// Serve plain HTTP (`allow_http = true`); otherwise the caller adds `[serve.tls]` in `more`.
    pub plain: bool,
    /// Files written into the fixture directory before the start (`tls-ca.pem`, when
    /// present, is the CA the test's HTTPS client trusts).
    pub files: Vec<(&'a str, String)>,
    /// Extra command-line arguments of `serve`.
    pub args: Vec<&'a str>,
    /// A file name: an empty CRL of the fixture's CA is written there before the start (the
    /// test names it in `[trust] crls` through `more`).
    pub crl: Option<&'a str>,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            serve: "",
            targets: r#"["cloud"]"#,
            more: "",
            issuer: r#"scopes = ["provision", "status", "deprovision"]"#,
            plain: true,
            files: Vec::new(),
            args: Vec::new(),
            crl: None,
        }
    }
}

/// A running receiver and what it was started with.
pub(crate) struct Served {
    pub fx: Fixture,
    pub sender: InteropSender,
    pub registry: Registry,
    pub _cloud: RunningServer,
    pub devices: DeviceEndpoint,
    pub ca: TestCa,
    /// `http://ADDR` or `https://ADDR`, as printed by `serve`.
    pub url: String,
    pub child: tokio::process::Child,
    pub http: reqwest::Client,
}

/// A plain-HTTP receiver with `extra_serve` in `[serve]`, provisioning into the mock cloud.
pub(crate) async fn start(extra_serve: &str) -> Served {
    launch(Launch {
        serve: extra_serve,
        ..Default::default()
    })
    .await
}

/// A receiver provisioning into `targets` (`cloud` is the mock registry); `more` adds tables.
pub(crate) async fn start_with(extra_serve: &str, targets: &str, more: &str) -> Served {
    launch(Launch {
        serve: extra_serve,
        targets,
        more,
        ..Default::default()
    })
    .await
}

/// Starts `idbridge serve` as `l` says and waits for its address.
pub(crate) async fn launch(l: Launch<'_>) -> Served {
    let fx = Fixture::new();
    let sender = InteropSender::new(AUD).unwrap();
    let registry = Registry::new(RegistryConfig {
        token: CLOUD_TOKEN.into(),
        quota: None,
    });
    let cloud = registry.serve("127.0.0.1:0").await.unwrap();
    let ca = TestCa::new("e2e device endpoint CA").unwrap();
    let devices = registry.device_endpoint("127.0.0.1:0", &ca).await.unwrap();
    fx.write("issuer.jwks", &sender.jwks());
    for (name, text) in &l.files {
        fx.write(name, text);
    }
    if let Some(name) = l.crl {
        fx.write(name, &fx.pki.crl(&[]).unwrap());
    }
    let config = fx.write(
        "idbridge.toml",
        &format!(
            r#"
[serve]
allow_http = {plain}
audience = "{AUD}"
targets = {targets}
{serve}

[serve.issuers.{iss}]
keys = ["issuer.jwks"]
{issuer}

[targets.cloud]
kind = "mock"
url = "{url}"
allow_http = true
token = "{CLOUD_TOKEN}"

{more}
"#,
            plain = l.plain,
            targets = l.targets,
            serve = l.serve,
            iss = sender.issuer(),
            issuer = l.issuer,
            more = l.more,
            url = cloud.url
        ),
    );
    let (child, url) = spawn_serve(&fx, &config, &l.args).await;
    let http = if url.starts_with("https://") {
        https_client(&fx, true)
    } else {
        reqwest::Client::new()
    };
    Served {
        fx,
        sender,
        registry,
        _cloud: cloud,
        devices,
        ca,
        url,
        child,
        http,
    }
}

/// An HTTPS client trusting only `tls-ca.pem` of the fixture directory, presenting
/// `client-identity.pem` (certificate + PKCS#8 key) when `identity` and the file exists.
pub(crate) fn https_client(fx: &Fixture, identity: bool) -> reqwest::Client {
    let ca = std::fs::read(fx.path("tls-ca.pem")).unwrap();
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .pool_max_idle_per_host(0);
    if identity && let Ok(pem) = std::fs::read(fx.path("client-identity.pem")) {
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

/// Spawns `idbridge serve --config CONFIG` (plus `extra` args) with stderr to [`log_path`];
/// returns the child and the URL printed on stdout's first line.
pub(crate) async fn spawn_serve(
    fx: &Fixture,
    config: &std::path::Path,
    extra: &[&str],
) -> (tokio::process::Child, String) {
    let mut args = vec![
        "serve".to_owned(),
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(fx.trust_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = std::fs::File::create(log_path(fx)).unwrap();
    let mut child = tokio::process::Command::new(bin())
        .args(&args)
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .env("IDBRIDGE_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve printed its address")
        .unwrap();
    let Some(first) = first else {
        panic!(
            "serve exited before listening; its log:\n{}",
            std::fs::read_to_string(log_path(fx)).unwrap_or_default()
        );
    };
    assert!(
        first.starts_with("http://") || first.starts_with("https://"),
        "{first}"
    );
    // Keep reading stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, first)
}

/// Where [`spawn_serve`] writes the server's log: in the run-wide log directory (grepped for
/// secrets after the run), one file per fixture.
pub(crate) fn log_path(fx: &Fixture) -> PathBuf {
    let name = fx.dir.path().file_name().unwrap().to_string_lossy();
    super::test_logs::dir().join(format!("serve-{name}.log"))
}

impl Served {
    /// POSTs `body` to `/interop`; the answer's JSON without its (checked) correlation id.
    pub async fn post(&self, auth: Option<String>, body: &Value) -> (u16, Value) {
        self.post_raw(auth, body.to_string().into_bytes()).await
    }

    /// POSTs raw bytes to `/interop`.
    pub async fn post_raw(&self, auth: Option<String>, body: Vec<u8>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/interop", self.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let mut v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        // Error answers carry a correlation id (random): checked here, then left out.
        if let Some(o) = v.as_object_mut()
            && let Some(id) = o.remove("correlation_id")
        {
            assert_eq!(id.as_str().map(str::len), Some(16), "{id}");
        }
        (status, v)
    }

    /// A fresh valid token (each has its own `jti`).
    pub fn bearer(&self) -> Option<String> {
        let token = self.sender.token(TokenKind::Valid);
        super::test_logs::note_secret("interop-bearer-token", &token);
        Some(format!("Bearer {token}"))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(&self.fx)).unwrap_or_default()
    }

    /// Whether the server process is still running.
    pub fn child_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The listening address (`host:port`).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .parse()
            .unwrap()
    }
}

/// A `cert` field: base64 of the PEM text.
pub(crate) fn cert(pem: &str) -> String {
    STANDARD.encode(pem)
}
