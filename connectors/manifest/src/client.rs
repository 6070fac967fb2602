//! The only file that touches the disk: the staging file devices are appended to, and the
//! output files written from it when the job finishes.
//!
//! `register` appends one JSON line per new device to `<dir>/.idbridge-staging.jsonl` with one
//! `write` per batch; a device already in the file is `AlreadyPresent`, so registering is
//! idempotent across runs. A process killed mid-write leaves at most one partial last line,
//! which the next open cuts off. `finish` writes every output to a temporary file and renames
//! it into place, so an output is either the previous one or complete.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use idbridge_core::{DeviceId, DeviceIdentity, Error, ErrorKind, Result, Source, VendorAttributes};
use serde::{Deserialize, Serialize};

use crate::config::{Format, ManifestConfig};
use crate::error::parse_error;
use crate::jws::SigningKey;

/// The staging file's name inside the target directory.
pub const STAGING: &str = ".idbridge-staging.jsonl";
/// idbridge's manifest.
pub const MANIFEST: &str = "manifest.jsonl";
/// AWS bulk-registration parameters.
pub const AWS_BULK: &str = "aws-bulk.jsonl";
/// AWS provisioning template.
pub const AWS_TEMPLATE: &str = "aws-template.json";
/// Azure IoT Hub import-devices file.
pub const AZURE: &str = "azure-import-devices.jsonl";
/// CSV.
pub const CSV: &str = "devices.csv";

/// One staged device: the idbridge manifest's device line plus what the other formats need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Staged {
    /// SHA-256 of the DER.
    pub device_id: DeviceId,
    /// PEM.
    pub cert: String,
    /// Vendor attributes.
    pub vendor: VendorAttributes,
    /// Where it came from.
    pub source: Source,
    /// The batch tag (never the batch ID).
    #[serde(default)]
    pub batch: Option<String>,
    /// The name (thing name / device id) from the `name` template.
    pub name: String,
    /// Serial, hex.
    pub serial_hex: String,
    /// Subject CN.
    #[serde(default)]
    pub subject_cn: Option<String>,
    /// Issuer DN.
    pub issuer: String,
    /// Validity end, RFC 3339.
    pub not_after: String,
}

/// The staging file and what it holds.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    file: File,
    index: HashMap<DeviceId, String>,
}

impl Staging {
    /// Opens (creating) the staging file in `dir`, cutting off a partial last line.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| parse_error("open", dir, e))?;
        let path = dir.join(STAGING);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| parse_error("open", &path, e))?;
        let mut index = HashMap::new();
        let mut good_len = 0u64;
        {
            let mut reader = BufReader::new(&file);
            reader
                .seek(SeekFrom::Start(0))
                .map_err(|e| parse_error("open", &path, e))?;
            let mut line = String::new();
            let mut lineno = 0u64;
            loop {
                line.clear();
                let n = reader
                    .read_line(&mut line)
                    .map_err(|e| parse_error("open", &path, e))?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                lineno += 1;
                let staged: Staged = serde_json::from_str(&line).map_err(|e| {
                    Error::new(
                        ErrorKind::ConfigInvalid,
                        format!("{}:{lineno}: not a staged device line", path.display()),
                    )
                    .with_source(e)
                })?;
                index.insert(staged.device_id, staged.name);
                good_len += n as u64;
            }
        }
        let len = file
            .metadata()
            .map_err(|e| parse_error("open", &path, e))?
            .len();
        if len > good_len {
            tracing::warn!(file = %path.display(), bytes = len - good_len, "cutting off a partial line left by an interrupted run");
            file.set_len(good_len)
                .map_err(|e| parse_error("open", &path, e))?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| parse_error("open", &path, e))?;
        }
        Ok(Staging { path, file, index })
    }

    /// The name a device was staged under.
    pub fn get(&self, id: &DeviceId) -> Option<&str> {
        self.index.get(id).map(String::as_str)
    }

    /// Every staged device id and name.
    pub fn entries(&self) -> impl Iterator<Item = (&DeviceId, &String)> {
        self.index.iter()
    }

    /// Appends devices not yet staged, in one write; returns, per device, whether it was new.
    pub fn append(&mut self, devices: &[Staged]) -> Result<Vec<bool>> {
        let mut buf = Vec::new();
        let mut fresh = Vec::with_capacity(devices.len());
        let mut seen = std::collections::HashSet::new();
        for d in devices {
            let new = !self.index.contains_key(&d.device_id) && seen.insert(&d.device_id);
            if new {
                serde_json::to_writer(&mut buf, d).map_err(|e| {
                    Error::new(ErrorKind::Unexpected, "cannot encode a device").with_source(e)
                })?;
                buf.push(b'\n');
            }
            fresh.push(new);
        }
        if !buf.is_empty() {
            self.file
                .write_all(&buf)
                .map_err(|e| parse_error("register", &self.path, e))?;
        }
        for (d, new) in devices.iter().zip(&fresh) {
            if *new {
                self.index.insert(d.device_id.clone(), d.name.clone());
            }
        }
        Ok(fresh)
    }

    /// Removes devices from the staging file (rewrites it); returns which were there.
    pub fn remove(&mut self, ids: &[DeviceId]) -> Result<Vec<bool>> {
        let present: Vec<bool> = ids.iter().map(|i| self.index.contains_key(i)).collect();
        if !present.iter().any(|p| *p) {
            return Ok(present);
        }
        let drop: std::collections::HashSet<&DeviceId> = ids.iter().collect();
        let kept: Vec<Staged> = self
            .read_all()?
            .into_iter()
            .filter(|s| !drop.contains(&s.device_id))
            .collect();
        let mut buf = Vec::new();
        for s in &kept {
            serde_json::to_writer(&mut buf, s).map_err(|e| {
                Error::new(ErrorKind::Unexpected, "cannot encode a device").with_source(e)
            })?;
            buf.push(b'\n');
        }
        write_atomically(&self.path, &buf)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| parse_error("deregister", &self.path, e))?;
        for id in ids {
            self.index.remove(id);
        }
        Ok(present)
    }

    /// Every staged device, in staging order.
    pub fn read_all(&self) -> Result<Vec<Staged>> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| parse_error("finish", &self.path, e))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    Error::new(
                        ErrorKind::Unexpected,
                        format!(
                            "{}:{}: not a staged device line",
                            self.path.display(),
                            i + 1
                        ),
                    )
                    .with_source(e)
                })
            })
            .collect()
    }
}

