//! `kind = "azure-dps"`: DPS individual enrollments with X.509 attestation. DPS requires the
//! certificate's CN to be the registration id, so this target only works for chips with
//! unique, valid CNs (Trust M Express / MTR, Microchip, Espressif), never for Trust M V1/V3,
//! whose CN is the same on every chip: such batches are refused before any call.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use idbridge_core::{
    CallContext, Capabilities, Connector, DeregisterOutcome, DeviceId, DeviceIdentity, Error,
    ErrorKind, ListPage, Quota, RegisterOutcome, RemoteDevice, Result,
};
use serde_json::{Value, json};

use crate::client::Client;
use crate::config::{AzureConfig, DeviceIdTemplate, valid_hub_device_id};
use crate::error::{Service, parse_item_error};

/// The quota name for DPS service operations (1,000/min per instance).
pub const OPERATIONS: &str = "operations";
/// Enrollments per bulk call.
pub const MAX_BULK: usize = 10;
/// Calls the engine may have in flight.
pub const MAX_CONCURRENCY: usize = 4;
/// DPS's documented service operation rate.
pub const OPERATIONS_PER_MINUTE: f64 = 1000.0;

/// The DPS individual enrollment connector.
#[derive(Debug)]
pub struct DpsConnector {
    client: Client,
    /// The linked hubs' registry clients, to delete the devices DPS registered there.
    hubs: Vec<Client>,
    hub_per_minute: f64,
    device_id: Option<DeviceIdTemplate>,
    iot_hub_host_name: Option<String>,
    allocation_policy: Option<String>,
    per_minute: f64,
    /// Registration ids this connector has sent, with their certificate: a later batch reusing
    /// a CN for another certificate is refused before any call.
    seen: Mutex<HashMap<String, DeviceId>>,
}

/// A DPS registration id: the certificate CN, lower-cased, ≤128 of `a-z 0-9 - . _ :`, no
/// special character first or last.
pub fn registration_id(device: &DeviceIdentity) -> std::result::Result<String, String> {
    let Some(cn) = device.subject_cn.as_deref() else {
        return Err("has no subject CN".into());
    };
    let special = |b: u8| matches!(b, b'-' | b'.' | b'_' | b':');
    let valid = !cn.is_empty()
        && cn.len() <= 128
        && cn.bytes().all(|b| b.is_ascii_alphanumeric() || special(b))
        && !special(cn.as_bytes()[0])
        && !special(cn.as_bytes()[cn.len() - 1]);
    if !valid {
        return Err(format!(
            "CN {cn:?} is not a valid registration id (≤128 of A-Z a-z 0-9 - . _ :, no special character first or last)"
        ));
    }
    Ok(cn.to_ascii_lowercase())
}

/// Checks that every device of a batch can be a DPS individual enrollment: a valid
/// registration id in its CN, unique in the batch. The error names the devices and
/// recommends the IoT Hub target. Call it on a whole job before provisioning.
pub fn check_batch(devices: &[DeviceIdentity]) -> Result<()> {
    check_with(devices, &HashMap::new())
}

/// [`check_with`] across the chunks of one job: the registration ids of earlier chunks are kept.
struct DpsJobCheck {
    seen: HashMap<String, DeviceId>,
    job: HashMap<String, DeviceId>,
}

impl idbridge_core::connector::JobCheck for DpsJobCheck {
    fn check(&mut self, devices: &[DeviceIdentity]) -> Result<()> {
        let mut problems = Vec::new();
        for d in devices {
            match registration_id(d) {
                Err(why) => problems.push(format!("{} ({}) {why}", d.device_id, d.source)),
                Ok(id) => match self.job.get(&id).or_else(|| self.seen.get(&id)) {
                    Some(prev) if *prev != d.device_id => problems.push(format!(
                        "{} ({}) has CN {id:?}, like certificate {prev}",
                        d.device_id, d.source
                    )),
                    Some(_) => {}
                    None => {
                        self.job.insert(id, d.device_id.clone());
                    }
                },
            }
        }
        refuse(problems)
    }
}

fn check_with(devices: &[DeviceIdentity], seen: &HashMap<String, DeviceId>) -> Result<()> {
    let mut problems = Vec::new();
    let mut first: HashMap<String, &DeviceIdentity> = HashMap::new();
    for d in devices {
        match registration_id(d) {
            Err(why) => problems.push(format!("{} ({}) {why}", d.device_id, d.source)),
            Ok(id) => {
                if let Some(other) = first.get(&id) {
                    problems.push(format!(
                        "{} ({}) has CN {:?} like {} ({})",
                        d.device_id, d.source, id, other.device_id, other.source
                    ));
                } else if let Some(prev) = seen.get(&id).filter(|p| **p != d.device_id) {
                    problems.push(format!(
                        "{} ({}) has CN {id:?}, already enrolled for certificate {prev}",
                        d.device_id, d.source
                    ));
                } else {
                    first.insert(id, d);
                }
            }
        }
    }
    refuse(problems)
}

