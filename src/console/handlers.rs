//! Route handlers: each translates a browser request into service API calls and a page.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Form;
use axum::body::Body;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::client::{Answer, Caller, enc};
use super::pages::{self, Flash};
use super::view::{self, Binding, DeviceError, Job, Progress, TargetForm};
use super::{Console, Peer, Signed, session};

type St = State<Arc<Console>>;

pub(super) async fn home() -> Redirect {
    Redirect::to("/console/bind")
}

pub(super) async fn unknown() -> Response {
    (
        StatusCode::NOT_FOUND,
        pages::not_found(&pages::Ctx::default(), "This page"),
    )
        .into_response()
}

pub(super) async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

pub(super) async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

// ---- sign in / out -------------------------------------------------------------------------

pub(super) async fn sign_in_page(State(c): St) -> Response {
    sign_in_form(&c, StatusCode::OK, None)
}

fn sign_in_form(c: &Console, status: StatusCode, flash: Option<Flash>) -> Response {
    match c.sessions.login_nonce() {
        Ok((cookie, form)) => (
            status,
            [(header::SET_COOKIE, cookie)],
            pages::sign_in(&form, flash.as_ref()),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(%e, "console: no randomness for the sign-in form");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Deserialize)]
pub(super) struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

pub(super) async fn sign_in(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<SignInForm>,
) -> Response {
    if !c.sessions.check_login(&headers, &f.csrf) {
        return super::csrf_refused();
    }
    let token = f.token.trim().to_owned();
    let caller = Caller {
        token: token.clone(),
        peer: peer.0,
    };
    let answer = if token.is_empty() {
        None
    } else {
        Some(c.api.get(&caller, "/api/v1/whoami").await)
    };
    match (answer, c.sessions.start(&token)) {
        (Some(a), Ok(cookie)) if a.ok() => {
            let mut r = Redirect::to("/console/bind").into_response();
            r.headers_mut().append(header::SET_COOKIE, cookie);
            if let Ok(end) = c.sessions.end(session::LOGIN_COOKIE) {
                r.headers_mut().append(header::SET_COOKIE, end);
            }
            r
        }
        (Some(a), _) if a.status == StatusCode::TOO_MANY_REQUESTS => sign_in_form(
            &c,
            StatusCode::TOO_MANY_REQUESTS,
            Some(Flash::Error(retry_text(&a))),
        ),
        _ => sign_in_form(
            &c,
            StatusCode::UNAUTHORIZED,
            Some(Flash::Error(
                "That token was not accepted. Check it, or ask your operator for a new one.".into(),
            )),
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn sign_out(
    State(c): St,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let Some(token) = c.sessions.token(&headers) else {
        return Redirect::to("/console/sign-in").into_response();
    };
    if !c.sessions.check_csrf(&token, &f.csrf) {
        return super::csrf_refused();
    }
    let mut r = Redirect::to("/console/sign-in").into_response();
    if let Ok(end) = c.sessions.end(session::SESSION_COOKIE) {
        r.headers_mut().append(header::SET_COOKIE, end);
    }
    r
}

// ---- bind ----------------------------------------------------------------------------------

pub(super) async fn bind_page(State(c): St, peer: Peer, headers: HeaderMap) -> Response {
    let s = match c.signed(&headers, peer, "bind").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let targets = target_names(&c, &s).await;
    pages::bind(&s.ctx, &targets, None).into_response()
}

#[derive(Deserialize, Default)]
pub(super) struct BindForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    scan: String,
    #[serde(default)]
    batch_id: String,
    #[serde(default)]
    reel_id: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    target: String,
}

pub(super) async fn bind(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<BindForm>,
) -> Response {
    let s = match c.signed_form(&headers, peer, &f.csrf, "bind").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let scan = f.scan.trim();
    let (batch, reel) = (f.batch_id.trim(), f.reel_id.trim());
    let mut body = Map::new();
    if !scan.is_empty() {
        body.insert("qr".into(), json!(scan));
    } else if !batch.is_empty() {
        // A batch ID alone binds a batch imported whole (no reels).
        body.insert("batch_id".into(), json!(batch));
        if !reel.is_empty() {
            body.insert("reel_id".into(), json!(reel));
        }
    } else {
        let msg = "Scan the letter's QR code, or enter the Product Batch ID and the Reel ID.";
        return bind_error(&c, &s, StatusCode::BAD_REQUEST, msg.into()).await;
    }
    do_bind(&c, &s, body, &f.mode, &f.target).await
}

pub(super) async fn bind_qr(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    let mut f = BindForm::default();
    let mut image: Option<bytes::Bytes> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                tracing::info!(%e, "console: unreadable upload");
                let s = match c.signed(&headers, peer, "bind").await {
                    Ok(s) => s,
                    Err(r) => return r,
                };
                let msg = format!(
                    "The upload could not be read (at most {} MB): {e}",
                    super::MAX_UPLOAD / (1024 * 1024)
                );
                return bind_error(&c, &s, StatusCode::BAD_REQUEST, msg).await;
            }
        };
        let name = field.name().unwrap_or_default().to_owned();
        let data = match field.bytes().await {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(%e, "console: upload cut short");
                return (StatusCode::BAD_REQUEST, "the upload was cut short").into_response();
            }
        };
        let text = || String::from_utf8_lossy(&data).into_owned();
        match name.as_str() {
            "csrf" => f.csrf = text(),
            "mode" => f.mode = text(),
            "target" => f.target = text(),
            "image" => image = Some(data),
            _ => {}
        }
    }
    let s = match c.signed_form(&headers, peer, &f.csrf, "bind").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(image) = image.filter(|i| !i.is_empty()) else {
        let msg = "Choose a photo or scan of the QR code (PNG or JPEG).";
        return bind_error(&c, &s, StatusCode::BAD_REQUEST, msg.into()).await;
    };
    // Decoding a 12-megapixel photo takes a moment of CPU: off the async threads.
    let decoded = tokio::task::spawn_blocking(move || super::qr::decode(&image)).await;
    let payload = match decoded {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            return bind_error(&c, &s, StatusCode::UNPROCESSABLE_ENTITY, format!("{e}.")).await;
        }
        Err(e) => {
            tracing::error!(%e, "console: the QR decoder failed");
            let msg = "The photo could not be decoded.".to_owned();
            return bind_error(&c, &s, StatusCode::INTERNAL_SERVER_ERROR, msg).await;
        }
    };
    let mut body = Map::new();
    body.insert("qr".into(), json!(payload));
    do_bind(&c, &s, body, &f.mode, &f.target).await
}

