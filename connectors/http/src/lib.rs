//! # idbridge-http
//!
//! Generic HTTP targets of idbridge:
//!
//! - [`InteropConnector`] (target kind `interop`): the client side of CIRRENT Cloud ID's
//!   "interop" v1 Product Cloud API. Certificates go out as `POST {base_url}/interop`
//!   `{"action":"provision","certs":[{"ref","cert"}]}` with an ES256 bearer JWT minted per
//!   request; every per-`ref` result becomes that device's outcome (a missing result is a
//!   failure, never a silent success). `deprovision` and fingerprint `status` are idbridge
//!   extensions used only when the receiver announces them in its `info` answer.
//! - [`WebhookConnector`] (target kind `webhook`): one Standard Webhooks v1 signed event per
//!   device (`device.provisioned`, `device.deprovisioned`), whose `webhook-id` is derived from
//!   target, operation, fingerprint and the job (the state version) so receivers can
//!   de-duplicate retries yet apply every state change.
//!
//! Both never retry or sleep: the engine does, around them. Configuration keys, environment
//! variables and the mock receivers that cover them are in `docs.md`.
#![doc = include_str!("../docs.md")]
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod error;
pub mod sign;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use idbridge_core::{
    CallContext, Capabilities, Connector, DeregisterOutcome, DeviceIdentity, Error, ErrorKind,
    Quota, RegisterOutcome, RemoteDevice, Result,
};
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;

pub use client::{CertItem, InfoResponse, ItemResult};
pub use config::{InteropConfig, WebhookConfig};
pub use sign::{JwtSigner, WebhookKey};

use client::{InteropClient, StatusRequest, StatusResponse, WebhookClient, parse_json};

/// The pacer API name of every interop call.
pub const INTEROP_API: &str = "interop";
/// The pacer API name of every webhook delivery.
pub const WEBHOOK_API: &str = "webhook";

/// A Cloud ID interop v1 receiver as a provisioning target.
pub struct InteropConnector {
    name: String,
    cfg: InteropConfig,
    client: InteropClient,
    extensions: OnceCell<Vec<String>>,
}

impl fmt::Debug for InteropConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InteropConnector")
            .field("name", &self.name)
            .field("base_url", &self.cfg.base_url)
            .field("audience", &self.cfg.audience)
            .field("batch_size", &self.cfg.batch_size)
            .finish_non_exhaustive()
    }
}

impl InteropConnector {
    /// Builds the connector of target `name`; reads the signing key.
    pub fn new(name: &str, cfg: InteropConfig) -> Result<Self> {
        let key = cfg.validate()?;
        let signer = JwtSigner::new(
            key.expose_secret(),
            &cfg.issuer,
            &cfg.audience,
            cfg.token_ttl_secs,
        )?;
        let http = client::http_client(
            cfg.ca_file.as_deref(),
            Duration::from_secs(cfg.timeout_secs),
        )?;
        Ok(InteropConnector {
            name: name.to_owned(),
            client: InteropClient::new(http, &cfg.base_url, signer),
            cfg,
            extensions: OnceCell::new(),
        })
    }

    /// The receiver's `info` answer (fresh, not cached).
    pub async fn receiver_info(&self, ctx: &CallContext) -> Result<InfoResponse> {
        ctx.acquire(INTEROP_API).await;
        self.client.info().await
    }

