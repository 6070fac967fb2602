//! Operator features through the CLI: man pages and completions generated, `--version` naming
//! the connectors, strict configuration (a typo names the nearest key), `config show` redacting
//! secrets, and `check` against the mock AWS (a missing policy, rejected keys, a clean pass).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

fn idbridge(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_idbridge"));
    c.current_dir(dir)
        .args(args)
        .env_remove("IDBRIDGE_CONFIG")
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME");
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().expect("idbridge runs");
    super::test_logs::record(args, &out);
    out
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn man_pages_completions_and_version_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = idbridge(d, &["man", "--out-dir", "man"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let page = std::fs::read_to_string(d.join("man/idbridge.1")).unwrap();
    assert!(page.contains(".TH idbridge"), "{page}");
    assert!(page.contains("deprovision"), "subcommands listed: {page}");
    for sub in [
        "check",
        "deprovision",
        "provision",
        "config-show",
        "completions",
    ] {
        let p = d.join(format!("man/idbridge-{sub}.1"));
        assert!(p.is_file(), "{} missing", p.display());
    }
    let check = std::fs::read_to_string(d.join("man/idbridge-check.1")).unwrap();
    assert!(check.contains("target"), "{check}");

    for (shell, marker) in [
        ("bash", "_idbridge()"),
        ("zsh", "#compdef idbridge"),
        ("fish", "complete -c idbridge"),
    ] {
        let out = idbridge(d, &["completions", shell], &[]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out));
        let s = String::from_utf8(out.stdout).unwrap();
        assert!(s.contains(marker), "{shell}: {s}");
        assert!(s.contains("deprovision"), "{shell} completes subcommands");
    }
    let out = idbridge(d, &["completions", "tcsh"], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "unknown shell refused: {}",
        text(&out)
    );

    let out = idbridge(d, &["--version"], &[]);
    let v = String::from_utf8(out.stdout).unwrap();
    assert!(
        v.contains(env!("CARGO_PKG_VERSION")) && v.contains("connectors: mock, manifest"),
        "{v}"
    );
    #[cfg(feature = "aws-iot")]
    assert!(v.contains("aws-iot"), "{v}");
    #[cfg(feature = "azure")]
    assert!(v.contains("azure-iot-hub"), "{v}");
}

#[test]
fn azure_table_typo_names_the_nearest_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("idbridge.toml"),
        "[targets.hub]\nkind = \"azure-iot-hub\"\nconection_string = \"HostName=h;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0\"\n",
    )
    .unwrap();
    std::fs::write(d.join("dev.pem"), "").unwrap();
    let out = idbridge(d, &["provision", "dev.pem", "--target", "hub"], &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(err.contains("idbridge.toml"), "names the file: {err}");
    assert!(err.contains("[targets.hub]"), "names the table: {err}");
    assert!(err.contains("unknown field `conection_string`"), "{err}");
    assert!(err.contains("did you mean `connection_string`?"), "{err}");
    assert!(!err.contains("c2VjcmV0"), "no secret in the error: {err}");

    let out = idbridge(d, &["config", "validate"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("did you mean `connection_string`?"),
        "{}",
        text(&out)
    );

    // The engine table and the top level are strict too.
    std::fs::write(
        d.join("idbridge.toml"),
        "[targets.hub]\nkind = \"mock\"\n[targets.hub.engine]\nconcurency = 4\n",
    )
    .unwrap();
    let out = idbridge(d, &["config", "validate"], &[]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("did you mean `concurrency`?"),
        "{}",
        text(&out)
    );
    std::fs::write(d.join("idbridge.toml"), "jornal = \"sqlite:j.sqlite\"\n").unwrap();
    let out = idbridge(d, &["config", "show"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did you mean `journal`?"),
        "{}",
        text(&out)
    );
}

#[test]
fn config_show_redacts_secrets_and_resolves_paths_from_xdg() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let xdg = d.join("xdg");
    std::fs::create_dir_all(xdg.join("idbridge")).unwrap();
    std::fs::write(
        xdg.join("idbridge/idbridge.toml"),
        "journal = \"sqlite:j.sqlite\"\n[trust]\nanchors = [\"roots\"]\n\
         [targets.hub]\nkind = \"azure-iot-hub\"\nconnection_string = \"HostName=h;SharedAccessKeyName=p;SharedAccessKey=c2VjcmV0\"\n\
         ca_file = \"ca.pem\"\n[targets.lab]\nkind = \"mock\"\ntoken = \"${LAB_TOKEN}\"\n",
    )
    .unwrap();
    let work = d.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let xdg_s = xdg.display().to_string();
    let out = idbridge(
        &work,
        &["config", "show"],
        &[("XDG_CONFIG_HOME", &xdg_s), ("LAB_TOKEN", "t0ken")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = String::from_utf8(out.stdout).unwrap();
    let file = xdg.join("idbridge/idbridge.toml");
    assert!(
        s.contains(&file.display().to_string()),
        "names the XDG file: {s}"
    );
    assert!(
        !s.contains("c2VjcmV0") && !s.contains("t0ken"),
        "secrets redacted: {s}"
    );
    assert!(
        s.contains("<redacted>") && s.contains("${LAB_TOKEN}"),
        "{s}"
    );
    let base = xdg.join("idbridge");
    assert!(
        s.contains(&base.join("ca.pem").display().to_string()),
        "ca_file relative to the file: {s}"
    );
    assert!(
        s.contains(&format!("sqlite:{}", base.join("j.sqlite").display())),
        "journal relative to the file: {s}"
    );
    assert!(
        s.contains(&base.join("roots").display().to_string()),
        "trust anchors relative: {s}"
    );

    // ./idbridge.toml wins over the XDG file.
    std::fs::write(
        work.join("idbridge.toml"),
        "[targets.here]\nkind = \"mock\"\n",
    )
    .unwrap();
    let out = idbridge(&work, &["config", "show"], &[("XDG_CONFIG_HOME", &xdg_s)]);
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.contains("[targets.here]") && !s.contains("[targets.hub]"),
        "{s}"
    );
}

#[cfg(feature = "aws-iot")]
mod aws_check {
    use super::*;
    use idbridge_mock_clouds::aws::{
        AwsMockConfig, MockAws, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_names_a_missing_policy_rejected_keys_and_passes_when_ready() {
        let mock = MockAws::start(AwsMockConfig::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let write = |extra: &str| {
            std::fs::write(
                d.join("idbridge.toml"),
                format!("[targets.aws]\nkind = \"aws-iot\"\nallow_http = true\npolicy_name = \"fleet-devices\"\n{extra}"),
            )
            .unwrap()
        };
        write("");
        let run = |secret: &'static str| {
            let d = d.clone();
            let url = mock.endpoint_url().to_owned();
            let region = mock.region().to_owned();
            async move {
                tokio::task::spawn_blocking(move || Endpoint { url, region }.check(&d, secret))
                    .await
                    .unwrap()
            }
        };
        // A missing policy: named, exit 1.
        let out = run(TEST_SECRET_ACCESS_KEY).await;
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(s.contains("policy \"fleet-devices\" does not exist"), "{s}");
        assert!(s.contains("[ok  ] credentials"), "credentials pass: {s}");
        assert!(
            s.contains("iot:RegisterCertificateWithoutCA"),
            "actions listed: {s}"
        );
        assert!(s.contains("iot:Data-ATS"), "endpoint checked: {s}");

        // Keys the mock rejects (SigV4 with the wrong secret): credentials named, exit 1.
        let out = run("wrong-secret-wrong-secret").await;
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(s.contains("[FAIL] credentials"), "{s}");
        assert!(s.contains("AWS rejected the credentials"), "{s}");
        assert!(!s.contains("wrong-secret"), "secret never printed: {s}");

        // A thing group that does not exist is named; with create_policy the policy is fine.
        write("create_policy = true\nthing_group = \"reel-7\"\n");
        let out = run(TEST_SECRET_ACCESS_KEY).await;
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(s.contains("thing group \"reel-7\" does not exist"), "{s}");

        // Everything in place: exit 0, and nothing was created by the probes.
        write("create_policy = true\n");
        let out = run(TEST_SECRET_ACCESS_KEY).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let r = mock.registry();
        assert_eq!(
            (r.certificate_count(), r.thing_count()),
            (0, 0),
            "probes change nothing"
        );
    }

    struct Endpoint {
        url: String,
        region: String,
    }

    impl Endpoint {
        fn check(&self, d: &Path, secret: &str) -> Output {
            idbridge(
                d,
                &["check", "--target", "aws"],
                &[
                    ("AWS_ENDPOINT_URL", self.url.as_str()),
                    ("AWS_REGION", self.region.as_str()),
                    ("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID),
                    ("AWS_SECRET_ACCESS_KEY", secret),
                    ("AWS_CONFIG_FILE", "/dev/null"),
                    ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
                ],
            )
        }
    }
}
