//! Target configuration of the `interop` and `webhook` kinds, as read from an
//! `[targets.NAME]` table of `idbridge.toml`.
//!
//! Secrets (the JWT signing key, the webhook secret) are given as `env:VAR` (read from the
//! environment), a file path (signing key only) or, for the webhook secret, the literal
//! `whsec_...` value. They are held in [`SecretString`] (the `secrecy` crate), whose `Debug`
//! never prints them.

use std::fmt;
use std::path::PathBuf;

use idbridge_core::{Error, ErrorKind, Result};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Most bytes of JSON one interop request may carry by default. Infineon's AWS receiver runs
/// behind API Gateway in a Lambda function, whose synchronous invocation payload is capped at
/// 6 MB (request and response, the proxy event's envelope included; API Gateway may
/// base64-encode the body, ×4/3); the Express parser's 25 MB limit never comes into play.
/// 4 MiB stays below 6 MB in every case.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Certificates per interop request by default. API Gateway cuts a request off at 29 s
/// (integration timeout) whatever the Lambda's own 300 s, and Infineon's receiver makes four
/// sequential AWS IoT calls per certificate (RegisterCertificateWithoutCA at 10/s by default,
/// CreateThing, AttachPolicy, AttachThingPrincipal): 50 certificates take about 5–15 s.
pub const DEFAULT_BATCH_SIZE: usize = 50;

/// The Lambda payload limit the defaults must fit (bytes).
pub const LAMBDA_PAYLOAD_LIMIT: usize = 6_000_000;

/// API Gateway's integration timeout (seconds) the defaults must fit.
pub const API_GATEWAY_TIMEOUT_SECS: u64 = 29;

/// Configuration of a target of kind `interop`: a Cloud ID "interop" v1 receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteropConfig {
    /// The receiver's base URL; requests go to `{base_url}/interop`.
    pub base_url: String,
    /// The JWT `aud`: the receiver's tenant id (AWS account id, Azure subscription id).
    pub audience: String,
    /// The JWT `iss`.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// The ES256 (P-256, PKCS#8 PEM) signing key: a file path, or `env:VAR` holding the PEM.
    pub signing_key: String,
    /// Certificates per request (also bounded by `max_body_bytes`).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Most bytes of JSON per request.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Extra CA certificates (PEM) trusted for the receiver's TLS certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow a plain `http://` base URL (mock receivers only).
    #[serde(default)]
    pub allow_http: bool,
    /// Per-request timeout in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The engine's default pace for `POST /interop` calls, per second.
    #[serde(default = "default_rate")]
    pub requests_per_second: f64,
    /// JWT lifetime in seconds (short: the token is minted per request).
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
}

/// Configuration of a target of kind `webhook`: Standard Webhooks v1 deliveries. `Debug` shows
/// `secret` only when it is an `env:VAR` reference.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    pub url: String,
    /// The signing secret: `env:VAR` (recommended) or the literal `whsec_<base64>`.
    pub secret: String,
    /// Extra CA certificates (PEM) trusted for the receiver's TLS certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow a plain `http://` URL (mock receivers only).
    #[serde(default)]
    pub allow_http: bool,
    /// Per-request timeout in seconds (the spec recommends 15–30 s).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The engine's default pace for deliveries, per second.
    #[serde(default = "default_webhook_rate")]
    pub requests_per_second: f64,
    /// Events delivered per `register` call (one HTTP request each, sent in order).
    #[serde(default = "default_webhook_batch")]
    pub batch_size: usize,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = if self.secret.starts_with("env:") {
            self.secret.as_str()
        } else {
            "<redacted>"
        };
        f.debug_struct("WebhookConfig")
            .field("url", &self.url)
            .field("secret", &secret)
            .field("ca_file", &self.ca_file)
            .field("allow_http", &self.allow_http)
            .field("timeout_secs", &self.timeout_secs)
            .field("requests_per_second", &self.requests_per_second)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

impl InteropConfig {
    /// Checks the values and reads the signing key PEM.
    pub fn validate(&self) -> Result<SecretString> {
        check_url(&self.base_url, self.allow_http, "base_url")?;
        if self.audience.trim().is_empty() {
            return Err(config_err("`audience` must not be empty"));
        }
        if self.batch_size == 0 {
            return Err(config_err("`batch_size` must be at least 1"));
        }
        if self.max_body_bytes < 16 * 1024 {
            return Err(config_err("`max_body_bytes` must be at least 16384"));
        }
        if self.requests_per_second.is_nan() || self.requests_per_second <= 0.0 {
            return Err(config_err("`requests_per_second` must be positive"));
        }
        read_key_source(&self.signing_key, "signing_key")
    }
}

