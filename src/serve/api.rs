//! The HTTP layer of the receiver: routes, authentication middleware, request parsing and
//! limits, and the mapping of outcomes to Infineon-shaped answers.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use idbridge_http::ItemResult;
use serde_json::{Value, json};

use super::auth::{Grant, Scope, TokenVerifier, msg};
use super::jobs::Jobs;
use super::request::{Action, Entry, StatusQuery, parse_body, parse_certs, parse_status};
use super::server::{ApiError, CorrelationId, JobPermits};
use super::{Backend, Item, Outcome, ServeConfig};

/// Infineon's message for a certificate that does not decode (verbatim, typo included).
pub const MSG_CANNOT_DECODE: &str = "Cannot decode certitifcate";

/// The message of an item still in progress at the sync deadline, for a caller that did not
/// opt into `ACCEPTED` (a v1 sender knows only `SUCCESS` and `ERROR`).
pub const MSG_UNFINISHED: &str = "Not finished within the receiver's time bound; provisioning goes on, provision again to confirm";

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    verifier: Arc<TokenVerifier>,
    backend: Arc<dyn Backend>,
    jobs: Jobs,
    permits: JobPermits,
    cfg: Arc<ServeConfig>,
}

impl AppState {
    /// The state of a receiver.
    pub fn new(verifier: TokenVerifier, backend: Arc<dyn Backend>, cfg: ServeConfig) -> Self {
        AppState {
            verifier: Arc::new(verifier),
            backend,
            jobs: Jobs::default(),
            permits: JobPermits::new(cfg.max_jobs),
            cfg: Arc::new(cfg),
        }
    }
}

/// The receiver's routes.
pub fn router(state: AppState) -> Router {
    let authed = Router::new()
        .route("/auth", get(|| async { "OK" }))
        .route("/interop", post(interop))
        .route("/{stage}/interop", post(interop))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/", get(|| async { "OK" }))
        .merge(authed)
        .layer(DefaultBodyLimit::max(state.cfg.max_body_bytes))
        .with_state(state)
}

/// Runs before the body is read: an unauthenticated caller never makes us buffer 25 MB.
async fn authenticate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match s.verifier.check(header) {
        Ok(grant) => {
            let mut req = req;
            req.extensions_mut().insert(grant);
            next.run(req).await
        }
        Err(refusal) => {
            let id = req
                .extensions()
                .get::<CorrelationId>()
                .map(|c| c.0.to_string())
                .unwrap_or_default();
            tracing::info!(correlation_id = %id, reason = refusal.reason, "refused token");
            error(StatusCode::UNAUTHORIZED, refusal.message)
        }
    }
}

async fn interop(
    State(s): State<AppState>,
    grant: Option<Extension<Grant>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // The authentication layer always sets it; without one nothing is allowed.
    let Some(Extension(grant)) = grant else {
        return error(StatusCode::UNAUTHORIZED, msg::CANNOT_VERIFY);
    };
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body larger than {} bytes; send fewer certificates per request",
                    s.cfg.max_body_bytes
                ),
            );
        }
        Err(e) => {
            return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "unreadable body")
                .detail(e)
                .into_response();
        }
    };
    let (action, req) = match parse_body(&body) {
        Ok(x) => x,
        Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
    };
    match action {
        Action::Info => json_response(
            StatusCode::OK,
            &json!({"action": "info", "compatibilityVersion": 1, "extensions": ["status", "deprovision"]}),
        ),
        Action::Provision => match allowed(&grant, Scope::Provision) {
            Ok(()) => provision(&s, &req, prefers_async(&headers)).await,
            Err(r) => *r,
        },
        Action::Deprovision => match allowed(&grant, Scope::Deprovision) {
            Ok(()) => deprovision(&s, &req).await,
            Err(r) => *r,
        },
        Action::Status => match allowed(&grant, Scope::Status) {
            Ok(()) => status(&s, &req).await,
            Err(r) => *r,
        },
        Action::Message => json_response(
            StatusCode::OK,
            &json!({"message": "Not yet implemented.", "action": "message"}),
        ),
    }
}

