//! The `aws-iot` target's configuration (a `[targets.<name>]` table with `kind = "aws-iot"`).

use std::collections::BTreeMap;

use idbridge_core::{DeviceIdentity, Error, ErrorKind, Quota, Result};
use secrecy::SecretString;
use serde::Deserialize;

/// Configuration of an AWS IoT target. Credentials come from the standard AWS chain
/// (environment, profile, SSO, web identity, instance role) unless the table carries an access
/// key of its own (`access_key_id` + `secret_access_key`): the registration service keeps one
/// per account's target, sealed at rest, when the service itself has no role in that account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsIotConfig {
    /// Always `"aws-iot"` when present (the engine's target table carries it).
    #[serde(default)]
    pub kind: Option<String>,
    /// The target's name in the engine's configuration, when present.
    #[serde(default)]
    pub name: Option<String>,
    /// AWS region; otherwise `AWS_REGION` / the profile's region.
    #[serde(default)]
    pub region: Option<String>,
    /// Named profile from `~/.aws/config`.
    #[serde(default)]
    pub profile: Option<String>,
    /// An access key of this target's own, instead of the AWS chain (with `secret_access_key`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// The secret of `access_key_id`; never printed.
    #[serde(default)]
    pub secret_access_key: Option<SecretString>,
    /// A session token for temporary keys; never printed.
    #[serde(default)]
    pub session_token: Option<SecretString>,
    /// Control-plane endpoint; otherwise `AWS_ENDPOINT_URL_IOT`, `AWS_ENDPOINT_URL`, or AWS's.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Allow a plain `http://` endpoint (mock clouds only).
    #[serde(default)]
    pub allow_http: bool,
    /// The policy attached to every certificate.
    #[serde(default = "default_policy")]
    pub policy_name: String,
    /// Create `policy_name` with idbridge's least-privilege document when it does not exist.
    #[serde(default)]
    pub create_policy: bool,
    /// Thing name template: `{device_id}`, `{serial_hex}`, `{unique_id}`, `{chip_id}`, `{mac}`,
    /// `{slot}`. Default: `Infineon_{serial_hex}` for Infineon, `{unique_id}` for Microchip,
    /// `{device_id}` otherwise.
    #[serde(default)]
    pub thing_name: Option<String>,
    /// Thing type for created things (must exist).
    #[serde(default)]
    pub thing_type: Option<String>,
    /// Thing group every thing is added to (must exist); also what `list` reads.
    #[serde(default)]
    pub thing_group: Option<String>,
    /// `exclusive` (default, EXCLUSIVE_THING) or `non_exclusive`.
    #[serde(default)]
    pub principal_type: PrincipalType,
    /// Deregister sets REVOKED instead of INACTIVE before deleting.
    #[serde(default)]
    pub revoke_on_deregister: bool,
    /// Per-API calls per second, for raised quotas (`RegisterCertificateWithoutCA = 100`).
    #[serde(default)]
    pub quotas: BTreeMap<String, f64>,
    /// Calls each API may make back to back above its smooth rate (default 2): lets the pacer
    /// make up for a late timer wake-up instead of losing that time, while staying far inside
    /// AWS's per-second token buckets.
    #[serde(default = "default_burst")]
    pub quota_burst: u32,
}

fn default_burst() -> u32 {
    2
}

/// How the certificate is attached to its thing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalType {
    /// `EXCLUSIVE_THING`: the thing is the only one attached to the certificate.
    #[default]
    Exclusive,
    /// `NON_EXCLUSIVE_THING`.
    NonExclusive,
}

fn default_policy() -> String {
    "idbridge-device".to_owned()
}

impl Default for AwsIotConfig {
    fn default() -> Self {
        AwsIotConfig {
            kind: None,
            name: None,
            region: None,
            profile: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            endpoint_url: None,
            allow_http: false,
            policy_name: default_policy(),
            create_policy: false,
            thing_name: None,
            thing_type: None,
            thing_group: None,
            principal_type: PrincipalType::Exclusive,
            revoke_on_deregister: false,
            quotas: BTreeMap::new(),
            quota_burst: default_burst(),
        }
    }
}

