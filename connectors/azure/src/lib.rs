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
//! (renewed before it expires), a Microsoft Entra client-credentials token, or an ambient
//! Entra credential (`credential = "default"`, environment, workload identity, managed
//! identity, Azure CLI) from the `azure_identity` crate. The connectors
//! never retry or sleep: they ask the engine's pacer before each call and map every answer to
//! idbridge's error kinds ([`error::parse_error`]). Configuration keys: `docs.md`.
#![deny(missing_docs)]
#![doc = include_str!("../docs.md")]

mod client;
pub mod config;
mod credential;
pub mod dps;
pub mod error;
pub mod iot_hub;

pub use config::{AzureConfig, ConnectionString, CredentialKind, EntraConfig};
pub use dps::DpsConnector;
pub use iot_hub::IotHubConnector;

use std::sync::Arc;

use idbridge_core::{
    Connector, DeviceIdentity, Error, ErrorKind, RegisterOutcome, RemoteDevice, Result,
};

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

/// The outcome of a create that the service refused because `label` exists, from a GET of it:
/// the same certificate is success, another one a conflict never overwritten, and a resource
/// deleted in between a temporary failure the engine retries.
pub(crate) fn existing_outcome(
    got: Result<Option<RemoteDevice>>,
    device: &DeviceIdentity,
    label: &str,
    same: impl Fn(&RemoteDevice) -> bool,
) -> RegisterOutcome {
    match got {
        Ok(Some(r)) if same(&r) => RegisterOutcome::AlreadyPresent(r),
        Ok(Some(r)) => {
            let reason = format!(
                "{label} exists with another certificate: {}",
                r.differences.join("; ")
            );
            RegisterOutcome::Conflict {
                remote: Some(r),
                reason,
            }
        }
        Ok(None) => RegisterOutcome::Failed(
            Error::new(
                ErrorKind::ServerError,
                format!("{label} reported existing but is gone"),
            )
            .with_operation("register"),
        ),
        Err(e) => RegisterOutcome::Failed(e.with_context("device_id", &device.device_id)),
    }
}

/// One outcome per device: a slot no call filled is an unexpected failure, never a success.
pub(crate) fn fill_outcomes(outcomes: Vec<Option<RegisterOutcome>>) -> Vec<RegisterOutcome> {
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                RegisterOutcome::Failed(
                    Error::new(ErrorKind::Unexpected, "no outcome").with_operation("register"),
                )
            })
        })
        .collect()
}
