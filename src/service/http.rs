//! The service's routes: each handler authenticates, translates the request into calls of the
//! service and the application layer, and the result into JSON. Another account's things are
//! 404 exactly like nonexistent ids.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures::StreamExt as _;
use idbridge_core::journal::{DeviceState, Operation};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::api::{self, ErrorBody};
use super::store::{BindOutcome, BindingRecord, JobRecord, TargetRecord, TokenRecord};
use super::{Caller, Service, jobs, new_id, now_ms, secrets};

/// Largest JSON body of the API.
const MAX_JSON: usize = 1024 * 1024;
/// Largest batch file uploaded by the operator.
const MAX_UPLOAD: usize = 256 * 1024 * 1024;
/// Devices per page (job devices, manifest streaming).
const PAGE: i64 = 500;

/// An error answer with a stable `code`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "not found")
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token's role may not do this",
        )
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "service request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (logged)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.to_owned(),
            message: self.message,
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = header::HeaderValue::from_str(&s.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

type Result<T> = std::result::Result<T, ApiError>;
type Svc = State<Arc<Service>>;

/// The service's routes (`/healthz`, `/readyz`, `/metrics`, `/api/v1/...`).
pub fn router(svc: Arc<Service>) -> Router {
    let upload = Router::new()
        .route(
            "/api/v1/admin/batches",
            post(import_batch).get(list_batches),
        )
        .layer(DefaultBodyLimit::max(MAX_UPLOAD));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/admin/accounts", post(create_account))
        .route("/api/v1/admin/tokens", post(create_token))
        .route("/api/v1/admin/batches/{id}/{file}", get(batch_qr))
        .route("/api/v1/targets", get(list_targets))
        .route(
            "/api/v1/targets/{name}",
            put(put_target).get(get_target).delete(delete_target),
        )
        .route("/api/v1/bindings", post(bind).get(list_bindings))
        .route(
            "/api/v1/bindings/{id}",
            get(get_binding).delete(delete_binding),
        )
        .route("/api/v1/bindings/{id}/manifest", get(manifest))
        .route("/api/v1/bindings/{id}/provision", post(provision))
        .route("/api/v1/bindings/{id}/deprovision", post(deprovision))
        .route("/api/v1/jobs/{id}", get(get_job))
        .route("/api/v1/jobs/{id}/devices", get(job_devices))
        .route("/api/v1/jobs/{id}/events", get(job_events))
        .route("/api/v1/audit", get(audit))
        .merge(console_routes())
        .layer(DefaultBodyLimit::max(MAX_JSON))
        .merge(upload)
        .with_state(svc)
}

// ---- authentication ----

async fn caller(svc: &Service, headers: &HeaderMap, addr: Option<SocketAddr>) -> Result<Caller> {
    let client = addr.map_or_else(|| "unknown".to_owned(), |a| a.ip().to_string());
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let hash = secrets::token_hash(token.trim());
    let Some(t) = svc.store.token_by_hash(&hash).await? else {
        return Err(unauthorized());
    };
    if !secrets::same(&t.token_hash, &hash) {
        return Err(unauthorized());
    }
    Ok(Caller {
        actor: t.id,
        account_id: t.account_id,
        role: t.role,
        client,
    })
}

/// The account of a binder or admin (`admin_only` refuses binders).
fn account(c: &Caller, admin_only: bool) -> Result<String> {
    let Some(a) = &c.account_id else {
        return Err(ApiError::forbidden());
    };
    if admin_only && c.role != "admin" {
        return Err(ApiError::forbidden());
    }
    Ok(a.clone())
}

fn operator(c: &Caller) -> Result<()> {
    if c.role == "operator" && c.account_id.is_none() {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}").map_err(|e| ApiError::bad(e.to_string()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("bad JSON body: {e}")))
}

fn addr(ci: ClientAddr) -> Option<SocketAddr> {
    ci.0
}

/// The peer's address, when the server was started with connect info.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

// ---- health and metrics ----

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::json(),
    )
        .into_response()
}

async fn readyz(State(svc): Svc) -> Response {
    match svc.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "store not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

async fn metrics(State(svc): Svc) -> Response {
    let m = &svc.metrics;
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let text = format!(
        "# HELP idbridge_service_binds_total Bind attempts by result.\n\
         # TYPE idbridge_service_binds_total counter\n\
         idbridge_service_binds_total{{result=\"bound\"}} {}\n\
         idbridge_service_binds_total{{result=\"not_found\"}} {}\n\
         idbridge_service_binds_total{{result=\"already_bound\"}} {}\n\
         idbridge_service_binds_total{{result=\"limited\"}} {}\n\
         # HELP idbridge_service_jobs_total Jobs by state.\n\
         # TYPE idbridge_service_jobs_total counter\n\
         idbridge_service_jobs_total{{state=\"started\"}} {}\n\
         idbridge_service_jobs_total{{state=\"finished\"}} {}\n\
         idbridge_service_jobs_total{{state=\"failed\"}} {}\n\
         # HELP idbridge_service_devices_total Devices by outcome.\n\
         # TYPE idbridge_service_devices_total counter\n\
         idbridge_service_devices_total{{outcome=\"done\"}} {}\n\
         idbridge_service_devices_total{{outcome=\"failed\"}} {}\n\
         # HELP idbridge_service_retries_total Calls retried after throttling or temporary errors.\n\
         # TYPE idbridge_service_retries_total counter\n\
         idbridge_service_retries_total {}\n",
        g(&m.binds_ok),
        g(&m.binds_not_found),
        g(&m.binds_conflict),
        g(&m.binds_limited),
        g(&m.jobs_started),
        g(&m.jobs_finished),
        g(&m.jobs_failed),
        g(&m.devices_done),
        g(&m.devices_failed),
        g(&m.retries),
    );
    // Connector calls and throttles per target and API, as `--metrics-listen` shows them; a
    // service target is labelled `svc/<account id>/<target name>` (ids, not account names).
    let text = text + &crate::app::metrics::global().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

// ---- operator ----

async fn create_account(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    operator(&c)?;
    let req: api::CreateAccount = json(&body)?;
    let a = create_account_in(&svc, &req.name, req.mode.unwrap_or(api::Mode::Manual))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "an account with this name exists",
            )
        })?;
    svc.audit(&c, Some(&a.id), "account.create", Some(&a.name), "ok", None)
        .await;
    Ok((StatusCode::CREATED, axum::Json(a)).into_response())
}