/// The job's refusal naming the devices whose CN cannot be a registration id of their own.
fn refuse(problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    let shown: Vec<String> = problems.into_iter().take(5).collect();
    let more = if n > 5 {
        format!("; and {} more", n - 5)
    } else {
        String::new()
    };
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!(
            "DPS individual enrollments need each certificate's CN to be a unique, valid registration id; {n} device(s) cannot be enrolled: {}{more}. \
             Chips whose CN is the same on every part (OPTIGA Trust M V1/V3: \"Infineon IoT Node\") cannot use DPS: use the azure-iot-hub target, which registers each device by its certificate's SHA-256 thumbprint",
            shown.join("; ")
        ),
    )
    .with_operation("register")
    .with_context("connector", "azure-dps"))
}

impl DpsConnector {
    /// Builds the connector from a target's configuration.
    pub fn new(cfg: &AzureConfig) -> Result<Self> {
        if let Some(k) = &cfg.kind
            && k != "azure-dps"
        {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!("kind {k:?} is not azure-dps"),
            )
            .with_operation("config"));
        }
        if let Some(p) = &cfg.allocation_policy
            && !["hashed", "geolatency", "static", "custom"]
                .contains(&p.to_ascii_lowercase().as_str())
        {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!("allocation_policy {p:?}: one of hashed, geoLatency, static, custom"),
            )
            .with_operation("config"));
        }
        let hubs = cfg
            .linked_hubs
            .iter()
            .map(|cs| {
                let hub = AzureConfig {
                    kind: Some("azure-iot-hub".into()),
                    connection_string: Some(cs.clone()),
                    ca_file: cfg.ca_file.clone(),
                    timeout_secs: cfg.timeout_secs,
                    sas_ttl_secs: cfg.sas_ttl_secs,
                    ..Default::default()
                };
                Client::new(Service::IotHub, &hub)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DpsConnector {
            client: Client::new(Service::Dps, cfg)?,
            hubs,
            // The linked hubs' smallest tier (S1, one unit) unless told otherwise.
            hub_per_minute: crate::config::hub_ops_per_minute_per_unit("S1")?,
            device_id: cfg
                .device_id
                .as_deref()
                .map(DeviceIdTemplate::parse)
                .transpose()?,
            iot_hub_host_name: cfg.iot_hub_host_name.clone(),
            allocation_policy: cfg.allocation_policy.clone(),
            per_minute: cfg.operations_per_minute.unwrap_or(OPERATIONS_PER_MINUTE),
            seen: Mutex::new(HashMap::new()),
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, DeviceId>> {
        // A poisoned lock only means a panic between two map inserts; the map is still valid.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enrollment(&self, reg_id: &str, d: &DeviceIdentity) -> Result<Value> {
        let mut e = json!({
            "registrationId": reg_id,
            "attestation": {"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": d.to_pem()}}}},
            "provisioningStatus": "enabled",
        });
        let mut tags = serde_json::Map::new();
        tags.insert("fingerprint".into(), json!(d.device_id.as_str()));
        if let Some(b) = &d.batch {
            tags.insert("batch".into(), json!(b.tag()));
        }
        for (k, v) in [
            ("vendor", &d.vendor.vendor),
            ("chip_id", &d.vendor.chip_id),
            ("unique_id", &d.vendor.unique_id),
            ("mac", &d.vendor.mac),
        ] {
            if let Some(v) = v {
                tags.insert(k.into(), json!(v));
            }
        }
        if let Some(obj) = e.as_object_mut() {
            obj.insert(
                "initialTwin".into(),
                json!({"tags": {"idbridge": Value::Object(tags)}}),
            );
            if let Some(t) = &self.device_id {
                let id = t.render(d)?;
                if !valid_hub_device_id(&id) {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "device {} ({}): {id:?} is not a valid IoT Hub device id",
                            d.device_id, d.source
                        ),
                    )
                    .with_context("device_id", &d.device_id));
                }
                obj.insert("deviceId".into(), json!(id));
            }
            if let Some(h) = &self.iot_hub_host_name {
                obj.insert("iotHubHostName".into(), json!(h));
            }
            if let Some(p) = &self.allocation_policy {
                obj.insert("allocationPolicy".into(), json!(p));
            }
        }
        Ok(e)
    }
}

