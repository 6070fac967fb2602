//! The `manifest` target's configuration (`[targets.NAME]` with `kind = "manifest"`).

use std::path::PathBuf;

use serde::Deserialize;

/// One output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// idbridge's JSONL manifest (`manifest.jsonl`) with its detached ES256 JWS (`.jws`).
    Idbridge,
    /// AWS IoT bulk registration: `aws-bulk.jsonl` (one parameter set per line) and
    /// `aws-template.json`.
    Aws,
    /// Azure IoT Hub import-devices JSONL (`azure-import-devices.jsonl`).
    Azure,
    /// `devices.csv`.
    Csv,
}

/// Keys of a `kind = "manifest"` target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestConfig {
    /// Always `"manifest"`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The directory the files go to (created if needed).
    pub dir: PathBuf,
    /// Which files to write; default all four.
    #[serde(default = "all_formats")]
    pub formats: Vec<Format>,
    /// The operator's P-256 private key (PKCS#8 PEM file) that signs the idbridge manifest.
    /// Required with the `idbridge` format.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// Thing name / device id template: `{device_id}` (default), `{serial_hex}`, `{chip_id}`,
    /// `{unique_id}`, `{slot}`.
    #[serde(default = "default_name")]
    pub name: String,
    /// The AWS IoT policy the template attaches.
    #[serde(default = "default_policy")]
    pub aws_policy_name: String,
}

fn all_formats() -> Vec<Format> {
    vec![Format::Idbridge, Format::Aws, Format::Azure, Format::Csv]
}

fn default_name() -> String {
    "{device_id}".into()
}

fn default_policy() -> String {
    "idbridge-device".into()
}

impl ManifestConfig {
    /// A config writing every format to `dir`, signed with `signing_key`.
    pub fn new(dir: impl Into<PathBuf>, signing_key: Option<PathBuf>) -> Self {
        ManifestConfig {
            kind: None,
            dir: dir.into(),
            formats: all_formats(),
            signing_key,
            name: default_name(),
            aws_policy_name: default_policy(),
        }
    }
}