/// `403 forbidden` unless the token's issuer has `scope`.
fn allowed(grant: &Grant, scope: Scope) -> Result<(), Box<Response>> {
    if grant.allows(scope) {
        return Ok(());
    }
    tracing::info!(issuer = %grant.issuer, action = scope.as_str(), "action outside the issuer's scopes");
    Err(Box::new(error(
        StatusCode::FORBIDDEN,
        &format!(
            "this token's issuer may not {} (scopes are configured per issuer)",
            scope.as_str()
        ),
    )))
}

/// Whether the caller opted into asynchronous answers: `Prefer: respond-async` (RFC 7240).
/// Only such a caller is answered `ACCEPTED`; a v1 sender expects `SUCCESS` or `ERROR`.
fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| pref.split(';').next())
        .any(|token| token.trim().eq_ignore_ascii_case("respond-async"))
}

/// Runs the request as a job and waits for it up to `sync_deadline_secs`. Items unfinished by
/// then are answered `ACCEPTED` with the job id when the caller opted in (`asynchronous`),
/// else `ERROR` with code `outcome_unknown` (and the job id): the job goes on either way, and
/// provisioning again is idempotent.
async fn provision(s: &AppState, req: &Value, asynchronous: bool) -> Response {
    let entries = match parse_certs(req, s.cfg.max_certs) {
        Ok(e) => e,
        Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
    };
    let mut refs = Vec::with_capacity(entries.len());
    let mut known = Vec::with_capacity(entries.len());
    let mut work = Vec::new();
    for (idx, e) in entries.into_iter().enumerate() {
        match e {
            Entry::Ok(item) => {
                refs.push(item.reference.clone());
                known.push(None);
                work.push((idx, item));
            }
            Entry::Undecodable(reference) => {
                known.push(Some(item_result(
                    &reference,
                    Outcome::Error {
                        message: MSG_CANNOT_DECODE.into(),
                        code: "invalid_certificate",
                    },
                )));
                refs.push(reference);
            }
        }
    }
    // A job runs only with a slot: a flood of requests cannot start unbounded work.
    let permit = match s.permits.try_acquire() {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let job = s.jobs.create(refs, known);
    tracing::info!(job = %job.id, certs = work.len(), "provision request");
    let (backend, chunk, worker_job) = (Arc::clone(&s.backend), s.cfg.chunk_size, Arc::clone(&job));
    tokio::spawn(async move {
        let _permit = permit;
        for part in work.chunks(chunk) {
            let items: Vec<Item> = part.iter().map(|(_, it)| it.clone()).collect();
            let outcomes = backend.provision(&items).await;
            let mut outcomes = outcomes.into_iter();
            for (idx, it) in part {
                let out = outcomes.next().unwrap_or(Outcome::Error {
                    message: "no result from the engine".into(),
                    code: "outcome_unknown",
                });
                worker_job.set(*idx, item_result(&it.reference, out));
            }
        }
        worker_job.finish();
    });
    let finished = job
        .wait(Duration::from_secs(s.cfg.sync_deadline_secs))
        .await;
    if !finished {
        let answered = if asynchronous { "ACCEPTED" } else { "ERROR" };
        tracing::info!(job = %job.id, answered, "unfinished items at the sync deadline; the job goes on");
    }
    let answer = job.snapshot(|r| {
        if asynchronous {
            ItemResult {
                reference: r.to_owned(),
                status: "ACCEPTED".into(),
                job: Some(job.id.clone()),
                ..Default::default()
            }
        } else {
            ItemResult {
                reference: r.to_owned(),
                status: "ERROR".into(),
                message: Some(MSG_UNFINISHED.into()),
                code: Some("outcome_unknown".into()),
                job: Some(job.id.clone()),
                ..Default::default()
            }
        }
    });
    let mut resp = json_response(StatusCode::OK, &answer);
    if asynchronous && resp.status() == StatusCode::OK {
        resp.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
    }
    resp
}

async fn deprovision(s: &AppState, req: &Value) -> Response {
    let entries = match parse_certs(req, s.cfg.max_certs) {
        Ok(e) => e,
        Err(msg) => return error(StatusCode::BAD_REQUEST, &msg),
    };
    let items: Vec<Item> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Ok(i) => Some(i.clone()),
            Entry::Undecodable(_) => None,
        })
        .collect();
    let mut outcomes = s.backend.deprovision(&items).await.into_iter();
    let answer: Vec<ItemResult> = entries
        .into_iter()
        .map(|e| match e {
            Entry::Ok(i) => item_result(
                &i.reference,
                outcomes.next().unwrap_or(Outcome::Error {
                    message: "no result from the engine".into(),
                    code: "outcome_unknown",
                }),
            ),
            Entry::Undecodable(r) => item_result(
                &r,
                Outcome::Error {
                    message: MSG_CANNOT_DECODE.into(),
                    code: "invalid_certificate",
                },
            ),
        })
        .collect();
    json_response(StatusCode::OK, &answer)
}

