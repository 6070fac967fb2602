//! The one trait every cloud target implements.
//!
//! Connectors touch the wire and map the cloud's answers to [`Error`] kinds; they never retry,
//! sleep or pace themselves. Before each wire call they ask the engine's pacer for a token with
//! [`CallContext::acquire`], naming the cloud API, so per-API quotas (AWS IoT limits
//! `RegisterCertificateWithoutCA` to 10/s but `CreateThing` to 100/s) are kept in one place.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::identity::{DeviceId, DeviceIdentity};

/// A cloud API's documented rate limit, the engine's default for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quota {
    /// The API name the connector passes to [`CallContext::acquire`] (`"CreateThing"`).
    pub api: String,
    /// Sustained calls (or units, see [`CallContext::acquire_n`]) per second.
    pub per_second: f64,
    /// Calls allowed at once above the sustained rate; 1 means perfectly smooth.
    pub burst: u32,
}

impl Quota {
    /// A quota of `per_second` with a burst of 1.
    pub fn new(api: impl Into<String>, per_second: f64) -> Self {
        Quota {
            api: api.into(),
            per_second,
            burst: 1,
        }
    }
}

/// What a connector can do: a plain struct the engine plans with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capabilities {
    /// The target kind (`"aws-iot"`, `"azure-iot-hub"`, `"manifest"` ...).
    pub kind: &'static str,
    /// Most devices one `register` call takes (1 where the cloud has no bulk call).
    pub max_batch_size: usize,
    /// Most devices one `deregister` call takes; 0 means the same as `max_batch_size`. A
    /// target that deletes one device per wire call says 1, and the engine's concurrency and
    /// pacer do the fan-out (connectors never do).
    pub max_deregister_batch_size: usize,
    /// Default per-API quotas; configurable per target. Empty means unlimited.
    pub quotas: Vec<Quota>,
    /// Whether `list` works.
    pub supports_list: bool,
    /// Whether `deregister` works.
    pub supports_deregister: bool,
    /// Whether `register` may be repeated blindly after an unknown outcome. When false, the
    /// engine calls `lookup` first.
    pub idempotent_register: bool,
    /// Concurrency the engine should not exceed (0: no limit of the connector's own).
    pub max_concurrency: usize,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            kind: "unknown",
            max_batch_size: 1,
            max_deregister_batch_size: 0,
            quotas: Vec::new(),
            supports_list: false,
            supports_deregister: false,
            idempotent_register: false,
            max_concurrency: 0,
        }
    }
}

/// What the cloud holds for a device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoteDevice {
    /// The name the cloud knows it by (thing name, deviceId, registrationId ...).
    pub name: String,
    /// The fingerprint of the certificate the cloud holds under that name, where it tells.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// Cloud resource ids created or found (`certificate_arn`, `thing_arn`, `etag` ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, String>,
    /// The cloud's status for it (`ACTIVE`, `enabled` ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Where the device connects, where the target has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How the cloud's configuration differs from what idbridge would create; empty when identical.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub differences: Vec<String>,
}

impl RemoteDevice {
    /// A remote device known by `name`.
    pub fn named(name: impl Into<String>) -> Self {
        RemoteDevice {
            name: name.into(),
            ..Default::default()
        }
    }

    /// Adds a resource id.
    pub fn with_resource(mut self, key: &str, value: impl Into<String>) -> Self {
        self.resources.insert(key.to_owned(), value.into());
        self
    }
}

/// The per-device result of [`Connector::register`].
#[derive(Debug)]
#[non_exhaustive]
pub enum RegisterOutcome {
    /// Newly created.
    Created(RemoteDevice),
    /// It was there already, identical: success.
    AlreadyPresent(RemoteDevice),
    /// Something different is there under the same name or certificate; not overwritten.
    Conflict {
        /// What is there, if known.
        remote: Option<RemoteDevice>,
        /// What differs, one line.
        reason: String,
    },
    /// This device failed; temporary errors are retried by the engine, for this device only.
    Failed(Error),
}

/// The per-device result of [`Connector::deregister`].
#[derive(Debug)]
#[non_exhaustive]
pub enum DeregisterOutcome {
    /// Removed.
    Deleted,
    /// It was not there: success (deregister is idempotent).
    NotFound,
    /// This device failed.
    Failed(Error),
}

/// A page of [`Connector::list`].
#[derive(Debug, Default)]
pub struct ListPage {
    /// The devices on this page.
    pub devices: Vec<RemoteDevice>,
    /// The cursor for the next page; None at the end.
    pub next: Option<String>,
}

/// Grants the right to make one call to a named cloud API, at the quota. Implemented by the
/// engine's rate limiter.
#[async_trait]
pub trait Pacer: Send + Sync {
    /// Waits until `units` calls (or cost units) of `api` may be made.
    async fn acquire(&self, api: &str, units: u32);
}

