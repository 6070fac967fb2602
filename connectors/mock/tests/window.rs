//! The engine's memory does not grow with the job: 200,000 devices provisioned into the
//! in-process mock registry, counting the devices the engine holds (not timed, no RSS).
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::sync::Arc;

use futures::StreamExt;
use idbridge_core::engine::{Engine, EngineOptions, NoProgress};
use idbridge_core::journal::{Operation, SqliteJournal};
use idbridge_core::{DeviceIdentity, Source};
use idbridge_mock::{MockConfig, MockConnector};
use idbridge_mock_clouds::TestPki;

const DEVICES: u64 = 200_000;

/// Certificates made from one template by rewriting its serial number in place: distinct
/// devices (distinct SHA-256) without 200,000 key generations. The mock registry parses them
/// and does not check signatures.
struct Template {
    der: Vec<u8>,
    serial_at: usize,
}

impl Template {
    fn new() -> Self {
        let pki = TestPki::infineon_like().unwrap();
        let d = pki.device(1).unwrap();
        // INTEGER, 9 bytes: 0x1f then the serial as 8 big-endian bytes (TestPki's layout).
        let mut pattern = vec![0x02, 0x09, 0x1f];
        pattern.extend_from_slice(&1u64.to_be_bytes());
        let at = d
            .cert_der
            .windows(pattern.len())
            .position(|w| w == pattern)
            .expect("the template's serial number");
        Template {
            der: d.cert_der,
            serial_at: at + 3,
        }
    }

    fn device(&self, i: u64) -> DeviceIdentity {
        let mut der = self.der.clone();
        der[self.serial_at..self.serial_at + 8].copy_from_slice(&(i + 1).to_be_bytes());
        DeviceIdentity::from_der(
            der,
            Source {
                file: "generated".into(),
                line: None,
                entry: Some(i),
            },
        )
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_200k_devices_holds_a_bounded_window() {
    let template = Template::new();
    let connector = Arc::new(
        MockConnector::new(MockConfig {
            // The engine's pace: unlimited here, the test is about memory, not quotas.
            quota: Some(1e9),
            ..Default::default()
        })
        .await
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path().join("j.sqlite")).unwrap());
    let opts = EngineOptions {
        concurrency: 16,
        max_concurrency: 16,
        ..Default::default()
    };
    let engine = Engine::new(connector.clone(), journal, opts.clone());
    let opened = {
        let devices: Vec<DeviceIdentity> = (0..DEVICES).map(|i| template.device(i)).collect();
        engine
            .open(
                Operation::Provision,
                "mock",
                &devices,
                serde_json::Value::Null,
            )
            .await
            .unwrap()
    };
    // The input is generated as the engine reads it: nothing but the engine holds devices.
    let input = futures::stream::iter((0..DEVICES).map(|i| Ok(template.device(i)))).boxed();
    let report = engine
        .run_stream(&opened, Operation::Provision, "mock", input, &NoProgress)
        .await
        .unwrap();
    assert!(report.all_done(), "{:?}", report.counts);
    assert_eq!(report.counts.done, DEVICES);
    let stats = connector.registry().unwrap().stats();
    assert_eq!(stats.devices, DEVICES);
    assert_eq!(stats.max_creates_per_device, 1);

    // The mock registers one device per call: at most `concurrency` calls of one in flight,
    // one batch queued, one being handed over, and the window with a batch being formed.
    let batch = 1;
    let bound = (opts.concurrency + 3) * batch + opts.window.max(batch);
    eprintln!(
        "peak held {} devices of {DEVICES} (bound {bound})",
        report.peak_held
    );
    assert!(report.peak_held >= 1);
    assert!(
        report.peak_held <= bound,
        "the engine held {} devices at once; bound {bound}",
        report.peak_held
    );
    assert_eq!(engine.held().now(), 0);
}
