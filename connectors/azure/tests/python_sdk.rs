//! Fidelity: the official Python SDK `azure-iot-hub` (IoTHubRegistryManager: create with X.509,
//! bulk create, get, conditional update, delete, query, statistics, a wrong key) against the
//! IoT Hub mock, then the devices it registered connect (or not) through the device endpoint.
//! Needs `pip install azure-iot-hub six` (`.ci/run` installs them); fails with that hint when
//! they are missing.
#![allow(clippy::unwrap_used)] // tests

mod common;

use std::process::Command;

use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::azure::AzureMockConfig;
use idbridge_mock_clouds::tls::{Connect, connect_device};

fn python() -> String {
    std::env::var("IDBRIDGE_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_sdk_against_the_iot_hub_mock() {
    let probe = Command::new(python())
        .args(["-c", "import azure.iot.hub, six"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the official Azure IoT Hub Python SDK is missing: run `pip install azure-iot-hub six` \
             (or set IDBRIDGE_PYTHON to an interpreter that has it)\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "cannot run {}: {e}; install Python 3 and `pip install azure-iot-hub six`",
            python()
        ),
    }
    let env = common::start(AzureMockConfig::default()).await;
    let pki = TestPki::infineon_like().unwrap();
    let devs = common::same_cn_devices(&pki, 1, 3);
    let thumb = |i: usize| devs[i].1.device_id.as_str().to_ascii_uppercase();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/azure_iot_hub_sdk.py"
    );
    let out = Command::new(python())
        .arg(script)
        .env("IOTHUB_CONNECTION_STRING", env.mock.hub_connection_string())
        .env("REQUESTS_CA_BUNDLE", env.ca_file.path())
        .env("DEV_A_ID", &devs[0].0.serial_hex)
        .env("DEV_A_THUMB", thumb(0))
        .env("DEV_B_ID", &devs[1].0.serial_hex)
        .env("DEV_B_THUMB", thumb(1))
        .env("DEV_C_ID", &devs[2].0.serial_hex)
        .env("DEV_C_THUMB", thumb(2))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\"ok\": true"),
        "SDK script failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hub = env.mock.hub();
    let a = hub
        .device(&devs[0].0.serial_hex)
        .expect("A registered by the SDK");
    assert_eq!(a.primary.as_deref(), Some(thumb(0).as_str()));
    assert!(
        hub.device(&devs[1].0.serial_hex).is_none(),
        "B deleted by the SDK"
    );
    assert_eq!(
        hub.device(&devs[2].0.serial_hex).unwrap().status,
        "disabled"
    );
    let connect = |i: usize| {
        connect_device(
            env.mock.hub_device_addr(),
            env.mock.ca_pem(),
            &devs[i].0.cert_pem,
            &devs[i].0.key_pem,
            Some("localhost"),
        )
    };
    assert_eq!(
        connect(0).await.unwrap(),
        Connect::Accepted(devs[0].0.serial_hex.clone())
    );
    assert!(
        matches!(connect(1).await.unwrap(), Connect::Refused(_)),
        "deleted"
    );
    assert!(
        matches!(connect(2).await.unwrap(), Connect::Refused(_)),
        "disabled"
    );
}
