//! Test helpers: one real emulator per test binary (started on first use on a free loopback
//! port, killed with its process group when the binary exits), connector configs pointing at
//! it, device identities.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use idbridge_core::engine::{Engine, EngineOptions, RetryPolicy};
use idbridge_core::{Connector, DeviceIdentity, Source};
use idbridge_gcp::{FirestoreConfig, PubSubConfig};
use idbridge_mock_clouds::{Emulator, EmulatorKind, TestPki};

/// Emulator start-up on this loaded 2-core machine: bounded, generous.
const START_TIMEOUT: Duration = Duration::from_secs(180);

static FIRESTORE: OnceLock<Emulator> = OnceLock::new();
static PUBSUB: OnceLock<Emulator> = OnceLock::new();
static PROJECTS: AtomicU32 = AtomicU32::new(0);

/// The Firestore emulator of this test binary.
pub fn firestore() -> &'static Emulator {
    FIRESTORE.get_or_init(|| {
        Emulator::start(EmulatorKind::Firestore, START_TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot start the Firestore emulator: {e:#}"))
    })
}

/// The Pub/Sub emulator of this test binary.
pub fn pubsub() -> &'static Emulator {
    PUBSUB.get_or_init(|| {
        Emulator::start(EmulatorKind::PubSub, START_TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot start the Pub/Sub emulator: {e:#}"))
    })
}

/// A project id of its own for one test (isolation inside the shared emulator).
pub fn project(test: &str) -> String {
    format!(
        "{test}-{}-{}",
        std::process::id(),
        PROJECTS.fetch_add(1, Ordering::SeqCst)
    )
}

/// A Firestore target on `url` (the emulator or a proxy in front of it) as the emulator's admin.
pub fn firestore_config(url: &str, project: &str) -> FirestoreConfig {
    let mut cfg = FirestoreConfig::new(project);
    cfg.endpoint_url = Some(url.to_owned());
    cfg.allow_http = true;
    cfg.emulator_admin = Some(true);
    cfg
}

/// A Pub/Sub target on `url`, no credentials.
pub fn pubsub_config(url: &str, project: &str, topic: &str) -> PubSubConfig {
    let mut cfg = PubSubConfig::new(project, topic);
    cfg.endpoint_url = Some(url.to_owned());
    cfg.allow_http = true;
    cfg.emulator = Some(true);
    cfg
}

/// Writes a service-account key file with a fresh RSA-2048 key: real google-cloud-auth
/// credentials that sign their own JWT, which the emulator does not accept as its admin.
pub fn service_account_file(dir: &std::path::Path, project: &str) -> std::path::PathBuf {
    service_account_with_key(dir, project, "http://127.0.0.1:9/token").0
}

/// [`service_account_file`] with its `token_uri`, also returning the public key (PKCS#1 DER).
pub fn service_account_with_key(
    dir: &std::path::Path,
    project: &str,
    token_uri: &str,
) -> (std::path::PathBuf, Vec<u8>) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> = key.as_der().unwrap();
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": project,
        "private_key_id": "test-kid-1",
        "private_key": pem,
        "client_email": format!("provisioner@{project}.iam.gserviceaccount.com"),
        "client_id": "1",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    });
    let path = dir.join("sa.json");
    std::fs::write(&path, json.to_string()).unwrap();
    (path, key.public_key().as_ref().to_vec())
}

/// `n` devices with unique serials under one generated vendor PKI.
pub fn devices(pki: &TestPki, first: u64, n: u64) -> Vec<DeviceIdentity> {
    (first..first + n)
        .map(|s| {
            let d = pki.device(s).unwrap();
            DeviceIdentity::from_der(
                Arc::<[u8]>::from(d.cert_der),
                Source {
                    file: "batch.pem".into(),
                    line: None,
                    entry: Some(s),
                },
            )
            .unwrap()
        })
        .collect()
}

/// An engine with a fresh SQLite journal, quick retries and a seeded jitter.
pub fn engine(
    connector: Arc<dyn Connector>,
    dir: &std::path::Path,
    attempt_timeout: Duration,
) -> Engine {
    let journal =
        idbridge_core::journal::open(&format!("sqlite:{}", dir.join("journal.sqlite").display()))
            .unwrap();
    let seed = 14;
    println!("engine jitter seed: {seed}");
    Engine::new(
        connector,
        journal,
        EngineOptions {
            concurrency: 4,
            attempt_timeout,
            retry: RetryPolicy {
                max_attempts: 6,
                base: Duration::from_millis(20),
                cap: Duration::from_millis(500),
                ..RetryPolicy::default()
            },
            seed: Some(seed),
            ..EngineOptions::default()
        },
    )
}
