//! The console's only path to data: the service's HTTP API (`/api/v1/...`), called in-process
//! through the service's own router with the signed-in account's token, so every page is
//! authorised, isolated and audited exactly as the same API call would be.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::Response;
use serde_json::Value;
use tower::ServiceExt as _;

/// The service API, reached without a socket.
#[derive(Clone)]
pub struct Api {
    router: Router,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// One API answer: status and JSON body (`Value::Null` when the body was not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The parsed body.
    pub body: Value,
    /// `Retry-After` seconds, when the service sent one.
    pub retry_after: Option<u64>,
}

impl Answer {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The service's stable error `code`, if any.
    pub fn code(&self) -> &str {
        self.body
            .get("code")
            .or_else(|| self.body.pointer("/error/code"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// The service's error message, if any.
    pub fn message(&self) -> String {
        let m = self
            .body
            .get("message")
            .or_else(|| self.body.pointer("/error/message"))
            .or_else(|| self.body.get("error").filter(|e| e.is_string()));
        m.and_then(Value::as_str).unwrap_or("").to_owned()
    }
}

/// Who is calling: the session's token and the browser's address (for attempt limits and the
/// audit log).
#[derive(Clone)]
pub struct Caller {
    /// The account token (never logged).
    pub token: String,
    /// The browser's address, when known.
    pub peer: Option<SocketAddr>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("token", &"<redacted>")
            .field("peer", &self.peer)
            .finish()
    }
}

impl Api {
    /// Wraps the service's API router (the routes under `/api/v1`).
    pub fn new(router: Router) -> Self {
        Api { router }
    }

    /// `GET path` as JSON.
    pub async fn get(&self, who: &Caller, path: &str) -> Answer {
        self.json(who, Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, who: &Caller, path: &str, body: &Value) -> Answer {
        self.json(who, Method::POST, path, Some(body)).await
    }

    /// A JSON call.
    pub async fn json(
        &self,
        who: &Caller,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        let response = self.raw(who, method, path, body).await;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        // API answers the console reads are small (pages of lists); 16 MiB bounds a bug.
        let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            retry_after,
        }
    }

    /// The API's response as is (streamed bodies: manifests, events).
    pub async fn raw(
        &self,
        who: &Caller,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Response {
        let mut req = Request::builder().method(method).uri(path);
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", who.token)) {
            req = req.header(header::AUTHORIZATION, v);
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        let mut req = match req {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%e, "console: cannot build an API request");
                return bad_request();
            }
        };
        if let Some(peer) = who.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        match self.router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

fn bad_request() -> Response {
    let mut r = Response::new(Body::from(r#"{"code":"bad_request"}"#));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r
}

/// What [`enc`] leaves as is: letters, digits, `-`, `_`, `~` (ids stay readable in URLs; `.`
/// stays encoded so no segment is ever `..`).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}
