//! The wire: interop v1 request and response types, and the two HTTP clients. The only file of
//! this crate that sends bytes.

use std::time::Duration;

use idbridge_core::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

use crate::error::{parse_error, parse_transport_error};
use crate::sign::{JwtSigner, WebhookKey};

/// Interop v1 `compatibilityVersion` spoken here.
pub const COMPATIBILITY_VERSION: u32 = 1;

/// Extension actions an idbridge receiver announces in its `info` answer.
pub const EXTENSIONS: &[&str] = &["status", "deprovision"];

/// One certificate of a `provision` (or `deprovision`) request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertItem {
    /// Opaque correlation id, echoed in the result. idbridge sends the device id.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Standard base64 of the PEM text.
    pub cert: String,
}

/// A request carrying certificates.
#[derive(Debug, Clone, Serialize)]
pub struct CertsRequest<'a> {
    /// `provision` or `deprovision`.
    pub action: &'a str,
    /// The certificates.
    pub certs: &'a [CertItem],
}

/// A `status` request: by job id or by fingerprints (idbridge extension).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Always `status`.
    pub action: String,
    /// A job id from an `ACCEPTED` result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Device ids (SHA-256 hex of the DER) to look up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprints: Option<Vec<String>>,
}

/// One per-certificate result of `provision`/`deprovision`, and of a job `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemResult {
    /// The request's `ref`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// `SUCCESS` or `ERROR`; idbridge receivers also answer `ACCEPTED` (queued, see `job`;
    /// only to a caller that sent `Prefer: respond-async`),
    /// `PENDING` (in a job `status`) and `NOT_FOUND` (deprovision of an unknown device).
    pub status: String,
    /// Where the device connects (SUCCESS only; may be null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Infineon: the default topic (SUCCESS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Infineon: whether the IoT policy was attached (SUCCESS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_applied: Option<bool>,
    /// The error text (ERROR only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// idbridge extension: machine-readable error code (`untrusted`, `rate_limited` ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// idbridge extension: false when the device was already registered with this certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// idbridge extension: the job that will finish an `ACCEPTED` item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// The `info` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InfoResponse {
    /// `info`.
    pub action: String,
    /// 1 for interop v1.
    pub compatibility_version: u32,
    /// idbridge extension: extra actions this receiver implements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
}

/// One entry of a fingerprint `status` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FingerprintStatus {
    /// The device id asked about.
    pub fingerprint: String,
    /// `PRESENT` or `ABSENT`.
    pub status: String,
    /// Where the device connects, if present and known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// The `status` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// `status`.
    pub action: String,
    /// The job asked about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// For a job: whether every item has its final result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
    /// For a job: the per-ref results so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<ItemResult>>,
    /// For fingerprints: one entry each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<FingerprintStatus>>,
}

/// Builds the reqwest client shared by both targets: no redirects, a timeout, extra CAs.
pub fn http_client(
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("idbridge/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("`ca_file`: cannot read {}: {e}", path.display()),
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("`ca_file` {}: not PEM certificates: {e}", path.display()),
            )
        })?;
        if certs.is_empty() {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!("`ca_file` {}: no certificate in it", path.display()),
            ));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| {
        Error::new(ErrorKind::ConfigInvalid, "cannot build the HTTP client").with_source(e)
    })
}

/// Speaks interop v1 to one receiver.
#[derive(Debug)]
pub struct InteropClient {
    http: reqwest::Client,
    url: String,
    signer: JwtSigner,
}

impl InteropClient {
    /// A client for `{base_url}/interop`.
    pub fn new(http: reqwest::Client, base_url: &str, signer: JwtSigner) -> Self {
        InteropClient {
            http,
            url: format!("{}/interop", base_url.trim_end_matches('/')),
            signer,
        }
    }

    /// POSTs a JSON body; returns the 2xx answer's bytes or the mapped error.
    pub async fn post(&self, operation: &'static str, body: Vec<u8>) -> Result<bytes::Bytes> {
        let token = self.signer.token()?;
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| parse_transport_error(operation, e))?;
        let status = resp.status().as_u16();
        let request_id = header(&resp, "x-request-id");
        let retry_after = header(&resp, "retry-after");
        let body = resp
            .bytes()
            .await
            .map_err(|e| parse_transport_error(operation, e))?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let mut e = parse_error(
            operation,
            status,
            retry_after.as_deref(),
            &String::from_utf8_lossy(&body),
        );
        if let Some(id) = request_id {
            e = e.with_context("request_id", id);
        }
        Err(e)
    }

    /// `info`: the receiver's compatibility version and extensions.
    pub async fn info(&self) -> Result<InfoResponse> {
        let body = self
            .post("interop info", br#"{"action":"info"}"#.to_vec())
            .await?;
        parse_json("interop info", &body)
    }
}

/// Delivers signed Standard Webhooks v1 events to one URL.
#[derive(Debug)]
pub struct WebhookClient {
    http: reqwest::Client,
    url: String,
    key: WebhookKey,
}

impl WebhookClient {
    /// A client for `url`.
    pub fn new(http: reqwest::Client, url: &str, key: WebhookKey) -> Self {
        WebhookClient {
            http,
            url: url.to_owned(),
            key,
        }
    }

    /// Delivers one event body with its stable `msg_id`, signed with this attempt's timestamp.
    /// Ok on 2xx.
    pub async fn deliver(&self, operation: &'static str, msg_id: &str, body: &[u8]) -> Result<()> {
        let ts = i64::try_from(crate::sign::unix_now()).unwrap_or(i64::MAX);
        let sig = self.key.sign(msg_id, ts, body);
        let resp = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| parse_transport_error(operation, e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let retry_after = header(&resp, "retry-after");
        let request_id = header(&resp, "x-request-id");
        let body = resp.text().await.unwrap_or_default();
        let mut e = parse_error(operation, status, retry_after.as_deref(), &body);
        if let Some(id) = request_id {
            e = e.with_context("request_id", id);
        }
        Err(e)
    }
}

/// Parses a JSON answer; a malformed one is an `Unexpected` error naming the operation.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    operation: &'static str,
    body: &[u8],
) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        let shown: String = String::from_utf8_lossy(body).chars().take(200).collect();
        Error::new(
            ErrorKind::Unexpected,
            format!("the receiver's answer is not the expected JSON ({e}): {shown}"),
        )
        .with_operation(operation)
    })
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
