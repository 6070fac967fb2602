//! The only file that touches the wire: a reqwest (rustls) client per service with SAS or
//! Entra bearer auth, and the REST calls the connectors make. No retries: reqwest's own retry
//! policy is off, and every non-success answer goes through [`parse_error`].

use std::time::{Duration, Instant};

use idbridge_core::{Error, ErrorKind, Result};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::sync::Mutex as AsyncMutex;

use crate::config::{AzureConfig, ConnectionString, EntraConfig, SasSigner, encode_component};
use crate::credential::Ambient;
use crate::error::{Service, parse_error};

/// How requests are authorised.
#[derive(Debug)]
enum Auth {
    Sas(Box<SasSigner>),
    Bearer(Box<Bearer>),
}

/// An Entra bearer token for one scope, cached until [`REFRESH_MARGIN`] before it expires.
#[derive(Debug)]
struct Bearer {
    source: BearerSource,
    scope: &'static str,
    cached: AsyncMutex<Option<(String, Instant)>>,
}

#[derive(Debug)]
enum BearerSource {
    /// `entra = { tenant_id, client_id, client_secret }`: the hand-written grant below.
    Entra(EntraConfig),
    /// `credential = "…"`: `azure_identity`.
    Ambient(Ambient),
}

/// A cached token is renewed once less than this is left (Entra tokens last 60-90 minutes).
pub(crate) const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Whether a token expiring at `expires` may still be sent at `now`.
fn fresh(expires: Instant, now: Instant) -> bool {
    expires > now + REFRESH_MARGIN
}

/// An answer: status, headers (lower-case names) and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self, service: Service, operation: &'static str) -> Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("unreadable answer (HTTP {}): {e}", self.status),
            )
            .with_operation(operation)
            .with_context("connector", service.connector())
        })
    }
}

/// A service client: base URL, api-version, auth.
#[derive(Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    api_version: String,
    auth: Auth,
    pub service: Service,
}

impl Client {
    pub fn new(service: Service, cfg: &AzureConfig) -> Result<Self> {
        let bad = |m: String| Error::new(ErrorKind::ConfigInvalid, m).with_operation("config");
        let (env, scope, default_version) = match service {
            Service::IotHub => (
                crate::config::IOT_HUB_CONNECTION_STRING_ENV,
                "https://iothubs.azure.net/.default",
                crate::config::IOT_HUB_API_VERSION,
            ),
            Service::Dps => (
                crate::config::DPS_CONNECTION_STRING_ENV,
                "https://azure-devices-provisioning.net/.default",
                crate::config::DPS_API_VERSION,
            ),
        };
        let bearer_host = || {
            cfg.host_name
                .clone()
                .or_else(|| {
                    cfg.connection_string
                        .as_ref()
                        .and_then(|c| ConnectionString::parse(c.expose_secret()).ok())
                        .map(|c| c.host_name)
                })
                .ok_or_else(|| {
                    bad(format!(
                        "{}: entra and credential auth need host_name (the service's host)",
                        service.connector()
                    ))
                })
        };
        let bearer = |source| {
            Auth::Bearer(Box::new(Bearer {
                source,
                scope,
                cached: AsyncMutex::new(None),
            }))
        };
        if cfg.entra.is_some() && cfg.credential.is_some() {
            return Err(bad(format!(
                "{}: set either entra or credential, not both",
                service.connector()
            )));
        }
        let (host, auth) = match (&cfg.entra, cfg.credential, &cfg.connection_string) {
            (Some(entra), _, _) => (bearer_host()?, bearer(BearerSource::Entra(entra.clone()))),
            (None, Some(kind), _) => (
                bearer_host()?,
                bearer(BearerSource::Ambient(Ambient::new(
                    kind,
                    scope,
                    http_client(cfg, false)?,
                )?)),
            ),
            (None, None, Some(cs)) => {
                let cs = ConnectionString::parse(cs.expose_secret())?;
                (
                    cs.host_name.clone(),
                    Auth::Sas(Box::new(SasSigner::new(
                        &cs,
                        cfg.sas_ttl_secs.unwrap_or(3600),
                    ))),
                )
            }
            (None, None, None) => {
                let cs = std::env::var(env).map_err(|_| {
                    bad(format!(
                        "{}: set connection_string (or ${env}), credential or entra",
                        service.connector()
                    ))
                })?;
                let cs = ConnectionString::parse(&cs)?;
                (
                    cs.host_name.clone(),
                    Auth::Sas(Box::new(SasSigner::new(
                        &cs,
                        cfg.sas_ttl_secs.unwrap_or(3600),
                    ))),
                )
            }
        };
        let http = http_client(cfg, true)?;
        Ok(Client {
            http,
            base: format!("https://{host}"),
            api_version: cfg
                .api_version
                .clone()
                .unwrap_or_else(|| default_version.to_owned()),
            auth,
            service,
        })
    }