/// Creates an account; `None` when the name is taken.
pub async fn create_account_in(
    svc: &Service,
    name: &str,
    mode: api::Mode,
) -> anyhow::Result<Option<super::store::Account>> {
    let name = name.trim();
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 100,
        "an account name is 1 to 100 characters"
    );
    let a = super::store::Account {
        id: new_id("acc"),
        name: name.to_owned(),
        mode: mode.as_str().to_owned(),
        created_ms: now_ms(),
    };
    Ok(svc.store.create_account(&a).await?.then_some(a))
}

async fn create_token(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    operator(&c)?;
    let req: api::CreateToken = json(&body)?;
    let created = create_token_in(&svc, req.account.as_deref(), &req.role)
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    svc.audit(
        &c,
        None,
        "token.create",
        Some(&created.id),
        "ok",
        Some(created.role.clone()),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// Creates a token for `account` (by name) with `role`; the token is in the answer only.
pub async fn create_token_in(
    svc: &Service,
    account: Option<&str>,
    role: &str,
) -> anyhow::Result<api::TokenCreated> {
    let account_id = match (account, role) {
        (None, "operator") => None,
        (Some(_), "operator") => anyhow::bail!("an operator token belongs to no account"),
        (Some(name), "binder" | "admin") => Some(
            svc.store
                .account_by_name(name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no account {name:?}"))?
                .id,
        ),
        (None, "binder" | "admin") => anyhow::bail!("a {role} token needs an account"),
        (_, other) => anyhow::bail!("unknown role {other:?} (binder, admin, operator)"),
    };
    let token = secrets::new_token()?;
    let rec = TokenRecord {
        id: new_id("tok"),
        account_id,
        role: role.to_owned(),
        token_hash: secrets::token_hash(&token),
        created_ms: now_ms(),
    };
    svc.store.create_token(&rec).await?;
    Ok(api::TokenCreated {
        id: rec.id,
        token,
        role: rec.role,
    })
}

async fn import_batch(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    operator(&c)?;
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let filename = h("x-idbridge-filename")
        .ok_or_else(|| ApiError::bad("the X-Idbridge-Filename header names the uploaded file"))?;
    let base = std::path::Path::new(&filename)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad("X-Idbridge-Filename: not a file name"))?
        .to_owned();
    let dir = tempfile::tempdir().map_err(anyhow::Error::from)?;
    let path = dir.path().join(&base);
    std::fs::write(&path, &body).map_err(anyhow::Error::from)?;
    match svc
        .import(
            vec![path],
            &base,
            h("x-idbridge-batch-id"),
            h("x-idbridge-reel-id"),
        )
        .await
    {
        Ok(b) => {
            svc.audit(
                &c,
                None,
                "batch.import",
                Some(&b.id),
                "ok",
                Some(b.source.clone()),
            )
            .await;
            Ok((StatusCode::CREATED, axum::Json(b)).into_response())
        }
        Err(e) => {
            let msg = format!("{e:#}");
            svc.audit(&c, None, "batch.import", None, "error", Some(base))
                .await;
            if msg.contains("already imported") {
                Err(ApiError::new(StatusCode::CONFLICT, "already_imported", msg))
            } else {
                Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unreadable_batch",
                    msg,
                ))
            }
        }
    }
}

async fn list_batches(State(svc): Svc, ci: ClientAddr, headers: HeaderMap) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    operator(&c)?;
    Ok(axum::Json(svc.store.batches().await?).into_response())
}

async fn batch_qr(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    operator(&c)?;
    let Some(b) = svc.store.batch(&id).await? else {
        return Err(ApiError::not_found());
    };
    let payload = qr_payload(&svc, &b.id);
    let code = qrcode::QrCode::new(payload.as_bytes()).map_err(anyhow::Error::from)?;
    match file.as_str() {
        "qr.svg" => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build();
            Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
        }
        "qr.png" => {
            let img = code
                .render::<image::Luma<u8>>()
                .min_dimensions(200, 200)
                .build();
            let mut out = std::io::Cursor::new(Vec::new());
            img.write_to(&mut out, image::ImageFormat::Png)
                .map_err(anyhow::Error::from)?;
            Ok(([(header::CONTENT_TYPE, "image/png")], out.into_inner()).into_response())
        }
        _ => Err(ApiError::not_found()),
    }
}

