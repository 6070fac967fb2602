//! boto3 (a second, independent AWS client with its own SigV4 signer) reads back what the
//! connector created in the mock: `tests/python/aws_readback.py`. Needs python3 with boto3.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

use aws_sdk_iot::config::{BehaviorVersion, Credentials, Region};
use idbridge_aws_iot::{AwsIot, AwsIotConfig};
use idbridge_core::{CallContext, Connector, DeviceIdentity, RegisterOutcome, Source};
use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::aws::{
    AwsMockConfig, MockAws, TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY,
};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/python/aws_readback.py"
);

async fn readback(mock: &MockAws, spec: &serde_json::Value) -> (i32, String) {
    let (url, region, spec) = (
        mock.endpoint_url().to_owned(),
        mock.region().to_owned(),
        spec.to_string(),
    );
    tokio::task::spawn_blocking(move || run_python(&url, &region, &spec))
        .await
        .expect("python thread")
}

fn run_python(url: &str, region: &str, spec: &str) -> (i32, String) {
    let probe = Command::new("python3")
        .args(["-c", "import boto3"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "this test needs python3 with boto3: install it with `pip install boto3` (or `python3 -m pip install boto3`)"
        ),
    }
    let out = Command::new("python3")
        .arg(SCRIPT)
        .arg(spec)
        .env("AWS_ENDPOINT_URL", url)
        .env("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
        .env("AWS_DEFAULT_REGION", region)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

// Multi-threaded: python3 runs on a blocking thread while the mock serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_reads_back_what_the_connector_created() {
    let mock = MockAws::start(AwsMockConfig::default()).await.unwrap();
    mock.registry().put_thing_group("reel-1");
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(mock.region().to_owned()))
        .credentials_provider(Credentials::new(
            TEST_ACCESS_KEY_ID,
            TEST_SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        ))
        .endpoint_url(mock.endpoint_url())
        .load()
        .await;
    let c = AwsIot::from_sdk_config(
        AwsIotConfig {
            allow_http: true,
            create_policy: true,
            thing_group: Some("reel-1".into()),
            ..Default::default()
        },
        &sdk,
    )
    .unwrap();
    let pki = TestPki::infineon_like().unwrap();
    let mut devices = Vec::new();
    for s in 1..=3 {
        let d = pki.device(s).unwrap();
        let mut id = DeviceIdentity::from_der(d.cert_der, Source::default()).unwrap();
        id.vendor.vendor = Some("infineon".into());
        let out = c
            .register(&CallContext::unpaced(), std::slice::from_ref(&id))
            .await
            .unwrap();
        assert!(
            matches!(out[0], RegisterOutcome::Created(_)),
            "{:?}",
            out[0]
        );
        devices.push(serde_json::json!({
            "certificate_id": id.device_id.as_str(),
            "thing": format!("Infineon_{}", id.serial_hex),
            "policy": "idbridge-device",
        }));
    }
    let spec = serde_json::json!({"devices": devices, "thing_group": "reel-1"});
    let (code, text) = readback(&mock, &spec).await;
    assert_eq!(code, 0, "boto3 readback failed: {text}");
    assert!(text.contains("SNI_ONLY"), "{text}");

    // And it can fail: a device that was never registered is reported.
    let never = pki.device(99).unwrap();
    let never_id = DeviceIdentity::from_der(never.cert_der, Source::default()).unwrap();
    let bad = serde_json::json!({"devices": [{
        "certificate_id": never_id.device_id.as_str(), "thing": "Infineon_X", "policy": "idbridge-device"
    }]});
    let (code, text) = readback(&mock, &bad).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("ResourceNotFoundException"), "{text}");
}
