//! # idbridge-azure
//!
//! Two Azure targets for factory X.509 device certificates:
//!
//! - [`IotHubConnector`] (`kind = "azure-iot-hub"`): the IoT Hub identity registry, one device
//!   per certificate authenticated by its SHA-256 thumbprint (`selfSigned`); works for every
//!   chip, including OPTIGA Trust M V1/V3 whose CN is the same on every part. Bulk
//!   `POST /devices`, 100 devices per call.
//! - [`DpsConnector`] (`kind = "azure-dps"`): Device Provisioning Service individual
//!   enrollments with X.509 attestation; DPS needs the CN to be the registration id, so only
//!   chips with unique, valid CNs fit, and other batches are refused before any call
//!   ([`dps::check_batch`]). Bulk `POST /enrollments`, 10 per call.
//!
//! A small reqwest (rustls) client per service ([`client`](crate::client) is the only module
//! touching the wire) authenticates with a SAS token minted from the service connection string
//! (renewed before it expires) or a Microsoft Entra client-credentials token. The connectors
//! never retry or sleep: they ask the engine's pacer before each call and map every answer to
//! idbridge's error kinds ([`error::parse_error`]). Configuration keys: `docs.md`.
#![deny(missing_docs)]
#![doc = include_str!("../docs.md")]

mod client;
pub mod config;
pub mod dps;
pub mod error;
pub mod iot_hub;

pub use config::{AzureConfig, ConnectionString, EntraConfig, Secret};
pub use dps::DpsConnector;
pub use iot_hub::IotHubConnector;

use std::sync::Arc;

use idbridge_core::{Connector, Error, ErrorKind, Result};

/// Builds the connector for a target whose `kind` is `azure-iot-hub` or `azure-dps`.
pub fn connector(cfg: &AzureConfig) -> Result<Arc<dyn Connector>> {
    match cfg.kind.as_deref() {
        Some("azure-iot-hub") => Ok(Arc::new(IotHubConnector::new(cfg)?)),
        Some("azure-dps") => Ok(Arc::new(DpsConnector::new(cfg)?)),
        other => Err(Error::new(
            ErrorKind::ConfigInvalid,
            format!("not an Azure target kind: {other:?} (azure-iot-hub, azure-dps)"),
        )
        .with_operation("config")),
    }
}
