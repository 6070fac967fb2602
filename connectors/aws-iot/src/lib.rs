#![doc = include_str!("docs.md")]
#![deny(missing_docs)]

pub mod check;
mod client;
pub mod config;
pub mod error;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use aws_sdk_iot::config::retry::RetryConfig;
use idbridge_core::{
    CallContext, Capabilities, Connector, DeregisterOutcome, DeviceIdentity, Error, ErrorKind,
    ListPage, RegisterOutcome, RemoteDevice, Result,
};
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;

pub use config::{AwsIotConfig, DEFAULT_QUOTAS, PrincipalType};

use client::IotClient;

/// The AWS IoT Core connector (multi-account registration, no CA registration).
pub struct AwsIot {
    cfg: AwsIotConfig,
    client: IotClient,
    region: String,
    policy_ready: OnceCell<()>,
    /// When this connector last provisioned each device: a lookup soon after may see AWS IoT's
    /// registry before the writes propagated (eventual consistency).
    provisioned:
        std::sync::Mutex<std::collections::HashMap<idbridge_core::DeviceId, std::time::Instant>>,
    /// The credential chain, for `check` to resolve on its own.
    credentials: Option<aws_sdk_iot::config::SharedCredentialsProvider>,
}

/// How long after provisioning a device a lookup that disagrees is taken for AWS IoT's
/// eventual consistency (reported temporary, so the engine retries it) rather than a difference.
pub const CONSISTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

impl fmt::Debug for AwsIot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the SDK config: it holds the credentials provider.
        f.debug_struct("AwsIot")
            .field("region", &self.region)
            .field("endpoint_url", &self.cfg.endpoint_url)
            .field("policy_name", &self.cfg.policy_name)
            .field("thing_group", &self.cfg.thing_group)
            .finish_non_exhaustive()
    }
}