/// The text of a batch's label QR code: the batch record and its derived label code.
pub fn qr_payload(svc: &Service, batch_record_id: &str) -> String {
    format!(
        "idbridge:bind?batch={batch_record_id}&reel={}",
        svc.key.label_code(batch_record_id)
    )
}

// ---- targets ----

fn target_view(svc: &Service, t: &TargetRecord) -> anyhow::Result<api::TargetView> {
    let plain = svc
        .key
        .open(&t.sealed, &api::seal_context(&t.account_id, &t.name))?;
    let mut config: serde_json::Value = serde_json::from_slice(&plain)?;
    redact(&mut config);
    Ok(api::TargetView {
        name: t.name.clone(),
        kind: t.kind.clone(),
        default: t.is_default,
        config,
    })
}

fn redact(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(m) = v {
        for (k, x) in m.iter_mut() {
            if api::is_secret_key(k) && !x.is_object() {
                *x = serde_json::Value::String(api::REDACTED.into());
            } else {
                redact(x);
            }
        }
    }
}

async fn list_targets(State(svc): Svc, ci: ClientAddr, headers: HeaderMap) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, true)?;
    let mut out = Vec::new();
    for t in svc.store.targets(&acct).await? {
        out.push(target_view(&svc, &t)?);
    }
    Ok(axum::Json(out).into_response())
}

#[derive(Debug, Deserialize)]
struct DefaultQuery {
    #[serde(default)]
    default: Option<bool>,
}

async fn put_target(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DefaultQuery>,
    body: Bytes,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, true)?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::bad("a target name is 1-64 of [A-Za-z0-9_-]"));
    }
    let value: serde_json::Value = json(&body)?;
    let serde_json::Value::Object(obj) = &value else {
        return Err(ApiError::bad(
            "a target is a JSON object with kind and its keys",
        ));
    };
    let table: toml::Table =
        serde_json::from_value(value.clone()).map_err(|e| ApiError::bad(format!("target: {e}")))?;
    // The same keys as idbridge.toml: checked by building the configuration.
    let kind = obj
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| ApiError::bad("target: missing kind"))?
        .to_owned();
    let known = crate::app::targets::known_kinds();
    if !known.contains(&kind.as_str()) {
        return Err(ApiError::bad(format!(
            "target: unknown kind {kind:?} (this build knows: {})",
            known.join(", ")
        )));
    }
    jobs::target_config(&acct, &name, table).map_err(|e| ApiError::bad(e.to_string()))?;
    let existing = svc.store.targets(&acct).await?;
    let is_default = q.default.unwrap_or(false)
        || existing.is_empty()
        || existing.iter().any(|t| t.name == name && t.is_default);
    let secret_keys: Vec<&String> = obj.keys().filter(|k| api::is_secret_key(k)).collect();
    let plain = serde_json::to_vec(&value).map_err(anyhow::Error::from)?;
    let rec = TargetRecord {
        account_id: acct.clone(),
        name: name.clone(),
        kind,
        is_default,
        secret_keys: serde_json::to_string(&secret_keys).map_err(anyhow::Error::from)?,
        sealed: svc.key.seal(&plain, &api::seal_context(&acct, &name))?,
        updated_ms: now_ms(),
    };
    svc.store.put_target(&rec).await?;
    svc.audit(&c, Some(&acct), "target.put", Some(&name), "ok", None)
        .await;
    Ok(axum::Json(target_view(&svc, &rec)?).into_response())
}

async fn get_target(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, true)?;
    let t = svc
        .store
        .target(&acct, &name)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(axum::Json(target_view(&svc, &t)?).into_response())
}

async fn delete_target(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, true)?;
    if !svc.store.delete_target(&acct, &name).await? {
        return Err(ApiError::not_found());
    }
    svc.audit(&c, Some(&acct), "target.delete", Some(&name), "ok", None)
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The account's default target: the one flagged default, else `demo`.
async fn default_target(svc: &Service, acct: &str) -> anyhow::Result<String> {
    Ok(svc
        .store
        .targets(acct)
        .await?
        .into_iter()
        .find(|t| t.is_default)
        .map_or_else(|| crate::app::DEMO.to_owned(), |t| t.name))
}

async fn target_exists(svc: &Service, acct: &str, name: &str) -> anyhow::Result<bool> {
    Ok(name == crate::app::DEMO || svc.store.target(acct, name).await?.is_some())
}

// ---- bindings ----

async fn binding_view(
    svc: &Service,
    b: &BindingRecord,
    job: Option<api::JobView>,
) -> anyhow::Result<api::BindingView> {
    let batch = svc.store.batch(&b.batch_id).await?;
    let devices = batch.as_ref().map_or(0, |x| x.devices);
    Ok(api::BindingView {
        id: b.id.clone(),
        batch: b.batch_id.clone(),
        devices,
        refused: batch.as_ref().map_or(0, |x| x.invalid),
        mode: b.mode.clone(),
        target: b.target.clone(),
        created_ms: b.created_ms,
        job,
    })
}

