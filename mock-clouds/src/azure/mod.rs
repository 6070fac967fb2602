//! Azure IoT Hub (device identity registry) and Device Provisioning Service (individual
//! enrollments) mocks, speaking the service REST APIs of `../shared/reference/azure.md`:
//! HTTPS with a generated CA, SAS tokens checked as the services check them (and Entra
//! bearer tokens from a mock client-credentials token endpoint), api-version allow-lists,
//! If-Match semantics, bulk limits (100 / 10), DPS's three certificate encodings, both IoT Hub
//! error shapes and the DPS shape, quotas answered with 429 + `Retry-After`, and the shared
//! fault script. Two mutual-TLS device endpoints admit a device whose certificate matches an
//! enabled hub device (by thumbprint) or an enabled DPS enrollment (certificate and CN =
//! registration ID); a device admitted by DPS is assigned to the linked hub mock (created there
//! and given a registration state), so it then connects to the hub as on Azure.

mod common;
pub mod dps;
pub mod hub;
pub mod sas;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::clock::MockClock;
use crate::server::{self, FaultScript, Latency, RunningServer};
use crate::tls::{self, DeviceEndpoint, DeviceHello, TestCa};

pub use common::{QuotaSettings, ServiceStats};

/// How a mock Azure pair (hub + DPS) behaves.
#[derive(Debug, Clone)]
pub struct AzureMockConfig {
    /// IoT Hub registry operations per minute (S1: 100 × units); None = unlimited.
    pub hub_ops_per_minute: Option<f64>,
    /// DPS service operations per minute (1,000 per instance); None = unlimited.
    pub dps_ops_per_minute: Option<f64>,
    /// Count each device of a bulk call as one operation (the conservative reading); when
    /// false a bulk call costs one operation.
    pub bulk_counts_per_device: bool,
    /// Operations that may arrive at once (the bucket size); None = one full bulk call (100
    /// for the hub, 10 for DPS).
    pub burst: Option<f64>,
    /// How long a call over the quota is held (traffic shaping) before the mock answers 429
    /// instead; default 50 ms.
    pub shaping: std::time::Duration,
}

impl Default for AzureMockConfig {
    fn default() -> Self {
        AzureMockConfig {
            hub_ops_per_minute: None,
            dps_ops_per_minute: None,
            bulk_counts_per_device: true,
            burst: None,
            shaping: std::time::Duration::from_millis(50),
        }
    }
}

impl AzureMockConfig {
    /// An S1 hub with `units` units (100 registry operations/min/unit) and a DPS instance at
    /// its documented 1,000 operations/min.
    pub fn s1(units: u32) -> Self {
        AzureMockConfig {
            hub_ops_per_minute: Some(100.0 * f64::from(units)),
            dps_ops_per_minute: Some(1000.0),
            ..Default::default()
        }
    }
}

/// Where the mocks listen.
#[derive(Debug, Clone)]
pub struct AzureMockAddrs {
    /// IoT Hub service API.
    pub hub: String,
    /// DPS service API.
    pub dps: String,
    /// IoT Hub device endpoint (mTLS).
    pub hub_devices: String,
    /// DPS device endpoint (mTLS).
    pub dps_devices: String,
}

impl AzureMockAddrs {
    /// Everything on `127.0.0.1:0`.
    pub fn loopback() -> Self {
        AzureMockAddrs {
            hub: "127.0.0.1:0".into(),
            dps: "127.0.0.1:0".into(),
            hub_devices: "127.0.0.1:0".into(),
            dps_devices: "127.0.0.1:0".into(),
        }
    }

    /// The hub on `listen`, DPS and the device endpoints on the next three ports (or all on
    /// port 0 when `listen` has port 0): what `idbridge mock-cloud azure --listen` uses.
    pub fn from_listen(listen: &str) -> anyhow::Result<Self> {
        let (host, port) = listen
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("--listen wants HOST:PORT, got {listen:?}"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| anyhow::anyhow!("--listen wants HOST:PORT, got {listen:?}"))?;
        let at = |d: u16| -> anyhow::Result<String> {
            if port == 0 {
                return Ok(format!("{host}:0"));
            }
            let p = port
                .checked_add(d)
                .ok_or_else(|| anyhow::anyhow!("--listen port {port} too high"))?;
            Ok(format!("{host}:{p}"))
        };
        Ok(AzureMockAddrs {
            hub: at(0)?,
            dps: at(1)?,
            hub_devices: at(2)?,
            dps_devices: at(3)?,
        })
    }
}

/// A running IoT Hub mock and DPS mock with their device endpoints; stops when dropped.
pub struct AzureMock {
    ca: TestCa,
    hub_server: RunningServer,
    dps_server: RunningServer,
    hub_devices: DeviceEndpoint,
    dps_devices: DeviceEndpoint,
    hub: Arc<hub::Hub>,
    dps: Arc<dps::Dps>,
    clock: MockClock,
    hub_key: String,
    hub_read_key: String,
    dps_key: String,
    entra_secret: String,
    federated_token: String,
    identity_header: String,
}