impl AwsIot {
    /// Builds the connector with the standard AWS chain (env, profile, SSO, web identity,
    /// instance role), the configured or environment region and endpoint. SDK retries are off.
    pub async fn connect(cfg: AwsIotConfig) -> Result<Self> {
        let own = match (&cfg.access_key_id, &cfg.secret_access_key) {
            (Some(id), Some(secret)) => Some(aws_sdk_iot::config::Credentials::new(
                id,
                secret.expose_secret(),
                cfg.session_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_owned()),
                None,
                "idbridge-target",
            )),
            _ => None,
        };
        Self::load(cfg, own).await
    }

    /// Like [`AwsIot::connect`] but with fixed credentials instead of the AWS chain: for mock
    /// clouds, benchmarks and tests. The secret is never logged or printed.
    pub async fn connect_with_static_credentials(
        cfg: AwsIotConfig,
        access_key_id: &str,
        secret_access_key: &str,
    ) -> Result<Self> {
        let creds = aws_sdk_iot::config::Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "idbridge-static",
        );
        Self::load(cfg, Some(creds)).await
    }

    async fn load(
        cfg: AwsIotConfig,
        creds: Option<aws_sdk_iot::config::Credentials>,
    ) -> Result<Self> {
        cfg.validate()?;
        if cfg.endpoint_url.is_none() {
            for var in ["AWS_ENDPOINT_URL_IOT", "AWS_ENDPOINT_URL"] {
                if let Ok(url) = std::env::var(var) {
                    config::check_endpoint(&url, cfg.allow_http, var)?;
                    break;
                }
            }
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled());
        if let Some(r) = &cfg.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(p) = &cfg.profile {
            loader = loader.profile_name(p);
        }
        if let Some(u) = &cfg.endpoint_url {
            loader = loader.endpoint_url(u);
        }
        if let Some(c) = creds {
            loader = loader.credentials_provider(c);
        }
        let sdk = loader.load().await;
        Self::from_sdk_config(cfg, &sdk)
    }

    /// Builds the connector from an existing SDK configuration (tests, embedding). Retries are
    /// turned off whatever `sdk` says.
    pub fn from_sdk_config(cfg: AwsIotConfig, sdk: &aws_config::SdkConfig) -> Result<Self> {
        cfg.validate()?;
        let region = sdk.region().map(|r| r.to_string()).ok_or_else(|| {
            Error::new(
                ErrorKind::ConfigInvalid,
                "no AWS region: set `region` in the target or AWS_REGION",
            )
            .with_context("connector", "aws-iot")
        })?;
        if sdk.credentials_provider().is_none() {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                "no AWS credentials provider configured",
            )
            .with_context("connector", "aws-iot"));
        }
        let mut b = aws_sdk_iot::config::Builder::from(sdk).retry_config(RetryConfig::disabled());
        if let Some(u) = &cfg.endpoint_url {
            b = b.endpoint_url(u);
        }
        Ok(AwsIot {
            client: IotClient {
                sdk: aws_sdk_iot::Client::from_conf(b.build()),
            },
            cfg,
            region,
            policy_ready: OnceCell::new(),
            provisioned: std::sync::Mutex::new(std::collections::HashMap::new()),
            credentials: sdk.credentials_provider(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AwsIotConfig {
        &self.cfg
    }

    async fn ensure_policy(&self, ctx: &CallContext) -> Result<()> {
        self.policy_ready
            .get_or_try_init(|| async {
                if self.client.policy_exists(ctx, &self.cfg.policy_name).await? {
                    return Ok(());
                }
                if !self.cfg.create_policy {
                    return Err(Error::new(
                        ErrorKind::ConfigInvalid,
                        format!(
                            "policy {:?} does not exist in AWS IoT: create it, or set create_policy = true",
                            self.cfg.policy_name
                        ),
                    )
                    .with_context("connector", "aws-iot"));
                }
                self.client
                    .create_policy(ctx, &self.cfg.policy_name, &default_policy_document())
                    .await
            })
            .await
            .map(|_| ())
    }

    async fn try_register(&self, ctx: &CallContext, d: &DeviceIdentity) -> Result<RegisterOutcome> {
        let thing = self.cfg.thing_name_for(d)?;
        let pem = d.to_pem();
        if pem.len() > 65536 {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "certificate PEM is {} characters; AWS IoT takes at most 65536",
                    pem.len()
                ),
            ));
        }
        self.ensure_policy(ctx).await?;
        let id = d.device_id.as_str();
        // A fresh registration is ACTIVE with the ARN in the answer: it authorises nothing
        // until the policy is attached, last. Only a 409 needs DescribeCertificate (the
        // certificate may be INACTIVE or REVOKED from an earlier run).
        let registered = self.client.register(ctx, &pem).await?;
        let created = registered.is_some();
        let cert = match registered {
            Some(arn) if !arn.is_empty() => client::CertInfo {
                arn,
                status: "ACTIVE".to_owned(),
            },
            _ => self
                .client
                .describe_certificate(ctx, id)
                .await?
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::OutcomeUnknown,
                        "certificate not found right after registering it",
                    )
                    .with_operation("DescribeCertificate")
                })?,
        };
        let mut remote = RemoteDevice::named(&thing).with_resource("certificate_arn", &cert.arn);
        remote.device_id = Some(d.device_id.clone());
        if cert.status == "REVOKED" {
            remote.status = Some(cert.status);
            return Ok(RegisterOutcome::Conflict {
                remote: Some(remote),
                reason: "the certificate is REVOKED in AWS IoT and can never be activated again"
                    .into(),
            });
        }
        let attrs = attributes(d);
        let thing_arn = match self
            .client
            .create_thing(ctx, &thing, self.cfg.thing_type.as_deref(), &attrs)
            .await
        {
            Ok(arn) => arn,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let mut reason = format!("thing {thing} exists with a different configuration");
                if let Some(t) = self.client.describe_thing(ctx, &thing).await? {
                    remote = remote.with_resource("thing_arn", &t.arn);
                    remote.differences = diff_thing(&t, self.cfg.thing_type.as_deref(), &attrs);
                    if !remote.differences.is_empty() {
                        reason = format!("{reason}: {}", remote.differences.join("; "));
                    }
                }
                self.rollback(ctx, created, id, &mut reason).await;
                return Ok(RegisterOutcome::Conflict {
                    remote: Some(remote),
                    reason,
                });
            }
            Err(e) => return Err(e),
        };
        remote = remote.with_resource("thing_arn", &thing_arn);
        let exclusive = self.cfg.principal_type == PrincipalType::Exclusive;
        match self
            .client
            .attach_thing_principal(ctx, &thing, &cert.arn, exclusive)
            .await
        {
            Ok(()) => {}
            // AWS refuses an exclusive attach with InvalidRequestException whatever its wording:
            // ask which things hold the certificate rather than read the message.
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                let others: Vec<String> = self
                    .client
                    .list_principal_things(ctx, &cert.arn)
                    .await?
                    .into_iter()
                    .filter(|t| *t != thing)
                    .collect();
                if others.is_empty() {
                    return Err(e);
                }
                let mut reason = format!(
                    "the certificate is attached to another thing: {}",
                    others.join(", ")
                );
                // The thing this call created is nobody's: remove it (only if it is this
                // device's and holds no certificate), and the certificate if this call
                // registered it.
                if let Err(e) = self.delete_orphan_thing(ctx, &thing, d).await {
                    reason.push_str(&format!(
                        " (and thing {thing}, created for it, could not be removed: {e})"
                    ));
                } else {
                    remote.resources.remove("thing_arn");
                }
                self.rollback(ctx, created, id, &mut reason).await;
                return Ok(RegisterOutcome::Conflict {
                    remote: Some(remote),
                    reason,
                });
            }
            Err(e) => return Err(e),
        }
        if let Some(group) = &self.cfg.thing_group {
            self.client
                .add_thing_to_group(ctx, group, &thing)
                .await
                .map_err(|e| {
                    if e.kind() == ErrorKind::NotFound {
                        Error::new(
                            ErrorKind::ConfigInvalid,
                            format!("thing group {group:?} does not exist in AWS IoT"),
                        )
                        .with_operation("AddThingToThingGroup")
                    } else {
                        e
                    }
                })?;
        }
        // Last: the policy. Until it is attached the certificate authorises nothing, so a
        // device whose provisioning stopped half-way can never connect. Activating a fresh
        // certificate here instead would cost a call at UpdateCertificate's 10/s per device.
        self.client
            .attach_policy(ctx, &self.cfg.policy_name, &cert.arn)
            .await?;
        // A certificate left INACTIVE by an earlier run or an operator is activated after it.
        if cert.status != "ACTIVE" {
            self.client.update_certificate(ctx, id, "ACTIVE").await?;
        }
        remote.status = Some("ACTIVE".into());
        self.provisioned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(d.device_id.clone(), std::time::Instant::now());
        Ok(if created {
            RegisterOutcome::Created(remote)
        } else {
            RegisterOutcome::AlreadyPresent(remote)
        })
    }

    /// Deletes a certificate this call registered, so a conflict leaves nothing behind.
    async fn rollback(&self, ctx: &CallContext, created: bool, id: &str, reason: &mut String) {
        if !created {
            return;
        }
        // AWS deletes only a certificate that is not ACTIVE.
        let deleted = match self.client.update_certificate(ctx, id, "INACTIVE").await {
            Ok(()) => self.client.delete_certificate(ctx, id).await,
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            reason.push_str(&format!(
                " (and the certificate it registered could not be removed: {e})"
            ));
        }
    }

    async fn try_deregister(
        &self,
        ctx: &CallContext,
        d: &DeviceIdentity,
    ) -> Result<DeregisterOutcome> {
        let thing = self.cfg.thing_name_for(d)?;
        let id = d.device_id.as_str();
        let Some(cert) = self.client.describe_certificate(ctx, id).await? else {
            // The certificate is gone; finish a half-done undo by removing our thing.
            return Ok(if self.delete_own_thing(ctx, &thing, d).await? {
                DeregisterOutcome::Deleted
            } else {
                DeregisterOutcome::NotFound
            });
        };
        let target = if self.cfg.revoke_on_deregister {
            "REVOKED"
        } else {
            "INACTIVE"
        };
        if cert.status != target && cert.status != "REVOKED" {
            self.client.update_certificate(ctx, id, target).await?;
        }
        for policy in self.client.list_attached_policies(ctx, &cert.arn).await? {
            self.client.detach_policy(ctx, &policy, &cert.arn).await?;
        }
        for t in self.client.list_principal_things(ctx, &cert.arn).await? {
            self.client
                .detach_thing_principal(ctx, &t, &cert.arn)
                .await?;
        }
        // DeleteConflict while a detach propagates: temporary, the engine retries.
        self.client.delete_certificate(ctx, id).await?;
        self.delete_own_thing(ctx, &thing, d).await?;
        self.provisioned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&d.device_id);
        Ok(DeregisterOutcome::Deleted)
    }

    fn recently_provisioned(&self, d: &DeviceIdentity) -> bool {
        self.provisioned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&d.device_id)
            .is_some_and(|t| t.elapsed() < CONSISTENCY_WINDOW)
    }

    /// Deletes `thing` if it is this device's and no certificate is attached to it.
    async fn delete_orphan_thing(
        &self,
        ctx: &CallContext,
        thing: &str,
        d: &DeviceIdentity,
    ) -> Result<bool> {
        match self.client.list_thing_principals(ctx, thing).await? {
            Some(p) if p.is_empty() => self.delete_own_thing(ctx, thing, d).await,
            _ => Ok(false),
        }
    }

    /// Deletes `thing` if it is this device's (its fingerprint attribute matches).
    async fn delete_own_thing(
        &self,
        ctx: &CallContext,
        thing: &str,
        d: &DeviceIdentity,
    ) -> Result<bool> {
        let Some(t) = self.client.describe_thing(ctx, thing).await? else {
            return Ok(false);
        };
        if t.attributes.get("fingerprint").map(String::as_str) != Some(d.device_id.as_str()) {
            return Ok(false);
        }
        self.client.delete_thing(ctx, thing).await?;
        Ok(true)
    }

    async fn try_lookup(
        &self,
        ctx: &CallContext,
        d: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        let thing = self.cfg.thing_name_for(d)?;
        let Some(cert) = self
            .client
            .describe_certificate(ctx, d.device_id.as_str())
            .await?
        else {
            return Ok(None);
        };
        let mut remote = RemoteDevice::named(&thing).with_resource("certificate_arn", &cert.arn);
        remote.device_id = Some(d.device_id.clone());
        if cert.status != "ACTIVE" {
            remote
                .differences
                .push(format!("certificate is {}, not ACTIVE", cert.status));
        }
        remote.status = Some(cert.status);
        match self.client.list_thing_principals(ctx, &thing).await? {
            None => remote
                .differences
                .push(format!("thing {thing} does not exist")),
            Some(p) if !p.contains(&cert.arn) => remote
                .differences
                .push(format!("certificate is not attached to thing {thing}")),
            Some(_) => {}
        }
        let policies = self.client.list_attached_policies(ctx, &cert.arn).await?;
        if !policies.contains(&self.cfg.policy_name) {
            remote
                .differences
                .push(format!("policy {} is not attached", self.cfg.policy_name));
        }
        if !remote.differences.is_empty() && self.recently_provisioned(d) {
            // Read-after-write on AWS IoT is eventually consistent: a lookup right after
            // provisioning may not see the attachments yet. Temporary, so the engine looks
            // again before it reports a difference.
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "AWS IoT does not show this device as provisioned yet ({}); provisioned moments ago, eventual consistency",
                    remote.differences.join("; ")
                ),
            )
            .with_operation("lookup")
            .set_temporary(true));
        }
        Ok(Some(remote))
    }
}

