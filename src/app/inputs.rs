//! Reading inputs and turning verdicts into refusals: what is sent, what is refused and why.

use std::path::PathBuf;

use idbridge_core::DeviceIdentity;
use idbridge_core::identity::VendorAttributes;
use idbridge_core::intake::{Intake, IntakeOptions, RejectKind, Verdict};
use serde::Serialize;

/// An input entry that was not sent: invalid, not provisionable, unreadable.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    /// The device, when the entry had a certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `invalid`, `not_provisionable`, `unreadable`, `input_unusable`.
    pub status: &'static str,
    /// Why.
    pub reason: String,
    /// File and line or entry.
    pub source: String,
    /// The device's vendor ids, when the entry had a certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<Box<VendorAttributes>>,
    /// The certificate's serial number (hex), when the entry had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// The devices of the inputs: those to send, and those refused.
#[derive(Debug, Default)]
pub struct Inputs {
    /// To send.
    pub devices: Vec<DeviceIdentity>,
    /// Refused entries (reported, never sent).
    pub refused: Vec<Refused>,
    /// Entries skipped on purpose (duplicates, key blocks).
    pub skipped: u64,
}

/// The one rule from a verdict to "send" or "refuse": valid devices are sent; the others are
/// refused with the reason (`any_verdict` sends every certificate, e.g. to deprovision a
/// revoked or expired device).
pub fn judge(
    identity: DeviceIdentity,
    verdict: &Verdict,
    any_verdict: bool,
) -> Result<DeviceIdentity, Refused> {
    let refused = |status: &'static str, reason: String| Refused {
        device_id: Some(identity.device_id.to_string()),
        status,
        reason,
        source: identity.source.to_string(),
        vendor: Some(Box::new(identity.vendor.clone())),
        serial: Some(identity.serial_hex.clone()),
    };
    match verdict {
        Verdict::Valid { .. } => Ok(identity),
        _ if any_verdict => Ok(identity),
        Verdict::NotProvisionable { reason } => Err(refused("not_provisionable", reason.clone())),
        Verdict::Invalid { reason } => Err(refused("invalid", reason.clone())),
        other => Err(refused(
            "invalid",
            other
                .reason()
                .map_or_else(|| format!("{other:?}"), str::to_owned),
        )),
    }
}

/// Reads and verifies `paths` off the async workers. Valid devices (or, with `any_verdict`,
/// every certificate) are returned to send; the rest are refused. An error is an unusable
/// input or configuration.
pub async fn read_inputs(
    paths: Vec<PathBuf>,
    opts: IntakeOptions,
    any_verdict: bool,
) -> anyhow::Result<Inputs> {
    tokio::task::spawn_blocking(move || {
        let intake = Intake::open(&paths, &opts)?;
        let mut inputs = Inputs::default();
        // One public key, one device (an ECDSA signature re-encoded s → n − s verifies too).
        let mut keys = idbridge_core::trust::DuplicateKeys::new();
        for item in intake {
            match item {
                Ok(checked) => match judge(checked.identity, &checked.verdict, any_verdict) {
                    Ok(identity) => match keys.check(&identity) {
                        None => inputs.devices.push(identity),
                        Some(reason) => inputs.refused.push(Refused {
                            device_id: Some(identity.device_id.to_string()),
                            status: "duplicate_key",
                            reason,
                            source: identity.source.to_string(),
                            vendor: Some(Box::new(identity.vendor.clone())),
                            serial: Some(identity.serial_hex.clone()),
                        }),
                    },
                    Err(r) => inputs.refused.push(r),
                },
                Err(r) if r.kind == RejectKind::Skipped => inputs.skipped += 1,
                Err(r) => inputs.refused.push(Refused {
                    device_id: None,
                    status: r.kind.as_str(),
                    reason: r.reason.clone(),
                    source: r.source.to_string(),
                    vendor: None,
                    serial: None,
                }),
            }
        }
        Ok(inputs)
    })
    .await?
}
