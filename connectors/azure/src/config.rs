//! Target configuration (`kind = "azure-iot-hub"` or `"azure-dps"`), connection strings, SAS
//! tokens and device id templates. Nothing here touches the wire.

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use idbridge_core::{DeviceIdentity, Error, ErrorKind, Result};
use secrecy::SecretString;
use serde::Deserialize;

/// Default IoT Hub service api-version (Python azure-iot-hub 2.7.0, Node azure-iothub 1.16.6).
pub const IOT_HUB_API_VERSION: &str = "2021-04-12";
/// Default DPS service api-version (every DPS SDK).
pub const DPS_API_VERSION: &str = "2021-10-01";
/// Environment variable read when an IoT Hub target has no `connection_string`.
pub const IOT_HUB_CONNECTION_STRING_ENV: &str = "IOTHUB_CONNECTION_STRING";
/// Environment variable read when a DPS target has no `connection_string`.
pub const DPS_CONNECTION_STRING_ENV: &str = "PROVISIONING_CONNECTION_STRING";

/// Microsoft Entra ID client credentials, an alternative to the connection string's SAS key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// Directory (tenant) id.
    pub tenant_id: String,
    /// Application (client) id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// Token authority; default `https://login.microsoftonline.com`.
    #[serde(default)]
    pub authority_host: Option<String>,
}

/// Where a target's Microsoft Entra token comes from when it uses an ambient credential
/// (`credential = "…"`), the way Azure's own tools find one (`azure_identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CredentialKind {
    /// The chain `environment`, `workload-identity`, `managed-identity`, `azure-cli`, in that
    /// order (like `DefaultAzureCredential`); the first that yields a token is kept.
    Default,
    /// A service principal's secret from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
    /// `AZURE_CLIENT_SECRET` (`AZURE_AUTHORITY_HOST` for another cloud).
    Environment,
    /// Kubernetes workload identity: `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID`.
    WorkloadIdentity,
    /// The managed identity of the VM, App Service, Functions or Container Apps host
    /// (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`, else IMDS); `AZURE_CLIENT_ID` picks a
    /// user-assigned identity.
    ManagedIdentity,
    /// The Azure CLI's login (`az account get-access-token`).
    AzureCli,
}

impl CredentialKind {
    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Default => "default",
            CredentialKind::Environment => "environment",
            CredentialKind::WorkloadIdentity => "workload-identity",
            CredentialKind::ManagedIdentity => "managed-identity",
            CredentialKind::AzureCli => "azure-cli",
        }
    }
}

/// One Azure target, as read from the target table of the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// `azure-iot-hub` or `azure-dps` (checked by the connector constructors).
    #[serde(default)]
    pub kind: Option<String>,
    /// The service connection string (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`);
    /// default: `$IOTHUB_CONNECTION_STRING` / `$PROVISIONING_CONNECTION_STRING`.
    #[serde(default)]
    pub connection_string: Option<SecretString>,
    /// Entra ID credentials instead of SAS; then `host_name` names the service.
    #[serde(default)]
    pub entra: Option<EntraConfig>,
    /// An ambient Entra credential instead of SAS: `default`, `environment`,
    /// `workload-identity`, `managed-identity` or `azure-cli`; then `host_name` names the service.
    #[serde(default)]
    pub credential: Option<CredentialKind>,
    /// The service host (`myhub.azure-devices.net`), needed with `entra` or `credential`.
    #[serde(default)]
    pub host_name: Option<String>,
    /// Device id template: `{serial_hex}` (default for IoT Hub), `{device_id}` (SHA-256),
    /// `{sha1}`, `{cn}`, `{chip_id}`, `{unique_id}`, `{mac}`, `{slot}`, and literal text. For
    /// DPS it sets the enrollment's `deviceId` (default: the registration id).
    #[serde(default)]
    pub device_id: Option<String>,
    /// IoT Hub tier: F1, B1, B2, B3, S1, S2, S3 (default S1).
    #[serde(default)]
    pub tier: Option<String>,
    /// IoT Hub units (default 1).
    #[serde(default)]
    pub units: Option<u32>,
    /// DPS: the IoT Hub enrolled devices are assigned to.
    #[serde(default)]
    pub iot_hub_host_name: Option<String>,
    /// DPS: the service connection strings of the IoT hubs linked to the DPS instance. An
    /// unprovision deletes the enrollment *and* the device DPS registered in its assigned hub
    /// (Azure's documented deprovisioning steps); a device assigned to a hub not listed here
    /// cannot be unprovisioned and fails with a configuration error naming the hub.
    #[serde(default)]
    pub linked_hubs: Vec<SecretString>,
    /// DPS: `hashed`, `geoLatency`, `static` or `custom`.
    #[serde(default)]
    pub allocation_policy: Option<String>,
    /// The service api-version (defaults above).
    #[serde(default)]
    pub api_version: Option<String>,
    /// An extra CA certificate (PEM) to trust: private endpoints, the mocks.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Overrides the documented operations/minute of the quota (all units together).
    #[serde(default)]
    pub operations_per_minute: Option<f64>,
    /// SAS token lifetime in seconds (default 3600); tokens are renewed before they expire.
    #[serde(default)]
    pub sas_ttl_secs: Option<u64>,
    /// HTTP timeout per call in seconds (default 30).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// A parsed service connection string.
