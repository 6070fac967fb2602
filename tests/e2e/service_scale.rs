//! The registration service as several `idbridge serve` processes on one PostgreSQL (store and
//! journal), started by the test with initdb + pg_ctl: a `--no-jobs` front end only queues
//! jobs; a job runs in exactly one process (its `service-job:ID` lease); a process `kill -9`'d
//! mid-job is replaced by another, which finishes the job with no device registered twice.
#![allow(clippy::unwrap_used)] // test helpers

use std::time::Duration;

use idbridge_local_postgres::LocalPostgres;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use super::interop::bin;
use super::service::{Service, start};

/// One `idbridge serve` process on the service's current config.
struct Serve {
    url: String,
    child: tokio::process::Child,
}

impl Serve {
    async fn start(s: &Service, extra: &[&str]) -> Serve {
        let config = s.config.display().to_string();
        let trust = s.fx.path("trust.pem").display().to_string();
        let mut args = vec![
            "serve",
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--trust",
            &trust,
            "--no-builtin-roots",
        ];
        args.extend(extra);
        let mut child = tokio::process::Command::new(bin())
            .args(&args)
            .env_remove("IDBRIDGE_CONFIG")
            .env_remove("IDBRIDGE_JOURNAL")
            // A dead process's lease lapses after 3 s; the queue is looked at every 0.5 s.
            .env("IDBRIDGE_LEASE_TTL", "3")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("serve printed its address")
            .unwrap()
            .expect("serve exited before listening");
        assert!(url.starts_with("http://"), "{url}");
        Serve { url, child }
    }