    async fn has_extension(&self, ctx: &CallContext, ext: &str) -> Result<bool> {
        let exts = self
            .extensions
            .get_or_try_init(|| async {
                match self.receiver_info(ctx).await {
                    Ok(info) => Ok(info.extensions),
                    // A v0 receiver answers 400 to `info`: no extensions.
                    Err(e) if e.kind() == ErrorKind::InvalidInput => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(exts.iter().any(|e| e == ext))
    }

    /// Sends `action` for `devices` in requests bounded by `batch_size` and `max_body_bytes`,
    /// and returns the results by ref. A failing request fails the whole call when it is the
    /// only one; otherwise its devices get the error each.
    async fn send_certs(
        &self,
        ctx: &CallContext,
        action: &'static str,
        operation: &'static str,
        devices: &[DeviceIdentity],
    ) -> Result<HashMap<String, std::result::Result<ItemResult, Error>>> {
        let items: Vec<CertItem> = devices
            .iter()
            .map(|d| CertItem {
                reference: d.device_id.to_string(),
                cert: STANDARD.encode(d.to_pem()),
            })
            .collect();
        let chunks = chunk(&items, self.cfg.batch_size, self.cfg.max_body_bytes);
        let many = chunks.len() > 1;
        let mut out = HashMap::with_capacity(items.len());
        for part in chunks {
            let body = serde_json::to_vec(&client::CertsRequest {
                action,
                certs: part,
            })
            .map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot encode request").with_source(e)
            })?;
            ctx.acquire(INTEROP_API).await;
            tracing::debug!(target_name = %self.name, action, certs = part.len(), "interop request");
            let answer = match self.client.post(operation, body).await {
                Ok(bytes) => parse_json::<Vec<ItemResult>>(operation, &bytes),
                Err(e) => Err(e),
            };
            match answer {
                Ok(results) => {
                    for r in results {
                        out.insert(r.reference.clone(), Ok(r));
                    }
                }
                Err(e) if !many => return Err(e.with_context("target", &self.name)),
                Err(e) => {
                    for item in part {
                        out.insert(item.reference.clone(), Err(e.clone()));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Connector for InteropConnector {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "interop",
            max_batch_size: self.cfg.batch_size,
            max_deregister_batch_size: 0,
            quotas: vec![Quota::new(INTEROP_API, self.cfg.requests_per_second)],
            supports_list: false,
            supports_deregister: true,
            // Receivers re-provision idempotently (AWS: ResourceAlreadyExists → reuse).
            idempotent_register: true,
            max_concurrency: 4,
        }
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        let mut results = self
            .send_certs(ctx, "provision", "interop provision", devices)
            .await?;
        Ok(devices
            .iter()
            .map(|d| match results.remove(d.device_id.as_str()) {
                Some(Ok(r)) => register_outcome(d, r),
                Some(Err(e)) => RegisterOutcome::Failed(e.with_context("device_id", &d.device_id)),
                // Duplicates in one call collapse into one result: reuse an already-mapped one.
                None => missing_result(d),
            })
            .collect())
    }

    async fn deregister(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<DeregisterOutcome>> {
        if !self.has_extension(ctx, "deprovision").await? {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the interop receiver does not announce the `deprovision` extension",
            )
            .with_operation("deregister")
            .with_context("target", &self.name));
        }
        let mut results = self
            .send_certs(ctx, "deprovision", "interop deprovision", devices)
            .await?;
        Ok(devices
            .iter()
            .map(|d| match results.remove(d.device_id.as_str()) {
                Some(Ok(r)) => match r.status.as_str() {
                    "SUCCESS" => DeregisterOutcome::Deleted,
                    "NOT_FOUND" => DeregisterOutcome::NotFound,
                    _ => DeregisterOutcome::Failed(item_error(d, &r)),
                },
                Some(Err(e)) => {
                    DeregisterOutcome::Failed(e.with_context("device_id", &d.device_id))
                }
                None => DeregisterOutcome::Failed(
                    Error::new(
                        ErrorKind::OutcomeUnknown,
                        "the receiver's answer has no result for this ref",
                    )
                    .with_operation("interop deprovision")
                    .with_context("device_id", &d.device_id),
                ),
            })
            .collect())
    }

    async fn lookup(
        &self,
        ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        if !self.has_extension(ctx, "status").await? {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "the interop receiver does not announce the `status` extension",
            )
            .with_operation("lookup")
            .with_context("target", &self.name));
        }
        let req = StatusRequest {
            action: "status".to_owned(),
            job: None,
            fingerprints: Some(vec![device.device_id.to_string()]),
        };
        let body = serde_json::to_vec(&req).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot encode request").with_source(e)
        })?;
        ctx.acquire(INTEROP_API).await;
        let bytes = self.client.post("interop status", body).await?;
        let answer: StatusResponse = parse_json("interop status", &bytes)?;
        let entry = answer
            .devices
            .unwrap_or_default()
            .into_iter()
            .find(|s| s.fingerprint == device.device_id.as_str());
        match entry {
            Some(s) if s.status == "PRESENT" => Ok(Some(RemoteDevice {
                name: device.device_id.to_string(),
                device_id: Some(device.device_id.clone()),
                status: Some(s.status),
                endpoint: s.endpoint,
                ..Default::default()
            })),
            Some(s) if s.status == "ABSENT" => Ok(None),
            other => Err(Error::new(
                ErrorKind::Unexpected,
                format!("status answer without a PRESENT/ABSENT entry for the device: {other:?}"),
            )
            .with_operation("interop status")
            .with_context("device_id", &device.device_id)),
        }
    }

