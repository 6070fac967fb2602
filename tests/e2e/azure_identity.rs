//! Azure ambient credentials (`credential = "…"`, the `azure_identity` crate) end to end: a
//! provision with each kind lands in the IoT Hub mock (and one in the DPS mock) with a bearer
//! token the mock issued for that service; a wrong token and a missing credential are refused.
//! The credentials are pointed at the mocks the way Azure documents it: `AZURE_AUTHORITY_HOST`,
//! `AZURE_FEDERATED_TOKEN_FILE`, `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, and a fake `az` on
//! `PATH`. Every variable is set on the child process only.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::azure::{AzureMock, AzureMockConfig, ENTRA_CLIENT_ID, ENTRA_TENANT};

/// Variables of the `azure_identity` chain a developer's shell may have: never inherited.
const AMBIENT: &[&str] = &[
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_AUTHORITY_HOST",
    "AZURE_FEDERATED_TOKEN_FILE",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IOTHUB_CONNECTION_STRING",
    "PROVISIONING_CONNECTION_STRING",
];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn idbridge(dir: &Path, args: Vec<String>, envs: Vec<(&'static str, String)>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idbridge"));
    cmd.current_dir(dir).args(&args);
    for k in AMBIENT {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("idbridge runs"))
        .await
        .expect("join")
}

/// A fake Azure CLI: `az account get-access-token -o json --scope S` prints `token` when S is
/// IoT Hub's scope, as Azure CLI 2.54+ does, and logs each run to `az.log`.
fn fake_az(dir: &Path, token: &str) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("az.log");
    let expires = time::OffsetDateTime::now_utc().unix_timestamp() + 3599;
    let script = format!(
        r#"#!/bin/sh
echo "$*" >> '{log}'
case "$*" in
  "account get-access-token -o json --scope https://iothubs.azure.net/.default") ;;
  *) echo "ERROR: unexpected arguments: $*" >&2; exit 2 ;;
