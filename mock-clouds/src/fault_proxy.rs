//! A fault-injecting HTTP/1.1 proxy between a client and a real server (an emulator): every
//! request is forwarded unchanged unless a [`FaultRule`](crate::FaultRule) of the proxy's
//! script matches it, in which case the proxy answers for the server ([`Fault::Status`]),
//! drops the connection before forwarding ([`Fault::Reset`]), delays the request
//! ([`Fault::Stall`]) or forwards it and drops the answer ([`Fault::LoseResponse`]: the effect
//! happened, the client cannot know). [`FaultProxy::delay_responses`] adds the slow twin of the
//! last one: the request is forwarded and applied, and its answer held back for a while.
//!
//! It uses the same serving and fault machinery as the mock clouds ([`crate::server`]), so the
//! script is reachable in-process and over the socket at `/_mock/faults`.
//!
//! [`Fault::Status`]: crate::Fault::Status
//! [`Fault::Reset`]: crate::Fault::Reset
//! [`Fault::Stall`]: crate::Fault::Stall
//! [`Fault::LoseResponse`]: crate::Fault::LoseResponse

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::server::{RunningServer, serve};

/// A running proxy: its URL, its fault script and a count of forwarded requests.
#[derive(Debug)]
pub struct FaultProxy {
    /// The proxy, serving on `127.0.0.1:PORT`.
    pub server: RunningServer,
    forwarded: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<String>>>,
    delays: Arc<Mutex<Vec<Delay>>>,
}

/// Hold back the answers of the next `times` forwarded requests whose path contains `path`.
#[derive(Debug, Clone)]
struct Delay {
    path: String,
    times: u32,
    millis: u64,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<FaultProxy> {
        let url = url::Url::parse(upstream)?;
        let host = url
            .host_str()
            .ok_or_else(|| anyhow::anyhow!("upstream {upstream} has no host"))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| anyhow::anyhow!("upstream {upstream} has no port"))?;
        let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("upstream {upstream} does not resolve"))?;
        let forwarded = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let delays = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(Upstream {
            addr,
            host: format!("{host}:{port}"),
            forwarded: forwarded.clone(),
            log: log.clone(),
            delays: delays.clone(),
        });
        let router = Router::new().fallback(forward).with_state(state);
        let server = serve(router, "127.0.0.1:0", None).await?;
        Ok(FaultProxy {
            server,
            forwarded,
            log,
            delays,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// Requests forwarded to the upstream so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }

    /// Forwards the next `times` requests whose path (and query) contains `path` as usual, then
    /// holds each answer back `millis` before sending it: the effect happens at once, the
    /// client learns of it late (or, past its timeout, never).
    pub fn delay_responses(&self, path: &str, times: u32, millis: u64) {
        lock(&self.delays).push(Delay {
            path: path.to_owned(),
            times,
            millis,
        });
    }

    /// `METHOD path?query` of every forwarded request, in order.
    pub fn forwarded_requests(&self) -> Vec<String> {
        lock(&self.log).clone()
    }
}

#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    host: String,
    forwarded: Arc<AtomicU64>,
    log: Arc<Mutex<Vec<String>>>,
    delays: Arc<Mutex<Vec<Delay>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a test panicked while holding it; the data is still valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The delay for a forwarded request, consuming one use of the first matching rule.
fn take_delay(delays: &Mutex<Vec<Delay>>, pq: &str) -> Option<u64> {
    let mut d = lock(delays);
    let idx = d.iter().position(|r| pq.contains(&r.path))?;
    let millis = d[idx].millis;
    d[idx].times = d[idx].times.saturating_sub(1);
    if d[idx].times == 0 {
        d.remove(idx);
    }
    Some(millis)
}

async fn forward(State(up): State<Arc<Upstream>>, req: Request<Body>) -> Response<Body> {
    match try_forward(&up, req).await {
        Ok(r) => r,
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::from(format!("fault proxy: upstream failed: {e}")))
            .unwrap_or_else(|_| Response::new(Body::empty())),
    }
}

async fn try_forward(up: &Upstream, req: Request<Body>) -> anyhow::Result<Response<Body>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let line = format!("{} {pq}", parts.method);
    let delay = take_delay(&up.delays, &pq);
    let mut out = Request::builder().method(parts.method).uri(pq);
    for (k, v) in &parts.headers {
        if k != header::HOST && k != header::CONNECTION {
            out = out.header(k, v);
        }
    }
    let out = out.header(header::HOST, &up.host).body(Full::new(body))?;
    // One upstream connection per request: simple, and a dropped answer never poisons a pool.
    let stream = TcpStream::connect(up.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    up.forwarded.fetch_add(1, Ordering::SeqCst);
    lock(&up.log).push(line);
    let resp = sender.send_request(out).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    if let Some(ms) = delay {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let mut resp = Response::from_parts(parts, Body::from(body));
    resp.headers_mut().remove(header::CONNECTION);
    resp.headers_mut().remove(header::TRANSFER_ENCODING);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fault, FaultRule};

    async fn get(url: &str) -> Result<(u16, String), String> {
        let u = url::Url::parse(url).map_err(|e| e.to_string())?;
        let addr = format!("{}:{}", u.host_str().unwrap_or(""), u.port().unwrap_or(80));
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::builder()
            .uri(u.path())
            .header(header::HOST, "x")
            .body(Full::new(bytes::Bytes::new()))
            .map_err(|e| e.to_string())?;
        let r = s.send_request(req).await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let b = r.into_body().collect().await.map_err(|e| e.to_string())?;
        Ok((status, String::from_utf8_lossy(&b.to_bytes()).into_owned()))
    }

    #[tokio::test]
    async fn forwards_and_applies_faults() {
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let upstream = Router::new().fallback(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                "hello"
            }
        });
        let up = serve(upstream, "127.0.0.1:0", None).await.unwrap();
        let proxy = FaultProxy::start(&up.url).await.unwrap();
        let url = format!("{}/v1/x", proxy.url());
        assert_eq!(get(&url).await.unwrap(), (200, "hello".to_owned()));
        proxy.server.faults.push(FaultRule::once(Fault::Status {
            status: 429,
            headers: vec![],
            body: "{}".into(),
        }));
        assert_eq!(get(&url).await.unwrap().0, 429);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "a scripted answer is not forwarded"
        );
        proxy
            .server
            .faults
            .push(FaultRule::once(Fault::LoseResponse));
        assert!(get(&url).await.is_err(), "the answer was dropped");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "but the request reached the server"
        );
        proxy.server.faults.push(FaultRule::once(Fault::Reset));
        assert!(get(&url).await.is_err());
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "a reset request never reaches the server"
        );
        assert_eq!(proxy.forwarded(), 2);
    }
}