/// `(batch, reel)` from a scanned QR text: a URL or URI whose query has `batch`/`batch_id` and
/// `reel`/`reel_id`; without a reel, the reel is empty (a whole batch).
pub fn parse_qr(text: &str) -> Option<(String, String)> {
    let u = url::Url::parse(text.trim()).ok()?;
    let mut batch = None;
    let mut reel = None;
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "batch" | "batch_id" => batch = Some(v.into_owned()),
            "reel" | "reel_id" => reel = Some(v.into_owned()),
            _ => {}
        }
    }
    let batch = batch.filter(|b| !b.trim().is_empty())?;
    Some((batch, reel.unwrap_or_default()))
}

async fn bind(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, false)?;
    let req: api::BindRequest = json(&body)?;
    let window = Duration::from_secs(svc.cfg.bind_window_secs);
    let limit = svc.cfg.bind_attempts;
    let keys = [format!("account:{acct}"), format!("client:{}", c.client)];
    if let Some(wait) = keys
        .iter()
        .filter_map(|k| svc.attempts.blocked(k, limit, window))
        .max()
    {
        svc.metrics.binds_limited.fetch_add(1, Ordering::Relaxed);
        svc.audit(&c, Some(&acct), "bind", None, "limited", None)
            .await;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            "too many failed binding attempts; retry later",
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let (pair, via_qr) = match (&req.batch_id, &req.reel_id, &req.qr) {
        (Some(b), r, None) if !b.trim().is_empty() => {
            ((b.clone(), r.clone().unwrap_or_default()), false)
        }
        (None, None, Some(q)) => (
            parse_qr(q).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_qr",
                    "the QR payload is not a URL with a batch (and reel) in its query",
                )
            })?,
            true,
        ),
        _ => {
            return Err(ApiError::bad(
                "give batch_id (and reel_id for a reel), or qr (and not both)",
            ));
        }
    };
    let batch = resolve_claim(&svc, &pair.0, &pair.1, via_qr).await?;
    let Some(batch) = batch else {
        for k in &keys {
            svc.attempts.fail(k, window);
        }
        svc.metrics.binds_not_found.fetch_add(1, Ordering::Relaxed);
        svc.audit(&c, Some(&acct), "bind", None, "not_found", None)
            .await;
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no batch matches this batch ID and reel ID",
        ));
    };
    let account_rec = svc
        .store
        .account(&acct)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let mode = req
        .mode
        .map_or(account_rec.mode.clone(), |m| m.as_str().to_owned());
    let target = match &req.target {
        Some(t) => {
            if !target_exists(&svc, &acct, t).await? {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "target_not_found",
                    format!("no target {t:?}"),
                ));
            }
            Some(t.clone())
        }
        None if mode == "automatic" => Some(default_target(&svc, &acct).await?),
        None => None,
    };
    let rec = BindingRecord {
        id: new_id("bnd"),
        account_id: acct.clone(),
        batch_id: batch.id.clone(),
        mode: mode.clone(),
        target: target.clone(),
        created_ms: now_ms(),
    };
    match svc.store.bind(&rec).await? {
        BindOutcome::Bound(b) => {
            svc.metrics.binds_ok.fetch_add(1, Ordering::Relaxed);
            svc.audit(
                &c,
                Some(&acct),
                "bind",
                Some(&b.id),
                "ok",
                Some(mode.clone()),
            )
            .await;
            let job = match (&*mode, &target) {
                ("automatic", Some(t)) => {
                    let j = jobs::start(&svc, &acct, &b.id, Operation::Provision, t).await?;
                    svc.audit(&c, Some(&acct), "job.provision", Some(&j.id), "ok", None)
                        .await;
                    Some(job_view(&svc, &j).await?)
                }
                _ => None,
            };
            Ok((
                StatusCode::CREATED,
                axum::Json(binding_view(&svc, &b, job).await?),
            )
                .into_response())
        }
        BindOutcome::AlreadyYours(b) => {
            svc.audit(
                &c,
                Some(&acct),
                "bind",
                Some(&b.id),
                "ok",
                Some("again".into()),
            )
            .await;
            Ok(axum::Json(binding_view(&svc, &b, None).await?).into_response())
        }
        _ => {
            svc.metrics.binds_conflict.fetch_add(1, Ordering::Relaxed);
            svc.audit(&c, Some(&acct), "bind", None, "conflict", None)
                .await;
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_bound",
                "this batch is already bound",
            ))
        }
    }
}

/// The batch a claim names: by the keyed hash of (batch ID, reel ID), or, for a label QR
/// code, by the batch record and its derived label code. Compared in constant time.
async fn resolve_claim(
    svc: &Service,
    batch: &str,
    reel: &str,
    via_qr: bool,
) -> anyhow::Result<Option<super::store::BatchRecord>> {
    let hash = svc.key.claim_hash(batch, reel);
    if let Some(b) = svc.store.batch_by_claim(&hash).await?
        && secrets::same(&b.claim_hash, &hash)
    {
        return Ok(Some(b));
    }
    if via_qr
        && batch.starts_with("bat_")
        && let Some(b) = svc.store.batch(batch).await?
        && secrets::same(&svc.key.label_code(&b.id), reel.trim())
    {
        return Ok(Some(b));
    }
    Ok(None)
}

async fn list_bindings(State(svc): Svc, ci: ClientAddr, headers: HeaderMap) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, false)?;
    let mut out = Vec::new();
    for b in svc.store.bindings(&acct).await? {
        out.push(binding_view(&svc, &b, None).await?);
    }
    Ok(axum::Json(out).into_response())
}

