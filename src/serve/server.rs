//! The hardened HTTP server under every route of `idbridge serve` (the interop receiver now,
//! the registration service next): one [`serve`] call takes any axum [`Router`] and serves it
//! with bounded time, connections, concurrency and bodies, over TLS or, when the config says
//! so, plain HTTP.
//!
//! | bound | where | default |
//! |---|---|---|
//! | TLS handshake + request head (each request, and the wait for the next one on a kept-alive connection) | hyper `header_read_timeout`, a timeout around the handshake | 10 s |
//! | whole request body, from the head | [`DeadlineBody`] (a total deadline; tower-http's `TimeoutBody` resets on every frame, so a 1-byte-per-second sender would never trip it) | 30 s |
//! | handler | tower-http `TimeoutLayer` | 120 s |
//! | idle connection (no byte moved either way while no handler runs: a client that stops reading its answer) | an activity watchdog per connection | 30 s |
//! | connections | a semaphore at accept; over it a canned `503` + `Retry-After` | 1024 |
//! | requests in flight | tower `GlobalConcurrencyLimit` + `LoadShed`: `503` + `Retry-After` | 64 |
//! | request body | `Content-Length` checked before any byte is read (tower-http `RequestBodyLimit`), then counted while streaming | 25 MiB |
//! | request head | hyper `max_buf_size`, at most 100 headers | 64 KiB |
//! | background jobs | [`JobPermits`] | 8 |
//!
//! Every error answer is JSON: `{"error": MESSAGE, "code": CODE, "correlation_id": ID}` with
//! the same id in the `x-correlation-id` header. The message is generic; what the server
//! knows in detail ([`ApiError::detail`]) goes to the server log with that id.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_http::ServiceBuilderExt as _;

use super::tls::TlsReloader;

/// The bounds of a server. Every field has a default (see the module table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// TLS handshake and each request head (also the wait for the next request).
    pub header_read_timeout: Duration,
    /// The whole request body, from the moment its head is read.
    pub body_timeout: Duration,
    /// A handler's answer.
    pub request_timeout: Duration,
    /// No byte moved in either direction while no handler runs.
    pub idle_timeout: Duration,
    /// Open connections; more are answered `503` and closed.
    pub max_connections: usize,
    /// Requests being handled at once; more are answered `503`.
    pub max_in_flight: usize,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Largest request head, bytes.
    pub max_header_bytes: usize,
    /// Background jobs running at once (see [`JobPermits`]).
    pub max_jobs: usize,
    /// The `Retry-After` of a `503`, seconds.
    pub retry_after_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_in_flight: 64,
            max_body_bytes: 25 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_jobs: 8,
            retry_after_secs: 1,
        }
    }
}

/// An error answer: a stable `code`, a generic message for the caller, and the details that
/// only the server log gets (with the correlation id the answer also carries).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (`bad_request`, `unauthorized`, `overloaded` ...).
    pub code: &'static str,
    /// What the caller reads: never a path, URL, ARN, connector or journal detail.
    pub message: Cow<'static, str>,
    /// What the server log reads (never a secret either).
    pub detail: Option<String>,
}

impl ApiError {
    /// An error with a caller-facing message.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// Adds what only the log gets.
    pub fn detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    /// `500 internal`: the detail is logged, the caller reads a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; quote the correlation id to the operator",
        )
        .detail(detail)
    }

    /// `503 busy`: a bounded resource is full (answered with `Retry-After`).
    pub fn busy(what: &'static str) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "server busy; retry later",
        )
        .detail(what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The body is written by the correlation layer, which knows the id.
        let mut resp = self.status.into_response();
        resp.extensions_mut().insert(self);
        resp
    }
}

/// The correlation id of a request (a request extension, and the `x-correlation-id` header
/// of its answer).
#[derive(Debug, Clone)]
pub struct CorrelationId(pub Arc<str>);

/// Caps the background jobs of a server: a job runs only while it holds a permit.
#[derive(Debug, Clone)]
pub struct JobPermits(Arc<Semaphore>);

impl JobPermits {
    /// Room for `max` jobs at once.
    pub fn new(max: usize) -> Self {
        JobPermits(Arc::new(Semaphore::new(max.max(1))))
    }

    /// A permit, or `503 busy` when every slot is taken.
    pub fn try_acquire(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.0)
            .try_acquire_owned()
            .map_err(|_| ApiError::busy("every background job slot is taken"))
    }
}

