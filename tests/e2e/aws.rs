//! AWS IoT end to end through the CLI, against the mock AWS IoT over a socket: import a batch,
//! `provision --target aws`, a provisioned device connects, a device of the same batch that was
//! not bound is refused, `deprovision`, refused again; a killed job resumed leaves no orphan; a
//! re-run makes nothing new.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::aws::{
    AwsMockConfig, MockAws, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY,
};
use idbridge_mock_clouds::tls::{Connect, connect_device};

struct Env {
    rt: tokio::runtime::Runtime,
    mock: MockAws,
    pki: TestPki,
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mock = rt
            .block_on(MockAws::start(AwsMockConfig::default()))
            .unwrap();
        let pki = TestPki::infineon_like().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("root.pem"), pki.root_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), pki.ca_pem()).unwrap();
        std::fs::write(
            dir.path().join("idbridge.toml"),
            format!(
                "journal = \"sqlite:{}\"\n\n[targets.aws]\nkind = \"aws-iot\"\nallow_http = true\n\
                 create_policy = true\nthing_name = \"dev-{{serial_hex}}\"\n",
                dir.path().join("journal.sqlite").display()
            ),
        )
        .unwrap();
        Env { rt, mock, pki, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_idbridge"));
        c.args(args)
            .current_dir(self.dir.path())
            .env("IDBRIDGE_CONFIG", self.path("idbridge.toml"))
            .env("AWS_ENDPOINT_URL", self.mock.endpoint_url())
            .env("AWS_REGION", self.mock.region())
            .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_ENDPOINT_URL_IOT");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args).output().expect("idbridge runs");
        super::test_logs::record(args, &out);
        out
    }

    /// `inspect|provision|deprovision FILE` with the test PKI pinned.
    fn with_trust<'a>(&'a self, verb: &'a str, file: &'a Path) -> Vec<String> {
        let mut v = vec![verb.to_owned(), file.display().to_string()];
        for t in ["root.pem", "ca.pem"] {
            v.push("--trust".into());
            v.push(self.path(t).display().to_string());
        }
        v
    }

    fn connect(&self, d: &idbridge_mock_clouds::TestDevice) -> Connect {
        self.rt
            .block_on(connect_device(
                self.mock.device_addr(),
                self.mock.device_ca_pem(),
                &d.cert_pem,
                &d.key_pem,
                Some(self.mock.data_host()),
            ))
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn provision_connect_refuse_deprovision_refuse() {
    let env = Env::new();
    let (devices, bundle) = env.pki.batch(1, 3).unwrap();
    let bound_pem: String = devices[..2].iter().map(|d| d.cert_pem.as_str()).collect();
    std::fs::write(env.path("batch.pem"), &bound_pem).unwrap();
    std::fs::write(env.path("whole-reel.pem"), &bundle).unwrap();
    let batch = env.path("batch.pem");

    // Import: the batch verifies against the pinned test chain.
    let out = env.run(&args(&env.with_trust("inspect", &batch)));
    assert_eq!(out.status.code(), Some(0), "inspect: {}", text(&out));

    let mut p = env.with_trust("provision", &batch);
    p.extend([
        "--target".into(),
        "aws".into(),
        "--output".into(),
        "json".into(),
    ]);
    let out = env.run(&args(&p));
    assert_eq!(out.status.code(), Some(0), "provision: {}", text(&out));
    {
        let r = env.mock.registry();
        assert_eq!((r.certificate_count(), r.thing_count()), (2, 2));
        assert!(r.orphan_certificates().is_empty());
    }
    let thing = format!("dev-{}", devices[0].serial_hex);
    assert_eq!(env.connect(&devices[0]), Connect::Accepted(thing));
    assert!(matches!(env.connect(&devices[1]), Connect::Accepted(_)));
    // Same reel, never bound to this account: refused.
    assert!(matches!(env.connect(&devices[2]), Connect::Refused(_)));

    // A re-run of the same provision creates nothing new.
    let before = env.mock.calls("RegisterCertificateWithoutCA");
    let out = env.run(&args(&p));
    assert_eq!(out.status.code(), Some(0), "re-run: {}", text(&out));
    {
        let r = env.mock.registry();
        assert_eq!((r.certificate_count(), r.thing_count()), (2, 2));
    }
    assert!(env.mock.calls("RegisterCertificateWithoutCA") - before <= 2);

    let mut d = env.with_trust("deprovision", &batch);
    d.extend(["--target".into(), "aws".into(), "--yes".into()]);
    let out = env.run(&args(&d));
    assert_eq!(out.status.code(), Some(0), "deprovision: {}", text(&out));
    assert!(matches!(env.connect(&devices[0]), Connect::Refused(_)));
    assert!(matches!(env.connect(&devices[1]), Connect::Refused(_)));
    let r = env.mock.registry();
    assert_eq!((r.certificate_count(), r.thing_count()), (0, 0));
}

#[test]
fn killed_job_resumed_leaves_no_orphan() {
    let env = Env::new();
    let (devices, bundle) = env.pki.batch(100, 40).unwrap();
    std::fs::write(env.path("reel.pem"), &bundle).unwrap();
    let reel = env.path("reel.pem");
    let mut p = env.with_trust("provision", &reel);
    p.extend(["--target".into(), "aws".into()]);
    // At the default 10 registrations/s this takes ~4 s: kill it part-way.
    let mut child = env
        .cmd(&args(&p))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while env.mock.registry().certificate_count() < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "provision made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let partial = env.mock.registry().certificate_count();
    assert!(partial < 40, "killed before the end ({partial})");

    let out = env.run(&["status", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "status: {}", text(&out));
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = jobs[0]["id"].as_str().unwrap().to_owned();
    // resume verifies every certificate again: with the trust flags of the run.
    let mut r = vec!["resume".to_owned(), job.clone()];
    r.extend(env.with_trust("resume", &reel).into_iter().skip(2));
    let out = env.run(&args(&r));
    assert_eq!(out.status.code(), Some(0), "resume: {}", text(&out));
    {
        let r = env.mock.registry();
        assert_eq!((r.certificate_count(), r.thing_count()), (40, 40));
        assert!(
            r.orphan_certificates().is_empty(),
            "orphans: {:?}",
            r.orphan_certificates()
        );
        assert!(r.things_without_principal().is_empty());
        for d in &devices {
            let id = idbridge_core::DeviceId::of_der(&d.cert_der);
            assert_eq!(r.certificate_status(id.as_str()).as_deref(), Some("ACTIVE"));
        }
    }
    assert!(matches!(env.connect(&devices[39]), Connect::Accepted(_)));
}

#[test]
fn standalone_mock_cloud_aws_serves_the_sdk() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("device-ca.pem");
    let mut child = Command::new(env!("CARGO_BIN_EXE_idbridge"))
        .args([
            "mock-cloud",
            "aws",
            "--listen",
            "127.0.0.1:0",
            "--default-quotas",
            "--ca-out",
        ])
        .arg(&ca)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap();
    let details: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(details["endpoint_url"], url.as_str());
    assert!(
        std::fs::read_to_string(&ca)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(async {
        use idbridge_core::{CallContext, Connector};
        let c = idbridge_aws_iot::AwsIot::connect_with_static_credentials(
            idbridge_aws_iot::AwsIotConfig {
                region: Some(details["region"].as_str().unwrap().to_owned()),
                endpoint_url: Some(url.clone()),
                allow_http: true,
                create_policy: true,
                ..Default::default()
            },
            TEST_ACCESS_KEY_ID,
            TEST_SECRET_ACCESS_KEY,
        )
        .await
        .unwrap();
        let ok = c.health_check(&CallContext::unpaced()).await;
        let bad = idbridge_aws_iot::AwsIot::connect_with_static_credentials(
            c.config().clone(),
            TEST_ACCESS_KEY_ID,
            "not-the-secret",
        )
        .await
        .unwrap()
        .health_check(&CallContext::unpaced())
        .await;
        (ok, bad)
    });
    child.kill().unwrap();
    let _ = child.wait();
    assert!(result.0.is_ok(), "{:?}", result.0);
    let e = result.1.unwrap_err();
    assert_eq!(e.kind(), idbridge_core::ErrorKind::Unauthenticated, "{e}");
}