async fn owned_binding(svc: &Service, acct: &str, id: &str) -> Result<BindingRecord> {
    svc.store
        .binding(acct, id)
        .await?
        .ok_or_else(ApiError::not_found)
}

async fn get_binding(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, false)?;
    let b = owned_binding(&svc, &acct, &id).await?;
    Ok(axum::Json(binding_view(&svc, &b, None).await?).into_response())
}

async fn delete_binding(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, true)?;
    let b = owned_binding(&svc, &acct, &id).await?;
    // The newest job decides: a provision (or a running job) must be undone first.
    if let Some(last) = svc.store.binding_jobs(&b.id).await?.first()
        && (last.operation == "provision" || matches!(&*last.state, "queued" | "running"))
    {
        svc.audit(
            &c,
            Some(&acct),
            "binding.delete",
            Some(&b.id),
            "conflict",
            None,
        )
        .await;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "deprovision_first",
            format!(
                "the devices may be in target {}: run POST /api/v1/bindings/{}/deprovision first \
                 (last job {}: {} {})",
                last.target, b.id, last.id, last.operation, last.state
            ),
        ));
    }
    svc.store.delete_binding(&acct, &b.id).await?;
    svc.audit(&c, Some(&acct), "binding.delete", Some(&b.id), "ok", None)
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn provision(
    s: Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    trigger(s, ci, headers, id, body, Operation::Provision).await
}

async fn deprovision(
    s: Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    trigger(s, ci, headers, id, body, Operation::Deprovision).await
}

async fn trigger(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    id: String,
    body: Bytes,
    op: Operation,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, true)?;
    let b = owned_binding(&svc, &acct, &id).await?;
    let req: api::TriggerRequest = json(&body)?;
    let target = match req.target.or(b.target.clone()) {
        Some(t) => t,
        None => default_target(&svc, &acct).await?,
    };
    if !target_exists(&svc, &acct, &target).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "target_not_found",
            format!("no target {target:?}"),
        ));
    }
    let j = jobs::start(&svc, &acct, &b.id, op, &target).await?;
    svc.audit(
        &c,
        Some(&acct),
        &format!("job.{}", op.as_str()),
        Some(&j.id),
        "ok",
        None,
    )
    .await;
    Ok((StatusCode::ACCEPTED, axum::Json(job_view(&svc, &j).await?)).into_response())
}

// ---- manifests ----

#[derive(Debug, Deserialize)]
struct ManifestQuery {
    #[serde(default)]
    format: Option<String>,
}

async fn manifest(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ManifestQuery>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, true)?;
    let b = owned_binding(&svc, &acct, &id).await?;
    let format = q.format.unwrap_or_else(|| "jsonl".into());
    let batch = svc
        .store
        .batch(&b.batch_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let (ctype, fname) = match format.as_str() {
        "jsonl" => ("application/x-ndjson", "manifest.jsonl"),
        "pem" => ("application/x-pem-file", "devices.pem"),
        "aws-bulk" => ("application/x-ndjson", "aws-bulk.jsonl"),
        "azure-import" => ("application/x-ndjson", "azure-import-devices.jsonl"),
        "jsonl.jws" => ("application/jose", "manifest.jsonl.jws"),
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_format",
                format!("unknown format {other:?} (jsonl, pem, aws-bulk, azure-import, jsonl.jws)"),
            ));
        }
    };
    svc.audit(
        &c,
        Some(&acct),
        "manifest.download",
        Some(&b.id),
        "ok",
        Some(format.clone()),
    )
    .await;
    let created =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(b.created_ms) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let header_line = idbridge_manifest::client::idbridge_header(
        Some(&batch.batch_tag),
        u64::try_from(batch.devices).unwrap_or(0),
        created,
    );
    if format == "jsonl.jws" {
        let Some(key) = &svc.signing_key else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_signing_key",
                "this service has no signing_key: no signed manifest",
            ));
        };
        // The signature covers the whole manifest: hashed page by page as it streams past,
        // never held whole.
        let mut signer = key.detached_signer();
        let mut stream = Box::pin(manifest_stream(
            Arc::clone(&svc),
            batch.id.clone(),
            "jsonl".into(),
            header_line,
        ));
        while let Some(chunk) = stream.next().await {
            signer.update(&chunk.map_err(anyhow::Error::from)?);
        }
        let jws = signer.finish().map_err(anyhow::Error::from)?;
        return Ok(([(header::CONTENT_TYPE, ctype)], jws).into_response());
    }
    let stream = manifest_stream(Arc::clone(&svc), batch.id.clone(), format, header_line);
    let disposition = format!("attachment; filename=\"{fname}\"");
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The manifest in `format`, page by page from the store: never whole in memory.
fn manifest_stream(
    svc: Arc<Service>,
    batch_id: String,
    format: String,
    header_line: serde_json::Value,
) -> impl futures::Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static {
    use idbridge_manifest::client as mc;
    let first = if format == "jsonl" {
        let mut out = Vec::new();
        let _ = mc::push_line(&mut out, &header_line);
        Some(out)
    } else {
        None
    };
    let head = futures::stream::iter(first.map(|b| Ok(Bytes::from(b))));
    let pages = futures::stream::unfold(Some(None::<String>), move |after| {
        let svc = Arc::clone(&svc);
        let batch_id = batch_id.clone();
        let format = format.clone();
        async move {
            let after = after?;
            let page = match svc
                .store
                .devices(&batch_id, after.as_deref(), PAGE, true)
                .await
            {
                Ok(p) => p,
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), None)),
            };
            let last = page.last().map(|d| d.device_id.clone())?;
            let mut out = Vec::new();
            for d in &page {
                let Some(pem_text) = &d.cert_pem else {
                    continue;
                };
                if format == "pem" {
                    out.extend_from_slice(pem_text.as_bytes());
                    if !pem_text.ends_with('\n') {
                        out.push(b'\n');
                    }
                    continue;
                }
                let identity = pem::parse(pem_text).ok().and_then(|p| {
                    idbridge_core::DeviceIdentity::from_der(
                        p.into_contents(),
                        idbridge_core::Source {
                            file: d.source.clone(),
                            line: None,
                            entry: None,
                        },
                    )
                    .ok()
                });
                let Some(identity) = identity else { continue };
                let staged = mc::stage(&identity, "{device_id}");
                let line = match format.as_str() {
                    "aws-bulk" => mc::aws_bulk_line(&staged),
                    "azure-import" => mc::azure_import_line(&staged),
                    _ => mc::idbridge_line(&staged),
                };
                let _ = mc::push_line(&mut out, &line);
            }
            Some((Ok(Bytes::from(out)), Some(Some(last))))
        }
    });
    head.chain(pages)
}