#[derive(Clone)]
pub struct ConnectionString {
    /// `HostName` (`myhub.azure-devices.net`, or `localhost:PORT` for a mock).
    pub host_name: String,
    /// `SharedAccessKeyName`.
    pub key_name: String,
    key: Vec<u8>,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("host_name", &self.host_name)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl ConnectionString {
    /// Parses `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`. Errors never quote the key.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |m: String| Error::new(ErrorKind::ConfigInvalid, m).with_operation("config");
        let (mut host, mut name, mut key, mut device) = (None, None, None, None);
        for part in s.trim().split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("connection string: every part must be Key=Value".to_owned()))?;
            match k.trim() {
                "HostName" => host = Some(v.trim().to_owned()),
                "SharedAccessKeyName" => name = Some(v.trim().to_owned()),
                "SharedAccessKey" => key = Some(v.trim().to_owned()),
                "DeviceId" => device = Some(()),
                _ => {}
            }
        }
        if device.is_some() {
            return Err(bad(
                "connection string: this is a device connection string; \
                 use a service policy's (iothubowner, registryReadWrite, provisioningserviceowner)"
                    .into(),
            ));
        }
        let host_name = host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("connection string: HostName is missing".into()))?;
        let key_name = name
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("connection string: SharedAccessKeyName is missing".into()))?;
        let key = key.ok_or_else(|| bad("connection string: SharedAccessKey is missing".into()))?;
        let key = STANDARD.decode(key).map_err(|_| {
            bad(format!(
                "connection string: the SharedAccessKey of policy {key_name} is not base64"
            ))
        })?;
        Ok(ConnectionString {
            host_name,
            key_name,
            key,
        })
    }
}

/// Mints SAS tokens for one service and renews them before they expire.
pub struct SasSigner {
    resource: String,
    key_name: String,
    key: hmac::Key,
    ttl_secs: u64,
    cached: Mutex<Option<(String, u64)>>,
}

impl fmt::Debug for SasSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasSigner")
            .field("resource", &self.resource)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl SasSigner {
    /// A signer for the whole service (`sr` = the host name).
    pub fn new(cs: &ConnectionString, ttl_secs: u64) -> Self {
        SasSigner {
            resource: cs.host_name.clone(),
            key_name: cs.key_name.clone(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &cs.key),
            ttl_secs: ttl_secs.max(60),
            cached: Mutex::new(None),
        }
    }

    /// The `Authorization` value at unix time `now`: the cached token while more than a
    /// quarter of its lifetime (at least 60 s) remains, else a fresh one.
    pub fn token_at(&self, now: u64) -> String {
        let margin = (self.ttl_secs / 4).max(60);
        // A poisoned lock only means another thread panicked between two plain assignments.
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, expiry)) = cached.as_ref()
            && *expiry > now + margin
        {
            return token.clone();
        }
        let expiry = now + self.ttl_secs;
        let token = sign(&self.resource, &self.key, &self.key_name, expiry);
        *cached = Some((token.clone(), expiry));
        token
    }

    /// The `Authorization` value now.
    pub fn token(&self) -> String {
        self.token_at(unix_now())
    }
}

