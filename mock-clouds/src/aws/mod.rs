//! A mock AWS IoT Core: the control plane over REST-JSON with SigV4 (the real `aws-sdk-iot`,
//! `aws iot` and boto3 talk to it), and a mutual-TLS device endpoint that admits a device only if
//! its certificate is registered, ACTIVE, attached to a thing and has a policy, and the device
//! sent SNI naming the data endpoint (multi-account registration requires SNI).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use idbridge_mock_clouds::aws::{AwsMockConfig, MockAws};
//! let mock = MockAws::start(AwsMockConfig::default().with_default_quotas()).await?;
//! // AWS_ENDPOINT_URL=mock.endpoint_url(), keys TEST_ACCESS_KEY_ID / TEST_SECRET_ACCESS_KEY,
//! // region mock.region(); devices connect to mock.device_addr() with SNI mock.data_host().
//! # Ok(()) }
//! ```
//!
//! Deviations from AWS, on purpose: the data endpoint host is `localhost` (the test CA's server
//! certificate names it); the device endpoint answers a one-line CONNACK instead of speaking
//! MQTT; asynchronous detach is modelled as "the next N delete attempts still see it".

mod api;
mod sigv4;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;

pub use state::{AwsError, Registry};

use crate::server::{FaultScript, Latency, RunningServer, serve};
use crate::tls::{DeviceEndpoint, DeviceHello, TestCa, device_endpoint};
use api::{Bucket, Shared};

/// The access key id the mock accepts by default.
pub const TEST_ACCESS_KEY_ID: &str = "AKIAIDBRIDGEMOCK0001";
/// The secret for [`TEST_ACCESS_KEY_ID`] (a test value, not a real key).
pub const TEST_SECRET_ACCESS_KEY: &str = "idbridge-mock-secret-do-not-use";

/// How the mock is set up.
#[derive(Clone)]
pub struct AwsMockConfig {
    /// Region the SigV4 scope must name.
    pub region: String,
    /// Account id in ARNs.
    pub account_id: String,
    /// Accepted access key id → secret.
    pub credentials: BTreeMap<String, String>,
    /// Per-API calls per second (API name → rate); absent APIs are unlimited.
    pub quotas: BTreeMap<String, f64>,
    /// Host name devices must send as SNI, returned by DescribeEndpoint.
    pub data_host: String,
    /// Delete attempts that still see a detached thing (0: detach is synchronous).
    pub async_detach_polls: u32,
}

impl std::fmt::Debug for AwsMockConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsMockConfig")
            .field("region", &self.region)
            .field("account_id", &self.account_id)
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .field("quotas", &self.quotas)
            .field("data_host", &self.data_host)
            .finish()
    }
}

impl Default for AwsMockConfig {
    fn default() -> Self {
        AwsMockConfig {
            region: "eu-central-1".to_owned(),
            account_id: "123456789012".to_owned(),
            credentials: BTreeMap::from([(
                TEST_ACCESS_KEY_ID.to_owned(),
                TEST_SECRET_ACCESS_KEY.to_owned(),
            )]),
            quotas: BTreeMap::new(),
            data_host: "localhost".to_owned(),
            async_detach_polls: 0,
        }
    }
}