// ---- jobs ----

async fn job_view(svc: &Service, j: &JobRecord) -> anyhow::Result<api::JobView> {
    let live = svc.jobs.watch(&j.id).map(|w| w.borrow().clone());
    let journal_job = j
        .journal_job
        .clone()
        .or_else(|| live.as_ref().and_then(|l| l.journal_job.clone()));
    let mut counts = api::JobCounts::default();
    if let Some(jj) = &journal_job
        && let Some(info) = svc.journal.job(jj).await?
    {
        let c = info.counts;
        counts = api::JobCounts {
            total: c.total(),
            done: c.done,
            failed: c.failed,
            pending: c.pending + c.in_flight + c.unknown,
        };
    }
    // Re-read the state: the record may have moved on since `j` was read.
    let current = svc
        .store
        .job(&j.account_id, &j.id)
        .await?
        .unwrap_or_else(|| j.clone());
    Ok(api::JobView {
        id: current.id.clone(),
        binding: current.binding_id.clone(),
        operation: current.operation.clone(),
        target: current.target.clone(),
        state: current.state.clone(),
        error: current.error.clone(),
        counts,
        created_ms: current.created_ms,
        updated_ms: current.updated_ms,
    })
}

async fn owned_job(svc: &Service, acct: &str, id: &str) -> Result<JobRecord> {
    svc.store
        .job(acct, id)
        .await?
        .ok_or_else(ApiError::not_found)
}

async fn get_job(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, false)?;
    let j = owned_job(&svc, &acct, &id).await?;
    Ok(axum::Json(job_view(&svc, &j).await?).into_response())
}

#[derive(Debug, Deserialize)]
struct CursorQuery {
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JobDevicesQuery {
    #[serde(default)]
    cursor: Option<String>,
    /// Only devices in this state (`pending`, `in_flight`, `unknown`, `done`, `failed`).
    #[serde(default)]
    state: Option<String>,
}

async fn job_devices(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<JobDevicesQuery>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, false)?;
    let j = owned_job(&svc, &acct, &id).await?;
    let start: usize = match &q.cursor {
        Some(s) => s.parse().map_err(|_| ApiError::bad("bad cursor"))?,
        None => 0,
    };
    let wanted = match q.state.as_deref() {
        None => None,
        Some(w) => Some(
            [
                DeviceState::Pending,
                DeviceState::InFlight,
                DeviceState::Unknown,
                DeviceState::Done,
                DeviceState::Failed,
            ]
            .into_iter()
            .find(|s| s.as_str() == w)
            .ok_or_else(|| {
                ApiError::bad("state is one of pending, in_flight, unknown, done, failed")
            })?,
        ),
    };
    let journal_job = j.journal_job.clone().or_else(|| {
        svc.jobs
            .watch(&j.id)
            .and_then(|w| w.borrow().journal_job.clone())
    });
    let records = match &journal_job {
        Some(jj) => svc.journal.devices(jj).await.map_err(anyhow::Error::from)?,
        None => Vec::new(),
    };
    let page = usize::try_from(PAGE).unwrap_or(500);
    // The cursor is a position in the job's devices (filtered or not), so that a page of
    // failed devices continues after the last one it showed.
    let picked: Vec<(usize, &_)> = records
        .iter()
        .enumerate()
        .skip(start)
        .filter(|(_, r)| wanted.is_none_or(|w| r.state == w))
        .take(page)
        .collect();
    let next = picked.last().map_or(records.len(), |(i, _)| i + 1);
    let devices: Vec<api::JobDevice> = picked
        .into_iter()
        .map(|(_, r)| api::JobDevice {
            device_id: r.device_id.to_string(),
            state: r.state.as_str().to_owned(),
            outcome: r.outcome.map(|o| o.as_str().to_owned()),
            resources: r.resources.clone().into_iter().collect(),
            error: if r.state == DeviceState::Done {
                None
            } else {
                r.reason.clone()
            },
        })
        .collect();
    let more = devices.len() == page
        && records[next.min(records.len())..]
            .iter()
            .any(|r| wanted.is_none_or(|w| r.state == w));
    Ok(axum::Json(api::JobDevices {
        next_cursor: more.then(|| next.to_string()),
        devices,
    })
    .into_response())
}

