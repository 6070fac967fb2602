//! The wire: Firestore and Pub/Sub REST v1 request and response types and the one HTTP client
//! that sends them with google-cloud-auth's headers. The only file of this crate that sends
//! bytes.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use google_cloud_auth::credentials::CacheableResource;
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use idbridge_core::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{Auth, Resolved};
use crate::error::{parse_auth_error, parse_error, parse_transport_error};

/// A Firestore document (REST `Document`): `fields` holds Firestore `Value` JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    /// `projects/{p}/databases/{d}/documents/{collection}/{id}`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Field name → Firestore value (`{"stringValue": …}`, `{"timestampValue": …}` …).
    #[serde(default)]
    pub fields: BTreeMap<String, serde_json::Value>,
    /// Set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    /// Set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<String>,
}

/// One write of a `batchWrite`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Write {
    /// Create or replace this document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update: Option<Document>,
    /// Delete the document of this name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete: Option<String>,
    /// `{"exists": false}`: create only; `{"exists": true}`: only if it exists.
    pub current_document: Precondition,
}

/// A write precondition.
#[derive(Debug, Clone, Serialize)]
pub struct Precondition {
    /// Whether the document must exist.
    pub exists: bool,
}

/// `documents:batchWrite` request.
#[derive(Debug, Serialize)]
pub struct BatchWriteRequest<'a> {
    /// The writes, at most one per document.
    pub writes: &'a [Write],
}

/// `documents:batchWrite` answer: one result and one status per write, in order.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchWriteResponse {
    /// Per write: `{"updateTime": …}` on success, `{}` otherwise.
    #[serde(default)]
    pub write_results: Vec<WriteResult>,
    /// Per write: `{}` (OK) or `{"code": 6, "message": …}`.
    #[serde(default)]
    pub status: Vec<RpcStatus>,
}

/// One `writeResults` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    /// When the write was applied.
    #[serde(default)]
    pub update_time: Option<String>,
}

/// A `google.rpc.Status`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct RpcStatus {
    /// Numeric gRPC code; 0 (absent) is OK.
    #[serde(default)]
    pub code: i32,
    /// The message.
    #[serde(default)]
    pub message: String,
}

/// `documents:batchGet` request.
#[derive(Debug, Serialize)]
pub struct BatchGetRequest<'a> {
    /// Full document names.
    pub documents: &'a [String],
}

/// One element of the `documents:batchGet` answer (a JSON array).
#[derive(Debug, Default, Deserialize)]
pub struct BatchGetItem {
    /// The document, when it exists.
    #[serde(default)]
    pub found: Option<Document>,
    /// Its name, when it does not.
    #[serde(default)]
    pub missing: Option<String>,
}

/// A page of `GET …/{collection}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListDocumentsResponse {
    /// The documents (only the masked fields).
    #[serde(default)]
    pub documents: Vec<Document>,
    /// Absent on the last page.
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// A Pub/Sub message to publish.
#[derive(Debug, Clone, Serialize)]
pub struct PubsubMessage {
    /// Standard base64 of the payload.
    pub data: String,
    /// Routing attributes (at most 100).
    pub attributes: BTreeMap<String, String>,
}

/// `topics/{t}:publish` request.
#[derive(Debug, Serialize)]
pub struct PublishRequest<'a> {
    /// At most 1,000 messages and 10 MB.
    pub messages: &'a [PubsubMessage],
}

/// `topics/{t}:publish` answer: one server-assigned id per message, in order.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishResponse {
    /// The message ids.
    #[serde(default)]
    pub message_ids: Vec<String>,
}

/// The HTTP client of one target: base URL, credentials, reqwest.
pub struct GcpClient {
    http: reqwest::Client,
    base_url: String,
    auth: Auth,
    cached_headers: Mutex<Option<HeaderMap>>,
}

impl std::fmt::Debug for GcpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpClient")
            .field("base_url", &self.base_url)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl GcpClient {
    /// A client for `resolved`'s endpoint; `timeout` is the backstop of one call.
    pub fn new(resolved: &Resolved, timeout: Duration) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("idbridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::ConfigInvalid, "cannot build the HTTP client")
                    .with_operation("configure")
                    .with_source(e)
            })?;
        Ok(GcpClient {
            http,
            base_url: resolved.base_url.clone(),
            auth: resolved.auth.clone(),
            cached_headers: Mutex::new(None),
        })
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `POST {base}{path}` with a JSON body; decodes a 2xx JSON answer.
    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let body = serde_json::to_vec(body).map_err(|e| {
            Error::new(ErrorKind::Unexpected, "cannot encode the request")
                .with_operation(operation)
                .with_source(e)
        })?;
        let bytes = self
            .send(operation, reqwest::Method::POST, path, Some(body))
            .await?;
        decode(operation, &bytes)
    }

    /// `GET {base}{path_and_query}`; decodes a 2xx JSON answer.
    pub async fn get<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path_and_query: &str,
    ) -> Result<T> {
        let bytes = self
            .send(operation, reqwest::Method::GET, path_and_query, None)
            .await?;
        decode(operation, &bytes)
    }

    /// Sends one request; a non-2xx answer becomes the mapped error.
    async fn send(
        &self,
        operation: &'static str,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<bytes::Bytes> {
        let headers = self.headers(operation).await?;
        let url = format!("{}{}", self.base_url, path_and_query);
        let mut req = self.http.request(method, &url).headers(headers);
        if let Some(body) = body {
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| parse_transport_error(operation, e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| parse_transport_error(operation, e))?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(parse_error(
            operation,
            status.as_u16(),
            retry_after.as_deref(),
            &String::from_utf8_lossy(&bytes),
        ))
    }

    /// The authentication headers of the next request.
    async fn headers(&self, operation: &'static str) -> Result<HeaderMap> {
        match &self.auth {
            Auth::None => Ok(HeaderMap::new()),
            Auth::EmulatorAdmin => {
                let mut h = HeaderMap::new();
                h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer owner"));
                Ok(h)
            }
            Auth::Google(creds) => {
                let fresh = creds
                    .headers(http::Extensions::new())
                    .await
                    .map_err(|e| parse_auth_error(operation, e))?;
                let mut cache = self
                    .cached_headers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match fresh {
                    CacheableResource::New { data, .. } => {
                        *cache = Some(data.clone());
                        Ok(data)
                    }
                    CacheableResource::NotModified => cache.clone().ok_or_else(|| {
                        Error::new(
                            ErrorKind::Unauthenticated,
                            "google-cloud-auth returned no headers",
                        )
                        .with_operation(operation)
                        .set_temporary(true)
                    }),
                }
            }
        }
    }
}

fn decode<T: DeserializeOwned>(operation: &'static str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        let shown: String = String::from_utf8_lossy(bytes).chars().take(200).collect();
        Error::new(
            ErrorKind::Unexpected,
            format!("unexpected answer from Google: {shown}"),
        )
        .with_operation(operation)
        .with_source(e)
    })
}