    async fn health_check(&self, ctx: &CallContext) -> Result<()> {
        let info = self.receiver_info(ctx).await?;
        if info.compatibility_version < client::COMPATIBILITY_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "receiver speaks interop compatibilityVersion {}, need {}",
                    info.compatibility_version,
                    client::COMPATIBILITY_VERSION
                ),
            )
            .with_operation("health_check"));
        }
        let _ = self.extensions.set(info.extensions);
        Ok(())
    }
}

fn register_outcome(d: &DeviceIdentity, r: ItemResult) -> RegisterOutcome {
    match r.status.as_str() {
        "SUCCESS" => {
            let mut remote = RemoteDevice {
                name: d.device_id.to_string(),
                device_id: Some(d.device_id.clone()),
                status: Some(r.status.clone()),
                endpoint: r.endpoint.clone(),
                ..Default::default()
            };
            // Also a resource, so the journal keeps it.
            if let Some(e) = &r.endpoint {
                remote = remote.with_resource("endpoint", e);
            }
            if let Some(topic) = &r.topic {
                remote = remote.with_resource("topic", topic);
            }
            if let Some(p) = r.policy_applied {
                remote = remote.with_resource("policy_applied", p.to_string());
            }
            if r.created == Some(false) {
                RegisterOutcome::AlreadyPresent(remote)
            } else {
                RegisterOutcome::Created(remote)
            }
        }
        "ERROR" if r.code.as_deref() == Some("conflict") => RegisterOutcome::Conflict {
            remote: None,
            reason: r.message.unwrap_or_else(|| "conflict".to_owned()),
        },
        "ACCEPTED" => RegisterOutcome::Failed(
            Error::new(
                ErrorKind::OutcomeUnknown,
                format!(
                    "the receiver queued it (job {}); not confirmed yet",
                    r.job.as_deref().unwrap_or("?")
                ),
            )
            .with_operation("interop provision")
            .with_context("device_id", &d.device_id),
        ),
        _ => RegisterOutcome::Failed(item_error(d, &r)),
    }
}

fn item_error(d: &DeviceIdentity, r: &ItemResult) -> Error {
    if r.status != "ERROR" {
        return Error::new(
            ErrorKind::Unexpected,
            format!("unknown result status {:?}", r.status),
        )
        .with_operation("interop")
        .with_context("device_id", &d.device_id);
    }
    error::parse_item_error(
        r.message.as_deref().unwrap_or("(no message)"),
        r.code.as_deref(),
    )
    .with_context("device_id", &d.device_id)
}

fn missing_result(d: &DeviceIdentity) -> RegisterOutcome {
    RegisterOutcome::Failed(
        Error::new(
            ErrorKind::OutcomeUnknown,
            "the receiver's answer has no result for this ref",
        )
        .with_operation("interop provision")
        .with_context("device_id", &d.device_id),
    )
}