/// `SharedAccessSignature sr=<enc(lower(resource))>&sig=<enc(b64(hmac))>&se=<expiry>&skn=<name>`.
pub fn sign(resource: &str, key: &hmac::Key, key_name: &str, expiry: u64) -> String {
    let sr = encode_component(&resource.to_ascii_lowercase());
    let sig = STANDARD.encode(hmac::sign(key, format!("{sr}\n{expiry}").as_bytes()).as_ref());
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry}&skn={}",
        encode_component(&sig),
        encode_component(key_name)
    )
}

/// Percent-encodes all but `A-Z a-z 0-9 - . _ ~` (Python `quote(safe='')`).
pub fn encode_component(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A device id template, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdTemplate(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    SerialHex,
    DeviceId,
    Sha1,
    Cn,
    ChipId,
    UniqueId,
    Mac,
    Slot,
}

impl DeviceIdTemplate {
    /// Parses a template such as `optiga-{serial_hex}`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |m: String| Error::new(ErrorKind::ConfigInvalid, m).with_operation("config");
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| bad(format!("device_id template {s:?}: unclosed '{{'")))?;
            let name = &rest[open + 1..open + close];
            let field = match name {
                "serial_hex" => Field::SerialHex,
                "device_id" => Field::DeviceId,
                "sha1" => Field::Sha1,
                "cn" => Field::Cn,
                "chip_id" => Field::ChipId,
                "unique_id" => Field::UniqueId,
                "mac" => Field::Mac,
                "slot" => Field::Slot,
                other => {
                    return Err(bad(format!(
                        "device_id template {s:?}: unknown field {{{other}}} (known: serial_hex, device_id, sha1, cn, chip_id, unique_id, mac, slot)"
                    )));
                }
            };
            pieces.push(Piece::Field(field));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        if pieces.is_empty() {
            return Err(bad("device_id template is empty".into()));
        }
        Ok(DeviceIdTemplate(pieces))
    }

    /// `{serial_hex}`, what Infineon's receiver uses.
    pub fn serial_hex() -> Self {
        DeviceIdTemplate(vec![Piece::Field(Field::SerialHex)])
    }

    /// The id of `device`; InvalidInput naming the device when a field is missing.
    pub fn render(&self, device: &DeviceIdentity) -> Result<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => {
                    let v = match f {
                        Field::SerialHex => Some(device.serial_hex.as_str()),
                        Field::DeviceId => Some(device.device_id.as_str()),
                        Field::Sha1 => Some(device.sha1_thumbprint.as_str()),
                        Field::Cn => device.subject_cn.as_deref(),
                        Field::ChipId => device.vendor.chip_id.as_deref(),
                        Field::UniqueId => device.vendor.unique_id.as_deref(),
                        Field::Mac => device.vendor.mac.as_deref(),
                        Field::Slot => device.vendor.slot.as_deref(),
                    };
                    let v = v.ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidInput,
                            format!(
                                "device {} ({}): the device_id template needs {:?}, which this certificate does not have",
                                device.device_id, device.source, f
                            ),
                        )
                        .with_context("device_id", &device.device_id)
                    })?;
                    out.push_str(v);
                }
            }
        }
        Ok(out)
    }
}

/// IoT Hub device ids as documented: case-sensitive, ≤128 ASCII 7-bit letters, digits and
/// `- : . + % _ # * ? ! ( ) , = @ ; $ '`.
pub fn valid_hub_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-:.+%_#*?!(),=@;$'".contains(&b))
}

/// Registry operations per minute per unit of an IoT Hub tier.
pub fn hub_ops_per_minute_per_unit(tier: &str) -> Result<f64> {
    match tier.to_ascii_uppercase().as_str() {
        "F1" | "B1" | "S1" | "B2" | "S2" => Ok(100.0),
        "B3" | "S3" => Ok(5000.0),
        other => Err(Error::new(
            ErrorKind::ConfigInvalid,
            format!("unknown IoT Hub tier {other:?} (F1, B1, B2, B3, S1, S2, S3)"),
        )
        .with_operation("config")),
    }
}