/// A whole job's check fed chunk by chunk ([`Connector::job_check`]).
pub trait JobCheck: Send {
    /// Checks the next chunk of the job's devices, given every earlier one. An error refuses
    /// the whole job.
    fn check(&mut self, devices: &[DeviceIdentity]) -> Result<()>;
}

/// A connector's job check over chunks: its [`JobCheck`] where it has one, else its
/// `check_job` per chunk.
pub struct ChunkedCheck {
    connector: Arc<dyn Connector>,
    across: Option<Box<dyn JobCheck>>,
}

impl ChunkedCheck {
    /// A check of one job for `connector`.
    pub fn new(connector: Arc<dyn Connector>) -> Self {
        let across = connector.job_check();
        ChunkedCheck { connector, across }
    }

    /// Checks the next chunk.
    pub fn check(&mut self, devices: &[DeviceIdentity]) -> Result<()> {
        match &mut self.across {
            Some(c) => c.check(devices),
            None => self.connector.check_job(devices),
        }
    }
}

impl fmt::Debug for ChunkedCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkedCheck")
            .field("across_chunks", &self.across.is_some())
            .finish()
    }
}

/// Handed to every connector call by the engine.
#[derive(Clone)]
pub struct CallContext {
    pacer: Option<Arc<dyn Pacer>>,
    /// The journal's job id, when the call belongs to a job.
    pub job_id: Option<String>,
}

impl CallContext {
    /// A context whose calls are paced by `pacer`.
    pub fn paced(pacer: Arc<dyn Pacer>) -> Self {
        CallContext {
            pacer: Some(pacer),
            job_id: None,
        }
    }

    /// A context with no pacing, for tests and one-off calls.
    pub fn unpaced() -> Self {
        CallContext {
            pacer: None,
            job_id: None,
        }
    }

    /// Call before each wire call to `api`.
    pub async fn acquire(&self, api: &str) {
        self.acquire_n(api, 1).await;
    }

    /// Call before a wire call that costs `units` against `api`'s quota (a bulk call of 100
    /// devices where the cloud counts each device).
    pub async fn acquire_n(&self, api: &str, units: u32) {
        if let Some(p) = &self.pacer {
            p.acquire(api, units).await;
        }
    }
}

impl fmt::Debug for CallContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallContext")
            .field("paced", &self.pacer.is_some())
            .field("job_id", &self.job_id)
            .finish()
    }
}

/// A provisioning target. Object-safe: the engine holds `Arc<dyn Connector>`.
///
/// `register` and `deregister` take at most [`Capabilities::max_batch_size`] devices and return
/// one outcome per device, in order. An `Err` from them means the whole call failed (nothing
/// per-device is known); the engine then retries all its devices if the error is temporary.
#[async_trait]
pub trait Connector: Send + Sync + fmt::Debug {
    /// What this connector can do.
    fn info(&self) -> Capabilities;

    /// Checks a whole job's devices before the job is opened or resumed, before any call: a
    /// target whose names must be unique across the job (DPS registration ids) refuses the job
    /// here rather than half-way. An error refuses the whole job; no call is made.
    fn check_job(&self, devices: &[DeviceIdentity]) -> Result<()> {
        let _ = devices;
        Ok(())
    }

    /// The same check for a job whose devices arrive in chunks (a streamed open, a resume
    /// reading the journal a page at a time), for a target whose rule spans chunks: the
    /// returned checker keeps what it needs of earlier chunks. `None` (the default): each
    /// chunk's `check_job` is the whole check. Use it through [`ChunkedCheck`].
    fn job_check(&self) -> Option<Box<dyn JobCheck>> {
        None
    }

    /// Registers devices so the cloud admits them.
    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>>;

    /// Removes devices so the cloud refuses them.
    async fn deregister(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<DeregisterOutcome>> {
        let _ = (ctx, devices);
        Err(
            Error::new(ErrorKind::Unsupported, "this target cannot deregister")
                .with_operation("deregister"),
        )
    }

    /// What the cloud holds for this device; None when absent.
    async fn lookup(
        &self,
        ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>>;

    /// A page of what the cloud holds, where the target can list.
    async fn list(&self, ctx: &CallContext, cursor: Option<String>) -> Result<ListPage> {
        let _ = (ctx, cursor);
        Err(Error::new(ErrorKind::Unsupported, "this target cannot list").with_operation("list"))
    }

    /// Checks reachability and credentials.
    async fn health_check(&self, ctx: &CallContext) -> Result<()>;

    /// Called once when a job's work is done (a manifest writer flushes and signs here).
    async fn finish(&self, ctx: &CallContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
}