async fn job_events(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, false)?;
    let j = owned_job(&svc, &acct, &id).await?;
    let rx = svc.jobs.watch(&j.id);
    let svc2 = Arc::clone(&svc);
    let stream = async_events(svc2, j, rx);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn async_events(
    svc: Arc<Service>,
    j: JobRecord,
    rx: Option<tokio::sync::watch::Receiver<jobs::Live>>,
) -> impl futures::Stream<Item = std::result::Result<Event, std::convert::Infallible>> + Send {
    futures::stream::unfold((rx, false), move |(rx, done)| {
        let svc = Arc::clone(&svc);
        let j = j.clone();
        async move {
            if done {
                return None;
            }
            if let Some(mut rx) = rx {
                let live = rx.borrow_and_update().clone();
                if !live.ended {
                    let ev = Event::default()
                        .event("progress")
                        .json_data(&live)
                        .unwrap_or_default();
                    // Wait for the next change (or the end) before the next event.
                    let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
                    return Some((Ok(ev), (Some(rx), false)));
                }
            }
            let view = job_view(&svc, &j).await.ok();
            let ev = Event::default()
                .event("end")
                .json_data(&view)
                .unwrap_or_default();
            Some((Ok(ev), (None, true)))
        }
    })
}

// ---- audit ----

async fn audit(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Query(q): Query<CursorQuery>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let scope = if c.role == "operator" && c.account_id.is_none() {
        None
    } else {
        Some(account(&c, true)?)
    };
    let entries = svc
        .store
        .audit_entries(scope.as_deref(), q.cursor.as_deref(), PAGE)
        .await?;
    let next = (entries.len() as i64 == PAGE)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    Ok(axum::Json(serde_json::json!({"entries": entries, "next_cursor": next})).into_response())
}

// ---- what the console reads besides the routes above (issue 13) ----
//
// Who is signed in, one binding's devices (paged, searchable), the account's jobs, a target's
// health check before saving, and a target update that keeps stored secrets left empty.

/// Routes the web console needs (also plain API routes: the console has no other path).
fn console_routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/bindings/{id}/devices", get(binding_devices))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/targets/{name}/test", post(test_target))
        .route("/api/v1/targets/{name}", axum::routing::patch(patch_target))
}

