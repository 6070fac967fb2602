//! `kind = "gcp-pubsub"`: `device.authorized` / `device.revoked` events on a Pub/Sub topic.
//!
//! Write-only, like webhooks: the journal holds the state, `lookup` and `list` are
//! unsupported. Each call publishes its devices in requests of at most 1,000 messages and
//! `max_request_bytes`. Pub/Sub delivers at least once and assigns its own message ids, so every
//! message carries an `idempotencyKey` attribute that subscribers de-duplicate on: stable
//! across the engine's retries of one job, different for the next job (provisioning a device
//! again after a deprovision is a new event).

use std::collections::BTreeMap;
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
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::client::{GcpClient, PublishRequest, PublishResponse, PubsubMessage};
use crate::config::PubSubConfig;
use crate::copy_error;

/// The pacer API of `publish` requests.
pub const PUBSUB_PUBLISH_API: &str = "pubsub.publish";
/// Event type of a provisioned device.
pub const EVENT_AUTHORIZED: &str = "device.authorized";
/// Event type of a deprovisioned device.
pub const EVENT_REVOKED: &str = "device.revoked";

/// A Pub/Sub topic as an event target.
pub struct PubSubConnector {
    name: String,
    cfg: PubSubConfig,
    client: GcpClient,
    /// `/v1/projects/{p}/topics/{t}`.
    topic_path: String,
    /// `projects/{p}/topics/{t}`.
    topic_name: String,
}

impl fmt::Debug for PubSubConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubConnector")
            .field("name", &self.name)
            .field("base_url", &self.client.base_url())
            .field("topic", &self.topic_name)
            .finish_non_exhaustive()
    }
}

impl PubSubConnector {
    /// Builds the connector of target `name`: resolves endpoint and credentials (no call).
    pub fn new(name: &str, cfg: PubSubConfig) -> Result<Self> {
        let resolved = cfg.resolve()?;
        let client = GcpClient::new(&resolved, Duration::from_secs(cfg.timeout_secs))?;
        let topic_name = format!("projects/{}/topics/{}", resolved.project, cfg.topic);
        Ok(PubSubConnector {
            name: name.to_owned(),
            topic_path: format!("/v1/{topic_name}"),
            topic_name,
            client,
            cfg,
        })
    }

    /// The `idempotencyKey` of `event` for `device` in job `job`.
    pub fn idempotency_key(&self, event: &str, device: &DeviceIdentity, job: &str) -> String {
        idempotency_key(&self.name, event, device, job)
    }

    /// Publishes one `event` per device; one result (the message id) per device, in order.
    async fn publish_all(
        &self,
        ctx: &CallContext,
        event: &'static str,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<Result<(String, String)>>> {
        let job = match &ctx.job_id {
            Some(j) => j.clone(),
            // Outside a job there are no retries to de-duplicate: one key per call.
            None => format!("call-{}", nonce()),
        };
        let now = OffsetDateTime::now_utc();
        let messages: Vec<(PubsubMessage, String)> = devices
            .iter()
            .map(|d| {
                let key = idempotency_key(&self.name, event, d, &job);
                (message(&self.name, event, d, &key, now), key)
            })
            .collect();
        let chunks = chunk(&messages, self.cfg.batch_size, self.cfg.max_request_bytes);
        let many = chunks.len() > 1;
        let mut out: Vec<Result<(String, String)>> = Vec::with_capacity(devices.len());
        let mut stopped: Option<Error> = None;
        let mut offset = 0;
        for part in chunks {
            let devs = &devices[offset..offset + part.len()];
            offset += part.len();
            if let Some(e) = &stopped {
                out.extend(devs.iter().map(|d| Err(per_device(e, d))));
                continue;
            }
            let msgs: Vec<PubsubMessage> = part.iter().map(|(m, _)| m.clone()).collect();
            ctx.acquire(PUBSUB_PUBLISH_API).await;
            tracing::debug!(target_name = %self.name, event, messages = msgs.len(), "publish");
            let r: Result<PublishResponse> = self
                .client
                .post(
                    "publish",
                    &format!("{}:publish", self.topic_path),
                    &PublishRequest { messages: &msgs },
                )
                .await
                .map_err(|e| self.map_topic_error(e));
            match r {
                Ok(resp) if resp.message_ids.len() == part.len() => {
                    out.extend(
                        resp.message_ids
                            .into_iter()
                            .zip(part)
                            .map(|(id, (_, key))| Ok((id, key.clone()))),
                    );
                }
                Ok(resp) => {
                    let e = Error::new(
                        ErrorKind::OutcomeUnknown,
                        format!(
                            "publish answered {} message ids for {} messages",
                            resp.message_ids.len(),
                            part.len()
                        ),
                    )
                    .with_operation("publish")
                    .with_context("target", &self.name);
                    out.extend(devs.iter().map(|d| Err(per_device(&e, d))));
                }
                Err(e) if !many => return Err(e),
                Err(e) => {
                    if !e.is_temporary() {
                        stopped = Some(copy_error(&e));
                    }
                    out.extend(devs.iter().map(|d| Err(per_device(&e, d))));
                }
            }
        }
        Ok(out)
    }

