//! # idbridge-manifest
//!
//! The `manifest` target (Mode 1): instead of calling a cloud, write files an operator imports
//! by hand or hands to another system:
//!
//! - `manifest.jsonl`: idbridge's own manifest (a header line, then one device per line:
//!   `device_id`, `cert` PEM, `vendor`, `source`), with a detached ES256 JWS signed by the
//!   operator's key in `manifest.jsonl.jws`;
//! - `aws-bulk.jsonl` + `aws-template.json`: AWS IoT bulk-registration parameters (one device
//!   per line) and the provisioning template;
//! - `azure-import-devices.jsonl`: Azure IoT Hub import-devices lines (`selfSigned`, SHA-256
//!   thumbprints);
//! - `devices.csv`.
//!
//! Devices are staged one line each as they are "registered" (idempotently: a device staged
//! already is `AlreadyPresent`), and the outputs are written from the staging file when the
//! job finishes. Killed at any instant and run again, each device is in the files exactly once.
#![doc = include_str!("../docs.md")]
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod error;
pub mod jws;

use std::sync::Mutex;

use async_trait::async_trait;
use idbridge_core::{
    CallContext, Capabilities, Connector, DeregisterOutcome, DeviceIdentity, Error, ErrorKind,
    ListPage, RegisterOutcome, RemoteDevice, Result,
};

pub use config::{Format, ManifestConfig};
pub use jws::{SigningKey, verify_detached};

use client::Staging;

/// The connector.
#[derive(Debug)]
pub struct ManifestConnector {
    config: ManifestConfig,
    key: Option<SigningKey>,
    staging: Mutex<Staging>,
}

impl ManifestConnector {
    /// Opens the target directory (creating it) and reads the signing key.
    pub fn new(config: ManifestConfig) -> Result<Self> {
        let key = match &config.signing_key {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::new(
                        ErrorKind::ConfigInvalid,
                        format!(
                            "manifest target: cannot read signing_key {}",
                            path.display()
                        ),
                    )
                    .with_source(e)
                })?;
                Some(SigningKey::from_pem(&text, &path.display().to_string())?)
            }
            None if config.formats.contains(&Format::Idbridge) => {
                return Err(Error::new(
                    ErrorKind::ConfigInvalid,
                    "manifest target: the idbridge format is signed: set signing_key to the \
                     operator's P-256 PKCS#8 PEM key (or leave \"idbridge\" out of formats)",
                ));
            }
            None => None,
        };
        let staging = Staging::open(&config.dir)?;
        Ok(ManifestConnector {
            config,
            key,
            staging: Mutex::new(staging),
        })
    }

    fn staging(&self) -> std::sync::MutexGuard<'_, Staging> {
        // Poisoned only if a writer panicked; the index is updated after the write succeeds.
        self.staging.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remote(&self, d: &DeviceIdentity, name: &str) -> RemoteDevice {
        let mut r = RemoteDevice::named(name).with_resource(
            "file",
            self.config.dir.join(client::STAGING).display().to_string(),
        );
        r.device_id = Some(d.device_id.clone());
        r
    }
}

#[async_trait]
impl Connector for ManifestConnector {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "manifest",
            max_batch_size: 1000,
            max_deregister_batch_size: 0,
            quotas: Vec::new(),
            supports_list: true,
            supports_deregister: true,
            idempotent_register: true,
            max_concurrency: 1,
        }
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        ctx.acquire_n("write", u32::try_from(devices.len()).unwrap_or(u32::MAX))
            .await;
        let staged: Vec<_> = devices
            .iter()
            .map(|d| client::stage(d, &self.config.name))
            .collect();
        let mut staging = self.staging();
        let fresh = staging.append(&staged)?;
        Ok(devices
            .iter()
            .zip(fresh)
            .map(|(d, new)| {
                let name = staging.get(&d.device_id).unwrap_or_default().to_owned();
                let r = self.remote(d, &name);
                if new {
                    RegisterOutcome::Created(r)
                } else {
                    RegisterOutcome::AlreadyPresent(r)
                }
            })
            .collect())
    }

    async fn deregister(
        &self,
        _ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<DeregisterOutcome>> {
        let ids: Vec<_> = devices.iter().map(|d| d.device_id.clone()).collect();
        let present = self.staging().remove(&ids)?;
        Ok(present
            .into_iter()
            .map(|p| {
                if p {
                    DeregisterOutcome::Deleted
                } else {
                    DeregisterOutcome::NotFound
                }
            })
            .collect())
    }

    async fn lookup(
        &self,
        _ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        let staging = self.staging();
        Ok(staging
            .get(&device.device_id)
            .map(|name| self.remote(device, name)))
    }

    async fn list(&self, _ctx: &CallContext, _cursor: Option<String>) -> Result<ListPage> {
        let staging = self.staging();
        Ok(ListPage {
            devices: staging
                .entries()
                .map(|(id, name)| {
                    let mut r = RemoteDevice::named(name.clone());
                    r.device_id = Some(id.clone());
                    r
                })
                .collect(),
            next: None,
        })
    }

    async fn health_check(&self, _ctx: &CallContext) -> Result<()> {
        let probe = self.config.dir.join(".idbridge-probe");
        std::fs::write(&probe, b"ok")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| error::parse_error("health_check", &probe, e))
    }

    async fn finish(&self, _ctx: &CallContext) -> Result<()> {
        let devices = self.staging().read_all()?;
        client::write_outputs(&self.config, self.key.as_ref(), &devices)?;
        tracing::info!(dir = %self.config.dir.display(), devices = devices.len(), "manifest files written");
        Ok(())
    }
}
