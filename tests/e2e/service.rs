//! The registration service as a process (`idbridge serve` with `[service]`), over real
//! sockets: the operator pre-populates batches with `idbridge service import`, an account binds
//! them by batch ID + reel ID or by QR payload, and the devices reach the mock cloud in each of
//! the three modes; the cloud's device endpoint then admits bound devices and refuses the rest.
#![allow(clippy::unwrap_used)] // test helpers

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use idbridge_mock_clouds::server::RunningServer;
use idbridge_mock_clouds::tls::DeviceEndpoint;
use idbridge_mock_clouds::{Registry, RegistryConfig, TestCa, TestDevice};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

use super::interop::{Fixture, admitted, bin, device_id};

const CLOUD_TOKEN: &str = "svc-cloud-token";

/// Starts `idbridge serve ARGS --listen 127.0.0.1:0` and waits for the address it prints.
pub(crate) async fn spawn_serve(
    args: &[&str],
    env: &[(String, String)],
) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(bin())
        .arg("serve")
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve printed its address")
        .unwrap()
        .expect("serve exited before listening");
    assert!(url.starts_with("http://"), "{url}");
    (child, url)
}

/// A running service, the mock cloud behind it and the files it was started from.
pub(crate) struct Service {
    pub fx: Fixture,
    pub config: PathBuf,
    pub url: String,
    pub registry: Registry,
    pub cloud: RunningServer,
    pub devices: DeviceEndpoint,
    pub ca: TestCa,
    /// Environment of the service process (e.g. the AWS credentials of the mock AWS IoT).
    pub env: Vec<(String, String)>,
    /// More arguments of `serve` (taken at the next start, e.g. `--crl FILE`).
    pub serve_args: Vec<String>,
    child: Option<tokio::process::Child>,
    http: reqwest::Client,
}

/// Starts `idbridge serve` with a `[service]` table (SQLite store, plain HTTP on loopback).
/// `extra` adds keys to `[service]`.
pub(crate) async fn start(extra: &str) -> Service {
    start_with_env(extra, Vec::new()).await
}

/// [`start`] with environment variables for the service process.
pub(crate) async fn start_with_env(extra: &str, env: Vec<(String, String)>) -> Service {
    let fx = Fixture::new();
    let registry = Registry::new(RegistryConfig {
        token: CLOUD_TOKEN.into(),
        quota: None,
    });
    let cloud = registry.serve("127.0.0.1:0").await.unwrap();
    let ca = TestCa::new("service e2e device endpoint CA").unwrap();
    let devices = registry.device_endpoint("127.0.0.1:0", &ca).await.unwrap();
    fx.write("service.key", &"5a".repeat(32));
    let signing = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    fx.write("signing.pem", &signing.serialize_pem());
    let config = fx.write(
        "idbridge.toml",
        &format!(
            r#"
journal = "sqlite:{journal}"

# The trust of `idbridge worker` on this config (a worker verifies stored certificates again).
[trust]
anchors = ["trust.pem"]

[service]
allow_http = true
store = "sqlite:service.sqlite"
key_file = "service.key"
signing_key = "signing.pem"
{extra}
"#,
            journal = fx.path("journal.sqlite").display()
        ),
    );
    let mut s = Service {
        fx,
        config,
        url: String::new(),
        registry,
        cloud,
        devices,
        ca,
        env,
        serve_args: Vec::new(),
        child: None,
        http: reqwest::Client::new(),
    };
    s.spawn().await;
    s
}

impl Service {
    async fn spawn(&mut self) {
        let config = self.config.display().to_string();
        let trust = self.fx.path("trust.pem").display().to_string();
        // The built-in vendor roots stay on: the console tests import a real Infineon bundle, and
        // the process that runs a job verifies its stored certificates again.
        let mut args = vec!["--config", &config, "--trust", &trust];
        args.extend(self.serve_args.iter().map(String::as_str));
        let (child, url) = spawn_serve(&args, &self.env).await;
        self.url = url;
        self.child = Some(child);
    }

    /// kill -9, then start again on the same store and journal.
    pub async fn kill_and_restart(&mut self) {
        let mut child = self.child.take().unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        self.spawn().await;
    }

    /// `idbridge service ARGS --config ...`.
    pub async fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = vec!["service".into()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        all.extend(["--config".into(), self.config.display().to_string()]);
        tokio::process::Command::new(bin())
            .args(&all)
            .env_remove("IDBRIDGE_CONFIG")
            .env_remove("IDBRIDGE_JOURNAL")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    }

