//! `kind = "azure-iot-hub"`: devices in the IoT Hub identity registry, authenticated by the
//! SHA-256 thumbprint of their factory certificate (`selfSigned`), for any chip.

use std::collections::HashMap;

use async_trait::async_trait;
use idbridge_core::{
    CallContext, Capabilities, Connector, DeregisterOutcome, DeviceId, DeviceIdentity, Error,
    ErrorKind, ListPage, Quota, RegisterOutcome, RemoteDevice, Result,
};
use serde_json::{Value, json};

use crate::client::Client;
use crate::config::{
    AzureConfig, DeviceIdTemplate, hub_ops_per_minute_per_unit, hub_queries_per_minute_per_unit,
    valid_hub_device_id,
};
use crate::error::{Service, parse_item_error};

/// The quota name for registry operations (create, retrieve, update, delete; bulk counts each
/// device).
pub const REGISTRY: &str = "registry";
/// The quota name for device queries.
pub const QUERY: &str = "query";
/// Devices per bulk call (the service's limit).
pub const MAX_BULK: usize = 100;
/// Calls the engine may have in flight.
pub const MAX_CONCURRENCY: usize = 2;

/// The IoT Hub registry connector.
#[derive(Debug)]
pub struct IotHubConnector {
    client: Client,
    template: DeviceIdTemplate,
    registry_per_minute: f64,
    queries_per_minute: f64,
}

impl IotHubConnector {
    /// Builds the connector from a target's configuration.
    pub fn new(cfg: &AzureConfig) -> Result<Self> {
        if let Some(k) = &cfg.kind
            && k != "azure-iot-hub"
        {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!("kind {k:?} is not azure-iot-hub"),
            )
            .with_operation("config"));
        }
        let tier = cfg.tier.as_deref().unwrap_or("S1");
        let units = f64::from(cfg.units.unwrap_or(1).max(1));
        let registry_per_minute = cfg
            .operations_per_minute
            .unwrap_or(hub_ops_per_minute_per_unit(tier)? * units);
        Ok(IotHubConnector {
            client: Client::new(Service::IotHub, cfg)?,
            template: match &cfg.device_id {
                Some(t) => DeviceIdTemplate::parse(t)?,
                None => DeviceIdTemplate::serial_hex(),
            },
            registry_per_minute,
            queries_per_minute: hub_queries_per_minute_per_unit(tier) * units,
        })
    }

    /// The IoT Hub device id of `device`, validated.
    pub fn device_id_of(&self, device: &DeviceIdentity) -> Result<String> {
        let id = self.template.render(device)?;
        if !valid_hub_device_id(&id) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "device {} ({}): {id:?} is not a valid IoT Hub device id (≤128 ASCII letters, digits, -.+%_#*?!(),:=@$')",
                    device.device_id, device.source
                ),
            )
            .with_context("device_id", &device.device_id));
        }
        Ok(id)
    }

    fn import_item(&self, id: &str, device: &DeviceIdentity) -> Value {
        let thumb = device.device_id.as_str().to_ascii_uppercase();
        let mut tags = serde_json::Map::new();
        tags.insert("fingerprint".into(), json!(device.device_id.as_str()));
        if let Some(b) = &device.batch {
            tags.insert("batch".into(), json!(b.tag()));
        }
        let v = &device.vendor;
        for (k, val) in [
            ("vendor", &v.vendor),
            ("chip_id", &v.chip_id),
            ("unique_id", &v.unique_id),
            ("mac", &v.mac),
            ("slot", &v.slot),
        ] {
            if let Some(val) = val {
                tags.insert(k.into(), json!(val));
            }
        }
        json!({
            "id": id,
            "importMode": "create",
            "status": "enabled",
            "authentication": {
                "type": "selfSigned",
                "x509Thumbprint": {"primaryThumbprint": thumb, "secondaryThumbprint": thumb},
            },
            "capabilities": {"iotEdge": false},
            "tags": {"idbridge": Value::Object(tags)},
        })
    }
}

