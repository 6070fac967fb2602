//! Azure end to end through the CLI against the in-process Azure mocks: provision into IoT Hub
//! → the device connects → deprovision → refused; a Trust M V1-like batch sent to DPS fails
//! before any call with the message recommending the IoT Hub target; and the standalone
//! `idbridge mock-cloud azure`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::azure::{AzureMock, AzureMockConfig};
use idbridge_mock_clouds::tls::{Connect, connect_device};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs the CLI off the runtime's threads (the mock serves on them meanwhile).
async fn idbridge(dir: &Path, args: &[&str], envs: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idbridge"));
    cmd.current_dir(dir).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("idbridge runs"))
        .await
        .expect("join");
    super::test_logs::record(args, &out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iot_hub_provision_connect_deprovision_refused_and_v1_batch_refused_by_dps() {
    let mock = AzureMock::start(AzureMockConfig::s1(10)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = TestPki::infineon_like().unwrap();
    let (devices, bundle) = pki.batch(1, 3).unwrap();
    std::fs::write(d.join("batch.pem"), &bundle).unwrap();
    std::fs::write(d.join("root.pem"), pki.root_pem()).unwrap();
    std::fs::write(d.join("ca.pem"), pki.ca_pem()).unwrap();
    std::fs::write(d.join("azure-ca.pem"), mock.ca_pem()).unwrap();
    std::fs::write(
        d.join("idbridge.toml"),
        r#"journal = "sqlite:journal.sqlite"

[targets.hub]
kind = "azure-iot-hub"
connection_string = "${AZ_HUB}"
tier = "S1"
units = 10
ca_file = "azure-ca.pem"

[targets.dps]
kind = "azure-dps"
connection_string = "${AZ_DPS}"
ca_file = "azure-ca.pem"
"#,
    )
    .unwrap();
    let envs = [
        ("AZ_HUB", mock.hub_connection_string()),
        ("AZ_DPS", mock.dps_connection_string()),
    ];
    let common = [
        "batch.pem",
        "--trust",
        "root.pem",
        "--trust",
        "ca.pem",
        "--config",
        "idbridge.toml",
        "--output",
        "json",
    ];
    let with = |target: &'static str| {
        let mut v = vec!["--target", target];
        v.extend_from_slice(&common);
        v
    };

    let connect = |i: usize| {
        connect_device(
            mock.hub_device_addr(),
            mock.ca_pem(),
            &devices[i].cert_pem,
            &devices[i].key_pem,
            Some("localhost"),
        )
    };
    assert!(matches!(connect(0).await.unwrap(), Connect::Refused(_)));

    let mut args = vec!["provision"];
    args.extend(with("hub"));
    let out = idbridge(d, &args, &envs).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "provision: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for dev in &devices {
        let got = mock
            .hub()
            .device(&dev.serial_hex)
            .expect("registered under its serial");
        assert_eq!(got.status, "enabled");
    }
    assert_eq!(mock.hub().stats().throttled, 0);
    assert_eq!(
        connect(0).await.unwrap(),
        Connect::Accepted(devices[0].serial_hex.clone())
    );
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        !all.contains(
            mock.hub_connection_string()
                .rsplit('=')
                .nth(1)
                .unwrap_or("x")
        ),
        "no secret in the output"
    );

    let mut args = vec!["deprovision", "--yes"];
    args.extend(with("hub"));
    let out = idbridge(d, &args, &envs).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "deprovision: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(mock.hub().device_count(), 0);
    assert!(matches!(connect(0).await.unwrap(), Connect::Refused(_)));

    // The same CN on every chip: DPS cannot take them, and nothing is sent.
    let mut args = vec!["provision"];
    args.extend(with("dps"));
    let out = idbridge(d, &args, &envs).await;
    let all = text(&out.stdout) + &text(&out.stderr);
    // The target refuses the job as a whole before it is opened (`check_job`): unusable input
    // for this target, exit 2.
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("Infineon IoT Node"), "{all}");
    assert!(all.contains("use the azure-iot-hub target"), "{all}");
    assert_eq!(mock.dps().stats().requests, 0, "no call reached DPS");
    assert_eq!(mock.dps().enrollment_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_mock_cloud_azure_serves_both_services() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idbridge"))
        .args(["mock-cloud", "azure", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("idbridge mock-cloud starts");
    let stdout = child.stdout.take().unwrap();
    let (url, desc) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let url = lines.next().unwrap().unwrap();
        let desc = lines.next().unwrap().unwrap();
        (url, desc)
    })
    .await
    .unwrap();
    let desc: serde_json::Value = serde_json::from_str(&desc).unwrap();
    assert_eq!(desc["iot_hub_url"], url.as_str());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, desc["ca_pem"].as_str().unwrap()).unwrap();
    use idbridge_core::CallContext;
    for (kind, cs) in [
        ("azure-iot-hub", "iot_hub_connection_string"),
        ("azure-dps", "dps_connection_string"),
    ] {
        let cfg = idbridge_azure::AzureConfig {
            kind: Some(kind.into()),
            connection_string: Some(secrecy::SecretString::from(desc[cs].as_str().unwrap())),
            ca_file: Some(ca.clone()),
            ..Default::default()
        };
        let c = idbridge_azure::connector(&cfg).unwrap();
        c.health_check(&CallContext::unpaced())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_500s_resets_and_lost_answers_end_in_the_exact_state() {
    use idbridge_mock_clouds::{Fault, FaultRule};
    let mock = AzureMock::start(AzureMockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = TestPki::infineon_like().unwrap();
    let (devices, bundle) = pki.batch(1, 150).unwrap();
    std::fs::write(d.join("batch.pem"), &bundle).unwrap();
    std::fs::write(d.join("root.pem"), pki.root_pem()).unwrap();
    std::fs::write(d.join("ca.pem"), pki.ca_pem()).unwrap();
    std::fs::write(d.join("azure-ca.pem"), mock.ca_pem()).unwrap();
    std::fs::write(
        d.join("idbridge.toml"),
        "[targets.hub]\nkind = \"azure-iot-hub\"\nconnection_string = \"${AZ_HUB}\"\nca_file = \"azure-ca.pem\"\nunits = 10\n",
    )
    .unwrap();
    let throttled = Fault::Status {
        status: 429,
        headers: vec![
            ("Retry-After".into(), "1".into()),
            ("iothub-errorcode".into(), "ThrottlingException".into()),
        ],
        body: r#"{"Message":"ErrorCode:ThrottlingException;Throttled","ExceptionMessage":"Tracking ID:x-G:0-TimeStamp:y"}"#.into(),
    };
    let f = mock.hub_faults();
    f.push(
        FaultRule::once(throttled)
            .on_method("POST")
            .on_path("/devices"),
    );
    f.push(
        FaultRule::once(Fault::Status {
            status: 500,
            headers: vec![],
            body: String::new(),
        })
        .on_method("POST")
        .on_path("/devices"),
    );
    f.push(
        FaultRule::once(Fault::Reset)
            .on_method("POST")
            .on_path("/devices"),
    );
    f.push(
        FaultRule::once(Fault::LoseResponse)
            .on_method("POST")
            .on_path("/devices"),
    );
    let out = idbridge(
        d,
        &[
            "provision",
            "--target",
            "hub",
            "batch.pem",
            "--trust",
            "root.pem",
            "--trust",
            "ca.pem",
            "--config",
            "idbridge.toml",
            "--journal",
            "sqlite:j.sqlite",
            "--output",
            "json",
        ],
        &[("AZ_HUB", mock.hub_connection_string())],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(mock.hub().device_count(), 150, "each device exactly once");
    for dev in &devices {
        let got = mock.hub().device(&dev.serial_hex).expect("registered");
        let want = hex_upper_sha256(&dev.cert_der);
        assert_eq!(got.primary.as_deref(), Some(want.as_str()));
        assert_eq!(got.status, "enabled");
    }
    assert!(mock.hub().stats().requests >= 6, "the faults were hit");
}

fn hex_upper_sha256(der: &[u8]) -> String {
    let id = idbridge_core::DeviceId::of_der(der);
    id.as_str().to_ascii_uppercase()
}
