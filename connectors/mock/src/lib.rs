//! # idbridge-mock
//!
//! The connector for the `mock` cloud of `idbridge-mock-clouds`: a simple device registry with
//! bearer auth and a quota. With no `url` it starts the registry in this process, so
//! `idbridge provision ... --target demo` works on a machine with nothing installed; with a
//! `url` it talks to a standalone `idbridge mock-cloud mock --listen ADDR`.
//!
//! Devices are registered under their device id (the certificate's SHA-256). `POST` is not
//! idempotent, so the engine writes each device ahead in its journal and reconciles an unknown
//! outcome with `lookup` before sending again.
#![doc = include_str!("../docs.md")]
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod error;

use async_trait::async_trait;
use idbridge_core::{
    CallContext, Capabilities, Connector, DeregisterOutcome, DeviceIdentity, Error, ErrorKind,
    ListPage, Quota, RegisterOutcome, RemoteDevice, Result,
};
use idbridge_mock_clouds::server::RunningServer;
use idbridge_mock_clouds::{Registry, RegistryConfig};
use secrecy::{ExposeSecret, SecretString};

pub use client::Client;
pub use config::MockConfig;

/// The default pace, calls per second.
pub const DEFAULT_QUOTA: f64 = 100.0;

/// The connector.
#[derive(Debug)]
pub struct MockConnector {
    client: Client,
    quota: f64,
    /// The in-process registry, kept alive as long as the connector.
    local: Option<(RunningServer, Registry)>,
}

impl MockConnector {
    /// Builds the connector from its target table; starts an in-process registry without `url`.
    pub async fn new(config: MockConfig) -> Result<Self> {
        let token = config
            .token
            .clone()
            .unwrap_or_else(|| SecretString::from("mock-token"));
        let quota = config.quota.unwrap_or(DEFAULT_QUOTA);
        if !(quota.is_finite() && quota > 0.0) {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!("mock target: quota must be a positive number, not {quota}"),
            ));
        }
        match &config.url {
            Some(url) => {
                if url.starts_with("http://") && !config.allow_http {
                    return Err(Error::new(
                        ErrorKind::ConfigInvalid,
                        format!("mock target: {url} is plain http; set allow_http = true"),
                    ));
                }
                Ok(MockConnector {
                    client: Client::new(url, token)?,
                    quota,
                    local: None,
                })
            }
            None => {
                let registry = Registry::new(RegistryConfig {
                    token: token.expose_secret().to_owned(),
                    quota: config.server_quota,
                });
                let server = registry.serve("127.0.0.1:0").await.map_err(|e| {
                    Error::new(
                        ErrorKind::Unexpected,
                        "cannot start the in-process mock cloud",
                    )
                    .with_source(e)
                })?;
                Ok(MockConnector {
                    client: Client::new(&server.url, token)?,
                    quota,
                    local: Some((server, registry)),
                })
            }
        }
    }

    /// The in-process registry, when there is one (tests and demos read it back).
    pub fn registry(&self) -> Option<&Registry> {
        self.local.as_ref().map(|(_, r)| r)
    }
}

#[async_trait]
impl Connector for MockConnector {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "mock",
            max_batch_size: 1,
            max_deregister_batch_size: 0,
            quotas: vec![Quota::new(client::API, self.quota)],
            supports_list: true,
            supports_deregister: true,
            idempotent_register: false,
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
            out.push(match self.client.create(ctx, d).await {
                Ok(client::Created::New(w)) => RegisterOutcome::Created(w.remote()),
                Ok(client::Created::Existing(w)) => RegisterOutcome::AlreadyPresent(w.remote()),
                Ok(client::Created::Conflict(reason)) => RegisterOutcome::Conflict {
                    remote: None,
                    reason,
                },
                Err(e) if devices.len() == 1 => {
                    return Err(e.with_context("device_id", &d.device_id));
                }
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
            out.push(match self.client.delete(ctx, d.device_id.as_str()).await {
                Ok(true) => DeregisterOutcome::Deleted,
                Ok(false) => DeregisterOutcome::NotFound,
                Err(e) if devices.len() == 1 => {
                    return Err(e.with_context("device_id", &d.device_id));
                }
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
        Ok(self
            .client
            .read(ctx, device.device_id.as_str())
            .await?
            .map(client::WireDevice::remote))
    }

    async fn list(&self, ctx: &CallContext, cursor: Option<String>) -> Result<ListPage> {
        let (devices, next) = self.client.list(ctx, cursor.as_deref()).await?;
        Ok(ListPage {
            devices: devices
                .into_iter()
                .map(client::WireDevice::remote)
                .collect(),
            next,
        })
    }

    async fn health_check(&self, ctx: &CallContext) -> Result<()> {
        self.client.health(ctx).await
    }
}