#[async_trait]
impl Connector for AwsIot {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "aws-iot",
            max_batch_size: 1,
            max_deregister_batch_size: 0,
            quotas: self.cfg.quotas(),
            supports_list: true,
            supports_deregister: true,
            idempotent_register: true,
            max_concurrency: 0,
        }
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            out.push(match self.try_register(ctx, d).await {
                Ok(o) => o,
                Err(e) => RegisterOutcome::Failed(e.with_context("device_id", &d.device_id)),
            });
        }
        Ok(out)
    }

    async fn deregister(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<DeregisterOutcome>> {
        let mut out = Vec::with_capacity(devices.len());
        for d in devices {
            out.push(match self.try_deregister(ctx, d).await {
                Ok(o) => o,
                Err(e) => DeregisterOutcome::Failed(e.with_context("device_id", &d.device_id)),
            });
        }
        Ok(out)
    }

    async fn lookup(
        &self,
        ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        self.try_lookup(ctx, device)
            .await
            .map_err(|e| e.with_context("device_id", &device.device_id))
    }

    async fn list(&self, ctx: &CallContext, cursor: Option<String>) -> Result<ListPage> {
        match &self.cfg.thing_group {
            Some(group) => {
                let (things, next) = self.client.list_things_in_group(ctx, group, cursor).await?;
                Ok(ListPage {
                    devices: things.into_iter().map(RemoteDevice::named).collect(),
                    next,
                })
            }
            None => {
                let (certs, next) = self.client.list_certificates(ctx, cursor).await?;
                Ok(ListPage {
                    devices: certs
                        .into_iter()
                        .map(|(id, status)| {
                            let mut r = RemoteDevice::named(&id);
                            r.device_id = id.parse().ok();
                            r.status = Some(status);
                            r
                        })
                        .collect(),
                    next,
                })
            }
        }
    }

    async fn health_check(&self, ctx: &CallContext) -> Result<()> {
        self.client.data_endpoint(ctx).await?;
        if !self.cfg.create_policy
            && !self
                .client
                .policy_exists(ctx, &self.cfg.policy_name)
                .await?
        {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!(
                    "policy {:?} does not exist in AWS IoT: create it, or set create_policy = true",
                    self.cfg.policy_name
                ),
            )
            .with_context("connector", "aws-iot"));
        }
        Ok(())
    }
}

