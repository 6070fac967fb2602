//! `idbridge provision` through the CLI into an interop receiver (the mock, verifying JWTs like
//! Infineon's), and the engine's faults against it. Also the shared helpers of the HTTP e2e
//! tests (`serve.rs`, `webhook.rs`).
#![allow(clippy::unwrap_used)] // test helpers

use std::path::{Path, PathBuf};
use std::process::Output;

use idbridge_mock_clouds::interop::{InteropSender, InteropState, ItemScript, MockInterop};
use idbridge_mock_clouds::tls::{Connect, connect_device};
use idbridge_mock_clouds::{Fault, FaultRule, TestDevice, TestPki};
use serde_json::Value;

pub(crate) const AUD: &str = "123456789012";

/// A generated vendor PKI, its trust bundle and device files in a temporary directory.
pub(crate) struct Fixture {
    pub pki: TestPki,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let pki = TestPki::infineon_like().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("trust.pem"),
            format!("{}{}", pki.root_pem(), pki.ca_pem()),
        )
        .unwrap();
        Fixture { pki, dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Devices `serials`, written as one PEM file `name`.
    pub fn devices(&self, name: &str, serials: std::ops::Range<u64>) -> (Vec<TestDevice>, PathBuf) {
        let (devices, bundle) = self
            .pki
            .batch(serials.start, serials.end - serials.start)
            .unwrap();
        let p = self.path(name);
        std::fs::write(&p, bundle).unwrap();
        (devices, p)
    }

    /// The trust and journal flags every command of these tests takes.
    pub fn trust_args(&self) -> Vec<String> {
        vec![
            "--trust".into(),
            self.path("trust.pem").display().to_string(),
            "--no-builtin-roots".into(),
            "--journal".into(),
            format!("sqlite:{}", self.path("journal.sqlite").display()),
        ]
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_idbridge")
}

/// Runs the CLI without blocking the runtime the in-process mocks live on.
pub(crate) async fn idbridge(args: &[String]) -> Output {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    super::test_logs::record(args, &out);
    out
}

/// `provision --output json` for `target`, returning the exit code and the parsed report.
pub(crate) async fn provision(
    fx: &Fixture,
    config: &Path,
    target: &str,
    input: &Path,
    op: &str,
) -> (i32, Value) {
    let mut args = vec![
        op.to_owned(),
        "--config".into(),
        config.display().to_string(),
        "--target".into(),
        target.into(),
        "--output".into(),
        "json".into(),
    ];
    args.extend(fx.trust_args());
    if op == "deprovision" {
        args.push("--yes".into());
    }
    args.push(input.display().to_string());
    let out = idbridge(&args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "{op}: no JSON report ({e}); exit {:?}\nstdout: {stdout}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// Device id → (state, outcome) from a JSON report.
pub(crate) fn states(report: &Value) -> Vec<(String, String, String)> {
    report["job"]["devices"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["device_id"].as_str().unwrap_or_default().to_owned(),
                        d["state"].as_str().unwrap_or_default().to_owned(),
                        d["outcome"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn device_id(d: &TestDevice) -> String {
    idbridge_mock_clouds::interop::sha256_hex(&d.cert_der)
}

pub(crate) async fn admitted(addr: std::net::SocketAddr, ca_pem: &str, d: &TestDevice) -> bool {
    matches!(
        connect_device(addr, ca_pem, &d.cert_pem, &d.key_pem, Some("localhost"))
            .await
            .unwrap(),
        Connect::Accepted(_)
    )
}

struct Interop {
    fx: Fixture,
    mock: MockInterop,
    config: PathBuf,
}

async fn setup() -> Interop {
    let fx = Fixture::new();
    let sender = InteropSender::new(AUD).unwrap();
    let state = InteropState::new(Some(AUD), &sender.public_key_pem(), false).unwrap();
    let mock = MockInterop::start("127.0.0.1:0", state, false)
        .await
        .unwrap();
    let key = fx.write("interop-key.pem", sender.private_key_pem());
    let config = fx.write(
        "idbridge.toml",
        &format!(
            r#"
[targets.ifx]
kind = "interop"
base_url = "{url}"
audience = "{AUD}"
signing_key = "{key}"
allow_http = true
batch_size = 2

[targets.ifx.engine]
max_attempts = 5
"#,
            url = mock.server.url,
            key = key.display()
        ),
    );
    Interop { fx, mock, config }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_provisions_through_interop_and_devices_are_admitted() {
    let t = setup().await;
    let (devices, input) = t.fx.devices("batch.pem", 1..4);
    // A certificate from another vendor PKI is refused before any call.
    let rogue = TestPki::infineon_like().unwrap().device(99).unwrap();
    let mixed = t.fx.write(
        "mixed.pem",
        &format!(
            "{}{}",
            std::fs::read_to_string(&input).unwrap(),
            rogue.cert_pem
        ),
    );
    for d in &devices {
        assert!(!admitted(t.mock.devices.addr, t.mock.ca.cert_pem(), d).await);
    }
    let (code, report) = provision(&t.fx, &t.config, "ifx", &mixed, "provision").await;
    assert_eq!(code, 1, "one refused certificate → exit 1: {report}");
    let st = states(&report);
    assert_eq!(st.len(), 3, "{report}");
    assert!(
        st.iter().all(|(_, s, o)| s == "done" && o == "created"),
        "{st:?}"
    );
    assert_eq!(t.mock.state.registered().len(), 3);
    assert_eq!(
        t.mock.state.provision_calls(),
        2,
        "3 devices at batch_size 2"
    );
    for d in &devices {
        assert!(
            admitted(t.mock.devices.addr, t.mock.ca.cert_pem(), d).await,
            "provisioned via interop → admitted"
        );
    }
    assert!(!admitted(t.mock.devices.addr, t.mock.ca.cert_pem(), &rogue).await);
    assert!(
        !t.mock.state.is_registered(&rogue.cert_der),
        "untrusted never sent"
    );

    // Deprovision through the announced extension.
    let (code, report) = provision(&t.fx, &t.config, "ifx", &input, "deprovision").await;
    assert_eq!(code, 0, "{report}");
    assert!(t.mock.state.registered().is_empty());
    assert!(!admitted(t.mock.devices.addr, t.mock.ca.cert_pem(), &devices[0]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_faults_429_500_reset_end_in_the_exact_state() {
    let t = setup().await;
    let (devices, input) = t.fx.devices("batch.pem", 10..15);
    let faults = &t.mock.server.faults;
    faults.push(
        FaultRule::once(Fault::Status {
            status: 429,
            headers: vec![("Retry-After".into(), "0".into())],
            body: r#"{"error":"Too Many Requests"}"#.into(),
        })
        .on_path("/interop"),
    );
    faults.push(
        FaultRule::once(Fault::Status {
            status: 500,
            headers: vec![],
            body: r#"{"error":"boom"}"#.into(),
        })
        .on_path("/interop"),
    );
    faults.push(FaultRule::once(Fault::Reset).on_path("/interop"));
    faults.push(FaultRule::once(Fault::LoseResponse).on_path("/interop"));
    // One item fails temporarily inside a 200 answer, one permanently.
    t.mock.state.script(
        &device_id(&devices[1]),
        ItemScript::Error {
            message: "Failed creating and registering thing".into(),
            code: None,
            times: 1,
        },
    );
    t.mock.state.script(
        &device_id(&devices[4]),
        ItemScript::Error {
            message: "Certificate notBefore or notAfter is out of range".into(),
            code: None,
            times: 10,
        },
    );
    let (code, report) = provision(&t.fx, &t.config, "ifx", &input, "provision").await;
    assert_eq!(code, 1, "one permanent failure: {report}");
    let st = states(&report);
    for (i, d) in devices.iter().enumerate() {
        let id = device_id(d);
        let (_, state, _) = st.iter().find(|(x, _, _)| *x == id).unwrap();
        let want = if i == 4 { "failed" } else { "done" };
        assert_eq!(state, want, "device {i}: {report}");
        assert_eq!(
            t.mock.state.is_registered(&d.cert_der),
            i != 4,
            "device {i} in the receiver"
        );
    }
    assert_eq!(
        t.mock.state.registered().len(),
        4,
        "exactly the four, once each"
    );
    assert_eq!(
        t.mock.server.faults.take("POST", "/interop"),
        None,
        "every scripted fault was met"
    );
    let failed = report["job"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["state"] == "failed")
        .unwrap();
    assert!(
        failed["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("notBefore"),
        "{failed}"
    );

    // A second run is a no-op for the done devices (resumed or new job: nothing re-created).
    let calls = t.mock.state.provision_calls();
    let (_, report2) = provision(&t.fx, &t.config, "ifx", &input, "provision").await;
    assert!(
        states(&report2)
            .iter()
            .filter(|(_, s, _)| s == "done")
            .count()
            >= 4,
        "{report2}"
    );
    assert!(t.mock.state.provision_calls() >= calls);
    assert_eq!(t.mock.state.registered().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_is_a_permanent_failure_and_nothing_is_registered() {
    let t = setup().await;
    let (_, input) = t.fx.devices("batch.pem", 20..22);
    let text = std::fs::read_to_string(&t.config)
        .unwrap()
        .replace(&format!("audience = \"{AUD}\""), "audience = \"999\"");
    let config = t.fx.write("wrong-aud.toml", &text);
    let (code, report) = provision(&t.fx, &config, "ifx", &input, "provision").await;
    assert_ne!(code, 0, "{report}");
    assert!(t.mock.state.registered().is_empty());
    assert_eq!(
        t.mock.state.provision_calls(),
        0,
        "the receiver refused every token"
    );
}

/// The standalone `idbridge mock-cloud interop` process, fed by `idbridge provision`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_mock_cloud_interop_process() {
    use tokio::io::AsyncBufReadExt;

    let fx = Fixture::new();
    let sender = InteropSender::new(AUD).unwrap();
    let public = fx.write("sender.pub.pem", &sender.public_key_pem());
    let key = fx.write("sender.key.pem", sender.private_key_pem());
    let ca = fx.path("mock-ca.pem");
    let mut child = tokio::process::Command::new(bin())
        .args(["mock-cloud", "interop", "--tls", "--audience", AUD])
        .arg("--public-key")
        .arg(&public)
        .arg("--ca-out")
        .arg(&ca)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = lines.next_line().await.unwrap().unwrap();
    let devices_line = lines.next_line().await.unwrap().unwrap();
    assert!(url.starts_with("https://localhost:"), "{url}");
    let port: u16 = devices_line
        .strip_prefix("devices localhost:")
        .unwrap()
        .parse()
        .unwrap();
    let config = fx.write(
        "idbridge.toml",
        &format!(
            "[targets.ifx]\nkind = \"interop\"\nbase_url = \"{url}\"\naudience = \"{AUD}\"\nsigning_key = \"{}\"\nca_file = \"{}\"\n",
            key.display(),
            ca.display()
        ),
    );
    let (devices, input) = fx.devices("batch.pem", 1..3);
    let (code, report) = provision(&fx, &config, "ifx", &input, "provision").await;
    assert_eq!(code, 0, "{report}");
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for d in &devices {
        assert!(admitted(addr, &ca_pem, d).await);
    }
    let stranger = fx.pki.device(50).unwrap();
    assert!(!admitted(addr, &ca_pem, &stranger).await);
}