/// `GET /api/v1/whoami`: the token's account and role (never the token).
async fn whoami(State(svc): Svc, ci: ClientAddr, headers: HeaderMap) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let account = match &c.account_id {
        Some(id) => svc.store.account(id).await?,
        None => None,
    };
    Ok(axum::Json(serde_json::json!({
        "account_id": c.account_id,
        "account": account.as_ref().map(|a| a.name.clone()),
        "mode": account.as_ref().map(|a| a.mode.clone()),
        "role": c.role,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct DeviceSearch {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

/// One device of a binding as the console lists it.
fn device_row_view(d: &super::store::DeviceRow) -> serde_json::Value {
    let cert = d
        .cert_pem
        .as_deref()
        .and_then(|p| pem::parse(p).ok())
        .and_then(|p| {
            idbridge_core::DeviceIdentity::from_der(
                p.into_contents(),
                idbridge_core::Source {
                    file: d.source.clone(),
                    line: None,
                    entry: None,
                },
            )
            .ok()
        });
    // A vendor file names the chip: Infineon `CHIPID_E0E0.pem`, else the certificate's CN.
    let file = d.source.rsplit(['/', '\\']).next().unwrap_or_default();
    let chip = file
        .split_once('_')
        .map(|(c, _)| c)
        .filter(|c| c.len() >= 8 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .or_else(|| cert.as_ref().and_then(|c| c.subject_cn.clone()))
        .unwrap_or_default();
    serde_json::json!({
        "device_id": d.device_id,
        "chip_id": chip,
        "serial": cert.as_ref().map(|c| c.serial_hex.clone()).unwrap_or_default(),
        "status": d.status,
        "reason": d.reason,
    })
}

/// `GET /api/v1/bindings/{id}/devices?q=&cursor=&limit=`: the bound batch's devices (valid
/// and refused, with the reason), `q` matching device id, chip id or serial (substring, any
/// case); `counts` are the batch's valid and refused devices.
async fn binding_devices(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DeviceSearch>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, false)?;
    let b = owned_binding(&svc, &acct, &id).await?;
    let batch = svc
        .store
        .batch(&b.batch_id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let limit = q.limit.unwrap_or(50).clamp(1, PAGE);
    let needle =
        q.q.as_deref()
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty());
    let mut scan_after = q.cursor.filter(|c| !c.is_empty());
    let mut out = Vec::new();
    let mut next = None;
    // Page through the store (a search may scan the whole batch, never holding it whole).
    'scan: loop {
        let page = svc
            .store
            .devices(&batch.id, scan_after.as_deref(), PAGE, false)
            .await?;
        for d in &page {
            let v = device_row_view(d);
            let hit = needle.as_ref().is_none_or(|n| {
                ["device_id", "chip_id", "serial"].iter().any(|k| {
                    v[*k]
                        .as_str()
                        .is_some_and(|s| s.to_lowercase().contains(n.as_str()))
                })
            });
            if !hit {
                continue;
            }
            if out.len() as i64 == limit {
                // The next page starts after the last device shown.
                next = out
                    .last()
                    .and_then(|l: &serde_json::Value| l["device_id"].as_str().map(str::to_owned));
                break 'scan;
            }
            out.push(v);
        }
        if (page.len() as i64) < PAGE {
            break;
        }
        scan_after = page.last().map(|d| d.device_id.clone());
    }
    Ok(axum::Json(serde_json::json!({
        "devices": out,
        "next_cursor": next,
        "counts": {"valid": batch.devices, "refused": batch.invalid},
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    #[serde(default)]
    binding: Option<String>,
}

/// `GET /api/v1/jobs[?binding=ID]`: the account's jobs (of one binding), newest first, at
/// most 100.
async fn list_jobs(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Query(q): Query<JobsQuery>,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, false)?;
    let bindings = match &q.binding {
        Some(id) => vec![owned_binding(&svc, &acct, id).await?],
        None => svc.store.bindings(&acct).await?,
    };
    let mut records = Vec::new();
    for b in &bindings {
        records.extend(svc.store.binding_jobs(&b.id).await?);
    }
    records.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
    records.truncate(100);
    let mut jobs = Vec::with_capacity(records.len());
    for j in &records {
        jobs.push(job_view(&svc, j).await?);
    }
    Ok(axum::Json(serde_json::json!({ "jobs": jobs })).into_response())
}

/// The stored table of `name` with `value`'s keys on top: a secret key sent empty (or not
/// sent) keeps its stored value, so a form never has to show a secret to keep it.
async fn merged_target(
    svc: &Service,
    acct: &str,
    name: &str,
    value: serde_json::Value,
) -> Result<serde_json::Value> {
    let serde_json::Value::Object(mut new) = value else {
        return Err(ApiError::bad(
            "a target is a JSON object with kind and its keys",
        ));
    };
    if let Some(t) = svc.store.target(acct, name).await? {
        let plain = svc.key.open(&t.sealed, &api::seal_context(acct, name))?;
        let stored: serde_json::Value =
            serde_json::from_slice(&plain).map_err(anyhow::Error::from)?;
        let same_kind = stored.get("kind") == new.get("kind") || new.get("kind").is_none();
        if let (serde_json::Value::Object(stored), true) = (stored, same_kind) {
            for (k, v) in stored {
                let empty = new
                    .get(&k)
                    .is_none_or(|x| x.is_null() || x.as_str().is_some_and(str::is_empty));
                let keep_secret = api::is_secret_key(&k) && empty;
                let keep_kind = k == "kind" && !new.contains_key("kind");
                if keep_secret || keep_kind {
                    new.insert(k, v);
                }
            }
        }
    }
    new.retain(|_, v| !v.is_null());
    Ok(serde_json::Value::Object(new))
}

/// `PATCH /api/v1/targets/{name}[?default=true]`: as PUT, but secret keys left out or empty
/// keep their stored values.
async fn patch_target(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: Query<DefaultQuery>,
    body: Bytes,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, true)?;
    let merged = merged_target(&svc, &acct, &name, json(&body)?).await?;
    let body = Bytes::from(serde_json::to_vec(&merged).map_err(anyhow::Error::from)?);
    put_target(State(svc), ci, headers, Path(name), q, body).await
}

/// `POST /api/v1/targets/{name}/test`: builds the connector from the table in the body (merged
/// with the stored secrets, as PATCH does) and runs its health check; nothing is stored.
async fn test_target(
    State(svc): Svc,
    ci: ClientAddr,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let c = caller(&svc, &headers, addr(ci)).await?;
    let acct = account(&c, true)?;
    let merged = merged_target(&svc, &acct, &name, json(&body)?).await?;
    let table: toml::Table =
        serde_json::from_value(merged).map_err(|e| ApiError::bad(format!("target: {e}")))?;
    let kind = table
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| ApiError::bad("target: missing kind"))?
        .to_owned();
    let known = crate::app::targets::known_kinds();
    if !known.contains(&kind.as_str()) {
        return Err(ApiError::bad(format!(
            "target: unknown kind {kind:?} (this build knows: {})",
            known.join(", ")
        )));
    }
    let cfg = jobs::target_config(&acct, &name, table).map_err(|e| ApiError::bad(e.to_string()))?;
    let failed = |message: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "health_check_failed",
            message,
        )
    };
    let connector = crate::app::targets::build(&cfg)
        .await
        .map_err(|e| failed(format!("{e:#}")))?;
    let opts = crate::app::EngineOverrides::default()
        .options(&cfg)
        .map_err(|e| ApiError::bad(format!("target: {e:#}")))?;
    // The engine's call path: paced, timed and retried like a job's calls.
    let outcome = idbridge_core::engine::Caller::new(connector, &opts)
        .health_check()
        .await;
    svc.audit(
        &c,
        Some(&acct),
        "target.test",
        Some(&name),
        if outcome.is_ok() { "ok" } else { "error" },
        None,
    )
    .await;
    match outcome {
        Ok(()) => Ok(axum::Json(serde_json::json!({"ok": true, "kind": kind})).into_response()),
        Err(e) => Err(failed(e.to_string())),
    }
}