/// idbridge's least-privilege device policy: a device may connect only as its own thing (client
/// id = thing name, certificate attached to that thing) and use only its own topics. Never
/// `iot:*` on `*`.
pub fn default_policy_document() -> String {
    let thing = "${iot:Connection.Thing.ThingName}";
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": format!("arn:aws:iot:*:*:client/{thing}"),
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [
                    format!("arn:aws:iot:*:*:topic/things/{thing}/*"),
                    format!("arn:aws:iot:*:*:topic/$aws/things/{thing}/*")
                ]
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [
                    format!("arn:aws:iot:*:*:topicfilter/things/{thing}/*"),
                    format!("arn:aws:iot:*:*:topicfilter/$aws/things/{thing}/*")
                ]
            }
        ]
    })
    .to_string()
}

/// The thing's attributes: deterministic, so a re-run's CreateThing is identical (AWS answers 200)
/// and a different device under the same name is a 409. At most 3: AWS's limit without a thing type.
fn attributes(d: &DeviceIdentity) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert("fingerprint".to_owned(), d.device_id.to_string());
    if let Some(b) = &d.batch {
        a.insert("batch".to_owned(), b.tag().to_owned());
    }
    let v = &d.vendor;
    let id = v
        .chip_id
        .as_deref()
        .or(v.unique_id.as_deref())
        .or(v.mac.as_deref())
        .unwrap_or(&d.serial_hex);
    let vendor_id = match &v.vendor {
        Some(vendor) => format!("{vendor}:{id}"),
        None => id.to_owned(),
    };
    a.insert("vendor_id".to_owned(), attr_value(&vendor_id));
    a
}

