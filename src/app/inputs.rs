//! Reading inputs and turning verdicts into refusals: what is sent, what is refused and why.

use std::path::PathBuf;

use idbridge_core::DeviceIdentity;
use idbridge_core::identity::VendorAttributes;
use idbridge_core::intake::{Intake, IntakeOptions, RejectKind, Verdict};
use idbridge_core::journal::DeviceChunks;
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
    let refused = |status: &'static str, reason: String| refusal(&identity, status, reason);
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

/// `identity` refused with `status` and `reason`.
fn refusal(identity: &DeviceIdentity, status: &'static str, reason: String) -> Refused {
    Refused {
        device_id: Some(identity.device_id.to_string()),
        status,
        reason,
        source: identity.source.to_string(),
        vendor: Some(Box::new(identity.vendor.clone())),
        serial: Some(identity.serial_hex.clone()),
    }
}

/// Where one intake item goes: sent, refused (reported), or skipped on purpose.
// Made and matched at once, one item at a time: the size of the device variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Sorted {
    Send(DeviceIdentity),
    Refuse(Refused),
    Skip,
}

/// The one rule from an intake item to [`Sorted`]: [`judge`], then one device per public key
/// (an ECDSA signature re-encoded s → n − s verifies too).
fn sort(
    item: Result<idbridge_core::intake::Checked, idbridge_core::intake::Rejected>,
    keys: &mut idbridge_core::trust::DuplicateKeys,
    any_verdict: bool,
) -> Sorted {
    match item {
        Ok(checked) => match judge(checked.identity, &checked.verdict, any_verdict) {
            Ok(identity) => match keys.check(&identity) {
                None => Sorted::Send(identity),
                Some(reason) => Sorted::Refuse(refusal(&identity, "duplicate_key", reason)),
            },
            Err(r) => Sorted::Refuse(r),
        },
        Err(r) if r.kind == RejectKind::Skipped => Sorted::Skip,
        Err(r) => Sorted::Refuse(Refused {
            device_id: None,
            status: r.kind.as_str(),
            reason: r.reason,
            source: r.source.to_string(),
            vendor: None,
            serial: None,
        }),
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
        let mut keys = idbridge_core::trust::DuplicateKeys::new();
        for item in intake {
            match sort(item, &mut keys, any_verdict) {
                Sorted::Send(identity) => inputs.devices.push(identity),
                Sorted::Refuse(r) => inputs.refused.push(r),
                Sorted::Skip => inputs.skipped += 1,
            }
        }
        Ok(inputs)
    })
    .await?
}

/// What a streamed read of the inputs left besides its devices ([`stream_inputs`]).
#[derive(Debug, Default)]
pub struct Tally {
    /// Devices handed on to send.
    pub devices: u64,
    /// Refused entries (reported, never sent).
    pub refused: Vec<Refused>,
    /// Entries skipped on purpose (duplicates, key blocks).
    pub skipped: u64,
}

/// The inputs read and verified off the async workers as they are consumed: the devices to
/// send in chunks of up to `chunk` (at most two chunks read ahead), and, once the chunks are
/// over, the rest. Memory does not grow with the input: duplicate keys are checked in a
/// compact index ([`idbridge_core::trust::DuplicateKeys`]). An unusable input ends the chunks
/// with an error (so a job being opened from them is dropped) and is the tally's error too.
pub struct StreamedInputs {
    /// The devices to send.
    pub chunks: DeviceChunks<'static>,
    /// Refused and skipped entries, once `chunks` has ended.
    pub tally: tokio::task::JoinHandle<anyhow::Result<Tally>>,
}

/// Reads `paths` as [`read_inputs`] does, handing the devices on in chunks as they are
/// verified (see [`StreamedInputs`]).
pub fn stream_inputs(
    paths: Vec<PathBuf>,
    opts: IntakeOptions,
    any_verdict: bool,
    chunk: usize,
) -> StreamedInputs {
    let chunk = chunk.max(1);
    let (tx, rx) = tokio::sync::mpsc::channel::<idbridge_core::Result<Vec<DeviceIdentity>>>(2);
    let tally = tokio::task::spawn_blocking(move || {
        let unusable = |e: &anyhow::Error| {
            idbridge_core::Error::new(idbridge_core::ErrorKind::InvalidInput, format!("{e:#}"))
        };
        let intake = match Intake::open(&paths, &opts) {
            Ok(i) => i,
            Err(e) => {
                let e = anyhow::Error::from(e);
                let _ = tx.blocking_send(Err(unusable(&e)));
                return Err(e);
            }
        };
        let mut tally = Tally::default();
        let mut keys = idbridge_core::trust::DuplicateKeys::new();
        let mut batch = Vec::with_capacity(chunk);
        for item in intake {
            match sort(item, &mut keys, any_verdict) {
                Sorted::Send(identity) => {
                    tally.devices += 1;
                    batch.push(identity);
                    if batch.len() >= chunk {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(chunk));
                        if tx.blocking_send(Ok(full)).is_err() {
                            // The reader stopped (an error downstream): nothing to do.
                            return Ok(tally);
                        }
                    }
                }
                Sorted::Refuse(r) => tally.refused.push(r),
                Sorted::Skip => tally.skipped += 1,
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Ok(batch));
        }
        Ok(tally)
    });
    let chunks =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    StreamedInputs {
        chunks: Box::pin(chunks),
        tally,
    }
}