async fn do_bind(
    c: &Console,
    s: &Signed,
    mut body: Map<String, Value>,
    mode: &str,
    target: &str,
) -> Response {
    if !mode.is_empty() {
        body.insert("mode".into(), json!(mode));
    }
    if !target.is_empty() {
        body.insert("target".into(), json!(target));
    }
    let a = c
        .api
        .post(&s.caller, "/api/v1/bindings", &Value::Object(body))
        .await;
    if a.ok() {
        let b = Binding::from_json(&a.body);
        return match b.jobs.first() {
            Some(job) => Redirect::to(&format!("/console/jobs/{}", enc(job))).into_response(),
            None => {
                Redirect::to(&format!("/console/bindings/{}?bound=1", enc(&b.id))).into_response()
            }
        };
    }
    let msg = match a.status {
        StatusCode::NOT_FOUND => "No batch or reel matches. Check the Product Batch ID and Reel ID on the letter, or scan its QR code again.".to_owned(),
        StatusCode::CONFLICT => "This batch or reel is already bound to an account.".to_owned(),
        StatusCode::TOO_MANY_REQUESTS => retry_text(&a),
        StatusCode::FORBIDDEN => format!("Your role may not bind. {}", a.message()),
        s if s.is_client_error() => {
            format!("The QR code or IDs could not be used: {}", nonempty(&a.message(), a.code()))
        }
        _ => format!("The service could not bind ({}). Try again.", a.status),
    };
    bind_error(c, s, a.status, msg).await
}