pub use super::request::clean_text;

/// Serves `app` on `listener` with `limits` (over TLS when `tls` is given) until `shutdown`
/// resolves; then stops accepting and gives open connections up to 10 s to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<Arc<TlsReloader>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let app = harden(app, &limits);
    let limits = Arc::new(limits);
    let conns = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Refusing politely costs a task each: bounded too, beyond it the socket is just closed.
    let refusals = Arc::new(Semaphore::new(256));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            acc = listener.accept() => match acc {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&conns).try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached; refusing");
            if let Ok(p) = Arc::clone(&refusals).try_acquire_owned() {
                let retry = limits.retry_after_secs;
                let plain = tls.is_none();
                tokio::spawn(async move {
                    let _p = p;
                    if plain {
                        refuse(stream, retry).await;
                    }
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let limits = Arc::clone(&limits);
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(stream, peer, app, &limits, watcher).await,
                Some(tls) => {
                    let acceptor = tls.acceptor();
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => connection(s, peer, app, &limits, watcher).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::info!("connections still open after 10 s; closing them");
        }
    }
    Ok(())
}

/// The request-level layers (every route, the fallback included): correlation ids and JSON
/// errors, the in-flight cap, the handler timeout, the body limit and deadline.
pub fn harden(app: Router, limits: &Limits) -> Router {
    let retry = limits.retry_after_secs;
    let body_timeout = limits.body_timeout;
    let max_body = limits.max_body_bytes;
    app.layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn(move |req: Request, next: Next| {
                correlate(req, next, retry)
            }))
            .layer(HandleErrorLayer::new(|e: tower::BoxError| async move {
                if e.is::<tower::load_shed::error::Overloaded>() {
                    ApiError::busy("requests in flight at the cap")
                } else {
                    ApiError::internal(e)
                }
            }))
            .load_shed()
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                limits.max_in_flight.max(1),
            ))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                limits.request_timeout,
            ))
            // Outside the length check, so a body over the limit trips our count (and
            // flag) first, whatever the handler then makes of the failed read.
            .layer(middleware::from_fn(move |req: Request, next: Next| {
                deadline(req, next, body_timeout, max_body)
            }))
            .map_response_body(Body::new)
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                limits.max_body_bytes,
            ))
            .map_request_body(Body::new),
    )
}

// ---------------------------------------------------------------------------------------

/// Gives each request a correlation id and turns every error answer into the JSON shape.
async fn correlate(mut req: Request, next: Next, retry_after: u64) -> Response {
    let id: Arc<str> = new_id().into();
    req.extensions_mut().insert(CorrelationId(Arc::clone(&id)));
    let method = req.method().clone();
    let path = clean_text(req.uri().path(), 200);
    let mut resp = next.run(req).await;
    if let Some(err) = resp.extensions_mut().remove::<ApiError>() {
        log_error(&err, &id, &method, &path);
        resp = render(&err, &id, retry_after);
    } else if resp.status().is_client_error() || resp.status().is_server_error() {
        // Answers from a layer or an axum rejection (no type or text/plain): keep their
        // status, not their text. A route's own JSON or HTML error page stays as it is.
        let generic = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
        if generic {
            let err = by_status(resp.status());
            log_error(&err, &id, &method, &path);
            resp = render(&err, &id, retry_after);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-correlation-id", v);
    }
    resp
}

fn log_error(err: &ApiError, id: &str, method: &axum::http::Method, path: &str) {
    let detail = err.detail.as_deref().unwrap_or("");
    if err.status.is_server_error() && err.code != "busy" {
        tracing::warn!(correlation_id = %id, %method, path, status = err.status.as_u16(), code = err.code, detail, "request failed");
    } else {
        tracing::info!(correlation_id = %id, %method, path, status = err.status.as_u16(), code = err.code, detail, "request refused");
    }
}

fn render(err: &ApiError, id: &str, retry_after: u64) -> Response {
    let body = json!({"error": err.message, "code": err.code, "correlation_id": id}).to_string();
    let mut resp = (
        err.status,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if err.status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    }
    if matches!(err.code, "body_timeout" | "body_too_large") {
        // The rest of the body is never read: the connection cannot be reused.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn by_status(status: StatusCode) -> ApiError {
    let (code, msg): (&'static str, &'static str) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "request body too large"),
        StatusCode::REQUEST_TIMEOUT => ("body_timeout", "request body not received in time"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "unsupported media type"),
        StatusCode::UNAUTHORIZED => ("unauthorized", "unauthorized"),
        StatusCode::FORBIDDEN => ("forbidden", "forbidden"),
        StatusCode::SERVICE_UNAVAILABLE => ("busy", "server busy; retry later"),
        s if s.is_client_error() => ("bad_request", "bad request"),
        _ => (
            "internal",
            "internal error; quote the correlation id to the operator",
        ),
    };
    ApiError::new(status, code, msg)
}