/// The staged form of an identity.
pub fn stage(d: &DeviceIdentity, name_template: &str) -> Staged {
    Staged {
        device_id: d.device_id.clone(),
        cert: d.to_pem(),
        vendor: d.vendor.clone(),
        source: d.source.clone(),
        batch: d.batch.as_ref().map(|b| b.tag().to_owned()),
        name: render_name(name_template, d),
        serial_hex: d.serial_hex.clone(),
        subject_cn: d.subject_cn.clone(),
        issuer: d.issuer.clone(),
        not_after: d
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    }
}

/// Expands `{device_id}`, `{serial_hex}`, `{chip_id}`, `{unique_id}`, `{slot}`.
pub fn render_name(template: &str, d: &DeviceIdentity) -> String {
    let v = &d.vendor;
    template
        .replace("{device_id}", d.device_id.as_str())
        .replace("{serial_hex}", &d.serial_hex)
        .replace("{chip_id}", v.chip_id.as_deref().unwrap_or(""))
        .replace("{unique_id}", v.unique_id.as_deref().unwrap_or(""))
        .replace("{slot}", v.slot.as_deref().unwrap_or(""))
}

/// Writes every configured output from the staged devices.
pub fn write_outputs(
    config: &ManifestConfig,
    key: Option<&SigningKey>,
    devices: &[Staged],
) -> Result<()> {
    let dir = &config.dir;
    for format in &config.formats {
        match format {
            Format::Idbridge => {
                let key = key.ok_or_else(|| {
                    Error::new(
                        ErrorKind::ConfigInvalid,
                        "manifest target: the idbridge format needs signing_key",
                    )
                })?;
                let bytes = idbridge_manifest(devices)?;
                let jws = key.sign_detached(&bytes)?;
                write_atomically(&dir.join(MANIFEST), &bytes)?;
                write_atomically(&dir.join(format!("{MANIFEST}.jws")), jws.as_bytes())?;
            }
            Format::Aws => {
                let mut out = Vec::new();
                for d in devices {
                    push_line(&mut out, &aws_bulk_line(d))?;
                }
                write_atomically(&dir.join(AWS_BULK), &out)?;
                let template = aws_template(&config.aws_policy_name);
                let text = serde_json::to_vec_pretty(&template).map_err(encode_error)?;
                write_atomically(&dir.join(AWS_TEMPLATE), &text)?;
            }
            Format::Azure => {
                let mut out = Vec::new();
                for d in devices {
                    push_line(&mut out, &azure_import_line(d))?;
                }
                write_atomically(&dir.join(AZURE), &out)?;
            }
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                w.write_record([
                    "device_id",
                    "name",
                    "vendor",
                    "chip_id",
                    "slot",
                    "unique_id",
                    "serial_hex",
                    "subject_cn",
                    "issuer",
                    "not_after",
                    "batch",
                    "source",
                    "certificate_pem",
                ])
                .map_err(csv_error)?;
                for d in devices {
                    let v = &d.vendor;
                    w.write_record([
                        d.device_id.as_str(),
                        &d.name,
                        v.vendor.as_deref().unwrap_or(""),
                        v.chip_id.as_deref().unwrap_or(""),
                        v.slot.as_deref().unwrap_or(""),
                        v.unique_id.as_deref().unwrap_or(""),
                        &d.serial_hex,
                        d.subject_cn.as_deref().unwrap_or(""),
                        &d.issuer,
                        &d.not_after,
                        d.batch.as_deref().unwrap_or(""),
                        &d.source.to_string(),
                        &d.cert,
                    ])
                    .map_err(csv_error)?;
                }
                let bytes = w
                    .into_inner()
                    .map_err(|e| Error::new(ErrorKind::Unexpected, format!("CSV: {e}")))?;
                write_atomically(&dir.join(CSV), &bytes)?;
            }
        }
    }
    Ok(())
}