fn remote_of(v: &Value, device: Option<&DeviceIdentity>) -> RemoteDevice {
    let name = v
        .get("registrationId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let info = v.pointer("/attestation/x509/clientCertificates/primary/info");
    let sha256 = info
        .and_then(|i| i.get("sha256Thumbprint"))
        .and_then(Value::as_str);
    let mut r = RemoteDevice::named(name);
    r.status = v
        .get("provisioningStatus")
        .and_then(Value::as_str)
        .map(str::to_owned);
    r.device_id = sha256.and_then(|s| s.parse::<DeviceId>().ok());
    if let Some(e) = v.get("etag").and_then(Value::as_str) {
        r.resources.insert("etag".into(), e.to_owned());
    }
    if let Some(d) = v.get("deviceId").and_then(Value::as_str) {
        r.resources.insert("iot_hub_device_id".into(), d.to_owned());
    }
    if let Some(h) = v.get("iotHubHostName").and_then(Value::as_str) {
        r.endpoint = Some(h.to_owned());
    }
    if let Some(d) = device {
        if r.device_id.as_ref() != Some(&d.device_id) {
            r.differences.push(format!(
                "enrolled certificate SHA-256 is {}, this certificate's is {}",
                sha256.unwrap_or("unknown"),
                d.device_id.as_str().to_ascii_uppercase()
            ));
        }
        if r.status.as_deref() != Some("enabled") {
            r.differences.push(format!(
                "provisioningStatus is {}",
                r.status.as_deref().unwrap_or("unknown")
            ));
        }
    }
    r
}

impl DpsConnector {
    async fn deregister_one(&self, ctx: &CallContext, d: &DeviceIdentity) -> DeregisterOutcome {
        let id = match registration_id(d) {
            Ok(id) => id,
            Err(why) => {
                return DeregisterOutcome::Failed(
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!("device {} ({}) {why}", d.device_id, d.source),
                    )
                    .with_operation("deregister")
                    .with_context("device_id", &d.device_id),
                );
            }
        };
        let r = self.unprovision(ctx, &id).await;
        if r.is_ok() {
            // The registration id is free again (a replaced part may take it).
            self.seen().remove(&id);
        }
        match r {
            Ok(true) => DeregisterOutcome::Deleted,
            Ok(false) => DeregisterOutcome::NotFound,
            Err(e) => DeregisterOutcome::Failed(
                e.with_context("device_id", &d.device_id)
                    .with_context("registration_id", &id),
            ),
        }
    }

    /// Azure's unprovision steps: disenroll (delete the individual enrollment), then delete
    /// the device DPS registered in its assigned hub, then the registration state. The
    /// registration state goes last so a retry after a failure in between still finds the hub
    /// device. True when anything was removed.
    async fn unprovision(&self, ctx: &CallContext, id: &str) -> Result<bool> {
        ctx.acquire(OPERATIONS).await;
        let registration = self.client.dps_registration(id, "deregister").await?;
        ctx.acquire(OPERATIONS).await;
        let mut removed = self.client.dps_delete(id, "deregister").await?;
        let Some(reg) = registration else {
            return Ok(removed);
        };
        let assigned = reg.get("assignedHub").and_then(Value::as_str);
        let device = reg.get("deviceId").and_then(Value::as_str);
        if let (Some(hub_host), Some(device)) = (assigned, device) {
            let Some(hub) = self
                .hubs
                .iter()
                .find(|h| h.host().eq_ignore_ascii_case(hub_host))
            else {
                return Err(Error::new(
                    ErrorKind::ConfigInvalid,
                    format!(
                        "DPS registered this device in IoT hub {hub_host} as {device:?}; add that hub's connection string to linked_hubs so unprovisioning can delete the device there (the enrollment is deleted)"
                    ),
                )
                .with_operation("deregister"));
            };
            ctx.acquire(crate::iot_hub::REGISTRY).await;
            removed |= hub.hub_delete(device, "deregister").await?;
        }
        ctx.acquire(OPERATIONS).await;
        removed |= self
            .client
            .dps_delete_registration(id, "deregister")
            .await?;
        Ok(removed)
    }
}