/// What the hub holds under a device id, compared with `device`.
fn remote_of(v: &Value, device: Option<&DeviceIdentity>) -> RemoteDevice {
    let name = v
        .get("deviceId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let auth_type = v
        .pointer("/authentication/type")
        .or_else(|| v.get("authenticationType"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let thumb = |k: &str| {
        v.pointer(&format!("/authentication/x509Thumbprint/{k}"))
            .or_else(|| v.pointer(&format!("/x509Thumbprint/{k}")))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let primary = thumb("primaryThumbprint");
    let secondary = thumb("secondaryThumbprint");
    let status = v.get("status").and_then(Value::as_str).map(str::to_owned);
    let mut r = RemoteDevice::named(name);
    r.status = status.clone();
    r.device_id = primary
        .as_deref()
        .filter(|p| p.len() == 64)
        .and_then(|p| p.parse::<DeviceId>().ok());
    if let Some(e) = v
        .get("etag")
        .or_else(|| v.get("deviceEtag"))
        .and_then(Value::as_str)
    {
        r.resources.insert("etag".into(), e.to_owned());
    }
    if let Some(p) = &primary {
        r.resources.insert("primary_thumbprint".into(), p.clone());
    }
    if let Some(d) = device {
        if !auth_type.eq_ignore_ascii_case("selfSigned") {
            r.differences.push(format!(
                "authentication type is {auth_type:?}, not selfSigned"
            ));
        }
        let matches = |t: &Option<String>| {
            t.as_deref().is_some_and(|t| {
                t.eq_ignore_ascii_case(d.device_id.as_str())
                    || t.eq_ignore_ascii_case(&d.sha1_thumbprint)
            })
        };
        if !matches(&primary) {
            r.differences.push(format!(
                "primary thumbprint is {}, this certificate's SHA-256 is {}",
                primary.as_deref().unwrap_or("none"),
                d.device_id.as_str().to_ascii_uppercase()
            ));
        }
        if secondary.is_some() && !matches(&secondary) {
            r.differences
                .push("secondary thumbprint is another certificate's".to_owned());
        }
        if status.as_deref() != Some("enabled") {
            r.differences.push(format!(
                "status is {}",
                status.as_deref().unwrap_or("unknown")
            ));
        }
    }
    r
}

/// What a successful create made.
fn created(id: &str, d: &DeviceIdentity) -> RemoteDevice {
    let mut r = RemoteDevice::named(id).with_resource(
        "primary_thumbprint",
        d.device_id.as_str().to_ascii_uppercase(),
    );
    r.device_id = Some(d.device_id.clone());
    r.status = Some("enabled".into());
    r
}

/// Whether the remote holds this very certificate (whatever else differs).
fn same_certificate(r: &RemoteDevice) -> bool {
    !r.differences
        .iter()
        .any(|d| d.starts_with("primary thumbprint") || d.starts_with("authentication type"))
}

impl IotHubConnector {
    async fn deregister_one(&self, ctx: &CallContext, d: &DeviceIdentity) -> DeregisterOutcome {
        let id = match self.device_id_of(d) {
            Ok(id) => id,
            Err(e) => return DeregisterOutcome::Failed(e.with_operation("deregister")),
        };
        ctx.acquire(REGISTRY).await;
        match self.client.hub_delete(&id, "deregister").await {
            Ok(true) => DeregisterOutcome::Deleted,
            Ok(false) => DeregisterOutcome::NotFound,
            Err(e) => DeregisterOutcome::Failed(e.with_context("device_id", &d.device_id)),
        }
    }
}

#[async_trait]
impl Connector for IotHubConnector {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "azure-iot-hub",
            max_batch_size: MAX_BULK,
            // One DELETE per device: the engine fans out, within MAX_CONCURRENCY and the pacer.
            max_deregister_batch_size: 1,
            quotas: vec![
                Quota {
                    api: REGISTRY.into(),
                    per_second: self.registry_per_minute / 60.0,
                    burst: MAX_BULK as u32,
                },
                Quota {
                    api: QUERY.into(),
                    per_second: self.queries_per_minute / 60.0,
                    burst: 1,
                },
            ],
            supports_list: true,
            supports_deregister: true,
            idempotent_register: true,
            max_concurrency: MAX_CONCURRENCY,
        }
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        let mut outcomes: Vec<Option<RegisterOutcome>> = devices.iter().map(|_| None).collect();
        let mut items = Vec::new();
        let mut index_of: HashMap<String, usize> = HashMap::new();
        for (i, d) in devices.iter().enumerate() {
            match self.device_id_of(d) {
                Ok(id) => {
                    if let Some(&first) = index_of.get(&id) {
                        outcomes[i] = Some(RegisterOutcome::Failed(
                            Error::new(
                                ErrorKind::InvalidInput,
                                format!(
                                    "device {} ({}): device id {id:?} is also the id of device {} in this batch; choose a device_id template that is unique per certificate",
                                    d.device_id, d.source, devices[first].device_id
                                ),
                            )
                            .with_operation("register")
                            .with_context("device_id", &d.device_id),
                        ));
                        continue;
                    }
                    index_of.insert(id.clone(), i);
                    items.push(self.import_item(&id, d));
                }
                Err(e) => outcomes[i] = Some(RegisterOutcome::Failed(e.with_operation("register"))),
            }
        }
        if !items.is_empty() {
            ctx.acquire_n(REGISTRY, items.len() as u32).await;
            let result = self.client.hub_bulk(&items, "register").await?;
            let mut errors: HashMap<String, (Value, String)> = HashMap::new();
            for e in result
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let id = e
                    .get("deviceId")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let status = e.get("errorStatus").and_then(Value::as_str).unwrap_or("");
                errors.insert(
                    id.to_owned(),
                    (
                        e.get("errorCode").cloned().unwrap_or(Value::Null),
                        status.to_owned(),
                    ),
                );
            }
            for (id, &i) in &index_of {
                let d = &devices[i];
                let outcome = match errors.remove(id) {
                    None => RegisterOutcome::Created(created(id, d)),
                    Some((code, status)) => {
                        let err = parse_item_error(Service::IotHub, "register", &code, &status)
                            .with_context("device_id", &d.device_id)
                            .with_context("iot_hub_device_id", id);
                        if err.kind() == ErrorKind::AlreadyExists {
                            ctx.acquire(REGISTRY).await;
                            let got = self
                                .client
                                .hub_get(id, "register")
                                .await
                                .map(|v| v.map(|v| remote_of(&v, Some(d))));
                            crate::existing_outcome(
                                got,
                                d,
                                &format!("IoT Hub device {id:?}"),
                                same_certificate,
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
        let id = self.device_id_of(device)?;
        ctx.acquire(REGISTRY).await;
        Ok(self
            .client
            .hub_get(&id, "lookup")
            .await
            .map_err(|e| e.with_context("device_id", &device.device_id))?
            .map(|v| remote_of(&v, Some(device))))
    }

    async fn list(&self, ctx: &CallContext, cursor: Option<String>) -> Result<ListPage> {
        ctx.acquire(QUERY).await;
        let (items, next) = self
            .client
            .hub_query(cursor.as_deref(), 100, "list")
            .await?;
        Ok(ListPage {
            devices: items.iter().map(|v| remote_of(v, None)).collect(),
            next,
        })
    }

    async fn health_check(&self, ctx: &CallContext) -> Result<()> {
        ctx.acquire(REGISTRY).await;
        self.client.hub_statistics("health_check").await.map(|_| ())
    }
}