impl AwsMockConfig {
    /// AWS IoT's default per-account quotas for the APIs idbridge uses (the ones AWS does not
    /// publish are assumed at 10/s, see the connector's docs).
    pub fn default_quotas() -> BTreeMap<String, f64> {
        [
            ("RegisterCertificateWithoutCA", 10.0),
            ("DescribeCertificate", 10.0),
            ("UpdateCertificate", 10.0),
            ("DeleteCertificate", 10.0),
            ("ListCertificates", 10.0),
            ("AttachPolicy", 15.0),
            ("DetachPolicy", 15.0),
            ("ListAttachedPolicies", 10.0),
            ("GetPolicy", 10.0),
            ("CreateThing", 100.0),
            ("DescribeThing", 350.0),
            ("DeleteThing", 100.0),
            ("AttachThingPrincipal", 100.0),
            ("DetachThingPrincipal", 100.0),
            ("ListThingPrincipals", 10.0),
            ("ListPrincipalThings", 10.0),
            ("ListPrincipalThingsV2", 10.0),
            ("AddThingToThingGroup", 100.0),
            ("ListThingsInThingGroup", 10.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Enforces [`AwsMockConfig::default_quotas`].
    pub fn with_default_quotas(mut self) -> Self {
        self.quotas = Self::default_quotas();
        self
    }
}

/// A running mock AWS IoT: control plane and device endpoint. Stops when dropped.
#[derive(Debug)]
pub struct MockAws {
    control: RunningServer,
    device: DeviceEndpoint,
    ca: TestCa,
    shared: Arc<Shared>,
    data_host: String,
}

impl MockAws {
    /// Starts both endpoints on `127.0.0.1:0`.
    pub async fn start(config: AwsMockConfig) -> anyhow::Result<Self> {
        Self::start_on(config, "127.0.0.1:0", "127.0.0.1:0").await
    }

    /// Starts the control plane on `control` and the device endpoint on `device`.
    pub async fn start_on(
        config: AwsMockConfig,
        control: &str,
        device: &str,
    ) -> anyhow::Result<Self> {
        let mut registry = Registry::new(&config.region, &config.account_id, &config.data_host);
        registry.async_detach_polls = config.async_detach_polls;
        let quotas: HashMap<String, Bucket> = config
            .quotas
            .iter()
            .map(|(k, v)| (k.clone(), Bucket::new(*v)))
            .collect();
        let shared = Arc::new(Shared {
            registry: Mutex::new(registry),
            keys: config.credentials.clone(),
            region: config.region.clone(),
            quotas: Mutex::new(quotas),
            throttled: Default::default(),
            calls: Default::default(),
        });
        let router = Router::new()
            .fallback(api::handle)
            .with_state(Arc::clone(&shared));
        let control = serve(router, control, None).await?;
        let ca = TestCa::new("idbridge mock AWS IoT CA")?;
        let admit_state = Arc::clone(&shared);
        let host = config.data_host.clone();
        let device = device_endpoint(
            device,
            ca.mtls_config()?,
            Arc::new(move |h: &DeviceHello| {
                match h.sni.as_deref() {
                    None => {
                        return Err("no SNI: multi-account registered certificates need SNI".into());
                    }
                    Some(s) if s != host => {
                        return Err(format!("SNI {s} is not this account's endpoint"));
                    }
                    Some(_) => {}
                }
                admit_state.lock().admit(&h.cert_der)
            }),
        )
        .await?;
        Ok(MockAws {
            control,
            device,
            ca,
            shared,
            data_host: config.data_host,
        })
    }

    /// `http://127.0.0.1:PORT`: what `AWS_ENDPOINT_URL` is set to.
    pub fn endpoint_url(&self) -> &str {
        &self.control.url
    }

    /// The region requests must be signed for.
    pub fn region(&self) -> &str {
        &self.shared.region
    }

    /// Where devices connect.
    pub fn device_addr(&self) -> SocketAddr {
        self.device.addr
    }

    /// The SNI devices must send (the DescribeEndpoint answer).
    pub fn data_host(&self) -> &str {
        &self.data_host
    }

    /// The CA devices trust for the device endpoint, PEM.
    pub fn device_ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The fault script in front of the control plane.
    pub fn faults(&self) -> &FaultScript {
        &self.control.faults
    }

    /// The latency injected in front of the control plane (none by default).
    pub fn latency(&self) -> &Latency {
        &self.control.latency
    }

    /// The registry, for test setup and inspection.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.shared.lock()
    }

    /// Calls answered with ThrottlingException so far.
    pub fn throttled(&self) -> u64 {
        self.shared.throttled.load(Ordering::Relaxed)
    }

    /// Authenticated calls of `api` so far (throttled ones included).
    pub fn calls(&self, api: &str) -> u64 {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(api)
            .copied()
            .unwrap_or(0)
    }

    /// Sets (or with `None` removes) the quota of `api`.
    pub fn set_quota(&self, api: &str, per_second: Option<f64>) {
        let mut q = self.shared.quotas.lock().unwrap_or_else(|p| p.into_inner());
        match per_second {
            Some(r) => {
                q.insert(api.to_owned(), Bucket::new(r));
            }
            None => {
                q.remove(api);
            }
        }
    }
}

/// Options of [`run_standalone`].
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// Control-plane listen address (`127.0.0.1:4566`).
    pub listen: String,
    /// Device endpoint listen address (`127.0.0.1:8883`).
    pub device_listen: String,
    /// Where to write the device endpoint's CA certificate (PEM).
    pub ca_file: Option<PathBuf>,
    /// Enforce AWS's default quotas.
    pub default_quotas: bool,
}

/// Runs the mock in the foreground until Ctrl-C or SIGTERM (`idbridge mock-cloud aws --listen
/// ADDR`). Prints the control-plane URL on stdout's first line, then one JSON line: endpoint URL,
/// region, test keys, device address and SNI host.
pub async fn run_standalone(opts: StandaloneOptions) -> anyhow::Result<()> {
    let mut cfg = AwsMockConfig::default();
    if opts.default_quotas {
        cfg = cfg.with_default_quotas();
    }
    let mock = MockAws::start_on(cfg, &opts.listen, &opts.device_listen).await?;
    if let Some(path) = &opts.ca_file {
        std::fs::write(path, mock.device_ca_pem())?;
    }
    let details = serde_json::json!({
        "endpoint_url": mock.endpoint_url(),
        "region": mock.region(),
        "aws_access_key_id": TEST_ACCESS_KEY_ID,
        "aws_secret_access_key": TEST_SECRET_ACCESS_KEY,
        "device_endpoint": mock.device_addr().to_string(),
        "device_sni": mock.data_host(),
        "device_ca_file": opts.ca_file,
    });
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", mock.endpoint_url())?;
        writeln!(out, "{details}")?;
        out.flush()?;
    }
    shutdown_signal().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