/// Queries per minute per unit of an IoT Hub tier (a separate throttle).
pub fn hub_queries_per_minute_per_unit(tier: &str) -> f64 {
    match tier.to_ascii_uppercase().as_str() {
        "B3" | "S3" => 1000.0,
        _ => 20.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAKE: &str = "c2VjcmV0LWZha2Uta2V5LWZvci10ZXN0aW5nLW9ubHkhIQ==";

    #[test]
    fn worked_example_signs_exactly() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &STANDARD.decode(FAKE).unwrap());
        assert_eq!(
            sign("localhost:8443", &key, "iothubowner", 1795994157),
            "SharedAccessSignature sr=localhost%3A8443&sig=2Lt8ZH%2BLRGV8tyU9Z64BskQMia3%2BZjXYHva1D1%2Bb9TY%3D&se=1795994157&skn=iothubowner"
        );
        assert_eq!(
            sign("myhub.azure-devices.net", &key, "iothubowner", 1795994157),
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=jnkbsmXLvUqQxEruOugGV8eeA2tUvAgsS53R8535gMk%3D&se=1795994157&skn=iothubowner"
        );
    }

    #[test]
    fn connection_string_parses_and_hides_key() {
        let cs = ConnectionString::parse(&format!(
            "HostName=MyHub.azure-devices.net;SharedAccessKeyName=iothubowner;SharedAccessKey={FAKE}"
        ))
        .unwrap();
        assert_eq!(cs.host_name, "MyHub.azure-devices.net");
        assert!(!format!("{cs:?}").contains("c2Vj"));
        let e =
            ConnectionString::parse("HostName=h;SharedAccessKeyName=p;SharedAccessKey=!!notbase64")
                .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        assert!(!e.to_string().contains("notbase64"), "{e}");
        let e = ConnectionString::parse(&format!("HostName=h;DeviceId=d;SharedAccessKey={FAKE}"))
            .unwrap_err();
        assert!(e.to_string().contains("device connection string"), "{e}");
        assert!(ConnectionString::parse("HostName=h;SharedAccessKey=").is_err());
    }

    #[test]
    fn sas_is_renewed_before_expiry() {
        let cs = ConnectionString::parse(&format!(
            "HostName=h;SharedAccessKeyName=p;SharedAccessKey={FAKE}"
        ))
        .unwrap();
        let s = SasSigner::new(&cs, 3600);
        let t0 = s.token_at(1000);
        assert!(t0.contains("se=4600"), "{t0}");
        assert_eq!(s.token_at(1000 + 2000), t0, "reused while fresh");
        let t1 = s.token_at(1000 + 2800);
        assert_ne!(t1, t0, "renewed in the last quarter");
        assert!(t1.contains("se=7400"), "{t1}");
        assert!(!format!("{s:?}").contains("sig="));
    }

    #[test]
    fn templates() {
        assert!(DeviceIdTemplate::parse("x-{nope}").is_err());
        assert!(DeviceIdTemplate::parse("x-{serial_hex").is_err());
        let t = DeviceIdTemplate::parse("optiga-{serial_hex}-x").unwrap();
        assert_eq!(t.0.len(), 3);
        assert!(valid_hub_device_id("1F0000000000000007"));
        assert!(valid_hub_device_id("-5C13"));
        assert!(!valid_hub_device_id("Infineon IoT Node"));
        // The documented set includes `;` (and `#`, `+`); `/`, `&` and non-ASCII are out.
        assert!(valid_hub_device_id("line-7;station:3#a+b"));
        for bad in ["a/b", "a&b", "a b", "é", &"x".repeat(129)] {
            assert!(!valid_hub_device_id(bad), "{bad}");
        }
        assert_eq!(hub_ops_per_minute_per_unit("s3").unwrap(), 5000.0);
        assert!(hub_ops_per_minute_per_unit("S9").is_err());
    }
}