/// Puts a total deadline and a byte count on the request body; when either is passed the
/// handler's read fails and the answer becomes `408 body_timeout` or `413 body_too_large`,
/// whatever the handler made of the failed read.
async fn deadline(req: Request, next: Next, timeout: Duration, max_bytes: usize) -> Response {
    let state = Arc::new(BodyState::default());
    let (parts, body) = req.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        sleep: Box::pin(tokio::time::sleep(timeout)),
        left: max_bytes,
        state: Arc::clone(&state),
    });
    let resp = next.run(Request::from_parts(parts, body)).await;
    if state.expired.load(Ordering::Relaxed) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "request body not received in time",
        )
        .into_response();
    }
    if state.too_large.load(Ordering::Relaxed)
        || (resp.status() == StatusCode::PAYLOAD_TOO_LARGE
            && resp.extensions().get::<ApiError>().is_none())
    {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body larger than {max_bytes} bytes; send less per request"),
        )
        .into_response();
    }
    resp
}

#[derive(Debug, Default)]
struct BodyState {
    expired: AtomicBool,
    too_large: AtomicBool,
}

/// A request body that fails once a total deadline passes or more than a byte budget
/// arrives (whatever `Content-Length` claimed).
pub struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    left: usize,
    state: Arc<BodyState>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(f) = Pin::new(&mut self.inner).poll_frame(cx) {
            if let Some(Ok(frame)) = &f
                && let Some(data) = frame.data_ref()
            {
                if data.len() > self.left {
                    self.state.too_large.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(axum::Error::new("request body too large"))));
                }
                self.left -= data.len();
            }
            return Poll::Ready(f);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.state.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new("request body deadline passed"))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one connection until it closes, its idle watchdog fires, or shutdown.
async fn connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    app: Router,
    limits: &Limits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = Tracked {
        inner: io,
        activity: Arc::clone(&activity),
    };
    let busy = Arc::clone(&activity);
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let guard = Busy::enter(Arc::clone(&busy));
        let mut req = req.map(Body::new);
        // Handlers that want the caller's address (rate limits, audit) take `ConnectInfo`.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let fut = tower::ServiceExt::oneshot(app.clone(), req);
        async move {
            let resp = fut.await;
            drop(guard);
            resp
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(100)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    let conn = watcher.watch(conn);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = activity.idle(limits.idle_timeout) => {
            tracing::debug!("idle connection closed");
        }
    }
}

