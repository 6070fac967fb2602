//! Serving a mock cloud's router over HTTP or HTTPS, with scripted faults.
//!
//! Every mock is an axum [`Router`] served by [`serve`]. In front of it sits the fault layer: a
//! [`FaultScript`] of rules (method, path substring, how many times) answered before (or, for
//! [`Fault::LoseResponse`], after) the router runs. Tests script it in-process; the CLI and
//! other processes script a standalone mock with `POST /_mock/faults` (a JSON array of
//! [`FaultRule`]s) and clear it with `DELETE /_mock/faults`.
//!
//! In front of that sits an injected per-call latency ([`Latency`]: fixed ± uniform jitter,
//! from a seeded generator), so a benchmark sees a cloud that answers in 20–100 ms as real ones
//! do. In-process through [`RunningServer::latency`]; over the socket with
//! `POST /_mock/latency` `{"fixed_ms":50,"jitter_ms":20,"seed":7}` and `DELETE /_mock/latency`.
//! The delay is spent before the request runs (quota accounting and effects happen when it
//! ends); `/_mock/*` control calls are never delayed. It runs on tokio's clock, so tests with
//! paused time see it without waiting.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

/// One scripted misbehaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status, headers and body without running the request.
    Status {
        /// HTTP status.
        status: u16,
        /// Extra headers, e.g. `("Retry-After", "1")`.
        #[serde(default)]
        headers: Vec<(String, String)>,
        /// Body.
        #[serde(default)]
        body: String,
    },
    /// Close the connection without an answer; the request is not run.
    Reset,
    /// Wait this many milliseconds, then run the request and answer normally.
    Stall {
        /// Delay in milliseconds.
        millis: u64,
    },
    /// Run the request (its effect happens), then close the connection without the answer.
    LoseResponse,
}

/// When a [`Fault`] applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// Only requests with this method (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Only requests whose path (and query) contains this (any when absent).
    #[serde(default)]
    pub path_contains: Option<String>,
    /// How many matching requests it applies to.
    #[serde(default = "one")]
    pub times: u32,
    /// Matching requests to let through before it starts applying.
    #[serde(default)]
    pub skip: u32,
    /// What happens.
    pub fault: Fault,
}

fn one() -> u32 {
    1
}

impl FaultRule {
    /// A rule applying `fault` once to every request.
    pub fn once(fault: Fault) -> Self {
        FaultRule {
            method: None,
            path_contains: None,
            times: 1,
            skip: 0,
            fault,
        }
    }

    /// Restricts the rule to paths containing `s`.
    pub fn on_path(mut self, s: &str) -> Self {
        self.path_contains = Some(s.to_owned());
        self
    }

    /// Restricts the rule to a method.
    pub fn on_method(mut self, m: &str) -> Self {
        self.method = Some(m.to_owned());
        self
    }

    /// Applies `n` times.
    pub fn times(mut self, n: u32) -> Self {
        self.times = n;
        self
    }

    /// Lets `n` matching requests through first.
    pub fn after(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }
}

/// A shared, ordered list of fault rules; the first matching rule fires.
#[derive(Debug, Clone, Default)]
pub struct FaultScript(Arc<Mutex<Vec<FaultRule>>>);