    /// Creates an account with its default mode.
    pub async fn account(&self, name: &str, mode: &str) {
        let out = self.cli(&["account", "create", name, "--mode", mode]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A new token of `role` for `account`.
    pub async fn token(&self, account: &str, role: &str) -> String {
        let out = self
            .cli(&["token", "create", "--account", account, "--role", role])
            .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// An operator token.
    pub async fn operator(&self) -> String {
        let out = self.cli(&["token", "create", "--role", "operator"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Generates devices `serials` and imports them as one batch (reel) with its claim.
    pub async fn import(
        &self,
        file: &str,
        serials: std::ops::Range<u64>,
        batch: &str,
        reel: &str,
    ) -> Vec<TestDevice> {
        let (devices, path) = self.fx.devices(file, serials);
        let p = path.display().to_string();
        let trust = self.fx.path("trust.pem").display().to_string();
        let out = self
            .cli(&[
                "import",
                &p,
                "--batch-id",
                batch,
                "--reel-id",
                reel,
                "--trust",
                &trust,
                "--no-builtin-roots",
            ])
            .await;
        assert!(
            out.status.success(),
            "import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        devices
    }

    /// Generates devices `serials` and imports them as a whole batch (no reel ID).
    pub async fn import_whole(
        &self,
        file: &str,
        serials: std::ops::Range<u64>,
        batch: &str,
    ) -> (Vec<TestDevice>, Output) {
        let (devices, path) = self.fx.devices(file, serials);
        let p = path.display().to_string();
        let trust = self.fx.path("trust.pem").display().to_string();
        let out = self
            .cli(&[
                "import",
                &p,
                "--batch-id",
                batch,
                "--trust",
                &trust,
                "--no-builtin-roots",
            ])
            .await;
        (devices, out)
    }

    /// One request; the answer's status and JSON (or text as a JSON string).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.url),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The raw body of a GET.
    pub async fn get_text(&self, path: &str, token: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The bearer token of the mock cloud's API.
    pub fn cloud_token(&self) -> &'static str {
        CLOUD_TOKEN
    }

    /// The target table of the mock cloud, as `PUT /api/v1/targets/{name}` takes it.
    pub fn cloud_target(&self) -> Value {
        // 16 calls in flight, fixed: the tests that stop a job mid-way count on waves of 16.
        json!({"kind": "mock", "url": self.cloud.url, "allow_http": true, "token": CLOUD_TOKEN,
               "engine": {"concurrency": 16}})
    }

    /// PUTs the mock cloud as the account's default target `cloud`.
    pub async fn put_cloud_target(&self, admin: &str) {
        let (code, v) = self
            .call(
                "PUT",
                "/api/v1/targets/cloud?default=true",
                Some(admin),
                Some(self.cloud_target()),
            )
            .await;
        assert!(code == 200 || code == 201, "{code} {v}");
        assert_eq!(v["config"]["token"], "<redacted>", "{v}");
    }

    /// Polls the job until it is finished or failed.
    pub async fn wait_job(&self, token: &str, id: &str) -> Value {
        for _ in 0..1200 {
            let (code, v) = self
                .call("GET", &format!("/api/v1/jobs/{id}"), Some(token), None)
                .await;
            assert_eq!(code, 200, "{v}");
            if v["state"] == "finished" || v["state"] == "failed" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {id} did not end");
    }

    pub async fn admitted(&self, d: &TestDevice) -> bool {
        admitted(self.devices.addr, self.ca.cert_pem(), d).await
    }
}

async fn admin_account(s: &Service, name: &str, mode: &str) -> String {
    s.account(name, mode).await;
    let t = s.token(name, "admin").await;
    s.put_cloud_target(&t).await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_mode_binds_by_qr_and_the_devices_land() {
    let s = start("").await;
    let bound = s.import("reel-a.pem", 1..6, "BATCH-A", "REEL-A").await;
    let unbound = s.import("reel-b.pem", 100..102, "BATCH-B", "REEL-B").await;
    let admin = admin_account(&s, "acme", "automatic").await;
    let binder = s.token("acme", "binder").await;
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&binder),
            Some(json!({"qr": "https://labels.example/bind?batch=BATCH-A&reel=REEL-A"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    assert_eq!(b["mode"], "automatic");
    assert_eq!(b["devices"], 5);
    let job = b["job"]["id"]
        .as_str()
        .expect("automatic bind starts a job");
    let j = s.wait_job(&binder, job).await;
    assert_eq!(j["state"], "finished", "{j}");
    assert_eq!(j["counts"]["done"], 5, "{j}");
    for d in &bound {
        assert!(s.admitted(d).await, "bound device {} refused", device_id(d));
    }
    for d in &unbound {
        assert!(!s.admitted(d).await, "unbound device admitted");
    }
    let stats = s.registry.stats();
    assert_eq!((stats.devices, stats.max_creates_per_device), (5, 1));
    // The per-device page names the cloud's resources.
    let (code, page) = s
        .call(
            "GET",
            &format!("/api/v1/jobs/{job}/devices"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 200, "{page}");
    let listed = page["devices"].as_array().unwrap();
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().all(|d| d["state"] == "done"), "{page}");
    // Binding the same reel again is answered with the same binding; nothing twice.
    let (code, again) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "BATCH-A", "reel_id": "REEL-A"})),
        )
        .await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["id"], b["id"]);
    assert_eq!(s.registry.stats().creates, 5);
    // The event stream of a finished job ends with `end`.
    let (code, events) = s
        .get_text(&format!("/api/v1/jobs/{job}/events"), &binder)
        .await;
    assert_eq!(code, 200);
    assert!(events.contains("event: end"), "{events}");
    // Metrics count what happened; the OpenAPI document is served without a token.
    let (code, m) = s.get_text("/metrics", "").await;
    assert_eq!(code, 200);
    for line in [
        "idbridge_service_binds_total{result=\"bound\"} 1",
        "idbridge_service_devices_total{outcome=\"done\"} 5",
    ] {
        assert!(m.contains(line), "{line} missing from\n{m}");
    }
    // Connector calls per target (`svc/<account id>/<name>`) and API.
    assert!(
        m.lines().any(
            |l| l.starts_with("idbridge_connector_calls_total{target=\"svc/")
                && l.contains("/cloud\",api=\"register\",result=\"ok\"}")
        ),
        "no register calls of target cloud in\n{m}"
    );
    let (code, doc) = s.call("GET", "/api/v1/openapi.json", None, None).await;
    assert_eq!(code, 200);
    assert!(
        doc["paths"]["/api/v1/bindings"]["post"].is_object(),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_mode_provisions_when_triggered_and_deprovisions() {
    let s = start("").await;
    let devices = s.import("reel.pem", 1..4, "B-MAN", "R-MAN").await;
    let admin = admin_account(&s, "manco", "manual").await;
    let binder = s.token("manco", "binder").await;
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&binder),
            Some(json!({"batch_id": "B-MAN", "reel_id": "R-MAN"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    assert!(b.get("job").is_none(), "manual mode starts nothing: {b}");
    let id = b["id"].as_str().unwrap();
    assert_eq!(s.registry.stats().creates, 0);
    assert!(!s.admitted(&devices[0]).await);
    // A binder may not trigger.
    let (code, _) = s
        .call(
            "POST",
            &format!("/api/v1/bindings/{id}/provision"),
            Some(&binder),
            None,
        )
        .await;
    assert_eq!(code, 403);
    let (code, j) = s
        .call(
            "POST",
            &format!("/api/v1/bindings/{id}/provision"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 202, "{j}");
    let j = s.wait_job(&admin, j["id"].as_str().unwrap()).await;
    assert_eq!(j["counts"]["done"], 3, "{j}");
    for d in &devices {
        assert!(s.admitted(d).await);
    }
    // Deleting a provisioned binding is refused until it is deprovisioned.
    let (code, v) = s
        .call(
            "DELETE",
            &format!("/api/v1/bindings/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["code"], "deprovision_first");
    let (code, j) = s
        .call(
            "POST",
            &format!("/api/v1/bindings/{id}/deprovision"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 202, "{j}");
    let j = s.wait_job(&admin, j["id"].as_str().unwrap()).await;
    assert_eq!(j["state"], "finished", "{j}");
    for d in &devices {
        assert!(!s.admitted(d).await, "deprovisioned device still admitted");
    }
    let (code, v) = s
        .call(
            "DELETE",
            &format!("/api/v1/bindings/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 204, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_mode_downloads_parse_back_in_every_format() {
    let s = start("").await;
    let devices = s.import("reel.pem", 1..4, "B-MF", "R-MF").await;
    let admin = admin_account(&s, "mfco", "manifest").await;
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "B-MF", "reel_id": "R-MF"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let id = b["id"].as_str().unwrap();
    let path = |f: &str| format!("/api/v1/bindings/{id}/manifest?format={f}");
    let ids: std::collections::BTreeSet<String> = devices.iter().map(device_id).collect();

    // jsonl and pem read back by `idbridge inspect`.
    for (format, file) in [("jsonl", "manifest.jsonl"), ("pem", "devices.pem")] {
        let (code, text) = s.get_text(&path(format), &admin).await;
        assert_eq!(code, 200, "{format}: {text}");
        let p = s.fx.write(file, &text);
        let out = super::interop::idbridge(&[
            "inspect".into(),
            "--output".into(),
            "json".into(),
            "--trust".into(),
            s.fx.path("trust.pem").display().to_string(),
            "--no-builtin-roots".into(),
            p.display().to_string(),
        ])
        .await;
        assert!(
            out.status.success(),
            "inspect {format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        for d in &ids {
            assert!(
                stdout.contains(d.as_str()),
                "{format}: {d} missing: {stdout}"
            );
        }
    }

    // aws-bulk: one JSON object per line with the keys StartThingRegistrationTask's template
    // parameters take.
    let (code, text) = s.get_text(&path("aws-bulk"), &admin).await;
    assert_eq!(code, 200, "{text}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    for l in &lines {
        let pem = l["CertificatePem"]
            .as_str()
            .or(l["certificatePem"].as_str());
        assert!(
            pem.is_some_and(|p| p.contains("BEGIN CERTIFICATE")),
            "aws-bulk line without a certificate: {l}"
        );
        assert!(
            l["ThingName"].is_string() || l["thingName"].is_string(),
            "{l}"
        );
    }

    // azure-import: IoT Hub import-devices lines with x509 thumbprints.
    let (code, text) = s.get_text(&path("azure-import"), &admin).await;
    assert_eq!(code, 200, "{text}");
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["id"].is_string(), "{v}");
        assert_eq!(v["importMode"], "create", "bind-once: never overwrite: {v}");
        assert_eq!(v["authentication"]["type"], "selfSigned", "{v}");
        let thumb = v["authentication"]["x509Thumbprint"]["primaryThumbprint"]
            .as_str()
            .unwrap();
        assert_eq!(thumb.len(), 64, "SHA-256 thumbprint: {v}");
        assert!(ids.contains(&thumb.to_ascii_lowercase()), "{v}");
    }
    assert_eq!(text.lines().count(), 3);

    // The signed jsonl: a detached JWS over the jsonl bytes by the service's signing key.
    let (code, jsonl) = s.get_text(&path("jsonl"), &admin).await;
    assert_eq!(code, 200);
    let (code, jws) = s.get_text(&path("jsonl.jws"), &admin).await;
    assert_eq!(code, 200, "{jws}");
    let key = idbridge_manifest::SigningKey::from_pem(
        &std::fs::read_to_string(s.fx.path("signing.pem")).unwrap(),
        "signing.pem",
    )
    .unwrap();
    idbridge_manifest::verify_detached(jsonl.as_bytes(), &jws, &key.public_point()).unwrap();
    assert!(idbridge_manifest::verify_detached(b"tampered", &jws, &key.public_point()).is_err());
    let (code, v) = s.call("GET", &path("xml"), Some(&admin), None).await;
    assert_eq!((code, v["code"].as_str()), (400, Some("bad_format")));
    // Manifest mode provisions nothing by itself.
    assert_eq!(s.registry.stats().creates, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_isolated_on_every_route() {
    let s = start("").await;
    s.import("reel.pem", 1..3, "B-ISO", "R-ISO").await;
    let owner = admin_account(&s, "owner", "manual").await;
    let binder = s.token("owner", "binder").await;
    let other = admin_account(&s, "other", "manual").await;
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&owner),
            Some(json!({"batch_id": "B-ISO", "reel_id": "R-ISO"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    let (code, j) = s
        .call(
            "POST",
            &format!("/api/v1/bindings/{id}/provision"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(code, 202, "{j}");
    let job = j["id"].as_str().unwrap().to_owned();
    s.wait_job(&owner, &job).await;

    // (method, path, body, what the binder role gets)
    let routes: Vec<(&str, String, Option<Value>, u16)> = vec![
        ("GET", format!("/api/v1/bindings/{id}"), None, 200),
        (
            "GET",
            format!("/api/v1/bindings/{id}/manifest?format=jsonl"),
            None,
            403,
        ),
        ("GET", format!("/api/v1/jobs/{job}"), None, 200),
        ("GET", format!("/api/v1/jobs/{job}/devices"), None, 200),
        ("GET", "/api/v1/targets/cloud".into(), None, 403),
        (
            "POST",
            format!("/api/v1/bindings/{id}/deprovision"),
            Some(json!({})),
            403,
        ),
        (
            "POST",
            format!("/api/v1/bindings/{id}/provision"),
            Some(json!({})),
            403,
        ),
        ("DELETE", format!("/api/v1/bindings/{id}"), None, 403),
    ];
    for (method, path, body, binder_code) in &routes {
        let (code, v) = s.call(method, path, None, body.clone()).await;
        assert_eq!(code, 401, "{method} {path} without a token: {v}");
        let (code, v) = s
            .call(method, path, Some("idb_not-a-real-token"), body.clone())
            .await;
        assert_eq!(code, 401, "{method} {path} with a bad token: {v}");
        // Another account sees nothing: 404 exactly as for an id that does not exist.
        let (code, v) = s.call(method, path, Some(&other), body.clone()).await;
        let missing = path.replace(&id, "bnd_0000").replace(&job, "job_0000");
        let (code_missing, v_missing) = s.call(method, &missing, Some(&other), body.clone()).await;
        if path.contains("/targets/") {
            // `other` has its own target named cloud: its own, not the owner's.
            assert_eq!(code, 200, "{v}");
            assert_ne!(v["config"]["url"], Value::Null);
        } else {
            assert_eq!(code, 404, "{method} {path} by another account: {v}");
            assert_eq!((code, &v), (code_missing, &v_missing), "{method} {path}");
        }
        let (code, v) = s.call(method, path, Some(&binder), body.clone()).await;
        assert_eq!(code, *binder_code, "{method} {path} as binder: {v}");
    }
    // Lists show only the caller's own.
    let (code, v) = s.call("GET", "/api/v1/bindings", Some(&other), None).await;
    assert_eq!(code, 200);
    assert_eq!(v.as_array().unwrap().len(), 0, "{v}");
    let (_, v) = s.call("GET", "/api/v1/audit", Some(&other), None).await;
    assert!(
        !v.to_string().contains(&id),
        "audit of another account leaks: {v}"
    );
    // The owner still has the binding, untouched by all of the above.
    let (code, _) = s
        .call("GET", &format!("/api/v1/bindings/{id}"), Some(&owner), None)
        .await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_racing_for_one_reel_have_exactly_one_winner() {
    let s = start("").await;
    let a = admin_account(&s, "racer-a", "manifest").await;
    let b = admin_account(&s, "racer-b", "manifest").await;
    let operator = s.operator().await;
    let (devices, pem) = s.fx.devices("race.pem", 1..2);
    drop(devices);
    let body = std::fs::read(&pem).unwrap();
    // Batch ids differ per run (a seed, printed) so a failure names its round.
    let seed = super::engine_support::test_seed();
    for round in 0..50 {
        let (batch, reel) = (format!("RACE-{seed}-{round}"), format!("REEL-{round}"));
        let resp = s
            .http
            .post(format!("{}/api/v1/admin/batches", s.url))
            .bearer_auth(&operator)
            .header("x-idbridge-filename", "race.pem")
            .header("x-idbridge-batch-id", &batch)
            .header("x-idbridge-reel-id", &reel)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        // The same certificate in every round: a later import of it is still a new batch.
        assert!(status == 201, "import round {round}: {status} {text}");
        let claim = json!({"batch_id": batch, "reel_id": reel});
        let (ra, rb) = tokio::join!(
            s.call("POST", "/api/v1/bindings", Some(&a), Some(claim.clone())),
            s.call("POST", "/api/v1/bindings", Some(&b), Some(claim.clone())),
        );
        let mut codes = [ra.0, rb.0];
        codes.sort_unstable();
        assert_eq!(codes, [201, 409], "round {round}: {ra:?} {rb:?}");
        let loser = if ra.0 == 409 { &ra.1 } else { &rb.1 };
        assert_eq!(loser["code"], "already_bound");
        assert!(
            !loser.to_string().contains("racer-"),
            "names the owner: {loser}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_reel_ids_is_stopped_and_audited() {
    let s = start("bind_attempts = 3\nbind_window_secs = 600").await;
    s.import("reel.pem", 1..2, "B-GUESS", "R-GUESS").await;
    let admin = admin_account(&s, "guesser", "manual").await;
    for i in 0..3 {
        let (code, v) = s
            .call(
                "POST",
                "/api/v1/bindings",
                Some(&admin),
                Some(json!({"batch_id": "B-GUESS", "reel_id": format!("WRONG-{i}")})),
            )
            .await;
        assert_eq!((code, v["code"].as_str()), (404, Some("not_found")), "{v}");
    }
    // Past the limit even the right pair is refused until the window passes.
    let resp = s
        .http
        .post(format!("{}/api/v1/bindings", s.url))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(json!({"batch_id": "B-GUESS", "reel_id": "R-GUESS"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 600, "{wait}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "too_many_attempts");
    let (code, audit) = s.call("GET", "/api/v1/audit", Some(&admin), None).await;
    assert_eq!(code, 200, "{audit}");
    let text = audit.to_string();
    assert!(
        text.contains("not_found") && text.contains("limited"),
        "{text}"
    );
    for secret in ["R-GUESS", "WRONG-0", "B-GUESS"] {
        assert!(
            !text.contains(secret),
            "the audit log holds a claim secret: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_clear_4xx_and_change_nothing() {
    let s = start("").await;
    s.import("reel.pem", 1..2, "B-BAD", "R-BAD").await;
    let admin = admin_account(&s, "badco", "manual").await;
    let cases: Vec<(&str, u16, &str)> = vec![
        ("{not json", 400, "bad_request"),
        (
            r#"{"batch_id":"B-BAD","reel_id":"R-BAD","colour":"red"}"#,
            400,
            "bad_request",
        ),
        (r#"{"qr":"not a url at all"}"#, 400, "bad_qr"),
        (r#"{"qr":"https://x.example/?reel=R-BAD"}"#, 400, "bad_qr"),
        (
            r#"{"qr":"https://x.example/?batch=&reel=R-BAD"}"#,
            400,
            "bad_qr",
        ),
        (r#"{"reel_id":"R-BAD"}"#, 400, "bad_request"),
        (r#"{"batch_id":" ","reel_id":"R-BAD"}"#, 400, "bad_request"),
        (
            r#"{"batch_id":"B-BAD","qr":"https://x.example/?batch=B"}"#,
            400,
            "bad_request",
        ),
    ];
    for (body, want, code_want) in cases {
        let resp = s
            .http
            .post(format!("{}/api/v1/bindings", s.url))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let code = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(
            (code, v["code"].as_str()),
            (want, Some(code_want)),
            "{body}: {v}"
        );
    }
    let big = format!(r#"{{"qr":"{}"}}"#, "x".repeat(80 * 1024 * 1024));
    let resp = s
        .http
        .post(format!("{}/api/v1/bindings", s.url))
        .bearer_auth(&admin)
        .body(big)
        .send()
        .await;
    if let Ok(r) = resp {
        assert_eq!(r.status().as_u16(), 413);
    }
    // A file that is no vendor format: 422, no batch stored.
    let operator = s.operator().await;
    let resp = s
        .http
        .post(format!("{}/api/v1/admin/batches", s.url))
        .bearer_auth(&operator)
        .header("x-idbridge-filename", "garbage.pem")
        .header("x-idbridge-batch-id", "G")
        .header("x-idbridge-reel-id", "G")
        .body("this is not a certificate")
        .send()
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (code, v["code"].as_str()),
        (422, Some("unreadable_batch")),
        "{v}"
    );
    let (_, batches) = s
        .call("GET", "/api/v1/admin/batches", Some(&operator), None)
        .await;
    assert_eq!(batches.as_array().map(Vec::len), Some(1), "{batches}");
    // Nothing was bound by any of it.
    let (_, v) = s.call("GET", "/api/v1/bindings", Some(&admin), None).await;
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_mid_job_finishes_it_on_start_and_nothing_twice() {
    let mut s = start("").await;
    let devices = s.import("reel.pem", 1..41, "B-KILL", "R-KILL").await;
    let admin = admin_account(&s, "killco", "manual").await;
    // Slow the cloud down so that the job is mid-way when the service dies.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/_mock/latency", s.cloud.url))
        .json(&json!({"fixed_ms": 1500, "jitter_ms": 0, "seed": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "B-KILL", "reel_id": "R-KILL"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let id = b["id"].as_str().unwrap();
    let (code, j) = s
        .call(
            "POST",
            &format!("/api/v1/bindings/{id}/provision"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 202, "{j}");
    let job = j["id"].as_str().unwrap().to_owned();
    // Wait until some, not all, devices are in the cloud.
    for _ in 0..600 {
        if s.registry.stats().devices > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let landed = s.registry.stats().devices;
    // Each call takes 1.5 s: the next wave is far off when the service dies.
    assert!(
        landed > 0 && landed < 40,
        "not mid-job: {landed} of 40 landed"
    );
    s.kill_and_restart().await;
    let r = http
        .delete(format!("{}/_mock/latency", s.cloud.url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let j = s.wait_job(&admin, &job).await;
    assert_eq!(j["state"], "finished", "{j}");
    assert_eq!(j["counts"]["done"], 40, "{j}");
    let stats = s.registry.stats();
    assert_eq!(stats.devices, 40);
    assert_eq!(
        stats.max_creates_per_device, 1,
        "a device was registered twice: {stats:?}"
    );
    for d in &devices[..3] {
        assert!(s.admitted(d).await);
    }
}

#[cfg(feature = "aws-iot")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_mode_into_the_mock_aws_iot_admits_bound_devices_only() {
    use idbridge_mock_clouds::aws::{
        AwsMockConfig, MockAws, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY,
    };
    use idbridge_mock_clouds::tls::{Connect, connect_device};

    let aws = MockAws::start(AwsMockConfig::default()).await.unwrap();
    // The service has no AWS credentials of its own: the account's target carries its key
    // (sealed at rest, shown redacted).
    let env = [
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec();
    let s = start_with_env("", env).await;
    let bound = s.import("reel.pem", 1..4, "B-AWS", "R-AWS").await;
    let stranger = s.import("other.pem", 50..51, "B-OTHER", "R-OTHER").await;
    s.account("awsco", "automatic").await;
    let admin = s.token("awsco", "admin").await;
    let (code, v) = s
        .call(
            "PUT",
            "/api/v1/targets/aws?default=true",
            Some(&admin),
            Some(json!({
                "kind": "aws-iot",
                "region": aws.region(),
                "endpoint_url": aws.endpoint_url(),
                "allow_http": true,
                "create_policy": true,
                "thing_name": "dev-{serial_hex}",
                "access_key_id": TEST_ACCESS_KEY_ID,
                "secret_access_key": TEST_SECRET_ACCESS_KEY,
            })),
        )
        .await;
    assert!(code == 200 || code == 201, "{code} {v}");
    assert_eq!(v["config"]["secret_access_key"], "<redacted>", "{v}");
    assert!(!v.to_string().contains(TEST_SECRET_ACCESS_KEY), "{v}");
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "B-AWS", "reel_id": "R-AWS"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let j = s.wait_job(&admin, b["job"]["id"].as_str().unwrap()).await;
    assert_eq!(
        (j["state"].as_str(), j["counts"]["done"].as_u64()),
        (Some("finished"), Some(3)),
        "{j}"
    );
    let connect = |d: &TestDevice| {
        let (cert, key) = (d.cert_pem.clone(), d.key_pem.clone());
        let (addr, ca, host) = (
            aws.device_addr(),
            aws.device_ca_pem().to_owned(),
            aws.data_host().to_owned(),
        );
        async move {
            connect_device(addr, &ca, &cert, &key, Some(&host))
                .await
                .unwrap()
        }
    };
    for d in &bound {
        assert_eq!(
            connect(d).await,
            Connect::Accepted(format!("dev-{}", d.serial_hex))
        );
    }
    assert!(matches!(connect(&stranger[0]).await, Connect::Refused(_)));
    let r = aws.registry();
    assert_eq!((r.certificate_count(), r.thing_count()), (3, 3));
}

/// The README's three commands, on a copy of examples/service.toml: start, account + token,
/// bind the preloaded example batch in automatic mode and follow it to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_service_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for f in ["service.toml", "batch.pem"] {
        std::fs::copy(root.join(f), dir.path().join(f)).unwrap();
    }
    let config = dir.path().join("service.toml").display().to_string();
    let (_child, url) = spawn_serve(&["--config", &config], &[]).await;
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(bin())
            .args(&args)
            .env_remove("IDBRIDGE_CONFIG")
            .env_remove("IDBRIDGE_URL")
            .env_remove("IDBRIDGE_TOKEN")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    };
    let out = run([
        "service",
        "--config",
        &config,
        "account",
        "create",
        "acme",
        "--mode",
        "automatic",
        "--token",
        "admin",
    ]
    .map(str::to_owned)
    .to_vec())
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.len() > 20, "{token}");
    let out = run([
        "service",
        "bind",
        "--url",
        &url,
        "--token",
        &token,
        "--batch-id",
        "DEMO-BATCH-0001",
        "--reel-id",
        "DEMO-REEL-01",
    ]
    .map(str::to_owned)
    .to_vec())
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("bound 10 devices"), "{text}");
    assert!(text.contains("finished, 10/10 done, 0 failed"), "{text}");
    // A wrong reel is refused with the generic answer and a non-zero exit.
    let out = run([
        "service",
        "bind",
        "--url",
        &url,
        "--token",
        &token,
        "--batch-id",
        "DEMO-BATCH-0001",
        "--reel-id",
        "WRONG",
    ]
    .map(str::to_owned)
    .to_vec())
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server key was created with owner-only permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("service.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "service.key is readable by others: {mode:o}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_wrong_credentials_fails_the_job_with_the_reason_and_provisions_nothing() {
    let s = start("").await;
    s.import("reel.pem", 1..4, "B-CRED", "R-CRED").await;
    s.account("credco", "automatic").await;
    let admin = s.token("credco", "admin").await;
    let mut table = s.cloud_target();
    table["token"] = json!("not-the-cloud-token");
    let (code, v) = s
        .call(
            "PUT",
            "/api/v1/targets/cloud?default=true",
            Some(&admin),
            Some(table),
        )
        .await;
    assert!(code == 200 || code == 201, "{code} {v}");
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "B-CRED", "reel_id": "R-CRED"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let j = s.wait_job(&admin, b["job"]["id"].as_str().unwrap()).await;
    assert_eq!(j["state"], "failed", "{j}");
    let error = j["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        ["credential", "unauthori", "authenticat", "401"]
            .iter()
            .any(|w| error.contains(w)),
        "the reason is not named: {j}"
    );
    assert!(
        !error.contains("not-the-cloud-token"),
        "the secret is echoed: {j}"
    );
    assert_eq!(s.registry.stats().devices, 0);
}

/// The operator prints a batch's label QR code (PNG and SVG); scanning the PNG gives the text a
/// binder submits as `qr`, which binds that batch and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_label_qr_code_binds_its_batch() {
    let s = start("").await;
    s.import("reel.pem", 1..3, "B-LABEL", "R-LABEL").await;
    s.import("other.pem", 10..11, "B-OTHER", "R-OTHER").await;
    let binder = {
        admin_account(&s, "labelco", "manifest").await;
        s.token("labelco", "binder").await
    };
    let operator = s.operator().await;
    let (code, batches) = s
        .call("GET", "/api/v1/admin/batches", Some(&operator), None)
        .await;
    assert_eq!(code, 200, "{batches}");
    assert!(
        !batches.to_string().contains("R-LABEL") && !batches.to_string().contains("B-LABEL"),
        "claim secrets listed: {batches}"
    );
    let id = batches
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["devices"] == 2)
        .and_then(|b| b["id"].as_str())
        .unwrap()
        .to_owned();
    let (code, svg) = s
        .get_text(&format!("/api/v1/admin/batches/{id}/qr.svg"), &operator)
        .await;
    assert_eq!(code, 200);
    assert!(svg.contains("<svg"), "{svg}");
    // A binder may not print labels.
    let (code, _) = s
        .get_text(&format!("/api/v1/admin/batches/{id}/qr.png"), &binder)
        .await;
    assert_eq!(code, 403);
    let png = s
        .http
        .get(format!("{}/api/v1/admin/batches/{id}/qr.png", s.url))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let img = image::load_from_memory(&png).unwrap().to_luma8();
    let (w, h) = img.dimensions();
    let mut prepared =
        rqrr::PreparedImage::prepare_from_greyscale(w as usize, h as usize, |x, y| {
            img.get_pixel(x as u32, y as u32).0[0]
        });
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1);
    let (_, text) = grids[0].decode().unwrap();
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&binder),
            Some(json!({"qr": text})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    assert_eq!(
        (b["batch"].as_str(), b["devices"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    // The same label text with another batch's id binds nothing.
    let forged = text.replace(&id, "bat_000000000000ffffffffffffffff");
    let (code, v) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&binder),
            Some(json!({"qr": forged})),
        )
        .await;
    assert_eq!((code, v["code"].as_str()), (404, Some("not_found")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_imported_whole_is_bound_by_its_batch_id_alone() {
    let s = start("").await;
    let (whole, out) = s.import_whole("order.pem", 300..304, "ORDER-7").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reel = s.import("reel.pem", 310..312, "BATCH-R", "REEL-R").await;
    let admin = admin_account(&s, "wholeco", "automatic").await;
    let binder = s.token("wholeco", "binder").await;
    // A batch imported reel by reel is not claimed by its batch ID alone.
    let (code, v) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&binder),
            Some(json!({"batch_id": "BATCH-R"})),
        )
        .await;
    assert_eq!(code, 404, "{v}");
    // The whole batch is, by its batch ID or by a QR code with no reel.
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&binder),
            Some(json!({"qr": "https://labels.example/bind?batch=order-7"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    assert_eq!(b["devices"], 4, "{b}");
    let j = s
        .wait_job(&binder, b["job"]["id"].as_str().expect("automatic job"))
        .await;
    assert_eq!(j["counts"]["done"], 4, "{j}");
    for d in &whole {
        assert!(s.admitted(d).await, "device of the whole batch refused");
    }
    for d in &reel {
        assert!(!s.admitted(d).await, "unbound reel admitted");
    }
    // Binding it again by its ID answers the same binding; importing it again is refused.
    let (code, again) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "ORDER-7"})),
        )
        .await;
    assert_eq!((code, &again["id"]), (200, &b["id"]), "{again}");
    let (_, out) = s.import_whole("order-again.pem", 300..304, "ORDER-7").await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("whole batch is already imported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The reel is still bound with both IDs.
    let (code, v) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&binder),
            Some(json!({"batch_id": "BATCH-R", "reel_id": "REEL-R"})),
        )
        .await;
    assert_eq!(code, 201, "{v}");
}

/// The process that runs a job judges the stored certificates again with its own trust, as
/// `resume` and `idbridge worker` do: a device a CRL lists since its import is recorded failed
/// with the reason and never sent; the others land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_verifies_the_stored_certificates_again_with_the_trust_of_its_process() {
    let mut s = start("").await;
    let devices = s.import("reel.pem", 1..5, "B-CRL", "R-CRL").await;
    let admin = admin_account(&s, "crlco", "manual").await;
    // Since the import, the trust of the service has a CRL that lists device 2.
    let crl = s.fx.path("ca.crl");
    std::fs::write(&crl, s.fx.pki.crl(&[2]).unwrap()).unwrap();
    s.serve_args = vec!["--crl".into(), crl.display().to_string()];
    s.kill_and_restart().await;
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "B-CRL", "reel_id": "R-CRL"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let id = b["id"].as_str().unwrap();
    let (code, j) = s
        .call(
            "POST",
            &format!("/api/v1/bindings/{id}/provision"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 202, "{j}");
    let j = s.wait_job(&admin, j["id"].as_str().unwrap()).await;
    assert_eq!(j["counts"]["done"], 3, "{j}");
    assert_eq!(j["counts"]["failed"], 1, "{j}");
    assert_eq!(
        s.registry.stats().devices,
        3,
        "the revoked device was not sent"
    );
    assert!(!s.admitted(&devices[1]).await);
    for d in [&devices[0], &devices[2], &devices[3]] {
        assert!(s.admitted(d).await);
    }
    let (code, body) = s
        .call(
            "GET",
            &format!(
                "/api/v1/jobs/{}/devices?state=failed",
                j["id"].as_str().unwrap()
            ),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("no longer verifies") && text.contains("revoked"),
        "{text}"
    );
}