esac
printf '{{"accessToken":"%s","expiresOn":"2099-01-01 00:00:00.000000","expires_on":%s,"subscription":"00000000-0000-0000-0000-000000000000","tenant":"{ENTRA_TENANT}","tokenType":"Bearer"}}\n' '{token}' {expires}
"#,
        log = log.display()
    );
    let path = bin.join("az");
    std::fs::write(&path, script).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ambient_credential_provisions_into_iot_hub_and_dps() {
    let mock = AzureMock::start(AzureMockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = TestPki::infineon_like().unwrap();
    std::fs::write(d.join("root.pem"), pki.root_pem()).unwrap();
    std::fs::write(d.join("ca.pem"), pki.ca_pem()).unwrap();
    std::fs::write(d.join("azure-ca.pem"), mock.ca_pem()).unwrap();
    std::fs::write(d.join("sa-token"), mock.federated_token()).unwrap();
    let mut toml = String::from("journal = \"sqlite:journal.sqlite\"\n");
    for (name, kind, credential, host) in [
        ("env", "azure-iot-hub", "environment", "${AZ_HUB_HOST}"),
        ("wi", "azure-iot-hub", "workload-identity", "${AZ_HUB_HOST}"),
        ("mi", "azure-iot-hub", "managed-identity", "${AZ_HUB_HOST}"),
        ("cli", "azure-iot-hub", "azure-cli", "${AZ_HUB_HOST}"),
        ("chain", "azure-iot-hub", "default", "${AZ_HUB_HOST}"),
        ("dps", "azure-dps", "workload-identity", "${AZ_DPS_HOST}"),
    ] {
        toml.push_str(&format!(
            "\n[targets.{name}]\nkind = \"{kind}\"\nhost_name = \"{host}\"\ncredential = \"{credential}\"\nca_file = \"azure-ca.pem\"\n"
        ));
    }
    std::fs::write(d.join("idbridge.toml"), toml).unwrap();
    let hosts = || {
        vec![
            ("AZ_HUB_HOST", mock.hub_host()),
            ("AZ_DPS_HOST", mock.dps_host()),
        ]
    };
    let entra_app = |authority: &str| {
        vec![
            ("AZURE_TENANT_ID", ENTRA_TENANT.to_owned()),
            ("AZURE_CLIENT_ID", ENTRA_CLIENT_ID.to_owned()),
            ("AZURE_AUTHORITY_HOST", authority.to_owned()),
        ]
    };
    let secret = || {
        let mut v = entra_app(mock.hub_url());
        v.push(("AZURE_CLIENT_SECRET", mock.entra_client_secret().to_owned()));
        v
    };
    let workload = |authority: &str| {
        let mut v = entra_app(authority);
        v.push((
            "AZURE_FEDERATED_TOKEN_FILE",
            d.join("sa-token").display().to_string(),
        ));
        v
    };
    let managed = || {
        vec![
            ("IDENTITY_ENDPOINT", format!("{}/msi/token", mock.hub_url())),
            ("IDENTITY_HEADER", mock.identity_header().to_owned()),
        ]
    };
    let cli_path = fake_az(d, &mock.issue_hub_token());

    let mut serial = 100;
    let mut provision = |target: &'static str, envs: Vec<(&'static str, String)>| {
        serial += 100;
        let devices: Vec<_> = (serial..serial + 3)
            .map(|s| {
                if target == "dps" {
                    pki.device_with_cn(s, &format!("dev-{s}")).unwrap()
                } else {
                    pki.device(s).unwrap()
                }
            })
            .collect();
        let batch = format!("batch-{target}.pem");
        let bundle: String = devices.iter().map(|x| x.cert_pem.as_str()).collect();
        std::fs::write(d.join(&batch), bundle).unwrap();
        let args = [
            "provision",
            "--target",
            target,
            &batch,
            "--trust",
            "root.pem",
            "--trust",
            "ca.pem",
            "--config",
            "idbridge.toml",
            "--output",
            "json",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut envs = envs;
        envs.extend(hosts());
        (devices, idbridge(d, args, envs))
    };

    for (target, envs) in [
        ("env", secret()),
        ("wi", workload(mock.hub_url())),
        ("mi", managed()),
        ("cli", vec![("PATH", cli_path.clone())]),
        // `default`: no environment or workload variables, an App Service identity endpoint:
        // the chain's third link answers.
        ("chain", managed()),
    ] {
        let before = mock.hub().stats();
        let (devices, out) = provision(target, envs);
        let out = out.await;
        let all = text(&out.stdout) + &text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{target}: {all}");
        for dev in &devices {
            assert!(
                mock.hub().device(&dev.serial_hex).is_some(),
                "{target}: {} registered",
                dev.serial_hex
            );
        }
        let after = mock.hub().stats();
        assert!(after.requests > before.requests, "{target}");
        if target != "cli" {
            // The token came from the mock's token or identity endpoint, once for the run.
            assert_eq!(after.tokens_issued, before.tokens_issued + 1, "{target}");
        }
        assert!(!all.contains(mock.entra_client_secret()), "{target}: {all}");
        assert!(!all.contains(mock.federated_token()), "{target}: {all}");
        assert!(!all.contains(mock.identity_header()), "{target}: {all}");
    }
    // One `az` run per process, however many calls the run made.
    let az_runs = std::fs::read_to_string(d.join("az.log")).unwrap();
    assert_eq!(az_runs.lines().count(), 1, "{az_runs}");

    // DPS: its own scope, asked of the token endpoint on the DPS host.
    let before = mock.dps().stats();
    let (_, out) = provision("dps", workload(mock.dps_url()));
    let out = out.await;
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "dps: {all}");
    assert_eq!(mock.dps().enrollment_count(), 3, "{all}");
    assert_eq!(mock.dps().stats().tokens_issued, before.tokens_issued + 1);

    // A token the hub did not issue (here: a DPS token from `az`) is refused with 401.
    let wrong = fake_az(d, &mock.issue_dps_token());
    let registered = mock.hub().device_count();
    let (_, out) = provision("cli", vec![("PATH", wrong)]);
    let out = out.await;
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("401") || all.contains("nauthori"), "{all}");
    assert_eq!(mock.hub().device_count(), registered, "nothing registered");

    // No credential at all: a configuration error naming the missing variables; no call.
    let before = mock.hub().stats().requests;
    let (_, out) = provision("env", vec![]);
    let out = out.await;
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("AZURE_CLIENT_SECRET"), "{all}");
    assert_eq!(
        mock.hub().stats().requests,
        before,
        "no call without a token"
    );
    // A secret the mock does not know: Entra refuses it, the run fails, nothing registered.
    let mut bad = secret();
    bad.retain(|(k, _)| *k != "AZURE_CLIENT_SECRET");
    bad.push(("AZURE_CLIENT_SECRET", "not-the-secret".into()));
    let (_, out) = provision("env", bad);
    let out = out.await;
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("AADSTS7000215"), "{all}");
    assert!(!all.contains("not-the-secret"), "{all}");
    assert_eq!(mock.hub().device_count(), registered, "nothing registered");
}
