//! `idbridge bench receiver`: certificates per second accepted by `idbridge serve` and
//! provisioned through the engine into the unthrottled in-process mock cloud, for batches of 1,
//! 100 and 4,000 certificates, with p50/p99 latency per request.
//!
//! Everything runs in this process over real sockets: a CIRRENT-like sender (fresh ES256 token
//! per request) → the receiver's router on 127.0.0.1 → trust verification against a generated
//! Infineon-like root → the engine and a SQLite journal in a temporary directory → the mock
//! cloud registry over HTTP. Certificates are generated before timing starts.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use idbridge_core::engine::{Engine, EngineOptions};
use idbridge_core::intake::TrustOptions;
use idbridge_core::journal;
use idbridge_core::trust::Verifier;
use idbridge_mock_clouds::TestPki;
use idbridge_mock_clouds::interop::{InteropSender, TokenKind};

use crate::serve::ServeConfig;
use crate::serve::api::{AppState, router};
use crate::serve::auth::{IssuerPolicy, TokenVerifier, parse_keys};
use crate::serve::backend::EngineBackend;

/// Arguments of `idbridge bench receiver`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Certificates per request; one measurement per size.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 100, 4000])]
    pub batches: Vec<usize>,
    /// Requests per batch size (at least 1).
    #[arg(long, default_value_t = 0)]
    pub requests: usize,
    /// Calls the engine keeps in flight to the mock cloud.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

const AUDIENCE: &str = "123456789012";

/// Runs the benchmark and prints one row per batch size.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("idbridge-bench-receiver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = bench(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn bench(args: &Args, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let pki = TestPki::infineon_like()?;
    let root = dir.join("root.pem");
    // The vendor root and its intermediate, as an operator passes `--trust`.
    std::fs::write(&root, format!("{}{}", pki.root_pem(), pki.ca_pem()))?;
    let verifier = Verifier::from_options(&TrustOptions {
        anchors: vec![root],
        no_builtin: true,
        ..Default::default()
    })?;
    let connector = Arc::new(
        idbridge_mock::MockConnector::new(idbridge_mock::MockConfig {
            quota: Some(1_000_000.0),
            ..Default::default()
        })
        .await?,
    );
    let journal = journal::open(&format!("sqlite:{}", dir.join("journal.sqlite").display()))?;
    let engine = Arc::new(Engine::new(
        connector.clone(),
        journal,
        EngineOptions {
            concurrency: args.concurrency,
            ..Default::default()
        },
    ));
    let backend = Arc::new(EngineBackend::new(
        Arc::new(verifier),
        vec![("bench".to_owned(), engine)],
        None,
    ));
    let sender = InteropSender::new(AUDIENCE)?;
    let tokens = TokenVerifier::single(
        sender.issuer(),
        parse_keys(&sender.public_key_pem())?,
        IssuerPolicy::default(),
        AUDIENCE,
        30,
    )?;
    let cfg = ServeConfig {
        audience: AUDIENCE.into(),
        sync_deadline_secs: 600,
        chunk_size: 4000,
        ..Default::default()
    };
    let limits = cfg.limits();
    let app = router(AppState::new(tokens, backend, cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/interop", listener.local_addr()?);
    tokio::spawn(async move {
        let _ =
            crate::serve::server::serve(listener, app, limits, None, std::future::pending::<()>())
                .await;
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;

    println!(
        "idbridge bench receiver: POST /interop → trust check → engine + SQLite journal → mock cloud (unthrottled)"
    );
    println!(
        "{:>6} {:>9} {:>8} {:>12} {:>10} {:>10} {:>8}",
        "batch", "requests", "certs", "certs/s", "p50 ms", "p99 ms", "errors"
    );
    let mut serial = 1u64;
    let mut failures = 0usize;
    let mut first_error: Option<String> = None;
    for &batch in &args.batches {
        let batch = batch.max(1);
        let requests = if args.requests > 0 {
            args.requests
        } else {
            (4000 / batch).clamp(3, 400)
        };
        // Generate every body first: timing covers only the exchange.
        let mut bodies = Vec::with_capacity(requests);
        for _ in 0..requests {
            let mut certs = Vec::with_capacity(batch);
            for _ in 0..batch {
                let d = pki.device(serial)?;
                certs.push(serde_json::json!({"ref": format!("r{serial}"), "cert": STANDARD.encode(&d.cert_pem)}));
                serial += 1;
            }
            bodies.push(serde_json::to_vec(
                &serde_json::json!({"action": "provision", "certs": certs}),
            )?);
        }
        let mut latencies = Vec::with_capacity(requests);
        let mut errors = 0usize;
        let start = Instant::now();
        for body in bodies {
            let t = Instant::now();
            let resp = http
                .post(&url)
                .bearer_auth(sender.token(TokenKind::Valid))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            let status = resp.status();
            let answer: serde_json::Value = resp.json().await?;
            latencies.push(t.elapsed());
            let items = answer.as_array().map(Vec::as_slice).unwrap_or_default();
            if !status.is_success() || items.len() != batch {
                if first_error.is_none() {
                    first_error = Some(format!("HTTP {status}: {answer}"));
                }
                errors += batch;
                continue;
            }
            for r in items.iter().filter(|r| r["status"] != "SUCCESS") {
                errors += 1;
                if first_error.is_none() {
                    first_error = Some(r.to_string());
                }
            }
        }
        let elapsed = start.elapsed();
        latencies.sort();
        let certs = requests * batch;
        println!(
            "{:>6} {:>9} {:>8} {:>12.0} {:>10.1} {:>10.1} {:>8}",
            batch,
            requests,
            certs,
            certs as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
            percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            errors
        );
        failures += errors;
    }
    let registered = connector.registry().map_or(0, |r| r.devices().len());
    println!("mock cloud holds {registered} devices; {failures} certificates not SUCCESS");
    if let Some(e) = first_error {
        println!("first failure: {e}");
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