async fn status(s: &AppState, req: &Value) -> Response {
    match parse_status(req, s.cfg.max_certs) {
        Err(msg) => error(StatusCode::BAD_REQUEST, &msg),
        Ok(StatusQuery::Job(id)) => {
            let Some(job) = s.jobs.get(&id) else {
                return error(
                    StatusCode::NOT_FOUND,
                    "unknown job (finished jobs are kept for an hour)",
                );
            };
            let done = job.is_done();
            let results = job.snapshot(|r| ItemResult {
                reference: r.to_owned(),
                status: "PENDING".into(),
                job: Some(job.id.clone()),
                ..Default::default()
            });
            json_response(
                StatusCode::OK,
                &json!({"action": "status", "job": job.id, "done": done, "results": results}),
            )
        }
        Ok(StatusQuery::Fingerprints(list)) => {
            let devices = s.backend.lookup(&list).await;
            json_response(
                StatusCode::OK,
                &json!({"action": "status", "devices": devices}),
            )
        }
    }
}

fn item_result(reference: &str, out: Outcome) -> ItemResult {
    match out {
        Outcome::Success { endpoint, created } => ItemResult {
            reference: reference.to_owned(),
            status: "SUCCESS".into(),
            endpoint,
            created: Some(created),
            ..Default::default()
        },
        Outcome::NotFound => ItemResult {
            reference: reference.to_owned(),
            status: "NOT_FOUND".into(),
            ..Default::default()
        },
        Outcome::Error { message, code } => ItemResult {
            reference: reference.to_owned(),
            status: "ERROR".into(),
            message: Some(message),
            code: Some(code.to_owned()),
            ..Default::default()
        },
    }
}

fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(body),
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("cannot encode answer: {e}")).into_response(),
    }
}

