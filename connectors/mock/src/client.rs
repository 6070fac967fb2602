//! The only file that touches the wire: the registry's REST API.

use idbridge_core::{
    CallContext, DeviceId, DeviceIdentity, Error, ErrorKind, RemoteDevice, Result,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::error::{parse_error, transport_error};

/// The API name passed to the engine's pacer for every call.
pub const API: &str = "devices";

/// A registry client.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    token: SecretString,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// A device as the registry returns it.
#[derive(Debug, Deserialize)]
pub struct WireDevice {
    /// Server id.
    pub id: String,
    /// Name.
    pub name: String,
    /// SHA-256 of the certificate.
    pub fingerprint: String,
    /// `enabled`.
    pub status: String,
    /// Etag.
    pub etag: String,
}

impl WireDevice {
    /// As idbridge sees it.
    pub fn remote(self) -> RemoteDevice {
        let mut r = RemoteDevice::named(self.name)
            .with_resource("id", self.id)
            .with_resource("etag", self.etag);
        r.device_id = self.fingerprint.parse::<DeviceId>().ok();
        r.status = Some(self.status);
        r
    }
}

/// What `create` found.
#[derive(Debug)]
pub enum Created {
    /// New.
    New(WireDevice),
    /// There already, with this certificate.
    Existing(WireDevice),
    /// Something else is there.
    Conflict(String),
}

impl Client {
    /// A client for `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str, token: SecretString) -> Result<Self> {
        let base = url::Url::parse(base).map_err(|e| {
            Error::new(ErrorKind::ConfigInvalid, format!("bad mock url {base:?}")).with_source(e)
        })?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::ConfigInvalid, "cannot build the HTTP client").with_source(e)
            })?;
        Ok(Client { http, base, token })
    }

    fn url(&self, path: &str) -> Result<url::Url> {
        self.base.join(path).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, format!("bad path {path:?}")).with_source(e)
        })
    }

    async fn send(
        &self,
        ctx: &CallContext,
        operation: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, Option<String>, Option<String>, String)> {
        ctx.acquire(API).await;
        let resp = req
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| transport_error(operation, e))?;
        let status = resp.status().as_u16();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after");
        let request_id = header("x-request-id");
        let body = resp
            .text()
            .await
            .map_err(|e| transport_error(operation, e))?;
        Ok((status, retry_after, request_id, body))
    }

    /// `POST /v1/devices`.
    pub async fn create(&self, ctx: &CallContext, device: &DeviceIdentity) -> Result<Created> {
        let mut attributes = serde_json::Map::new();
        attributes.insert("device_id".into(), device.device_id.as_str().into());
        if let Some(v) = &device.vendor.vendor {
            attributes.insert("vendor".into(), v.as_str().into());
        }
        if let Some(b) = &device.batch {
            attributes.insert("batch".into(), b.tag().into());
        }
        let body = serde_json::json!({
            "name": device.device_id.as_str(),
            "certificate_pem": device.to_pem(),
            "attributes": attributes,
        });
        let req = self.http.post(self.url("v1/devices")?).json(&body);
        let (status, ra, rid, text) = self.send(ctx, "register", req).await?;
        match status {
            201 => Ok(Created::New(decode(&text, "register")?)),
            409 => {
                #[derive(Deserialize)]
                struct Conflict {
                    error: String,
                    #[serde(default)]
                    message: String,
                    device: Option<WireDevice>,
                }
                let c: Conflict = serde_json::from_str(&text).map_err(|e| {
                    parse_error("register", status, None, rid.as_deref(), &text).with_source(e)
                })?;
                match (c.error.as_str(), c.device) {
                    ("already_exists", Some(d)) if d.fingerprint == device.device_id.as_str() => {
                        Ok(Created::Existing(d))
                    }
                    _ => Ok(Created::Conflict(c.message)),
                }
            }
            _ => Err(parse_error(
                "register",
                status,
                ra.as_deref(),
                rid.as_deref(),
                &text,
            )),
        }
    }

    /// `GET /v1/devices/{name}`.
    pub async fn read(&self, ctx: &CallContext, name: &str) -> Result<Option<WireDevice>> {
        let req = self.http.get(self.url(&format!("v1/devices/{name}"))?);
        let (status, ra, rid, text) = self.send(ctx, "lookup", req).await?;
        match status {
            200 => Ok(Some(decode(&text, "lookup")?)),
            404 => Ok(None),
            _ => Err(parse_error(
                "lookup",
                status,
                ra.as_deref(),
                rid.as_deref(),
                &text,
            )),
        }
    }

    /// `DELETE /v1/devices/{name}`: true when deleted, false when absent.
    pub async fn delete(&self, ctx: &CallContext, name: &str) -> Result<bool> {
        let req = self.http.delete(self.url(&format!("v1/devices/{name}"))?);
        let (status, ra, rid, text) = self.send(ctx, "deregister", req).await?;
        match status {
            204 | 200 => Ok(true),
            404 => Ok(false),
            _ => Err(parse_error(
                "deregister",
                status,
                ra.as_deref(),
                rid.as_deref(),
                &text,
            )),
        }
    }

    /// `GET /v1/devices?page_token=`.
    pub async fn list(
        &self,
        ctx: &CallContext,
        page_token: Option<&str>,
    ) -> Result<(Vec<WireDevice>, Option<String>)> {
        let mut url = self.url("v1/devices")?;
        url.query_pairs_mut().append_pair("limit", "500");
        if let Some(t) = page_token {
            url.query_pairs_mut().append_pair("page_token", t);
        }
        let (status, ra, rid, text) = self.send(ctx, "list", self.http.get(url)).await?;
        if status != 200 {
            return Err(parse_error(
                "list",
                status,
                ra.as_deref(),
                rid.as_deref(),
                &text,
            ));
        }
        #[derive(Deserialize)]
        struct Page {
            devices: Vec<WireDevice>,
            next_page_token: Option<String>,
        }
        let p: Page = decode(&text, "list")?;
        Ok((p.devices, p.next_page_token))
    }

    /// `GET /v1/health`.
    pub async fn health(&self, ctx: &CallContext) -> Result<()> {
        let req = self.http.get(self.url("v1/health")?);
        let (status, ra, rid, text) = self.send(ctx, "health_check", req).await?;
        if status == 200 {
            Ok(())
        } else {
            Err(parse_error(
                "health_check",
                status,
                ra.as_deref(),
                rid.as_deref(),
                &text,
            ))
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(text: &str, operation: &'static str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| {
        Error::new(ErrorKind::Unexpected, "unexpected answer from the registry")
            .with_operation(operation)
            .with_source(e)
    })
}