/// Writes a canned `503` to a connection over the cap and closes it.
async fn refuse(mut stream: TcpStream, retry_after: u64) {
    let body = r#"{"error":"server busy; retry later","code":"busy"}"#;
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(msg.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// When a connection last moved a byte, and how many requests it is handling.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once `limit` passed with no byte moved and no request being handled.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + limit;
            if Instant::now() >= due {
                if self.busy.load(Ordering::Relaxed) == 0 {
                    return;
                }
                self.touch();
                continue;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// Marks a request being handled (the idle watchdog leaves the connection alone).
struct Busy(Arc<Activity>);

impl Busy {
    fn enter(a: Arc<Activity>) -> Self {
        a.busy.fetch_add(1, Ordering::Relaxed);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// An IO that records activity.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    // RNG failure leaves zeros: the id is then less unique, never absent.
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use axum::routing::{get, post};
    use tokio::io::AsyncReadExt;

    use super::*;

    /// A server over `app` with `limits` on loopback; its address.
    async fn start(app: Router, limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, app, limits, None, std::future::pending()));
        addr
    }

    fn app() -> Router {
        Router::new()
            .route("/", get(|| async { "OK" }))
            .route(
                "/echo",
                post(|b: Bytes| async move { format!("{}", b.len()) }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    "late"
                }),
            )
            .route(
                "/fail",
                get(|| async {
                    ApiError::internal("journal /var/lib/secret-path.sqlite is locked")
                }),
            )
    }

    /// Reads until the peer closes; the bytes read (gives up after `within`).
    async fn read_to_close(s: &mut TcpStream, within: Duration) -> Option<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => None,
        }
    }

    /// A client that never finishes its request head is dropped by the server.
    #[tokio::test]
    async fn slowloris_head_is_dropped() {
        let addr = start(
            app(),
            Limits {
                header_read_timeout: Duration::from_secs(1),
                ..Limits::default()
            },
        )
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
            .await
            .unwrap();
        // Generous bound: the test guards against "never", it does not measure.
        let got = read_to_close(&mut s, Duration::from_secs(60)).await;
        assert!(got.is_some(), "the server kept a half-sent head open");
    }

    /// A body that trickles in past the body deadline is answered 408 and the connection closed.
    #[tokio::test]
    async fn slowloris_body_is_dropped() {
        let addr = start(
            app(),
            Limits {
                body_timeout: Duration::from_secs(1),
                ..Limits::default()
            },
        )
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
            .await
            .unwrap();
        let got = read_to_close(&mut s, Duration::from_secs(60))
            .await
            .expect("the server kept a trickling body open");
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(got.contains("\"code\":\"body_timeout\""), "{got}");
    }

    /// A declared body over the limit is refused before a byte of it is read.
    #[tokio::test]
    async fn oversized_body_refused_from_its_length() {
        let addr = start(
            app(),
            Limits {
                max_body_bytes: 1000,
                ..Limits::default()
            },
        )
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
            .await
            .unwrap();
        let got = read_to_close(&mut s, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");
        assert!(got.contains("\"code\":\"body_too_large\""), "{got}");
        assert!(got.contains("correlation_id"), "{got}");
    }

    /// Requests over the in-flight cap get 503 + Retry-After at once.
    #[tokio::test]
    async fn in_flight_cap_sheds_with_retry_after() {
        let addr = start(
            app(),
            Limits {
                max_in_flight: 1,
                ..Limits::default()
            },
        )
        .await;
        let http = reqwest::Client::new();
        let slow = tokio::spawn({
            let http = http.clone();
            async move { http.get(format!("http://{addr}/slow")).send().await }
        });
        // Wait until the slow request holds the only slot.
        let mut shed = None;
        for _ in 0..200 {
            let r = http.get(format!("http://{addr}/")).send().await.unwrap();
            if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                shed = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = shed.expect("a second request while one is in flight was not shed");
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "busy");
        assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    /// Connections over the cap get a canned 503; the ones inside it are served.
    #[tokio::test]
    async fn connection_cap_refuses_politely() {
        let addr = start(
            app(),
            Limits {
                max_connections: 2,
                ..Limits::default()
            },
        )
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // A complete request: the connection is then surely accepted and held.
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            held.push(s);
        }
        let mut third = TcpStream::connect(addr).await.unwrap();
        let got = read_to_close(&mut third, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        assert!(got.to_ascii_lowercase().contains("retry-after: 1"), "{got}");
        drop(held);
    }

    /// Errors are JSON with a code and a correlation id; the detail stays in the log.
    #[tokio::test]
    async fn errors_are_json_and_generic() {
        let addr = start(app(), Limits::default()).await;
        let http = reqwest::Client::new();
        let r = http
            .get(format!("http://{addr}/fail"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let id = r.headers()["x-correlation-id"].to_str().unwrap().to_owned();
        let text = r.text().await.unwrap();
        assert!(!text.contains("secret-path"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], "internal");
        assert_eq!(v["correlation_id"], id.as_str());
        let r = http
            .get(format!("http://{addr}/nowhere"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "not_found");
    }

    #[test]
    fn clean_text_strips_controls_and_bounds() {
        assert_eq!(clean_text("a\u{1b}[31mb\r\nc\u{202e}d", 100), "a[31mbcd");
        assert_eq!(clean_text("abcdef", 3), "abc");
    }

    #[test]
    fn job_permits_cap() {
        let p = JobPermits::new(1);
        let a = p.try_acquire().unwrap();
        let e = p.try_acquire().unwrap_err();
        assert_eq!(e.code, "busy");
        drop(a);
        assert!(p.try_acquire().is_ok());
    }
}