async fn bind_error(c: &Console, s: &Signed, status: StatusCode, msg: String) -> Response {
    // The secrets typed or scanned are never echoed back: the form comes back empty.
    let targets = target_names(c, s).await;
    (
        status,
        pages::bind(&s.ctx, &targets, Some(&Flash::Error(msg))),
    )
        .into_response()
}

fn retry_text(a: &Answer) -> String {
    match a.retry_after {
        Some(secs) => format!(
            "Too many failed attempts. Wait {} and try again.",
            view::format_duration(secs as f64)
        ),
        None => "Too many failed attempts. Wait a while and try again.".into(),
    }
}

fn nonempty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() { b } else { a }
}

async fn target_names(c: &Console, s: &Signed) -> Vec<String> {
    let a = c.api.get(&s.caller, "/api/v1/targets").await;
    if !a.ok() {
        return Vec::new();
    }
    view::Page::from_json(&a.body, &["targets"])
        .items
        .iter()
        .map(|t| match t {
            Value::String(n) => n.clone(),
            other => view::text(other, "name"),
        })
        .filter(|n| !n.is_empty())
        .collect()
}

// ---- bindings ------------------------------------------------------------------------------

pub(super) async fn bindings(State(c): St, peer: Peer, headers: HeaderMap) -> Response {
    let s = match c.signed(&headers, peer, "bindings").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let a = c.api.get(&s.caller, "/api/v1/bindings").await;
    if !a.ok() {
        return api_failure(&s, &a, "Your bindings");
    }
    let jobs = c.api.get(&s.caller, "/api/v1/jobs").await;
    let jobs = view::Page::from_json(&jobs.body, &["jobs"]).items;
    let list: Vec<Binding> = view::Page::from_json(&a.body, &["bindings"])
        .items
        .iter()
        .map(|v| {
            let mut b = Binding::from_json(v);
            // Jobs come newest first: the first of this binding's is its state.
            b.state = binding_state(jobs.iter().find(|j| view::text(j, "binding") == b.id));
            b
        })
        .collect();
    pages::bindings(&s.ctx, &list, None).into_response()
}

/// A binding's state from its newest job: `bound` without one, else e.g. `provision running`.
fn binding_state(newest_job: Option<&Value>) -> String {
    match newest_job {
        None => "bound".into(),
        Some(j) => format!("{} {}", view::text(j, "operation"), view::text(j, "state")),
    }
}

#[derive(Deserialize, Default)]
pub(super) struct DeviceQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    bound: Option<String>,
}

pub(super) async fn binding(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DeviceQuery>,
) -> Response {
    let s = match c.signed(&headers, peer, "bindings").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let flash = q.bound.as_ref().map(|_| Flash::Ok("Bound.".into()));
    binding_page(&c, &s, &id, &q, flash).await
}

async fn binding_page(
    c: &Console,
    s: &Signed,
    id: &str,
    q: &DeviceQuery,
    flash: Option<Flash>,
) -> Response {
    let a = c
        .api
        .get(&s.caller, &format!("/api/v1/bindings/{}", enc(id)))
        .await;
    if !a.ok() {
        return api_failure(s, &a, "This binding");
    }
    let mut b = Binding::from_json(&a.body);
    let jobs = c
        .api
        .get(&s.caller, &format!("/api/v1/jobs?binding={}", enc(id)))
        .await;
    if jobs.ok() {
        let list = view::Page::from_json(&jobs.body, &["jobs"]).items;
        b.state = binding_state(list.first());
        for j in list.iter().rev() {
            let jid = view::text(j, "id");
            if !jid.is_empty() && !b.jobs.contains(&jid) {
                b.jobs.insert(0, jid);
            }
        }
    }
    let mut path = format!("/api/v1/bindings/{}/devices?limit=50", enc(id));
    if !q.q.trim().is_empty() {
        path.push_str(&format!("&q={}", enc(q.q.trim())));
    }
    if !q.cursor.is_empty() {
        path.push_str(&format!("&cursor={}", enc(&q.cursor)));
    }
    let d = c.api.get(&s.caller, &path).await;
    let devices = if d.ok() {
        view::Page::from_json(&d.body, &["devices"])
    } else {
        view::Page::default()
    };
    let status = match &flash {
        Some(Flash::Error(_)) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    (
        status,
        pages::binding(&s.ctx, &b, &devices, q.q.trim(), flash.as_ref()),
    )
        .into_response()
}

pub(super) async fn confirm_provision(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    confirm(&c, peer, &headers, &id, "provision").await
}

pub(super) async fn confirm_deprovision(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    confirm(&c, peer, &headers, &id, "deprovision").await
}

async fn confirm(c: &Console, peer: Peer, headers: &HeaderMap, id: &str, action: &str) -> Response {
    let s = match c.signed(headers, peer, "bindings").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let a = c
        .api
        .get(&s.caller, &format!("/api/v1/bindings/{}", enc(id)))
        .await;
    if !a.ok() {
        return api_failure(&s, &a, "This binding");
    }
    if !s.admin() {
        return (StatusCode::FORBIDDEN, pages::forbidden(&s.ctx)).into_response();
    }
    let targets = target_names(c, &s).await;
    pages::confirm(&s.ctx, &Binding::from_json(&a.body), action, &targets).into_response()
}

#[derive(Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    confirm: String,
}