impl WebhookConfig {
    /// Checks the values and resolves the secret.
    pub fn validate(&self) -> Result<SecretString> {
        check_url(&self.url, self.allow_http, "url")?;
        if self.batch_size == 0 {
            return Err(config_err("`batch_size` must be at least 1"));
        }
        if self.requests_per_second.is_nan() || self.requests_per_second <= 0.0 {
            return Err(config_err("`requests_per_second` must be positive"));
        }
        let secret = match self.secret.strip_prefix("env:") {
            Some(var) => SecretString::from(std::env::var(var).map_err(|_| {
                config_err(format!(
                    "`secret` names environment variable {var}, which is not set"
                ))
            })?),
            None => SecretString::from(self.secret.as_str()),
        };
        if !secret.expose_secret().starts_with("whsec_") {
            return Err(config_err(
                "`secret` must be a Standard Webhooks secret of the form whsec_<base64>",
            ));
        }
        Ok(secret)
    }
}

fn read_key_source(source: &str, key: &str) -> Result<SecretString> {
    if let Some(var) = source.strip_prefix("env:") {
        return std::env::var(var).map(SecretString::from).map_err(|_| {
            config_err(format!(
                "`{key}` names environment variable {var}, which is not set"
            ))
        });
    }
    std::fs::read_to_string(source)
        .map(SecretString::from)
        .map_err(|e| config_err(format!("`{key}`: cannot read {source}: {e}")))
}

fn check_url(url: &str, allow_http: bool, key: &str) -> Result<()> {
    let parsed = url::Url::parse(url)
        .map_err(|e| config_err(format!("`{key}` {url:?} is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_http => Ok(()),
        "http" => Err(config_err(format!(
            "`{key}` {url:?} is plain http; set `allow_http = true` for a local mock only"
        ))),
        other => Err(config_err(format!(
            "`{key}` {url:?}: unsupported scheme {other}"
        ))),
    }
}

fn config_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::ConfigInvalid, msg).with_operation("configure")
}

fn default_issuer() -> String {
    "idbridge".to_owned()
}
fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_timeout() -> u64 {
    // API Gateway answers 504 at 29 s: waiting longer only hides that answer.
    API_GATEWAY_TIMEOUT_SECS + 1
}
fn default_rate() -> f64 {
    5.0
}
fn default_webhook_rate() -> f64 {
    50.0
}
fn default_webhook_batch() -> usize {
    10
}
fn default_token_ttl() -> u64 {
    120
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interop_defaults_fit_infineons_aws_receiver() {
        let cfg: InteropConfig = serde_json::from_value(serde_json::json!({
            "base_url": "https://abc.execute-api.eu-central-1.amazonaws.com/Prod",
            "audience": "123456789012",
            "signing_key": "key.pem",
        }))
        .unwrap();
        // Lambda: 6 MB including a base64-encoded body and the proxy event around it.
        let envelope = 64 * 1024;
        assert!(
            cfg.max_body_bytes * 4 / 3 + envelope <= LAMBDA_PAYLOAD_LIMIT,
            "{}",
            cfg.max_body_bytes
        );
        // API Gateway: 29 s for four sequential AWS IoT calls per certificate, the first paced
        // at 10/s by default (≥ 100 ms per certificate), with room for the others' latency.
        assert!(cfg.batch_size as f64 * 0.1 * 4.0 <= API_GATEWAY_TIMEOUT_SECS as f64);
        assert!(cfg.timeout_secs >= API_GATEWAY_TIMEOUT_SECS);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = SecretString::from("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        assert!(!format!("{s:?}").contains("whsec_"), "{s:?}");
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let cfg: WebhookConfig =
            toml_like(r#"{"url":"http://127.0.0.1:1/h","secret":"whsec_AAAA"}"#);
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        assert!(e.to_string().contains("allow_http"), "{e}");
        let mut ok = cfg.clone();
        ok.allow_http = true;
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn webhook_secret_must_be_whsec_and_env_is_read() {
        let cfg: WebhookConfig =
            toml_like(r#"{"url":"https://x.test/h","secret":"env:IDBRIDGE_TEST_NO_SUCH_VAR_71"}"#);
        let e = cfg.validate().unwrap_err();
        assert!(
            e.to_string().contains("IDBRIDGE_TEST_NO_SUCH_VAR_71"),
            "{e}"
        );
        let cfg: WebhookConfig = toml_like(r#"{"url":"https://x.test/h","secret":"hunter2"}"#);
        let e = cfg.validate().unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "secret leaked: {e}");
        assert!(!format!("{cfg:?}").contains("hunter2"), "secret in Debug");
    }

    fn toml_like<T: serde::de::DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).unwrap()
    }
}
