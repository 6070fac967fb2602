//! Test helpers: a mock Azure pair, connector configs pointing at it, device identities.
#![allow(dead_code)]

use std::io::Write;
use std::sync::Arc;

use idbridge_azure::AzureConfig;
use idbridge_core::{DeviceIdentity, Source};
use idbridge_mock_clouds::azure::{AzureMock, AzureMockConfig};
use idbridge_mock_clouds::{TestDevice, TestPki};
use secrecy::SecretString;

pub struct Env {
    pub mock: AzureMock,
    pub ca_file: tempfile::NamedTempFile,
}

pub async fn start(cfg: AzureMockConfig) -> Env {
    let mock = AzureMock::start(cfg).await.expect("mock starts");
    let mut ca_file = tempfile::NamedTempFile::new().unwrap();
    ca_file.write_all(mock.ca_pem().as_bytes()).unwrap();
    Env { mock, ca_file }
}

impl Env {
    pub fn hub_config(&self) -> AzureConfig {
        AzureConfig {
            kind: Some("azure-iot-hub".into()),
            connection_string: Some(SecretString::from(self.mock.hub_connection_string())),
            ca_file: Some(self.ca_file.path().to_owned()),
            ..Default::default()
        }
    }

    pub fn dps_config(&self) -> AzureConfig {
        AzureConfig {
            kind: Some("azure-dps".into()),
            connection_string: Some(SecretString::from(self.mock.dps_connection_string())),
            ca_file: Some(self.ca_file.path().to_owned()),
            iot_hub_host_name: Some(self.mock.hub_host()),
            linked_hubs: vec![SecretString::from(self.mock.hub_connection_string())],
            ..Default::default()
        }
    }
}

pub fn identity(d: &TestDevice, n: u64) -> DeviceIdentity {
    DeviceIdentity::from_der(
        Arc::<[u8]>::from(d.cert_der.clone()),
        Source {
            file: "batch.pem".into(),
            line: None,
            entry: Some(n),
        },
    )
    .expect("test certificate parses")
}

/// Infineon-like devices (CN "Infineon IoT Node" on all).
pub fn same_cn_devices(pki: &TestPki, first: u64, n: u64) -> Vec<(TestDevice, DeviceIdentity)> {
    (first..first + n)
        .map(|s| {
            let d = pki.device(s).unwrap();
            let id = identity(&d, s);
            (d, id)
        })
        .collect()
}

/// Devices with unique CNs (Trust M Express-like: 64 lower-case hex).
pub fn unique_cn_devices(pki: &TestPki, first: u64, n: u64) -> Vec<(TestDevice, DeviceIdentity)> {
    (first..first + n)
        .map(|s| {
            let cn = format!("{:064x}", 0xabc0_0000_u64 + s);
            let d = pki.device_with_cn(s, &cn).unwrap();
            let id = identity(&d, s);
            (d, id)
        })
        .collect()
}