impl std::fmt::Debug for AzureMock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureMock")
            .field("hub", &self.hub_server.url)
            .field("dps", &self.dps_server.url)
            .finish_non_exhaustive()
    }
}

/// The Entra tenant and client id the mock token endpoint knows.
pub const ENTRA_TENANT: &str = "00000000-0000-4000-8000-00000000a2e1";
/// The Entra application (client) id the mock token endpoint knows.
pub const ENTRA_CLIENT_ID: &str = "11111111-1111-4111-8111-11111111c11e";

impl AzureMock {
    /// Starts both services and device endpoints on loopback ports.
    pub async fn start(config: AzureMockConfig) -> anyhow::Result<Self> {
        Self::start_on(&AzureMockAddrs::loopback(), config).await
    }

    /// Starts on the given addresses.
    pub async fn start_on(addrs: &AzureMockAddrs, config: AzureMockConfig) -> anyhow::Result<Self> {
        let ca = TestCa::new("idbridge mock Azure CA")?;
        let hub_key = random_key();
        let hub_read_key = random_key();
        let dps_key = random_key();
        let entra_secret = STANDARD.encode(random_bytes(24));
        let federated_token = format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.sa",
            STANDARD.encode(random_bytes(24))
        );
        let identity_header = hex::encode(random_bytes(16));
        let entra = common::EntraApp {
            tenant: ENTRA_TENANT.into(),
            client_id: ENTRA_CLIENT_ID.into(),
            client_secret: entra_secret.clone(),
            federated_token: federated_token.clone(),
            identity_header: identity_header.clone(),
        };
        let clock = MockClock::default();
        let hub = Arc::new(hub::Hub::new(
            vec![
                policy("iothubowner", &hub_key, true)?,
                policy("registryRead", &hub_read_key, false)?,
            ],
            entra.clone(),
            QuotaSettings {
                per_minute: config.hub_ops_per_minute,
                burst: config.burst.unwrap_or(100.0),
                bulk_counts_per_device: config.bulk_counts_per_device,
                shaping: config.shaping,
            },
            clock.clone(),
        ));
        let dps = Arc::new(dps::Dps::new(
            vec![policy("provisioningserviceowner", &dps_key, true)?],
            entra,
            QuotaSettings {
                per_minute: config.dps_ops_per_minute,
                burst: config.burst.unwrap_or(10.0),
                bulk_counts_per_device: config.bulk_counts_per_device,
                shaping: config.shaping,
            },
            clock.clone(),
        ));
        let https = ca.https_config()?;
        let hub_server = server::serve(
            hub::router(Arc::clone(&hub)),
            &addrs.hub,
            Some(https.clone()),
        )
        .await?;
        let dps_server =
            server::serve(dps::router(Arc::clone(&dps)), &addrs.dps, Some(https)).await?;
        dps.link_hub(host_of(&hub_server.url), Arc::clone(&hub));
        let h = Arc::clone(&hub);
        let hub_devices = tls::device_endpoint(
            &addrs.hub_devices,
            ca.mtls_config()?,
            Arc::new(move |hello: &DeviceHello| h.admit(&hello.cert_der)),
        )
        .await?;
        let d = Arc::clone(&dps);
        let dps_devices = tls::device_endpoint(
            &addrs.dps_devices,
            ca.mtls_config()?,
            Arc::new(move |hello: &DeviceHello| d.admit(&hello.cert_der)),
        )
        .await?;
        Ok(AzureMock {
            clock,
            ca,
            hub_server,
            dps_server,
            hub_devices,
            dps_devices,
            hub,
            dps,
            hub_key,
            hub_read_key,
            dps_key,
            entra_secret,
            federated_token,
            identity_header,
        })
    }

    /// The CA certificate both services and the device endpoints chain to (`ca_file`).
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// `https://localhost:PORT` of the hub.
    pub fn hub_url(&self) -> &str {
        &self.hub_server.url
    }

    /// `https://localhost:PORT` of DPS.
    pub fn dps_url(&self) -> &str {
        &self.dps_server.url
    }

    /// The hub's host name as in its connection string (`localhost:PORT`).
    pub fn hub_host(&self) -> String {
        host_of(&self.hub_server.url)
    }

    /// DPS's host name as in its connection string.
    pub fn dps_host(&self) -> String {
        host_of(&self.dps_server.url)
    }

    /// The hub's `iothubowner` connection string.
    pub fn hub_connection_string(&self) -> String {
        format!(
            "HostName={};SharedAccessKeyName=iothubowner;SharedAccessKey={}",
            self.hub_host(),
            self.hub_key
        )
    }

    /// A connection string of the read-only `registryRead` policy.
    pub fn hub_read_only_connection_string(&self) -> String {
        format!(
            "HostName={};SharedAccessKeyName=registryRead;SharedAccessKey={}",
            self.hub_host(),
            self.hub_read_key
        )
    }

    /// DPS's `provisioningserviceowner` connection string.
    pub fn dps_connection_string(&self) -> String {
        format!(
            "HostName={};SharedAccessKeyName=provisioningserviceowner;SharedAccessKey={}",
            self.dps_host(),
            self.dps_key
        )
    }

    /// The client secret of the Entra application [`ENTRA_CLIENT_ID`] in tenant
    /// [`ENTRA_TENANT`]; the token endpoint is `POST {hub or dps url}/{tenant}/oauth2/v2.0/token`.
    pub fn entra_client_secret(&self) -> &str {
        &self.entra_secret
    }

    /// The federated service-account token the mock Entra app trusts (workload identity): write
    /// it to the file `AZURE_FEDERATED_TOKEN_FILE` names, with `AZURE_TENANT_ID` =
    /// [`ENTRA_TENANT`], `AZURE_CLIENT_ID` = [`ENTRA_CLIENT_ID`] and `AZURE_AUTHORITY_HOST` =
    /// the hub or DPS URL.
    pub fn federated_token(&self) -> &str {
        &self.federated_token
    }

    /// The `IDENTITY_HEADER` of the mock managed identity endpoint, which is
    /// `{hub or dps url}/msi/token` (`IDENTITY_ENDPOINT`, as on App Service).
    pub fn identity_header(&self) -> &str {
        &self.identity_header
    }

    /// A bearer token the hub accepts, as `az account get-access-token --scope
    /// https://iothubs.azure.net/.default` would print for a logged-in user.
    pub fn issue_hub_token(&self) -> String {
        self.hub.gate().issue_token()
    }

    /// A bearer token DPS accepts.
    pub fn issue_dps_token(&self) -> String {
        self.dps.gate().issue_token()
    }

    /// The fault script in front of the hub.
    pub fn hub_faults(&self) -> &FaultScript {
        &self.hub_server.faults
    }

    /// The fault script in front of DPS.
    pub fn dps_faults(&self) -> &FaultScript {
        &self.dps_server.faults
    }

    /// The latency injected in front of IoT Hub (none by default).
    pub fn hub_latency(&self) -> &Latency {
        &self.hub_server.latency
    }

    /// The latency injected in front of DPS (none by default).
    pub fn dps_latency(&self) -> &Latency {
        &self.dps_server.latency
    }

    /// The hub's device endpoint address.
    pub fn hub_device_addr(&self) -> std::net::SocketAddr {
        self.hub_devices.addr
    }

    /// DPS's device endpoint address.
    pub fn dps_device_addr(&self) -> std::net::SocketAddr {
        self.dps_devices.addr
    }

    /// The clock both services' quotas run on: freeze and advance it instead of sleeping.
    pub fn clock(&self) -> &MockClock {
        &self.clock
    }

    /// The hub registry, for assertions.
    pub fn hub(&self) -> &hub::Hub {
        &self.hub
    }

    /// The DPS enrollment store, for assertions.
    pub fn dps(&self) -> &dps::Dps {
        &self.dps
    }

    /// Everything a client needs, as JSON (what `idbridge mock-cloud azure` prints).
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "azure",
            "iot_hub_url": self.hub_url(),
            "iot_hub_connection_string": self.hub_connection_string(),
            "iot_hub_read_only_connection_string": self.hub_read_only_connection_string(),
            "iot_hub_device_endpoint": self.hub_device_addr().to_string(),
            "dps_url": self.dps_url(),
            "dps_connection_string": self.dps_connection_string(),
            "dps_device_endpoint": self.dps_device_addr().to_string(),
            "entra": {
                "tenant_id": ENTRA_TENANT,
                "client_id": ENTRA_CLIENT_ID,
                "client_secret": self.entra_client_secret(),
                "authority_host": self.hub_url(),
                "federated_token": self.federated_token(),
                "identity_endpoint": format!("{}/msi/token", self.hub_url()),
                "identity_header": self.identity_header(),
            },
            "ca_pem": self.ca_pem(),
            "faults": format!("POST {}/_mock/faults or {}/_mock/faults", self.hub_url(), self.dps_url()),
        })
    }
}

fn host_of(url: &str) -> String {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .to_owned()
}

fn policy(name: &str, key_b64: &str, write: bool) -> anyhow::Result<sas::Policy> {
    Ok(sas::Policy {
        name: name.into(),
        key: STANDARD.decode(key_b64)?,
        write,
    })
}

fn random_key() -> String {
    STANDARD.encode(random_bytes(32))
}

pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // The system RNG failing is not recoverable in a test process; fall back to a fixed
    // pattern rather than panic (keys are then predictable, which only matters for a mock).
    let _ = aws_lc_rs::rand::fill(&mut b);
    b
}