/// idbridge's manifest: a header line, then one device per line.
pub fn idbridge_manifest(devices: &[Staged]) -> Result<Vec<u8>> {
    let batch = match devices.first().and_then(|d| d.batch.clone()) {
        Some(b)
            if devices
                .iter()
                .all(|d| d.batch.as_deref() == Some(b.as_str())) =>
        {
            Some(b)
        }
        _ => None,
    };
    let created = time::OffsetDateTime::now_utc();
    let mut out = Vec::new();
    push_line(
        &mut out,
        &idbridge_header(batch.as_deref(), devices.len() as u64, created),
    )?;
    for d in devices {
        push_line(&mut out, &idbridge_line(d))?;
    }
    Ok(out)
}

/// The header line of idbridge's manifest (`created` fixed by the caller, so a manifest can be
/// written again byte for byte, e.g. streamed by the registration service).
pub fn idbridge_header(
    batch: Option<&str>,
    devices: u64,
    created: time::OffsetDateTime,
) -> serde_json::Value {
    serde_json::json!({
        "format": "idbridge-manifest",
        "version": 1,
        "batch": batch,
        "created": created
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "devices": devices,
    })
}

/// One device line of idbridge's manifest.
pub fn idbridge_line(d: &Staged) -> serde_json::Value {
    serde_json::json!({
        "device_id": d.device_id.as_str(),
        "cert": d.cert,
        "vendor": d.vendor,
        "source": d.source,
    })
}

/// One line of AWS IoT bulk registration's input (`StartThingRegistrationTask`), for the
/// template [`aws_template`] describes.
pub fn aws_bulk_line(d: &Staged) -> serde_json::Value {
    serde_json::json!({
        "ThingName": d.name,
        "CertificateId": d.device_id.as_str(),
        "CertificatePem": d.cert,
        "DeviceId": d.device_id.as_str(),
        "SerialNumber": d.serial_hex,
        "Batch": d.batch.clone().unwrap_or_default(),
    })
}

/// One line of Azure IoT Hub's import-devices file (self-signed X.509 thumbprints).
pub fn azure_import_line(d: &Staged) -> serde_json::Value {
    let tp = d.device_id.as_str().to_ascii_uppercase();
    serde_json::json!({
        "id": d.name,
        "importMode": "create",
        "status": "enabled",
        "authentication": {
            "type": "selfSigned",
            "x509Thumbprint": {
                "primaryThumbprint": tp,
                "secondaryThumbprint": tp,
            }
        },
    })
}

/// The AWS IoT provisioning template the bulk lines are for.
pub fn aws_template(policy: &str) -> serde_json::Value {
    serde_json::json!({
        "Parameters": {
            "ThingName": {"Type": "String"},
            "CertificateId": {"Type": "String"},
            "DeviceId": {"Type": "String"},
            "SerialNumber": {"Type": "String"},
            "Batch": {"Type": "String", "Default": ""}
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": {"Ref": "ThingName"},
                    "AttributePayload": {
                        "device_id": {"Ref": "DeviceId"},
                        "serial": {"Ref": "SerialNumber"},
                        "batch": {"Ref": "Batch"}
                    }
                }
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {
                    "CertificateId": {"Ref": "CertificateId"},
                    "Status": "ACTIVE"
                }
            },
            "policy": {
                "Type": "AWS::IoT::Policy",
                "Properties": {"PolicyName": policy}
            }
        }
    })
}

/// Appends one JSON line.
pub fn push_line(out: &mut Vec<u8>, v: &serde_json::Value) -> Result<()> {
    serde_json::to_writer(&mut *out, v).map_err(encode_error)?;
    out.push(b'\n');
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("idbridge-tmp");
    let mut f = File::create(&tmp).map_err(|e| parse_error("finish", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| parse_error("finish", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| parse_error("finish", path, e))
}

fn encode_error(e: serde_json::Error) -> Error {
    Error::new(ErrorKind::Unexpected, "cannot encode JSON").with_source(e)
}

fn csv_error(e: csv::Error) -> Error {
    Error::new(ErrorKind::Unexpected, "cannot write CSV").with_source(e)
}