    async fn authorization(&self, operation: &'static str) -> Result<String> {
        match &self.auth {
            Auth::Sas(s) => Ok(s.token()),
            Auth::Bearer(b) => {
                let mut cached = b.cached.lock().await;
                if let Some((token, expires)) = cached.as_ref()
                    && fresh(*expires, Instant::now())
                {
                    return Ok(format!("Bearer {token}"));
                }
                let (token, expires) = match &b.source {
                    BearerSource::Entra(cfg) => {
                        self.fetch_entra_token(cfg, b.scope, operation).await?
                    }
                    BearerSource::Ambient(a) => a
                        .token(operation)
                        .await
                        .map_err(|e| e.with_context("connector", self.service.connector()))?,
                };
                *cached = Some((token.clone(), expires));
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// The client-credentials grant at `{authority}/{tenant}/oauth2/v2.0/token`.
    async fn fetch_entra_token(
        &self,
        cfg: &EntraConfig,
        scope: &'static str,
        operation: &'static str,
    ) -> Result<(String, Instant)> {
        let authority = cfg
            .authority_host
            .as_deref()
            .unwrap_or("https://login.microsoftonline.com")
            .trim_end_matches('/');
        let url = format!(
            "{authority}/{}/oauth2/v2.0/token",
            encode_component(&cfg.tenant_id)
        );
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &cfg.client_id)
            .append_pair("client_secret", cfg.client_secret.expose_secret())
            .append_pair("scope", scope)
            .finish();
        let started = Instant::now();
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|err| network_error(self.service, operation, &err))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if status != 200 {
            let kind = match status {
                400 | 401 | 403 => ErrorKind::Unauthenticated,
                429 => ErrorKind::RateLimited,
                500..=599 => ErrorKind::ServerError,
                _ => ErrorKind::Unexpected,
            };
            let desc = v
                .get("error_description")
                .and_then(Value::as_str)
                .or_else(|| v.get("error").and_then(Value::as_str))
                .unwrap_or("no description");
            return Err(Error::new(
                kind,
                format!("Entra token request failed (HTTP {status}): {desc}"),
            )
            .with_operation(operation)
            .with_context("connector", self.service.connector()));
        }
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unexpected,
                    "Entra token answer without access_token",
                )
                .with_operation(operation)
            })?;
        let secs = v.get("expires_in").and_then(Value::as_u64).unwrap_or(3599);
        Ok((token.to_owned(), started + Duration::from_secs(secs)))
    }

    /// One call: `path` below the service root, `?api-version=` appended. Any status comes
    /// back as a [`Reply`]; only transport failures are errors.
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<&Value>,
        operation: &'static str,
    ) -> Result<Reply> {
        let url = format!("{}{path}?api-version={}", self.base, self.api_version);
        let mut req = self
            .http
            .request(method, &url)
            .header("authorization", self.authorization(operation).await?)
            .header("accept", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json; charset=utf-8")
                .body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| network_error(self.service, operation, &e))?;
        let status = resp.status().as_u16();
        tracing::debug!(
            connector = self.service.connector(),
            operation,
            path,
            status,
            "azure call"
        );
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let body = resp
            .bytes()
            .await
            .map_err(|e| network_error(self.service, operation, &e))?
            .to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn fail(&self, operation: &'static str, r: &Reply) -> Error {
        parse_error(self.service, operation, r.status, &r.headers, &r.body)
    }

    // ---- IoT Hub ----

    /// `POST /devices` with a bare array of ExportImportDevice; the BulkRegistryOperationResult
    /// (200 when all succeeded, 400 with per-device errors).
    pub async fn hub_bulk(&self, items: &[Value], operation: &'static str) -> Result<Value> {
        let r = self
            .call(
                Method::POST,
                "/devices",
                &[],
                Some(&Value::Array(items.to_vec())),
                operation,
            )
            .await?;
        match r.status {
            200 => r.json(self.service, operation),
            400 => {
                // A 400 is per-device results when it carries `errors`, else a refused call.
                match serde_json::from_slice::<Value>(&r.body) {
                    Ok(v) if v.get("errors").is_some_and(Value::is_array) => Ok(v),
                    _ => Err(self.fail(operation, &r)),
                }
            }
            _ => Err(self.fail(operation, &r)),
        }
    }

    /// `GET /devices/{id}`; None on 404.
    pub async fn hub_get(&self, id: &str, operation: &'static str) -> Result<Option<Value>> {
        self.get_item("devices", id, operation).await
    }

    /// `DELETE /devices/{id}` with `If-Match: "*"`; false when it was not there.
    pub async fn hub_delete(&self, id: &str, operation: &'static str) -> Result<bool> {
        self.delete_item("devices", id, operation).await
    }

    /// `POST /devices/query` (`SELECT * FROM devices`): a page of twins and the continuation.
    pub async fn hub_query(
        &self,
        continuation: Option<&str>,
        max: usize,
        operation: &'static str,
    ) -> Result<(Vec<Value>, Option<String>)> {
        self.query(
            "/devices/query",
            json!({"query": "SELECT * FROM devices"}),
            continuation,
            max,
            operation,
        )
        .await
    }

    /// `GET /statistics/devices`.
    pub async fn hub_statistics(&self, operation: &'static str) -> Result<Value> {
        let r = self
            .call(Method::GET, "/statistics/devices", &[], None, operation)
            .await?;
        match r.status {
            200 => r.json(self.service, operation),
            _ => Err(self.fail(operation, &r)),
        }
    }

    /// `GET /{collection}/{id}`; None on 404.
    async fn get_item(
        &self,
        collection: &str,
        id: &str,
        operation: &'static str,
    ) -> Result<Option<Value>> {
        let path = format!("/{collection}/{}", encode_component(id));
        let r = self.call(Method::GET, &path, &[], None, operation).await?;
        match r.status {
            200 => r.json(self.service, operation).map(Some),
            404 => Ok(None),
            _ => Err(self.fail(operation, &r)),
        }
    }

    /// `DELETE /{collection}/{id}` with `If-Match: "*"` (delete whatever is there); false when
    /// it was not there.
    async fn delete_item(
        &self,
        collection: &str,
        id: &str,
        operation: &'static str,
    ) -> Result<bool> {
        let path = format!("/{collection}/{}", encode_component(id));
        let if_match = [("if-match", "\"*\"".to_owned())];
        let r = self
            .call(Method::DELETE, &path, &if_match, None, operation)
            .await?;
        match r.status {
            200 | 204 => Ok(true),
            404 => Ok(false),
            _ => Err(self.fail(operation, &r)),
        }
    }

    // ---- DPS ----

    /// `POST /enrollments` `{"mode":…,"enrollments":[…]}`: the BulkEnrollmentOperationResult.
    pub async fn dps_bulk(
        &self,
        mode: &str,
        items: &[Value],
        operation: &'static str,
    ) -> Result<Value> {
        let body = json!({"mode": mode, "enrollments": items});
        let r = self
            .call(Method::POST, "/enrollments", &[], Some(&body), operation)
            .await?;
        match r.status {
            200 => r.json(self.service, operation),
            _ => Err(self.fail(operation, &r)),
        }
    }

    /// `GET /enrollments/{id}`; None on 404.
    pub async fn dps_get(&self, id: &str, operation: &'static str) -> Result<Option<Value>> {
        self.get_item("enrollments", id, operation).await
    }

    /// `DELETE /enrollments/{id}` with `If-Match: "*"`; false when it was not there.
    pub async fn dps_delete(&self, id: &str, operation: &'static str) -> Result<bool> {
        self.delete_item("enrollments", id, operation).await
    }

    /// `GET /registrations/{id}`: where DPS assigned the registered device; None on 404.
    pub async fn dps_registration(
        &self,
        id: &str,
        operation: &'static str,
    ) -> Result<Option<Value>> {
        self.get_item("registrations", id, operation).await
    }

    /// `DELETE /registrations/{id}` with `If-Match: "*"`; false when it was not there.
    pub async fn dps_delete_registration(&self, id: &str, operation: &'static str) -> Result<bool> {
        self.delete_item("registrations", id, operation).await
    }

    /// The service's host name (`myhub.azure-devices.net`, `localhost:PORT`).
    pub fn host(&self) -> &str {
        self.base.trim_start_matches("https://")
    }

    /// `POST /enrollments/query` (`*`): a page of enrollments and the continuation.
    pub async fn dps_query(
        &self,
        continuation: Option<&str>,
        max: usize,
        operation: &'static str,
    ) -> Result<(Vec<Value>, Option<String>)> {
        self.query(
            "/enrollments/query",
            json!({"query": "*"}),
            continuation,
            max,
            operation,
        )
        .await
    }

    async fn query(
        &self,
        path: &str,
        body: Value,
        continuation: Option<&str>,
        max: usize,
        operation: &'static str,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let mut headers = vec![("x-ms-max-item-count", max.to_string())];
        if let Some(c) = continuation {
            headers.push(("x-ms-continuation", c.to_owned()));
        }
        let r = self
            .call(Method::POST, path, &headers, Some(&body), operation)
            .await?;
        if r.status != 200 {
            return Err(self.fail(operation, &r));
        }
        let next = r
            .header("x-ms-continuation")
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        match r.json(self.service, operation)? {
            Value::Array(items) => Ok((items, next)),
            _ => Err(
                Error::new(ErrorKind::Unexpected, "query answer is not a JSON array")
                    .with_operation(operation),
            ),
        }
    }
}