/// Keeps only characters AWS allows in attribute values (`[a-zA-Z0-9_.,@/:#-]`, ≤ 800).
fn attr_value(s: &str) -> String {
    s.chars()
        .take(800)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.,@/:#-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn diff_thing(
    t: &client::ThingInfo,
    want_type: Option<&str>,
    want: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut d = Vec::new();
    if t.type_name.as_deref() != want_type {
        d.push(format!(
            "thing type is {:?}, want {:?}",
            t.type_name, want_type
        ));
    }
    for (k, v) in want {
        match t.attributes.get(k) {
            Some(have) if have == v => {}
            Some(have) => d.push(format!("attribute {k} is {have}, want {v}")),
            None => d.push(format!("attribute {k} missing, want {v}")),
        }
    }
    for k in t.attributes.keys() {
        if !want.contains_key(k) {
            d.push(format!("extra attribute {k}"));
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_is_least_privilege() {
        let doc: serde_json::Value = serde_json::from_str(&default_policy_document()).unwrap();
        for st in doc["Statement"].as_array().unwrap() {
            let actions = st["Action"].to_string();
            assert!(!actions.contains("iot:*"), "{actions}");
            let res = st["Resource"].to_string();
            assert!(res.contains("${iot:Connection.Thing.ThingName}"), "{res}");
            assert_ne!(st["Resource"], serde_json::json!("*"));
        }
    }

    #[test]
    fn attribute_values_are_sanitised() {
        assert_eq!(attr_value("infineon:12 34+x"), "infineon:12_34_x");
    }
}
