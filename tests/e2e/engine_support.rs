//! Helpers for the engine's end-to-end tests: generated batches, a standalone mock cloud
//! process, and running the CLI.
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use idbridge_mock_clouds::TestPki;

/// The seed of a test's randomness: `IDBRIDGE_TEST_SEED` when set, else drawn from the OS;
/// printed either way, so that a failure can be replayed with the same draws.
pub fn test_seed() -> u64 {
    let seed = std::env::var("IDBRIDGE_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("IDBRIDGE_TEST_SEED={seed}");
    seed
}

/// The idbridge binary under test.
pub fn idbridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_idbridge"))
}

/// A generated batch: `n` devices in one PEM file, and the root to `--trust`.
pub struct Batch {
    /// Keeps the files alive.
    pub _dir: tempfile::TempDir,
    pub pem: PathBuf,
    pub root: PathBuf,
    pub device_ids: Vec<String>,
}

/// Writes a batch of `n` generated Infineon-like devices into a new temporary directory.
pub fn batch(n: u64) -> Batch {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::infineon_like().unwrap();
    let (devices, bundle) = pki.batch(1, n).unwrap();
    let pem = dir.path().join("batch.pem");
    std::fs::write(&pem, bundle).unwrap();
    let root = dir.path().join("root.pem");
    std::fs::write(&root, format!("{}{}", pki.root_pem(), pki.ca_pem())).unwrap();
    let device_ids = devices
        .iter()
        .map(|d| idbridge_core::DeviceId::of_der(&d.cert_der).to_string())
        .collect();
    Batch {
        _dir: dir,
        pem,
        root,
        device_ids,
    }
}

/// A 10,000-device batch generated once per test run (shared by the crash tests).
pub fn big_batch() -> &'static Batch {
    static B: OnceLock<Batch> = OnceLock::new();
    B.get_or_init(|| batch(10_000))
}

/// A standalone `idbridge mock-cloud mock` process; killed on drop.
pub struct MockCloud {
    child: Child,
    pub url: String,
}

impl MockCloud {
    pub fn start(extra: &[&str]) -> MockCloud {
        let mut child = idbridge()
            .args([
                "mock-cloud",
                "mock",
                "--listen",
                "127.0.0.1:0",
                "--token",
                "t0ken",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().to_owned();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "mock-cloud printed {line:?}"
        );
        MockCloud { child, url }
    }

    pub fn stats(&self) -> serde_json::Value {
        get_json(&format!("{}/_mock/stats", self.url))
    }

    /// Every registered device: (name, fingerprint).
    pub fn devices(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/devices?limit=1000", self.url);
            if let Some(t) = &token {
                url.push_str(&format!("&page_token={t}"));
            }
            let page = get_json_auth(&url, "t0ken");
            for d in page["devices"].as_array().unwrap() {
                out.push((
                    d["name"].as_str().unwrap().to_owned(),
                    d["fingerprint"].as_str().unwrap().to_owned(),
                ));
            }
            match page["next_page_token"].as_str() {
                Some(t) => token = Some(t.to_owned()),
                None => return out,
            }
        }
    }
}

impl Drop for MockCloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking HTTP GET over a TCP socket (no client dependency in the test binary).
pub fn get_json(url: &str) -> serde_json::Value {
    http_get(url, None)
}

fn get_json_auth(url: &str, token: &str) -> serde_json::Value {
    http_get(url, Some(token))
}

fn http_get(url: &str, token: Option<&str>) -> serde_json::Value {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8(resp).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "GET {url}: {head}");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).unwrap()
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// Writes `idbridge.toml` into `dir`.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("idbridge.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs idbridge in `dir` and waits.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    let out = idbridge()
        .current_dir(dir)
        .args(args)
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .output()
        .unwrap();
    super::test_logs::record(args, &out);
    out
}

/// The exit code, printing stderr on surprise.
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