/// The HTTPS client of a target: rustls, the target's `ca_file`, timeouts, no retries.
/// `https_only` is off for the credential client only: a managed identity endpoint is plain
/// HTTP on the host (IMDS `http://169.254.169.254`, App Service `http://localhost:…`).
fn http_client(cfg: &AzureConfig, https_only: bool) -> Result<reqwest::Client> {
    let bad = |m: String| Error::new(ErrorKind::ConfigInvalid, m).with_operation("config");
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(https_only)
        .retry(reqwest::retry::never())
        .timeout(Duration::from_secs(cfg.timeout_secs.unwrap_or(30)))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("idbridge-azure/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &cfg.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| bad(format!("ca_file {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| bad(format!("ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(bad(format!(
                "ca_file {}: no certificate in it",
                path.display()
            )));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    builder
        .build()
        .map_err(|e| bad(format!("cannot build the HTTPS client: {e}")))
}

/// A transport failure: before a connection is made it is `Network` (nothing was sent);
/// after, the call may have taken effect, so `OutcomeUnknown`.
fn network_error(service: Service, operation: &'static str, e: &reqwest::Error) -> Error {
    let kind = if e.is_connect() {
        ErrorKind::Network
    } else {
        ErrorKind::OutcomeUnknown
    };
    let mut msg = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Error::new(kind, msg)
        .with_operation(operation)
        .with_context("connector", service.connector())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_reused_until_five_minutes_before_expiry() {
        let t0 = Instant::now();
        let expires = t0 + Duration::from_secs(3599);
        assert!(fresh(expires, t0));
        assert!(fresh(expires, t0 + Duration::from_secs(3000)));
        assert!(!fresh(expires, t0 + Duration::from_secs(3299)));
        assert!(!fresh(expires, t0 + Duration::from_secs(4000)));
    }
}