/// An error answer (`{"error": msg, "code", "correlation_id"}`, Infineon's `error` field
/// kept); `msg` must be fit for the caller: validation text, never a path or cloud detail.
fn error(status: StatusCode, msg: &str) -> Response {
    let code = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::FORBIDDEN => "forbidden",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    ApiError::new(status, code, msg.to_owned()).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use axum::http::Request;
    use idbridge_http::client::FingerprintStatus;
    use idbridge_mock_clouds::TestPki;
    use idbridge_mock_clouds::interop::{InteropSender, TokenKind};
    use tower::ServiceExt as _;

    use super::*;
    use crate::serve::auth::{IssuerPolicy, parse_keys};

    /// Records what it was asked; answers Success, slowly when told.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<String>>,
        delay_ms: u64,
    }

    #[async_trait]
    impl Backend for Recorder {
        async fn provision(&self, items: &[Item]) -> Vec<Outcome> {
            tokio::time::sleep(Duration::from_millis(self.delay_ms)).await;
            let mut g = self.seen.lock().unwrap();
            items
                .iter()
                .map(|i| {
                    g.push(i.reference.clone());
                    Outcome::Success {
                        endpoint: Some("localhost:1".into()),
                        created: true,
                    }
                })
                .collect()
        }
        async fn deprovision(&self, items: &[Item]) -> Vec<Outcome> {
            items.iter().map(|_| Outcome::NotFound).collect()
        }
        async fn lookup(&self, fps: &[String]) -> Vec<FingerprintStatus> {
            fps.iter()
                .map(|f| FingerprintStatus {
                    fingerprint: f.clone(),
                    status: "ABSENT".into(),
                    endpoint: None,
                })
                .collect()
        }
    }

    struct T {
        app: Router,
        sender: InteropSender,
        backend: Arc<Recorder>,
    }

    fn app(cfg: ServeConfig, delay_ms: u64) -> T {
        app_with(cfg, delay_ms, IssuerPolicy::default())
    }

    fn app_with(cfg: ServeConfig, delay_ms: u64, policy: IssuerPolicy) -> T {
        let sender = InteropSender::new("123456789012").unwrap();
        let verifier = TokenVerifier::single(
            sender.issuer(),
            parse_keys(&sender.public_key_pem()).unwrap(),
            policy,
            "123456789012",
            5,
        )
        .unwrap();
        let backend = Arc::new(Recorder {
            delay_ms,
            ..Default::default()
        });
        let limits = cfg.limits();
        let app = crate::serve::server::harden(
            router(AppState::new(verifier, backend.clone(), cfg)),
            &limits,
        );
        T {
            app,
            sender,
            backend,
        }
    }

    async fn call(t: &T, auth: Option<String>, body: Vec<u8>) -> (StatusCode, Value) {
        let (status, _, v) = call_with(t, auth, &[], body).await;
        (status, v)
    }

    /// [`call`] with extra request headers; also returns the answer's headers.
    async fn call_with(
        t: &T,
        auth: Option<String>,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = Request::post("/interop").header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = t
            .app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let answer_headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let mut v = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if let Some(o) = v.as_object_mut()
            && let Some(id) = o.remove("correlation_id")
        {
            assert_eq!(id.as_str().map(str::len), Some(16), "{id}");
        }
        (status, answer_headers, v)
    }

    fn bearer(t: &T) -> Option<String> {
        Some(format!("Bearer {}", t.sender.token(TokenKind::Valid)))
    }

    fn cert_b64(pem: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(pem)
    }

    #[tokio::test]
    async fn jwt_matrix_at_the_receiver() {
        let t = app(ServeConfig::default(), 0);
        let info = br#"{"action":"info"}"#.to_vec();
        let (s, v) = call(&t, bearer(&t), info.clone()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["compatibilityVersion"], 1);
        for k in [
            TokenKind::WrongAudience,
            TokenKind::Expired,
            TokenKind::OtherKey,
            TokenKind::AlgNone,
            TokenKind::Hs256WithPublicKey,
        ] {
            let (s, v) = call(
                &t,
                Some(format!("Bearer {}", t.sender.token(k))),
                info.clone(),
            )
            .await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{k:?}");
            assert_eq!(
                v,
                json!({"error": "Cannot verify and decode token", "code": "unauthorized"}),
                "{k:?}"
            );
        }
        let (s, v) = call(&t, None, info.clone()).await;
        assert_eq!(
            (s, v),
            (
                StatusCode::UNAUTHORIZED,
                json!({"error": "Missing Authorization Header", "code": "unauthorized"})
            )
        );
        let (s, v) = call(&t, Some("Bearer".into()), info.clone()).await;
        assert_eq!(
            (s, v),
            (
                StatusCode::UNAUTHORIZED,
                json!({"error": "Token invalid", "code": "unauthorized"})
            )
        );
        let (s, v) = call(&t, Some("Bearer abc.def".into()), info.clone()).await;
        assert_eq!(
            (s, v),
            (
                StatusCode::UNAUTHORIZED,
                json!({"error": "Cannot verify and decode token", "code": "unauthorized"})
            )
        );
        let (s, v) = call(
            &t,
            Some(format!("Token {}", t.sender.token(TokenKind::Valid))),
            info,
        )
        .await;
        assert_eq!(
            (s, v),
            (
                StatusCode::UNAUTHORIZED,
                json!({"error": "Authorization Header must contain Bearer Token", "code": "unauthorized"})
            )
        );
        // GET / needs nothing; GET /auth needs the token.
        let r = t
            .app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = t
            .app
            .clone()
            .oneshot(Request::get("/auth").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = t
            .app
            .clone()
            .oneshot(
                Request::get("/auth")
                    .header("authorization", bearer(&t).unwrap())
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            t.backend.seen.lock().unwrap().is_empty(),
            "nothing provisioned by refused calls"
        );
    }

    #[tokio::test]
    async fn malformed_requests_are_400_with_clear_bodies() {
        let t = app(ServeConfig::default(), 0);
        let cases: Vec<(&[u8], &str)> = vec![
            (b"{not json", "not valid JSON"),
            (b"[]", "must be of type object"),
            (br#"{"certs":[]}"#, "\"action\" is required"),
            (br#"{"action":"dance"}"#, "\"action\" must be one of"),
            (br#"{"action":"provision"}"#, "\"certs\" is required"),
            (
                br#"{"action":"provision","certs":{}}"#,
                "\"certs\" must be an array",
            ),
            (
                br#"{"action":"provision","certs":[{"cert":"dGVzdGluZw=="}]}"#,
                "\"certs[0].ref\" is required",
            ),
            (
                br#"{"action":"provision","certs":[{"ref":"a"}]}"#,
                "\"certs[0].cert\" is required",
            ),
            (
                br#"{"action":"provision","certs":[{"ref":"a","cert":"%%%"}]}"#,
                "\"certs[0].cert\" must be a valid base64 string",
            ),
            (
                br#"{"action":"status"}"#,
                "\"job\" or \"fingerprints\" is required",
            ),
            (
                br#"{"action":"status","fingerprints":["abc"]}"#,
                "fingerprints[0]",
            ),
        ];
        for (body, want) in cases {
            let (s, v) = call(&t, bearer(&t), body.to_vec()).await;
            assert_eq!(
                s,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(body)
            );
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(
                msg.contains(want),
                "{} → {msg}",
                String::from_utf8_lossy(body)
            );
        }
        // Two violations are both named.
        let (_, v) = call(
            &t,
            bearer(&t),
            br#"{"action":"provision","certs":[{"cert":"x"},{"ref":"b"}]}"#.to_vec(),
        )
        .await;
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains("certs[0].ref") && msg.contains("certs[1].cert"),
            "{msg}"
        );
        assert!(t.backend.seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn body_and_count_limits() {
        let cfg = ServeConfig {
            max_body_bytes: 4096,
            max_certs: 2,
            ..Default::default()
        };
        let t = app(cfg, 0);
        let big = format!(
            r#"{{"action":"provision","certs":[{{"ref":"a","cert":"{}"}}]}}"#,
            "A".repeat(8000)
        );
        let (s, v) = call(&t, bearer(&t), big.into_bytes()).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(v["error"].as_str().unwrap().contains("4096"), "{v}");
        let three = r#"{"action":"provision","certs":[{"ref":"a","cert":"QQ=="},{"ref":"b","cert":"QQ=="},{"ref":"c","cert":"QQ=="}]}"#;
        let (s, v) = call(&t, bearer(&t), three.as_bytes().to_vec()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(v["error"].as_str().unwrap().contains("at most 2"), "{v}");
    }

    #[tokio::test]
    async fn provision_answers_per_ref_and_undecodable_items_never_reach_the_engine() {
        let t = app(ServeConfig::default(), 0);
        let pki = TestPki::infineon_like().unwrap();
        let d = pki.device(1).unwrap();
        let crlf = d.cert_pem.replace('\n', "\r\n");
        let body = json!({"action": "provision", "certs": [
            {"ref": "good", "cert": cert_b64(&crlf)},
            {"ref": "bad", "cert": "dGVzdGluZw=="},
        ]});
        let (s, v) = call(&t, bearer(&t), body.to_string().into_bytes()).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v[0]["ref"], "good");
        assert_eq!(v[0]["status"], "SUCCESS");
        assert_eq!(v[0]["endpoint"], "localhost:1");
        assert_eq!(
            v[1],
            json!({"ref": "bad", "status": "ERROR", "message": "Cannot decode certitifcate", "code": "invalid_certificate"})
        );
        assert_eq!(*t.backend.seen.lock().unwrap(), vec!["good".to_owned()]);
    }

    #[test]
    fn respond_async_is_read_as_rfc_7240_says() {
        let prefers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("prefer", HeaderValue::from_str(v).unwrap());
            }
            prefers_async(&h)
        };
        assert!(prefers(&["respond-async"]));
        assert!(prefers(&["Respond-Async"]));
        assert!(prefers(&["wait=10, respond-async"]));
        assert!(prefers(&["handling=lenient", "respond-async; x=1"]));
        assert!(!prefers(&[]));
        assert!(!prefers(&["return=minimal", "wait=5"]));
        assert!(!prefers(&["respond-asynchronously"]));
    }

    /// Three slow certificates: the sync deadline (0 s) passes before any is done.
    fn slow_request() -> (T, Vec<u8>) {
        let cfg = ServeConfig {
            sync_deadline_secs: 0,
            chunk_size: 1,
            ..Default::default()
        };
        let t = app(cfg, 200);
        let pki = TestPki::infineon_like().unwrap();
        let certs: Vec<Value> = (0..3)
            .map(|i| json!({"ref": format!("r{i}"), "cert": cert_b64(&pki.device(i).unwrap().cert_pem)}))
            .collect();
        let body = json!({"action": "provision", "certs": certs});
        (t, body.to_string().into_bytes())
    }

    /// A v1 sender (no `Prefer: respond-async`) is never answered `ACCEPTED`: an item
    /// unfinished at the deadline is an `ERROR` it understands, and the job still finishes.
    #[tokio::test]
    async fn v1_callers_get_success_or_error_never_accepted() {
        let (t, body) = slow_request();
        let (s, headers, v) = call_with(&t, bearer(&t), &[], body).await;
        assert_eq!(s, StatusCode::OK);
        assert!(headers.get("preference-applied").is_none());
        let items = v.as_array().unwrap();
        assert_eq!(items.len(), 3, "{v}");
        for r in items {
            assert_eq!(r["status"], "ERROR", "{v}");
            assert_eq!(r["message"], MSG_UNFINISHED, "{v}");
            assert_eq!(r["code"], "outcome_unknown", "{v}");
        }
        let job = v[0]["job"].as_str().unwrap().to_owned();
        wait_for_job(&t, &job).await;
    }

    #[tokio::test]
    async fn slow_work_is_accepted_with_a_job_when_asked_and_status_reports_it() {
        let (t, body) = slow_request();
        let (s, headers, v) = call_with(&t, bearer(&t), &[("prefer", "respond-async")], body).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(headers["preference-applied"], "respond-async");
        let job = v[0]["job"].as_str().unwrap().to_owned();
        assert!(
            v.as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] == "ACCEPTED"),
            "{v}"
        );
        wait_for_job(&t, &job).await;
        let (s, _) = call(
            &t,
            bearer(&t),
            br#"{"action":"status","job":"nope"}"#.to_vec(),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    /// Polls `status` until the job is done; every item then succeeded. A hang guard only.
    async fn wait_for_job(t: &T, job: &str) {
        let status = json!({"action": "status", "job": job})
            .to_string()
            .into_bytes();
        let mut done = false;
        for _ in 0..600 {
            let (_, v) = call(t, bearer(t), status.clone()).await;
            if v["done"] == true {
                assert!(
                    v["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|r| r["status"] == "SUCCESS"),
                    "{v}"
                );
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(done, "job never finished");
    }

    /// Each issuer may do only what its scopes say; deprovision is off by default.
    #[tokio::test]
    async fn scopes_per_issuer() {
        let pki = TestPki::infineon_like().unwrap();
        let d = pki.device(1).unwrap();
        let certs = json!([{"ref": "a", "cert": cert_b64(&d.cert_pem)}]);
        let dep = json!({"action": "deprovision", "certs": certs}).to_string();
        let prov = json!({"action": "provision", "certs": certs}).to_string();
        let st = json!({"action": "status", "fingerprints": []}).to_string();

        let t = app(ServeConfig::default(), 0);
        let (s, v) = call(&t, bearer(&t), dep.clone().into_bytes()).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        assert_eq!(v["code"], "forbidden");
        assert!(v["error"].as_str().unwrap().contains("deprovision"), "{v}");
        let (s, _) = call(&t, bearer(&t), prov.clone().into_bytes()).await;
        assert_eq!(s, StatusCode::OK);

        let status_only = app_with(
            ServeConfig::default(),
            0,
            IssuerPolicy {
                scopes: vec![Scope::Status],
                ..Default::default()
            },
        );
        let (s, _) = call(&status_only, bearer(&status_only), prov.into_bytes()).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, v) = call(&status_only, bearer(&status_only), st.into_bytes()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _) = call(
            &status_only,
            bearer(&status_only),
            br#"{"action":"info"}"#.to_vec(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "info needs no scope");
        assert!(status_only.backend.seen.lock().unwrap().is_empty());

        let all = app_with(
            ServeConfig::default(),
            0,
            IssuerPolicy {
                scopes: vec![Scope::Provision, Scope::Status, Scope::Deprovision],
                ..Default::default()
            },
        );
        let (s, v) = call(&all, bearer(&all), dep.into_bytes()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v[0]["status"], "NOT_FOUND");
    }
}