/// Splits items into requests of at most `max_items` and about `max_bytes` of JSON.
fn chunk(items: &[CertItem], max_items: usize, max_bytes: usize) -> Vec<&[CertItem]> {
    const ENVELOPE: usize = 64;
    const PER_ITEM: usize = 24;
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = ENVELOPE;
    for (i, it) in items.iter().enumerate() {
        let size = it.reference.len() + it.cert.len() + PER_ITEM;
        if i > start && (i - start >= max_items || bytes + size > max_bytes) {
            out.push(&items[start..i]);
            start = i;
            bytes = ENVELOPE;
        }
        bytes += size;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// Standard Webhooks deliveries as a provisioning target.
pub struct WebhookConnector {
    name: String,
    cfg: WebhookConfig,
    client: WebhookClient,
}

impl fmt::Debug for WebhookConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConnector")
            .field("name", &self.name)
            .field("url", &self.cfg.url)
            .finish_non_exhaustive()
    }
}

impl WebhookConnector {
    /// Builds the connector of target `name`; resolves the secret.
    pub fn new(name: &str, cfg: WebhookConfig) -> Result<Self> {
        let secret = cfg.validate()?;
        let key = WebhookKey::from_whsec(secret.expose_secret())?;
        let http = client::http_client(
            cfg.ca_file.as_deref(),
            Duration::from_secs(cfg.timeout_secs),
        )?;
        Ok(WebhookConnector {
            name: name.to_owned(),
            client: WebhookClient::new(http, &cfg.url, key),
            cfg,
        })
    }

    /// The `webhook-id` of `operation` on `device` in the job of `ctx`: stable across the
    /// job's retries and resumptions, new for each job (each desired-state change).
    pub fn message_id(
        &self,
        ctx: &CallContext,
        operation: &str,
        device: &DeviceIdentity,
    ) -> String {
        webhook_id(&self.name, operation, device, ctx.job_id.as_deref())
    }

    async fn deliver_all(
        &self,
        ctx: &CallContext,
        event_type: &'static str,
        operation: &'static str,
        devices: &[DeviceIdentity],
    ) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(devices.len());
        let mut disabled: Option<Error> = None;
        for d in devices {
            if let Some(e) = &disabled {
                out.push(Err(e.for_device(&d.device_id)));
                continue;
            }
            let body = event_body(event_type, d);
            let id = webhook_id(&self.name, operation, d, ctx.job_id.as_deref());
            ctx.acquire(WEBHOOK_API).await;
            let r = self
                .client
                .deliver(operation, &id, &body)
                .await
                .map_err(|e| {
                    e.with_context("device_id", &d.device_id)
                        .with_context("target", &self.name)
                });
            if let Err(e) = &r
                && e.kind() == ErrorKind::TargetDisabled
            {
                tracing::error!(target_name = %self.name, "webhook endpoint answered 410 Gone: target disabled");
                disabled = Some(e.clone());
            }
            out.push(r);
        }
        out
    }
}

#[async_trait]
impl Connector for WebhookConnector {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "webhook",
            max_batch_size: self.cfg.batch_size,
            max_deregister_batch_size: 0,
            quotas: vec![Quota::new(WEBHOOK_API, self.cfg.requests_per_second)],
            supports_list: false,
            supports_deregister: true,
            // Receivers de-duplicate on webhook-id.
            idempotent_register: true,
            max_concurrency: 8,
        }
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        let results = self
            .deliver_all(ctx, "device.provisioned", "webhook provision", devices)
            .await;
        Ok(devices
            .iter()
            .zip(results)
            .map(|(d, r)| match r {
                Ok(()) => RegisterOutcome::Created(RemoteDevice {
                    name: d.device_id.to_string(),
                    device_id: Some(d.device_id.clone()),
                    ..Default::default()
                }),
                Err(e) if e.kind() == ErrorKind::Conflict => RegisterOutcome::Conflict {
                    remote: None,
                    reason: e.to_string(),
                },
                Err(e) => RegisterOutcome::Failed(e),
            })
            .collect())
    }

    async fn deregister(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<DeregisterOutcome>> {
        let results = self
            .deliver_all(ctx, "device.deprovisioned", "webhook deprovision", devices)
            .await;
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(()) => DeregisterOutcome::Deleted,
                Err(e) => DeregisterOutcome::Failed(e),
            })
            .collect())
    }

    async fn lookup(
        &self,
        _ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "a webhook target is write-only: the journal holds its state",
        )
        .with_operation("lookup")
        .with_context("device_id", &device.device_id))
    }

    /// Delivers a signed `idbridge.health_check` event: proves reachability and the secret
    /// (a receiver answers 401 to a bad signature).
    async fn health_check(&self, ctx: &CallContext) -> Result<()> {
        let ts = time::OffsetDateTime::now_utc();
        let body = serde_json::json!({
            "type": "idbridge.health_check",
            "timestamp": rfc3339(ts),
            "data": {"target": self.name},
        });
        let id = format!(
            "hc_{}",
            hex::encode(
                &digest::digest(
                    &digest::SHA256,
                    format!("{}\0{}", self.name, ts.unix_timestamp_nanos()).as_bytes(),
                )
                .as_ref()[..16]
            )
        );
        ctx.acquire(WEBHOOK_API).await;
        self.client
            .deliver("webhook health_check", &id, body.to_string().as_bytes())
            .await
    }
}