/// AWS IoT's default per-account, per-region quotas (calls/s) for the APIs this connector uses.
/// AWS publishes RegisterCertificateWithoutCA 10, AttachPolicy 15, CreateThing /
/// AttachThingPrincipal / AddThingToThingGroup 100, DescribeCertificate 10, DescribeThing 350;
/// the others (UpdateCertificate, DeleteCertificate, DetachPolicy, ListAttachedPolicies ...) are
/// unpublished and assumed at 10-15.
pub const DEFAULT_QUOTAS: &[(&str, f64)] = &[
    ("RegisterCertificateWithoutCA", 10.0),
    ("DescribeCertificate", 10.0),
    ("UpdateCertificate", 10.0),
    ("DeleteCertificate", 10.0),
    ("ListCertificates", 10.0),
    ("AttachPolicy", 15.0),
    ("DetachPolicy", 15.0),
    ("ListAttachedPolicies", 10.0),
    ("GetPolicy", 10.0),
    ("CreatePolicy", 10.0),
    ("CreateThing", 100.0),
    ("DescribeThing", 350.0),
    ("DeleteThing", 100.0),
    ("AttachThingPrincipal", 100.0),
    ("DetachThingPrincipal", 100.0),
    ("ListThingPrincipals", 10.0),
    ("ListPrincipalThingsV2", 10.0),
    ("AddThingToThingGroup", 100.0),
    ("ListThingsInThingGroup", 10.0),
    ("DescribeEndpoint", 10.0),
];

const PLACEHOLDERS: &[&str] = &[
    "device_id",
    "serial_hex",
    "unique_id",
    "chip_id",
    "mac",
    "slot",
];

impl AwsIotConfig {
    /// Checks the configuration before any call.
    pub fn validate(&self) -> Result<()> {
        if let Some(k) = &self.kind
            && k != "aws-iot"
        {
            return Err(config(format!("kind is {k:?}, expected \"aws-iot\"")));
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(config(
                    "access_key_id and secret_access_key go together".to_owned(),
                ));
            }
            (Some(_), Some(_)) if self.profile.is_some() => {
                return Err(config(
                    "give either profile or access_key_id + secret_access_key".to_owned(),
                ));
            }
            (None, None) if self.session_token.is_some() => {
                return Err(config(
                    "session_token needs access_key_id and secret_access_key".to_owned(),
                ));
            }
            _ => {}
        }
        if !valid_policy_name(&self.policy_name) {
            return Err(config(format!(
                "policy_name {:?} must be 1-128 characters of [A-Za-z0-9_+=,.@-]",
                self.policy_name
            )));
        }
        if let Some(t) = &self.thing_name {
            check_template(t)?;
        }
        for (what, v) in [
            ("thing_type", &self.thing_type),
            ("thing_group", &self.thing_group),
        ] {
            if let Some(v) = v
                && !valid_thing_name(v)
            {
                return Err(config(format!(
                    "{what} {v:?} must be 1-128 characters of [A-Za-z0-9:_-]"
                )));
            }
        }
        if self.quota_burst == 0 || self.quota_burst > 100 {
            return Err(config(format!(
                "quota_burst must be 1..=100, got {}",
                self.quota_burst
            )));
        }
        for (api, rate) in &self.quotas {
            if !(rate.is_finite() && *rate > 0.0) {
                return Err(config(format!(
                    "quotas.{api} must be a positive number, got {rate}"
                )));
            }
        }
        if let Some(url) = &self.endpoint_url {
            check_endpoint(url, self.allow_http, "endpoint_url")?;
        }
        Ok(())
    }

    /// The per-API quotas: AWS's defaults with the configured ones on top.
    pub fn quotas(&self) -> Vec<Quota> {
        let mut q: BTreeMap<String, f64> = DEFAULT_QUOTAS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        for (k, v) in &self.quotas {
            q.insert(k.clone(), *v);
        }
        let burst = self.quota_burst.max(1);
        q.into_iter()
            .map(|(k, v)| Quota {
                burst,
                ..Quota::new(k, v)
            })
            .collect()
    }

    /// The thing name for `device`, validated against AWS's pattern.
    pub fn thing_name_for(&self, device: &DeviceIdentity) -> Result<String> {
        let template = match &self.thing_name {
            Some(t) => t.as_str(),
            None => match device.vendor.vendor.as_deref() {
                Some("infineon") => "Infineon_{serial_hex}",
                Some("microchip") if device.vendor.unique_id.is_some() => "{unique_id}",
                _ => "{device_id}",
            },
        };
        let v = &device.vendor;
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').map(|e| start + e).ok_or_else(|| {
                config(format!(
                    "thing_name template {template:?} has an unclosed '{{'"
                ))
            })?;
            let key = &rest[start + 1..end];
            let value = match key {
                "device_id" => Some(device.device_id.as_str()),
                "serial_hex" => Some(device.serial_hex.as_str()),
                "unique_id" => v.unique_id.as_deref(),
                "chip_id" => v.chip_id.as_deref(),
                "mac" => v.mac.as_deref(),
                "slot" => v.slot.as_deref(),
                other => {
                    return Err(config(format!(
                        "thing_name template has unknown placeholder {{{other}}}"
                    )));
                }
            };
            let value = value.ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("device has no {key} for the thing name template {template:?}"),
                )
                .with_context("device_id", &device.device_id)
            })?;
            out.push_str(value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        if !valid_thing_name(&out) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("thing name {out:?} is not 1-128 characters of [A-Za-z0-9:_-]"),
            )
            .with_context("device_id", &device.device_id));
        }
        Ok(out)
    }
}