    async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// A service fixture (mock cloud, keys) whose config puts store and journal on the shared
/// local PostgreSQL; the returned handle keeps the server up. Its own SQLite process stays idle.
async fn on_postgres() -> (&'static LocalPostgres, Service) {
    let pg = LocalPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    let db = pg.database().unwrap();
    let mut s = start("").await;
    s.config = s.fx.write(
        "idbridge-pg.toml",
        &format!(
            "journal = \"{db}\"\n\n[trust]\nanchors = [\"trust.pem\"]\n\n[service]\n\
             allow_http = true\nstore = \"{db}\"\n\
             key_file = \"service.key\"\nsigning_key = \"signing.pem\"\n"
        ),
    );
    (pg, s)
}

/// Every call the mock cloud answers from now on waits `ms` first (None: no wait).
async fn set_latency(s: &Service, ms: Option<u64>) {
    let http = reqwest::Client::new();
    let url = format!("{}/_mock/latency", s.cloud.url);
    let r = match ms {
        Some(ms) => http
            .post(url)
            .json(&json!({"fixed_ms": ms, "jitter_ms": 0, "seed": 1}))
            .send()
            .await
            .unwrap(),
        None => http.delete(url).send().await.unwrap(),
    };
    assert!(r.status().is_success());
}

/// Waits (up to a minute) until the mock cloud holds a device.
async fn first_devices_land(s: &Service) {
    for _ in 0..3000 {
        if s.registry.stats().devices > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no job process ran the job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_one_postgres_run_each_job_once_and_replace_a_killed_one() {
    let (_pg, mut s) = on_postgres().await;
    let front = Serve::start(&s, &["--no-jobs"]).await;
    s.url = front.url.clone();
    s.import("reel.pem", 1..41, "B-PG", "R-PG").await;
    s.account("pgco", "manual").await;
    let admin = s.token("pgco", "admin").await;
    s.put_cloud_target(&admin).await;
    // Slow calls, so the job is mid-way when its process dies.
    set_latency(&s, Some(4000)).await;
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "B-PG", "reel_id": "R-PG"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let (code, j) = s
        .call(
            "POST",
            &format!("/api/v1/bindings/{}/provision", b["id"].as_str().unwrap()),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 202, "{j}");
    let job = j["id"].as_str().unwrap().to_owned();

    // The front end runs nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, v) = s
        .call("GET", &format!("/api/v1/jobs/{job}"), Some(&admin), None)
        .await;
    assert_eq!(v["state"], "queued", "{v}");
    assert_eq!(s.registry.stats().creates, 0);

    // A job process takes it; a second one started mid-job leaves it alone.
    let first = Serve::start(&s, &[]).await;
    first_devices_land(&s).await;
    // From now on a call takes ten minutes: the job cannot end before the kill, however slow
    // the machine (the first wave of 16 landed, at most the one in flight can follow).
    set_latency(&s, Some(600_000)).await;
    let second = Serve::start(&s, &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let landed = s.registry.stats().devices;
    assert!(landed > 0 && landed < 40, "not mid-job: {landed} of 40");
    first.kill().await;
    set_latency(&s, None).await;

    let j = s.wait_job(&admin, &job).await;
    assert_eq!(j["state"], "finished", "{j}");
    assert_eq!(j["counts"]["done"], 40, "{j}");
    let stats = s.registry.stats();
    assert_eq!(stats.devices, 40);
    assert_eq!(
        stats.max_creates_per_device, 1,
        "a device was registered twice: {stats:?}"
    );
    second.kill().await;
    front.kill().await;
}

/// One `idbridge worker` on the service's current config (its `[service]` table and journal).
async fn worker(s: &Service, name: &str) -> tokio::process::Child {
    tokio::process::Command::new(bin())
        .args(["worker", "--config"])
        .arg(&s.config)
        .args(["--name", name, "--poll", "0.2"])
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .env("IDBRIDGE_LEASE_TTL", "3")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_the_service_jobs_and_a_sigtermed_one_hands_its_job_over() {
    let (_pg, mut s) = on_postgres().await;
    // HTTP only: the front end queues jobs; workers run them.
    let front = Serve::start(&s, &["--no-jobs"]).await;
    s.url = front.url.clone();
    s.import("reel.pem", 1..41, "B-WK", "R-WK").await;
    s.account("wkco", "automatic").await;
    let admin = s.token("wkco", "admin").await;
    s.put_cloud_target(&admin).await;
    // Slow calls (4 s each, 16 at a time), so the job is mid-way at the SIGTERM.
    set_latency(&s, Some(4000)).await;
    let mut first = worker(&s, "worker-a").await;
    let (code, b) = s
        .call(
            "POST",
            "/api/v1/bindings",
            Some(&admin),
            Some(json!({"batch_id": "B-WK", "reel_id": "R-WK"})),
        )
        .await;
    assert_eq!(code, 201, "{b}");
    let job = b["job"]["id"].as_str().unwrap().to_owned();
    first_devices_land(&s).await;
    // SIGTERM: the calls in flight finish and are recorded, the lease is given back.
    let pid = first.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = first.wait().await.unwrap();
    assert!(status.success(), "worker-a exited with {status}");
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut first.stderr.take().unwrap(), &mut err)
        .await
        .unwrap();
    assert!(
        err.contains("left for another process") && !err.contains("service job failed"),
        "worker-a: {err}"
    );
    let (_, v) = s
        .call("GET", &format!("/api/v1/jobs/{job}"), Some(&admin), None)
        .await;
    assert_ne!(v["state"], "failed", "a stopped job is not failed: {v}");
    set_latency(&s, None).await;
    // Another worker takes the job up and finishes it; nothing is registered twice.
    let mut second = worker(&s, "worker-b").await;
    let j = s.wait_job(&admin, &job).await;
    assert_eq!(j["state"], "finished", "{j}");
    assert_eq!(j["counts"]["done"], 40, "{j}");
    let stats = s.registry.stats();
    assert_eq!(stats.devices, 40);
    assert_eq!(
        stats.max_creates_per_device, 1,
        "a device was registered twice: {stats:?}"
    );
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    front.kill().await;
}