impl FaultScript {
    /// Adds a rule.
    pub fn push(&self, rule: FaultRule) {
        self.lock().push(rule);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The fault for this request, if a rule matches; consumes one use of it.
    pub fn take(&self, method: &str, path_and_query: &str) -> Option<Fault> {
        let mut rules = self.lock();
        let idx = rules.iter().position(|r| {
            r.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && r.path_contains
                    .as_deref()
                    .is_none_or(|p| path_and_query.contains(p))
        })?;
        let rule = &mut rules[idx];
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        let fault = rule.fault.clone();
        rule.times = rule.times.saturating_sub(1);
        if rule.times == 0 {
            rules.remove(idx);
        }
        Some(fault)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<FaultRule>> {
        // A poisoned lock only means a test panicked while holding it; the rules are still valid.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An injected per-call latency: `fixed_ms` ± a uniform `jitter_ms`, never below zero, drawn
/// from a generator seeded with `seed` (so a run can be repeated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyConfig {
    /// The middle of the delay, milliseconds.
    pub fixed_ms: u64,
    /// The most the delay strays from `fixed_ms` either way, milliseconds.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Seed of the jitter generator.
    #[serde(default)]
    pub seed: u64,
}

impl LatencyConfig {
    /// `fixed_ms` ± `jitter_ms` with `seed`.
    pub fn new(fixed_ms: u64, jitter_ms: u64, seed: u64) -> Self {
        LatencyConfig {
            fixed_ms,
            jitter_ms,
            seed,
        }
    }
}

/// The latency a server injects (none until [`Latency::set`]); cheap to clone, shared.
#[derive(Debug, Clone, Default)]
pub struct Latency(Arc<Mutex<Option<(LatencyConfig, StdRng)>>>);

impl Latency {
    /// Injects `config` from now on (the generator restarts from its seed).
    pub fn set(&self, config: LatencyConfig) {
        *self.lock() = Some((config, StdRng::seed_from_u64(config.seed)));
    }

    /// Stops injecting latency.
    pub fn clear(&self) {
        *self.lock() = None;
    }

    /// What is injected, if anything.
    pub fn config(&self) -> Option<LatencyConfig> {
        self.lock().as_ref().map(|(c, _)| *c)
    }

    /// The delay for the next call (zero when none is injected).
    pub fn next_delay(&self) -> Duration {
        let mut guard = self.lock();
        let Some((c, rng)) = guard.as_mut() else {
            return Duration::ZERO;
        };
        let ms = if c.jitter_ms == 0 {
            c.fixed_ms
        } else {
            let lo = c.fixed_ms.saturating_sub(c.jitter_ms);
            rng.random_range(lo..=c.fixed_ms + c.jitter_ms)
        };
        Duration::from_millis(ms)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(LatencyConfig, StdRng)>> {
        // A poisoned lock only means a test panicked while holding it; the state is valid.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A mock cloud serving in the background; stops when dropped or on [`RunningServer::stop`].
#[derive(Debug)]
pub struct RunningServer {
    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The fault script in front of the router.
    pub faults: FaultScript,
    /// The latency injected in front of the router.
    pub latency: Latency,
    shutdown: watch::Sender<bool>,
}

impl RunningServer {
    /// Stops accepting connections.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves `router` on `addr` (e.g. `127.0.0.1:0`), over TLS when `tls` is given.
pub async fn serve(
    router: Router,
    addr: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<RunningServer> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let faults = FaultScript::default();
    let latency = Latency::default();
    let (tx, mut rx) = watch::channel(false);
    let url = match &tls {
        Some(_) => format!("https://localhost:{}", local.port()),
        None => format!("http://{local}"),
    };
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let script = faults.clone();
    let delay = latency.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                _ = rx.changed() => break,
            };
            let router = router.clone();
            let script = script.clone();
            let delay = delay.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    handle(router.clone(), script.clone(), delay.clone(), req)
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(acc) => {
                        if let Ok(tls) = acc.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    Ok(RunningServer {
        url,
        addr: local,
        faults,
        latency,
        shutdown: tx,
    })
}

/// The error that makes hyper drop the connection without an answer.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted connection reset")
    }
}

impl std::error::Error for DropConnection {}

async fn handle(
    router: Router,
    script: FaultScript,
    latency: Latency,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DropConnection> {
    let method = req.method().as_str().to_owned();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if req.uri().path() == "/_mock/faults" {
        return Ok(control(&script, req).await);
    }
    if req.uri().path() == "/_mock/latency" {
        return Ok(control_latency(&latency, req).await);
    }
    if !req.uri().path().starts_with("/_mock/") {
        let delay = latency.next_delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    let req = req.map(Body::new);
    let fault = script.take(&method, &pq);
    match fault {
        Some(Fault::Status {
            status,
            headers,
            body,
        }) => {
            let mut resp = Response::builder().status(status);
            for (k, v) in headers {
                resp = resp.header(k, v);
            }
            Ok(resp.body(Body::from(body)).unwrap_or_else(|_| internal()))
        }
        Some(Fault::Reset) => Err(DropConnection),
        Some(Fault::Stall { millis }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Ok(run(router, req).await)
        }
        Some(Fault::LoseResponse) => {
            let resp = run(router, req).await;
            // Read the whole answer so the effect is complete, then drop it.
            let _ = resp.into_body().collect().await;
            Err(DropConnection)
        }
        None => Ok(run(router, req).await),
    }
}

async fn run(router: Router, req: Request<Body>) -> Response<Body> {
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

async fn control(script: &FaultScript, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    match method {
        http::Method::DELETE => {
            script.clear();
            status(StatusCode::NO_CONTENT, "")
        }
        http::Method::POST => match serde_json::from_slice::<Vec<FaultRule>>(&body) {
            Ok(rules) => {
                for r in rules {
                    script.push(r);
                }
                status(StatusCode::NO_CONTENT, "")
            }
            Err(e) => status(StatusCode::BAD_REQUEST, &format!("bad fault rules: {e}")),
        },
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "POST or DELETE"),
    }
}

async fn control_latency(latency: &Latency, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    match method {
        http::Method::DELETE => {
            latency.clear();
            status(StatusCode::NO_CONTENT, "")
        }
        http::Method::GET => status(
            StatusCode::OK,
            &serde_json::to_string(&latency.config()).unwrap_or_default(),
        ),
        http::Method::POST => match serde_json::from_slice::<LatencyConfig>(&body) {
            Ok(c) => {
                latency.set(c);
                status(StatusCode::NO_CONTENT, "")
            }
            Err(e) => status(StatusCode::BAD_REQUEST, &format!("bad latency: {e}")),
        },
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "GET, POST or DELETE"),
    }
}

fn status(code: StatusCode, msg: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(msg.to_owned()))
        .unwrap_or_else(|_| internal())
}

fn internal() -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_matches_in_order_and_counts() {
        let s = FaultScript::default();
        s.push(
            FaultRule::once(Fault::Reset)
                .on_path("/things")
                .times(2)
                .after(1),
        );
        assert_eq!(s.take("GET", "/certificates"), None);
        assert_eq!(s.take("GET", "/things/a"), None, "skipped once");
        assert_eq!(s.take("GET", "/things/a"), Some(Fault::Reset));
        assert_eq!(s.take("POST", "/things/b"), Some(Fault::Reset));
        assert_eq!(s.take("POST", "/things/b"), None, "used up");
    }

    #[test]
    fn latency_is_fixed_plus_seeded_jitter_within_bounds() {
        let l = Latency::default();
        assert_eq!(l.next_delay(), Duration::ZERO, "none until set");
        l.set(LatencyConfig::new(50, 20, 7));
        let first: Vec<Duration> = (0..200).map(|_| l.next_delay()).collect();
        assert!(first.iter().all(|d| (30..=70).contains(&d.as_millis())));
        assert!(first.iter().any(|d| d.as_millis() < 40));
        assert!(first.iter().any(|d| d.as_millis() > 60));
        l.set(LatencyConfig::new(50, 20, 7));
        let again: Vec<Duration> = (0..200).map(|_| l.next_delay()).collect();
        assert_eq!(first, again, "same seed, same delays");
        l.set(LatencyConfig::new(10, 20, 1));
        assert!(
            (0..100).all(|_| l.next_delay().as_millis() <= 30),
            "never negative"
        );
        l.set(LatencyConfig::new(20, 0, 0));
        assert_eq!(l.next_delay(), Duration::from_millis(20));
        l.clear();
        assert_eq!(l.config(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_served_call_takes_the_injected_latency_and_control_calls_do_not() {
        let router = Router::new().route("/v1/x", axum::routing::get(|| async { "ok" }));
        let server = serve(router, "127.0.0.1:0", None).await.unwrap();
        let client = reqwest_like(&server);
        let (code, took) = client.get("/v1/x").await;
        assert_eq!(code, 200);
        assert!(took < Duration::from_millis(5), "no latency yet: {took:?}");
        let (code, _) = client
            .post(
                "/_mock/latency",
                r#"{"fixed_ms":100,"jitter_ms":0,"seed":3}"#,
            )
            .await;
        assert_eq!(code, 204);
        let (code, took) = client.get("/v1/x").await;
        assert_eq!(code, 200);
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert_eq!(server.latency.config(), Some(LatencyConfig::new(100, 0, 3)));
        let (code, took) = client.get("/_mock/latency").await;
        assert_eq!(code, 200);
        assert!(
            took < Duration::from_millis(100),
            "control calls are not delayed"
        );
        client.delete("/_mock/latency").await;
        assert_eq!(server.latency.config(), None);
    }

    /// A minimal HTTP/1.1 client over a socket, timing calls on tokio's (paused) clock.
    struct Client(SocketAddr);

    fn reqwest_like(server: &RunningServer) -> Client {
        Client(server.addr)
    }

    impl Client {
        async fn call(&self, method: &str, path: &str, body: &str) -> (u16, Duration) {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let started = tokio::time::Instant::now();
            let mut stream = tokio::net::TcpStream::connect(self.0).await.unwrap();
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            let code = answer
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap();
            (code, started.elapsed())
        }

        async fn get(&self, path: &str) -> (u16, Duration) {
            self.call("GET", path, "").await
        }

        async fn post(&self, path: &str, body: &str) -> (u16, Duration) {
            self.call("POST", path, body).await
        }

        async fn delete(&self, path: &str) -> (u16, Duration) {
            self.call("DELETE", path, "").await
        }
    }
}