pub(super) async fn provision(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    act(&c, peer, &headers, &id, "provision", f).await
}

pub(super) async fn deprovision(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<ActionForm>,
) -> Response {
    act(&c, peer, &headers, &id, "deprovision", f).await
}

async fn act(
    c: &Console,
    peer: Peer,
    headers: &HeaderMap,
    id: &str,
    action: &str,
    f: ActionForm,
) -> Response {
    let s = match c.signed_form(headers, peer, &f.csrf, "bindings").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if f.confirm != "yes" {
        return Redirect::to(&format!("/console/bindings/{}/{action}", enc(id))).into_response();
    }
    let body = if f.target.is_empty() {
        json!({})
    } else {
        json!({ "target": f.target })
    };
    let a = c
        .api
        .post(
            &s.caller,
            &format!("/api/v1/bindings/{}/{action}", enc(id)),
            &body,
        )
        .await;
    if a.ok() {
        let job = view::first(&a.body, &["job_id", "id", "job/id", "job"]);
        if !job.is_empty() {
            return Redirect::to(&format!("/console/jobs/{}", enc(&job))).into_response();
        }
        return Redirect::to(&format!("/console/bindings/{}", enc(id))).into_response();
    }
    if a.status == StatusCode::NOT_FOUND {
        return api_failure(&s, &a, "This binding");
    }
    let msg = match a.status {
        StatusCode::FORBIDDEN => "Only an admin may provision or deprovision.".to_owned(),
        _ => format!("Could not {action}: {}", nonempty(&a.message(), a.code())),
    };
    binding_page(c, &s, id, &DeviceQuery::default(), Some(Flash::Error(msg))).await
}

#[derive(Deserialize)]
pub(super) struct FormatQuery {
    #[serde(default)]
    format: String,
}