/// `idb_` + 40 hex of SHA-256("idbridge-webhook-v1" ‖ target ‖ operation ‖ fingerprint ‖
/// state version).
///
/// The state version is the journal job that set this desired state: every provision or
/// deprovision job is a new version, so provision → deprovision → provision delivers three
/// events a de-duplicating receiver all applies, while the retries and resumptions of one job
/// repeat its id (shared/reference/webhooks-mqtt.md §2). Outside a job (`None`) the id has no
/// version.
pub fn webhook_id(
    target: &str,
    operation: &str,
    device: &DeviceIdentity,
    state_version: Option<&str>,
) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [
        "idbridge-webhook-v1",
        target,
        operation,
        device.device_id.as_str(),
        state_version.unwrap_or(""),
    ] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    format!("idb_{}", &hex::encode(ctx.finish().as_ref())[..40])
}

/// The JSON event of one device. Carries the batch's non-secret tag, never the batch ID.
pub fn event_body(event_type: &str, d: &DeviceIdentity) -> Vec<u8> {
    let key = match &d.key {
        idbridge_core::KeyAlgorithm::Ec { curve } => {
            serde_json::json!({"alg": "EC", "curve": curve})
        }
        idbridge_core::KeyAlgorithm::Rsa { bits } => {
            serde_json::json!({"alg": "RSA", "bits": bits})
        }
        other => serde_json::json!({"alg": other.to_string()}),
    };
    let body = serde_json::json!({
        "type": event_type,
        "timestamp": rfc3339(time::OffsetDateTime::now_utc()),
        "data": {
            "deviceId": d.device_id.as_str(),
            "certificate": {
                "sha256": d.device_id.as_str(),
                "pem": d.to_pem(),
                "issuer": d.issuer,
                "serial": d.serial_hex,
                "subject": d.subject,
                "notBefore": rfc3339(d.not_before),
                "notAfter": rfc3339(d.not_after),
                "publicKey": key,
            },
            "vendor": d.vendor,
            "batch": d.batch.as_ref().map(|b| serde_json::json!({"id": b.tag()})),
        },
    });
    // serde_json::Value always serializes.
    serde_json::to_vec(&body).unwrap_or_default()
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize, cert_len: usize) -> CertItem {
        CertItem {
            reference: format!("{n:064}"),
            cert: "A".repeat(cert_len),
        }
    }

    #[test]
    fn chunks_respect_count_and_bytes() {
        let items: Vec<_> = (0..10).map(|i| item(i, 1000)).collect();
        let c = chunk(&items, 4, 1 << 20);
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        let c = chunk(&items, 100, 3500);
        assert_eq!(
            c.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        // One oversized item still goes alone rather than looping forever.
        let big = vec![item(0, 10_000)];
        assert_eq!(chunk(&big, 10, 100).len(), 1);
        assert!(chunk(&[], 10, 100).is_empty());
    }
}