/// Refuses `http://` endpoints unless `allow_http`.
pub(crate) fn check_endpoint(url: &str, allow_http: bool, what: &str) -> Result<()> {
    if url.starts_with("https://") || (allow_http && url.starts_with("http://")) {
        Ok(())
    } else if url.starts_with("http://") {
        Err(config(format!(
            "{what} {url} is plain http: set allow_http = true (mock clouds only)"
        )))
    } else {
        Err(config(format!("{what} {url:?} must be an https:// URL")))
    }
}

fn check_template(t: &str) -> Result<()> {
    let mut rest = t;
    while let Some(start) = rest.find('{') {
        let end = rest[start..]
            .find('}')
            .map(|e| start + e)
            .ok_or_else(|| config(format!("thing_name template {t:?} has an unclosed '{{'")))?;
        let key = &rest[start + 1..end];
        if !PLACEHOLDERS.contains(&key) {
            return Err(config(format!(
                "thing_name template has unknown placeholder {{{key}}} (known: {})",
                PLACEHOLDERS.join(", ")
            )));
        }
        rest = &rest[end + 1..];
    }
    Ok(())
}

fn config(msg: String) -> Error {
    Error::new(ErrorKind::ConfigInvalid, msg).with_context("connector", "aws-iot")
}

/// AWS's thing name pattern `[a-zA-Z0-9:_-]+`, 1..128.
pub fn valid_thing_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_-".contains(&b))
}

fn valid_policy_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_target_table() {
        let c: AwsIotConfig = toml::from_str(
            r#"kind = "aws-iot"
               region = "eu-central-1"
               policy_name = "fleet"
               thing_name = "dev-{serial_hex}"
               thing_group = "reel-7"
               [quotas]
               RegisterCertificateWithoutCA = 100"#,
        )
        .unwrap();
        c.validate().unwrap();
        let q = c.quotas();
        let reg = q
            .iter()
            .find(|q| q.api == "RegisterCertificateWithoutCA")
            .unwrap();
        assert_eq!(reg.per_second, 100.0);
        let ap = q.iter().find(|q| q.api == "AttachPolicy").unwrap();
        assert_eq!(ap.per_second, 15.0);
    }

    #[test]
    fn an_access_key_of_its_own_is_never_printed_and_comes_whole() {
        let c: AwsIotConfig = toml::from_str(
            r#"access_key_id = "AKIAEXAMPLE"
               secret_access_key = "wJalrXUtnFEMI/K7MDENG"
               session_token = "FwoGZXIvYXdzEBY""#,
        )
        .unwrap();
        c.validate().unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("wJalrXUtnFEMI") && !shown.contains("FwoGZX"),
            "{shown}"
        );
        let bad = |t: &str| {
            toml::from_str::<AwsIotConfig>(t)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert!(bad(r#"access_key_id = "AKIA""#).contains("go together"));
        assert!(bad(r#"secret_access_key = "s""#).contains("go together"));
        assert!(bad(r#"session_token = "t""#).contains("session_token needs"));
        assert!(
            bad(r#"profile = "p"
                   access_key_id = "AKIA"
                   secret_access_key = "s""#)
            .contains("either profile")
        );
    }

    #[test]
    fn rejects_bad_config() {
        let bad = |s: &str| {
            toml::from_str::<AwsIotConfig>(s)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()))
        };
        assert!(
            bad(r#"thing_name = "{nope}""#)
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(bad(r#"policy_name = "a b""#).is_err());
        assert!(
            bad(r#"endpoint_url = "http://127.0.0.1:1""#)
                .unwrap_err()
                .contains("allow_http")
        );
        assert!(bad(r#"polcy_name = "x""#).is_err(), "typos are refused");
        assert!(bad("[quotas]\nCreateThing = 0").is_err());
    }
}