/// Streams the API's manifest through (never buffered whole).
pub(super) async fn manifest(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<FormatQuery>,
) -> Response {
    let s = match c.signed(&headers, peer, "bindings").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let path = format!(
        "/api/v1/bindings/{}/manifest?format={}",
        enc(&id),
        enc(&q.format)
    );
    let r = c.api.raw(&s.caller, Method::GET, &path, None).await;
    if !r.status().is_success() {
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1024 * 1024)
            .await
            .unwrap_or_default();
        let a = Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            retry_after: None,
        };
        return api_failure(&s, &a, "This manifest");
    }
    let (mut parts, body) = r.into_parts();
    if !parts.headers.contains_key(header::CONTENT_DISPOSITION) {
        let ext = match q.format.as_str() {
            "pem" => "pem",
            "jsonl.jws" => "jws",
            _ => "jsonl",
        };
        let name = format!(
            "attachment; filename=\"binding-{}-{}.{ext}\"",
            safe(&id),
            safe(&q.format)
        );
        if let Ok(v) = HeaderValue::from_str(&name) {
            parts.headers.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Response::from_parts(parts, Body::new(body))
}

fn safe(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(64)
        .collect()
}

/// A page for an API refusal: 404 (also another account's ids), 403, or an error message.
fn api_failure(s: &Signed, a: &Answer, what: &str) -> Response {
    match a.status {
        StatusCode::NOT_FOUND => {
            (StatusCode::NOT_FOUND, pages::not_found(&s.ctx, what)).into_response()
        }
        StatusCode::FORBIDDEN => (StatusCode::FORBIDDEN, pages::forbidden(&s.ctx)).into_response(),
        status => {
            let msg = format!(
                "The service answered {status}: {}",
                nonempty(&a.message(), a.code())
            );
            (
                status,
                pages::layout(&s.ctx, "Error", Some(&Flash::Error(msg)), maud::html! {}),
            )
                .into_response()
        }
    }
}

// ---- jobs ----------------------------------------------------------------------------------

pub(super) async fn jobs(State(c): St, peer: Peer, headers: HeaderMap) -> Response {
    let s = match c.signed(&headers, peer, "jobs").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let a = c.api.get(&s.caller, "/api/v1/jobs").await;
    let list: Vec<Job> = if a.ok() {
        view::Page::from_json(&a.body, &["jobs"])
            .items
            .iter()
            .map(Job::from_json)
            .collect()
    } else {
        Vec::new()
    };
    pages::jobs(&s.ctx, &list).into_response()
}

pub(super) async fn job(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = match c.signed(&headers, peer, "jobs").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let a = c
        .api
        .get(&s.caller, &format!("/api/v1/jobs/{}", enc(&id)))
        .await;
    if !a.ok() {
        return api_failure(&s, &a, "This job");
    }
    let j = Job::from_json(&a.body);
    let p = Progress::of(&j, started_rate(&a.body, &j));
    let errors: Vec<(String, String)> = job_errors(&c, &s.caller, &id)
        .await
        .into_iter()
        .map(|e| (e.device_id, e.error))
        .collect();
    pages::job(&s.ctx, &j, &p, &errors).into_response()
}

/// Live progress: an event `progress` about twice a second while the job runs, then `end`.
pub(super) async fn job_events(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = match c.signed(&headers, peer, "jobs").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let first = c
        .api
        .get(&s.caller, &format!("/api/v1/jobs/{}", enc(&id)))
        .await;
    if !first.ok() {
        return api_failure(&s, &first, "This job");
    }
    struct Tick {
        c: Arc<Console>,
        caller: Caller,
        id: String,
        start: Instant,
        base: u64,
        n: u64,
        ended: bool,
    }
    let base = {
        let j = Job::from_json(&first.body);
        j.done + j.failed
    };
    let tick = Tick {
        c: c.clone(),
        caller: s.caller,
        id,
        start: Instant::now(),
        base,
        n: 0,
        ended: false,
    };
    let stream = futures::stream::unfold(tick, |mut t| async move {
        if t.ended {
            return None;
        }
        if t.n > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        t.n += 1;
        let a =
            t.c.api
                .get(&t.caller, &format!("/api/v1/jobs/{}", enc(&t.id)))
                .await;
        if !a.ok() {
            t.ended = true;
            let e = Event::default()
                .event("end")
                .data(json!({"state": "unavailable"}).to_string());
            return Some((Ok::<_, std::convert::Infallible>(e), t));
        }
        let j = Job::from_json(&a.body);
        let finished = j.done + j.failed;
        let elapsed = t.start.elapsed().as_secs_f64();
        let local =
            (elapsed >= 1.0 && finished > t.base).then(|| (finished - t.base) as f64 / elapsed);
        let mut p = Progress::of(&j, started_rate(&a.body, &j).or(local));
        // Every device may be recorded a moment before the job's state says it has ended
        // (the target's `finish`, then the store): end the stream on the state only.
        let end = j.state_ended();
        if end || t.n % 10 == 0 {
            p.errors = job_errors(&t.c, &t.caller, &t.id).await;
        }
        t.ended = end;
        let e = Event::default()
            .event(if end { "end" } else { "progress" })
            .data(serde_json::to_string(&p).unwrap_or_default());
        Some((Ok(e), t))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Devices a second since the job was created (the API's `created_ms`, `updated_ms` once
/// finished).
fn started_rate(v: &Value, j: &Job) -> Option<f64> {
    let v = v.get("job").unwrap_or(v);
    let started = v.get("created_ms").and_then(Value::as_i64)?;
    let end = if j.finished() {
        v.get("updated_ms").and_then(Value::as_i64)?
    } else {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        i64::try_from(now).ok()?
    };
    let secs = (end - started) as f64 / 1000.0;
    let finished = j.done + j.failed;
    (secs > 0.5 && finished > 0).then(|| finished as f64 / secs)
}

/// The job's failed devices with their last error (first page).
async fn job_errors(c: &Console, caller: &Caller, id: &str) -> Vec<DeviceError> {
    let a = c
        .api
        .get(
            caller,
            &format!("/api/v1/jobs/{}/devices?state=failed", enc(id)),
        )
        .await;
    if !a.ok() {
        return Vec::new();
    }
    view::Page::from_json(&a.body, &["devices"])
        .items
        .iter()
        .filter_map(|d| {
            let error = view::first(d, &["error", "last_error", "message"]);
            let state = view::first(d, &["state", "outcome", "status"]);
            (!error.is_empty()
                && !matches!(
                    state.as_str(),
                    "done" | "succeeded" | "registered" | "created" | "ok"
                ))
            .then(|| DeviceError {
                device_id: view::first(d, &["device_id", "id"]),
                error,
            })
        })
        .take(100)
        .collect()
}

// ---- targets (admin) -----------------------------------------------------------------------

async fn admin(
    c: &Console,
    headers: &HeaderMap,
    peer: Peer,
    nav: &'static str,
) -> Result<Signed, Response> {
    let s = c.signed(headers, peer, nav).await?;
    if !s.admin() {
        return Err((StatusCode::FORBIDDEN, pages::forbidden(&s.ctx)).into_response());
    }
    Ok(s)
}

pub(super) async fn targets(State(c): St, peer: Peer, headers: HeaderMap) -> Response {
    let s = match admin(&c, &headers, peer, "targets").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let a = c.api.get(&s.caller, "/api/v1/targets").await;
    if !a.ok() {
        return api_failure(&s, &a, "Targets");
    }
    let list = view::Page::from_json(&a.body, &["targets"]).items;
    pages::targets(&s.ctx, &list, None).into_response()
}

pub(super) async fn new_target(State(c): St, peer: Peer, headers: HeaderMap) -> Response {
    let s = match admin(&c, &headers, peer, "targets").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut form = TargetForm::default();
    form.pad();
    pages::target_form(&s.ctx, &form, None).into_response()
}

pub(super) async fn target(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let s = match admin(&c, &headers, peer, "targets").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let a = c
        .api
        .get(&s.caller, &format!("/api/v1/targets/{}", enc(&name)))
        .await;
    if !a.ok() {
        return api_failure(&s, &a, "This target");
    }
    let mut form = TargetForm::from_json(&a.body);
    if form.name.is_empty() {
        form.name = name;
    }
    pages::target_form(&s.ctx, &form, None).into_response()
}

/// Test connection (the target's health check through the service), then save when asked.
pub(super) async fn save_target(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let get = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let s = match c.signed_form(&headers, peer, &get("csrf"), "targets").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.admin() {
        return (StatusCode::FORBIDDEN, pages::forbidden(&s.ctx)).into_response();
    }
    let name = get("name");
    let existing = c
        .api
        .get(&s.caller, &format!("/api/v1/targets/{}", enc(&name)))
        .await;
    let mut form = if existing.ok() {
        TargetForm::from_json(&existing.body)
    } else {
        TargetForm::default()
    };
    form.name = name.clone();
    form.kind = get("kind");
    form.default = get("default") == "yes";
    let secrets: Vec<String> = form
        .keys
        .iter()
        .filter(|k| k.2)
        .map(|k| k.0.clone())
        .collect();
    let mut config = Map::new();
    config.insert("kind".into(), json!(form.kind));
    let mut rows = Vec::new();
    for i in 0.. {
        let (Some(k), Some(v)) = (
            fields.iter().find(|(n, _)| *n == format!("k{i}")),
            fields.iter().find(|(n, _)| *n == format!("v{i}")),
        ) else {
            break;
        };
        let (k, v) = (k.1.trim().to_owned(), v.1.trim().to_owned());
        if k.is_empty() {
            continue;
        }
        // A stored secret, or a key the service treats as secret (typed into a new row):
        // never shown back in the form.
        let secret = secrets.contains(&k) || idbridge::service::api::is_secret_key(&k);
        rows.push((
            k.clone(),
            if secret { String::new() } else { v.clone() },
            secret,
        ));
        // An empty secret keeps the stored value: it is not sent.
        if secret && v.is_empty() {
            continue;
        }
        config.insert(k, scalar(&v));
    }
    form.keys = rows;
    form.pad();
    let flash_page = |status: StatusCode, flash: Flash, form: &TargetForm| {
        (status, pages::target_form(&s.ctx, form, Some(&flash))).into_response()
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        let msg = "A target name is letters, digits, '_', '.' or '-'.";
        return flash_page(StatusCode::BAD_REQUEST, Flash::Error(msg.into()), &form);
    }
    // The target table as idbridge.toml has it; secrets left empty keep their stored value
    // (the service merges them: the console never sees a stored secret).
    let body = Value::Object(config.clone());
    let test = c
        .api
        .post(
            &s.caller,
            &format!("/api/v1/targets/{}/test", enc(&name)),
            &body,
        )
        .await;
    if !test.ok() {
        let msg = format!(
            "Connection test failed: {}",
            nonempty(&test.message(), &test.status.to_string())
        );
        return flash_page(StatusCode::BAD_REQUEST, Flash::Error(msg), &form);
    }
    if get("action") != "save" {
        return flash_page(
            StatusCode::OK,
            Flash::Ok("Connection test passed.".into()),
            &form,
        );
    }
    let path = format!(
        "/api/v1/targets/{}{}",
        enc(&name),
        if form.default { "?default=true" } else { "" }
    );
    let saved = c
        .api
        .json(&s.caller, Method::PATCH, &path, Some(&body))
        .await;
    if !saved.ok() {
        let msg = format!("Not saved: {}", nonempty(&saved.message(), saved.code()));
        return flash_page(saved.status, Flash::Error(msg), &form);
    }
    let a = c.api.get(&s.caller, "/api/v1/targets").await;
    let list = view::Page::from_json(&a.body, &["targets"]).items;
    let flash = Flash::Ok(format!("Connection test passed; target {name} saved."));
    pages::targets(&s.ctx, &list, Some(&flash)).into_response()
}

/// A form value as TOML would read it: integers, floats and booleans typed, the rest strings.
fn scalar(v: &str) -> Value {
    if let Ok(i) = v.parse::<i64>() {
        return json!(i);
    }
    if let Ok(f) = v.parse::<f64>() {
        return json!(f);
    }
    match v {
        "true" => json!(true),
        "false" => json!(false),
        _ => json!(v),
    }
}

// ---- audit (admin) -------------------------------------------------------------------------

#[derive(Deserialize)]
pub(super) struct CursorQuery {
    #[serde(default)]
    cursor: String,
}

pub(super) async fn audit(
    State(c): St,
    peer: Peer,
    headers: HeaderMap,
    Query(q): Query<CursorQuery>,
) -> Response {
    let s = match admin(&c, &headers, peer, "audit").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut path = "/api/v1/audit?limit=100".to_owned();
    if !q.cursor.is_empty() {
        path.push_str(&format!("&cursor={}", enc(&q.cursor)));
    }
    let a = c.api.get(&s.caller, &path).await;
    if !a.ok() {
        return api_failure(&s, &a, "The audit log");
    }
    let page = view::Page::from_json(&a.body, &["events", "entries", "audit"]);
    pages::audit(&s.ctx, &page.items, page.next.as_deref()).into_response()
}