    /// A missing topic is the target's configuration, not the device's.
    fn map_topic_error(&self, e: Error) -> Error {
        let e = e.with_context("target", &self.name);
        if e.kind() == ErrorKind::NotFound {
            return Error::new(
                ErrorKind::ConfigInvalid,
                format!("topic {} does not exist: {e}", self.topic_name),
            )
            .with_operation(e.operation());
        }
        e
    }
}

#[async_trait]
impl Connector for PubSubConnector {
    // `..Default::default()` keeps this building while the engine grows Capabilities.
    #[allow(clippy::needless_update)]
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "gcp-pubsub",
            max_batch_size: self.cfg.batch_size,
            max_deregister_batch_size: 0,
            quotas: vec![Quota::new(
                PUBSUB_PUBLISH_API,
                self.cfg.publishes_per_second,
            )],
            supports_list: false,
            supports_deregister: true,
            // Subscribers de-duplicate on idempotencyKey, stable across a job's retries.
            idempotent_register: true,
            max_concurrency: 8,
            ..Default::default()
        }
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        let results = self.publish_all(ctx, EVENT_AUTHORIZED, devices).await?;
        Ok(devices
            .iter()
            .zip(results)
            .map(|(d, r)| match r {
                Ok((message_id, key)) => {
                    let mut remote = RemoteDevice::named(d.device_id.to_string())
                        .with_resource("topic", self.topic_name.clone())
                        .with_resource("message_id", message_id)
                        .with_resource("idempotency_key", key);
                    remote.device_id = Some(d.device_id.clone());
                    remote.status = Some(EVENT_AUTHORIZED.to_owned());
                    RegisterOutcome::Created(remote)
                }
                Err(e) => RegisterOutcome::Failed(e),
            })
            .collect())
    }

    async fn deregister(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<DeregisterOutcome>> {
        let results = self.publish_all(ctx, EVENT_REVOKED, devices).await?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(_) => DeregisterOutcome::Deleted,
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
            "a Pub/Sub target is write-only: the journal holds its state",
        )
        .with_operation("lookup")
        .with_context("device_id", &device.device_id))
    }

    /// `GET` the topic: proves the endpoint, the topic and the credentials.
    async fn health_check(&self, ctx: &CallContext) -> Result<()> {
        ctx.acquire(PUBSUB_PUBLISH_API).await;
        self.client
            .get::<serde_json::Value>("health_check", &self.topic_path)
            .await
            .map(|_| ())
            .map_err(|e| self.map_topic_error(e))
    }
}

/// `idb_` + 40 hex of SHA-256("idbridge-pubsub-v1" ‖ target ‖ event ‖ fingerprint ‖ job).
pub fn idempotency_key(target: &str, event: &str, device: &DeviceIdentity, job: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [
        "idbridge-pubsub-v1",
        target,
        event,
        device.device_id.as_str(),
        job,
    ] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    format!("idb_{}", &hex::encode(ctx.finish().as_ref())[..40])
}