#[async_trait]
impl Connector for DpsConnector {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "azure-dps",
            max_batch_size: MAX_BULK,
            // One unprovision (several DELETEs) per device: the engine fans out.
            max_deregister_batch_size: 1,
            quotas: vec![
                Quota {
                    api: OPERATIONS.into(),
                    per_second: self.per_minute / 60.0,
                    burst: MAX_BULK as u32,
                },
                // Deleting the devices DPS registered in the linked hubs.
                Quota::new(crate::iot_hub::REGISTRY, self.hub_per_minute / 60.0),
            ],
            supports_list: true,
            supports_deregister: true,
            idempotent_register: true,
            max_concurrency: MAX_CONCURRENCY,
        }
    }

    /// Every job, whatever its size: CNs valid and unique within the job, and not enrolled
    /// for another certificate by this connector before.
    fn check_job(&self, devices: &[DeviceIdentity]) -> Result<()> {
        let snapshot = self.seen().clone();
        check_with(devices, &snapshot)
    }

    fn job_check(&self) -> Option<Box<dyn idbridge_core::connector::JobCheck>> {
        Some(Box::new(DpsJobCheck {
            seen: self.seen().clone(),
            job: HashMap::new(),
        }))
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let snapshot = self.seen().clone();
        check_with(devices, &snapshot)?;
        let mut ids = Vec::with_capacity(devices.len());
        let mut items = Vec::with_capacity(devices.len());
        let mut outcomes: Vec<Option<RegisterOutcome>> = devices.iter().map(|_| None).collect();
        for (i, d) in devices.iter().enumerate() {
            // check_with accepted every device, so registration_id succeeds.
            let id = registration_id(d).unwrap_or_default();
            match self.enrollment(&id, d) {
                Ok(e) => {
                    items.push(e);
                    ids.push((id, i));
                }
                Err(e) => outcomes[i] = Some(RegisterOutcome::Failed(e.with_operation("register"))),
            }
        }
        {
            let mut seen = self.seen();
            for (id, i) in &ids {
                seen.insert(id.clone(), devices[*i].device_id.clone());
            }
        }
        if !items.is_empty() {
            ctx.acquire_n(OPERATIONS, items.len() as u32).await;
            let result = self.client.dps_bulk("create", &items, "register").await?;
            let mut errors: HashMap<String, (Value, String)> = HashMap::new();
            for e in result
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let id = e
                    .get("registrationId")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let status = e
                    .get("errorStatus")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                errors.insert(
                    id,
                    (e.get("errorCode").cloned().unwrap_or(Value::Null), status),
                );
            }
            for (id, i) in ids {
                let d = &devices[i];
                let outcome = match errors.remove(&id) {
                    None => {
                        let mut r = RemoteDevice::named(&id);
                        r.device_id = Some(d.device_id.clone());
                        r.status = Some("enabled".into());
                        r.endpoint = self.iot_hub_host_name.clone();
                        RegisterOutcome::Created(r)
                    }
                    Some((code, status)) => {
                        let err = parse_item_error(Service::Dps, "register", &code, &status)
                            .with_context("device_id", &d.device_id)
                            .with_context("registration_id", &id);
                        if err.kind() == ErrorKind::AlreadyExists {
                            ctx.acquire(OPERATIONS).await;
                            let got = self
                                .client
                                .dps_get(&id, "register")
                                .await
                                .map(|v| v.map(|v| remote_of(&v, Some(d))));
                            crate::existing_outcome(
                                got,
                                d,
                                &format!("DPS enrollment {id:?}"),
                                |r| r.device_id.as_ref() == Some(&d.device_id),
                            )
                        } else {
                            RegisterOutcome::Failed(err)
                        }
                    }
                };
                outcomes[i] = Some(outcome);
            }
        }
        Ok(crate::fill_outcomes(outcomes))
    }

    async fn deregister(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<DeregisterOutcome>> {
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            out.push(self.deregister_one(ctx, d).await);
        }
        Ok(out)
    }

    async fn lookup(
        &self,
        ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        let id = registration_id(device).map_err(|why| {
            Error::new(
                ErrorKind::InvalidInput,
                format!("device {} ({}) {why}", device.device_id, device.source),
            )
            .with_operation("lookup")
            .with_context("device_id", &device.device_id)
        })?;
        ctx.acquire(OPERATIONS).await;
        Ok(self
            .client
            .dps_get(&id, "lookup")
            .await
            .map_err(|e| e.with_context("device_id", &device.device_id))?
            .map(|v| remote_of(&v, Some(device))))
    }

    async fn list(&self, ctx: &CallContext, cursor: Option<String>) -> Result<ListPage> {
        ctx.acquire(OPERATIONS).await;
        let (items, next) = self
            .client
            .dps_query(cursor.as_deref(), 100, "list")
            .await?;
        Ok(ListPage {
            devices: items.iter().map(|v| remote_of(v, None)).collect(),
            next,
        })
    }

    async fn health_check(&self, ctx: &CallContext) -> Result<()> {
        ctx.acquire(OPERATIONS).await;
        self.client
            .dps_query(None, 1, "health_check")
            .await
            .map(|_| ())
    }
}
