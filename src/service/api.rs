//! The service's request and response types: the JSON shapes of `/api/v1/...` in one module,
//! for the console and for clients. Field names are stable.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error answer: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code (`not_found`, `unauthorized`, `forbidden`, `bad_request`,
    /// `already_bound`, `too_many_attempts`, `conflict`, `internal`...).
    pub code: String,
    /// One human line.
    pub message: String,
}

/// `POST /api/v1/admin/accounts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// Unique name.
    pub name: String,
    /// Default binding mode (`manual` when absent).
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// `POST /api/v1/admin/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// The account's name (absent for an operator token).
    #[serde(default)]
    pub account: Option<String>,
    /// `binder`, `admin` or `operator`.
    pub role: String,
}

/// A created token: shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// Token id (for the audit log).
    pub id: String,
    /// The bearer token. Shown once; only its hash is kept.
    pub token: String,
    /// Its role.
    pub role: String,
}

/// Binding modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The account downloads a manifest.
    Manifest,
    /// The account triggers provisioning.
    Manual,
    /// Binding starts provisioning into the default target.
    Automatic,
}

impl Mode {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Manifest => "manifest",
            Mode::Manual => "manual",
            Mode::Automatic => "automatic",
        }
    }
}

/// `POST /api/v1/bindings`: `batch_id` + `reel_id` (a reel), `batch_id` alone (a batch imported
/// whole), or `qr`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    /// The Product Batch ID.
    #[serde(default)]
    pub batch_id: Option<String>,
    /// The Reel ID.
    #[serde(default)]
    pub reel_id: Option<String>,
    /// The scanned QR text: a URL or URI whose query has `batch` and `reel`.
    #[serde(default)]
    pub qr: Option<String>,
    /// The mode (default: the account's).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// The target (default: the account's default target).
    #[serde(default)]
    pub target: Option<String>,
}

/// A binding as answered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BindingView {
    /// Its id.
    pub id: String,
    /// The bound batch (reel) record.
    pub batch: String,
    /// Valid devices bound.
    pub devices: i64,
    /// Refused devices of the batch (invalid certificates: recorded, never provisioned).
    #[serde(default)]
    pub refused: i64,
    /// The mode.
    pub mode: String,
    /// The target, if chosen.
    pub target: Option<String>,
    /// Created, unix ms.
    pub created_ms: i64,
    /// The job started by an automatic bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobView>,
}

/// `POST /api/v1/bindings/{id}/provision|deprovision` body (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// The target (default: the binding's, else the account's default).
    #[serde(default)]
    pub target: Option<String>,
}

/// Counts of a job's devices.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct JobCounts {
    /// Devices.
    pub total: u64,
    /// Done.
    pub done: u64,
    /// Failed.
    pub failed: u64,
    /// Not finished.
    pub pending: u64,
}

/// A job as answered.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// Its id.
    pub id: String,
    /// The binding.
    pub binding: String,
    /// `provision` or `deprovision`.
    pub operation: String,
    /// The target.
    pub target: String,
    /// `queued`, `running`, `finished`, `failed`.
    pub state: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Device counts.
    pub counts: JobCounts,
    /// Created, unix ms.
    pub created_ms: i64,
    /// Last change, unix ms.
    pub updated_ms: i64,
}

/// One device of a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobDevice {
    /// SHA-256 of the DER.
    pub device_id: String,
    /// `pending`, `in_flight`, `unknown`, `done`, `failed`.
    pub state: String,
    /// `created`, `already_present`, `deleted`, `not_found` ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Cloud resource ids.
    #[serde(default)]
    pub resources: std::collections::BTreeMap<String, String>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/v1/jobs/{id}/devices` page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobDevices {
    /// This page.
    pub devices: Vec<JobDevice>,
    /// Pass as `?cursor=` for the next page; absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A target as answered: its table with secret values redacted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TargetView {
    /// Its name.
    pub name: String,
    /// `kind`.
    pub kind: String,
    /// Whether it is the account's default.
    pub default: bool,
    /// The table, secrets shown as `"<redacted>"`.
    pub config: serde_json::Value,
}

/// The AEAD context of an account's target: a sealed table opens only where it was sealed.
pub fn seal_context(account_id: &str, name: &str) -> String {
    format!("target\0{account_id}\0{name}")
}

/// Whether a key of a target table holds a secret (written only, shown redacted).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token",
        "secret",
        "password",
        "key",
        "connection_string",
        "sas",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
        && !k.ends_with("_file")
        && !k.ends_with("_env")
        && k != "key_id"
}

/// Shown for a secret value.
pub const REDACTED: &str = "<redacted>";