/// The message of one device: a JSON event as data, routing attributes beside it. Carries the
/// batch's non-secret tag, never the batch ID.
pub fn message(
    target: &str,
    event: &str,
    d: &DeviceIdentity,
    key: &str,
    now: OffsetDateTime,
) -> PubsubMessage {
    let body = json!({
        "type": event,
        "eventTime": rfc3339(now),
        "idempotencyKey": key,
        "deviceId": d.device_id.as_str(),
        "certificate": {
            "sha256": d.device_id.as_str(),
            "pem": d.to_pem(),
            "subject": d.subject,
            "issuer": d.issuer,
            "serial": d.serial_hex,
            "notBefore": rfc3339(d.not_before),
            "notAfter": rfc3339(d.not_after),
            "key": d.key.to_string(),
        },
        "vendor": d.vendor,
        "batch": d.batch.as_ref().map(|b| b.tag()),
    });
    let mut attributes = BTreeMap::new();
    attributes.insert("eventType".to_owned(), event.to_owned());
    attributes.insert("deviceId".to_owned(), d.device_id.to_string());
    attributes.insert("idempotencyKey".to_owned(), key.to_owned());
    attributes.insert("source".to_owned(), "idbridge".to_owned());
    attributes.insert("target".to_owned(), target.to_owned());
    if let Some(b) = &d.batch {
        attributes.insert("batch".to_owned(), b.tag().to_owned());
    }
    if let Some(v) = &d.vendor.vendor {
        attributes.insert("vendor".to_owned(), v.clone());
    }
    PubsubMessage {
        data: STANDARD.encode(body.to_string()),
        attributes,
    }
}

/// Splits messages into requests of at most `max_items` and about `max_bytes` of JSON.
fn chunk<T>(
    items: &[(PubsubMessage, T)],
    max_items: usize,
    max_bytes: usize,
) -> Vec<&[(PubsubMessage, T)]> {
    const ENVELOPE: usize = 32;
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = ENVELOPE;
    for (i, (m, _)) in items.iter().enumerate() {
        let size = m.data.len()
            + m.attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
            + 40;
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

fn per_device(e: &Error, d: &DeviceIdentity) -> Error {
    copy_error(e).with_context("device_id", &d.device_id)
}

fn nonce() -> String {
    let mut b = [0u8; 8];
    // The system RNG failing leaves zeros: keys are then per job only, still correct.
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(len: usize) -> (PubsubMessage, ()) {
        (
            PubsubMessage {
                data: "A".repeat(len),
                attributes: BTreeMap::new(),
            },
            (),
        )
    }

    #[test]
    fn chunks_respect_count_and_bytes() {
        let items: Vec<_> = (0..10).map(|_| msg(1000)).collect();
        let c = chunk(&items, 4, 1 << 20);
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        let c = chunk(&items, 1000, 3500);
        assert_eq!(
            c.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        let big = vec![msg(10_000)];
        assert_eq!(
            chunk(&big, 10, 100).len(),
            1,
            "an oversized message goes alone"
        );
        assert!(chunk::<()>(&[], 10, 100).is_empty());
    }

    #[test]
    fn keys_differ_by_job_and_event_and_never_show_the_batch_id() {
        let key = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let der = p.self_signed(&key).unwrap().der().to_vec();
        let mut d = DeviceIdentity::from_der(der, idbridge_core::Source::default()).unwrap();
        d.batch = Some(idbridge_core::BatchRef::new("b41425b9-secret"));
        let a = idempotency_key("t", EVENT_AUTHORIZED, &d, "job1");
        assert_eq!(a, idempotency_key("t", EVENT_AUTHORIZED, &d, "job1"));
        assert_ne!(a, idempotency_key("t", EVENT_AUTHORIZED, &d, "job2"));
        assert_ne!(a, idempotency_key("t", EVENT_REVOKED, &d, "job1"));
        let m = message("t", EVENT_AUTHORIZED, &d, &a, OffsetDateTime::UNIX_EPOCH);
        let data = String::from_utf8(STANDARD.decode(&m.data).unwrap()).unwrap();
        assert!(!data.contains("b41425b9"), "{data}");
        assert!(!format!("{:?}", m.attributes).contains("b41425b9"));
        assert_eq!(m.attributes["eventType"], EVENT_AUTHORIZED);
        assert_eq!(m.attributes["idempotencyKey"], a);
    }
}
