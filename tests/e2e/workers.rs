//! Many processes on one shared journal, on a real PostgreSQL started by the test (initdb +
//! pg_ctl on a temporary directory and a free loopback port):
//! - 3 workers, 20 jobs into 4 mock clouds (one with a quota of 50/s), one worker `kill -9`'d
//!   and one SIGTERM'd mid-run: every device exactly once, every job finished, the throttled
//!   calls of the quota target absorbed by retries. No assertion depends on how fast the
//!   machine is: waits are for conditions, with ceilings of minutes, and leases live long
//!   enough (`LEASE_TTL`) that a loaded machine renews them in time. That the quota is never
//!   exceeded is proven on paused time in the engine's tests; on real sockets it is a benchmark;
//! - a worker verifies the stored certificates of the job it takes up with its own trust;
//! - two CLI stations provisioning overlapping batches into one target: no device twice;
//! - the database restarted mid-job: the job completes when it is back;
//! - `resume` of a job another live process holds is refused with the holder's name (both
//!   stores).
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use idbridge_core::journal::{self, JobState, LeaseClaim};
use idbridge_local_postgres::LocalPostgres;
use idbridge_mock_clouds::TestPki;

use super::engine_support::{Batch, MockCloud, batch, code, idbridge, run, write_config};

fn shared_database() -> String {
    let pg = LocalPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
    pg.database().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The workers' `--lease-ttl`, seconds: a renewal is due every third of it. Long enough that a
/// machine at a load of 10 and more still renews in time (a lease lost mid-job hands the job
/// to another worker, which is correct but not what these tests set out to watch); short
/// enough that a killed worker's jobs are taken over within the tests' ceilings.
const LEASE_TTL: &str = "10";

/// A worker process whose stderr lines arrive on `lines` (and are echoed for the test log).
struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Worker {
    fn start(dir: &Path, url: &str, tag: &str) -> Worker {
        let mut child = idbridge()
            .current_dir(dir)
            .args([
                "worker",
                "--store",
                url,
                "--lease-ttl",
                LEASE_TTL,
                "--poll",
                "0.2",
                "--jobs",
                "2",
                "--name",
                tag,
            ])
            .env_remove("IDBRIDGE_CONFIG")
            .env_remove("IDBRIDGE_JOURNAL")
            .env_remove("IDBRIDGE_LEASE_TTL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let tag = tag.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{tag}] {line}");
                let _ = tx.send(line);
            }
        });
        Worker {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `what`; returns it.
    fn wait_for(&mut self, what: &str, limit: Duration) -> String {
        let end = Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what:?} within {limit:?}; saw {:?}", self.seen),
            }
        }
    }

    fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for exit; the rest of stderr is in `seen`.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return s;
            }
            assert!(Instant::now() < end, "worker did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn enqueue(dir: &Path, b: &Batch, target: &str, url: &str) -> String {
    let o = run(
        dir,
        &[
            "provision",
            b.pem.to_str().unwrap(),
            "--trust",
            b.root.to_str().unwrap(),
            "--target",
            target,
            "--journal",
            url,
            "--enqueue",
        ],
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(id.starts_with("job-"), "{id}");
    id
}

/// Polls the journal until every job is finished.
fn wait_all_finished(url: &str, n: usize, limit: Duration) {
    let rt = rt();
    let end = Instant::now() + limit;
    rt.block_on(async {
        let j = journal::open(url).unwrap();
        loop {
            let jobs = j.jobs().await.unwrap();
            let finished = jobs
                .iter()
                .filter(|i| i.state == JobState::Finished)
                .count();
            if jobs.len() == n && finished == n {
                for i in &jobs {
                    assert_eq!(i.counts.done, i.counts.total(), "{i:?}");
                }
                return;
            }
            assert!(
                Instant::now() < end,
                "{finished} of {} jobs finished after {limit:?}",
                jobs.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// Every device of the cloud exactly once, and as many creates as devices.
fn exactly_once(cloud: &MockCloud, expected: usize) {
    let devices = cloud.devices();
    let mut fps: Vec<_> = devices.iter().map(|(_, f)| f.clone()).collect();
    fps.sort();
    fps.dedup();
    assert_eq!(fps.len(), devices.len(), "a device registered twice");
    assert_eq!(devices.len(), expected);
    assert_eq!(cloud.stats()["creates"], expected as u64);
}

/// A `[trust]` table holding the roots of `batches` (workers verify stored certificates).
fn trust_of(batches: &[&Batch]) -> String {
    let anchors: Vec<String> = batches
        .iter()
        .map(|b| format!("{:?}", b.root.display().to_string()))
        .collect();
    format!("[trust]\nanchors = [{}]\n", anchors.join(", "))
}

fn mock_target(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[targets.{name}]\nkind = \"mock\"\nurl = \"{url}\"\nallow_http = true\ntoken = \"t0ken\"\n{extra}"
    )
}

#[test]
fn three_workers_twenty_jobs_one_killed_one_terminated() {
    let url = shared_database();
    let clouds: Vec<MockCloud> = (0..4)
        .map(|i| {
            if i == 3 {
                MockCloud::start(&["--quota", "50"])
            } else {
                MockCloud::start(&[])
            }
        })
        .collect();
    let work = tempfile::tempdir().unwrap();
    const PER_JOB: u64 = 30;
    let batches: Vec<Batch> = (0..20).map(|_| batch(PER_JOB)).collect();
    // The workers verify the stored certificates again: they trust every batch's root.
    let mut config = trust_of(&batches.iter().collect::<Vec<_>>());
    for (i, c) in clouds.iter().enumerate() {
        let extra = if i == 3 {
            "quota = 50\n[targets.t3.engine]\nconcurrency = 8\n".to_owned()
        } else {
            format!("[targets.t{i}.engine]\nrate = 100\nconcurrency = 8\n")
        };
        config.push_str(&mock_target(&format!("t{i}"), &c.url, &extra));
    }
    write_config(work.path(), &config);
    for (i, b) in batches.iter().enumerate() {
        enqueue(work.path(), b, &format!("t{}", i % 4), &url);
    }

    let mut a = Worker::start(work.path(), &url, "worker-a");
    let mut b = Worker::start(work.path(), &url, "worker-b");
    let mut c = Worker::start(work.path(), &url, "worker-c");
    a.wait_for("claimed job", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    a.child.kill().unwrap(); // SIGKILL: its leases expire after LEASE_TTL
    a.child.wait().unwrap();
    b.wait_for("claimed job", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    b.terminate();
    let status = b.wait(Duration::from_secs(60));
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
    assert!(
        b.seen.iter().any(|l| l.contains("released job")),
        "worker-b gave its job back: {:?}",
        b.seen
    );

    wait_all_finished(&url, 20, Duration::from_secs(300));
    c.terminate();
    assert!(c.wait(Duration::from_secs(60)).success());
    // The killed worker's jobs were taken over: every job finished, by someone alive, and
    // every device of the quota target is there once whatever was throttled on the way (how
    // often depends on the machine's timing: reported, not asserted).
    for (i, cloud) in clouds.iter().enumerate() {
        exactly_once(cloud, 5 * PER_JOB as usize);
        if i == 3 {
            eprintln!(
                "the quota target throttled {} calls, all retried",
                cloud.stats()["throttled"]
            );
        }
    }
}

#[test]
fn two_stations_overlapping_batches_on_one_postgres_journal() {
    let url = shared_database();
    let cloud = MockCloud::start(&[]);
    let work = tempfile::tempdir().unwrap();
    write_config(
        work.path(),
        &mock_target("lab", &cloud.url, "[targets.lab.engine]\nrate = 200\n"),
    );
    let pki = TestPki::infineon_like().unwrap();
    let (devices, _) = pki.batch(1, 60).unwrap();
    let root = work.path().join("root.pem");
    std::fs::write(&root, format!("{}{}", pki.root_pem(), pki.ca_pem())).unwrap();
    let write = |name: &str, range: std::ops::Range<usize>| {
        let p = work.path().join(name);
        let text: String = devices[range].iter().map(|d| d.cert_pem.clone()).collect();
        std::fs::write(&p, text).unwrap();
        p
    };
    let a = write("a.pem", 0..40);
    let b = write("b.pem", 20..60);
    let station = |pem: &Path| {
        idbridge()
            .current_dir(work.path())
            .args(["provision", pem.to_str().unwrap(), "--trust"])
            .arg(&root)
            .args(["--target", "lab", "--journal", &url])
            .env_remove("IDBRIDGE_CONFIG")
            .env_remove("IDBRIDGE_JOURNAL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let sa = station(&a);
    let sb = station(&b);
    let oa = sa.wait_with_output().unwrap();
    let ob = sb.wait_with_output().unwrap();
    assert!(
        oa.status.success(),
        "{}",
        String::from_utf8_lossy(&oa.stderr)
    );
    assert!(
        ob.status.success(),
        "{}",
        String::from_utf8_lossy(&ob.stderr)
    );
    exactly_once(&cloud, 60);
    // Either station's status shows both stations' jobs.
    let o = run(
        work.path(),
        &["status", "--journal", &url, "--output", "json"],
    );
    assert_eq!(code(&o), 0);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.matches("\"job-").count() >= 2, "{text}");
}

#[test]
fn database_restart_mid_job_the_job_completes_when_it_is_back() {
    let pg = LocalPostgres::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database().unwrap();
    let cloud = MockCloud::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let b = batch(120);
    write_config(
        work.path(),
        // 120 devices at 20/s: 6 s of work, so the stop below lands mid-job even when the
        // machine is slow to run `pg_ctl stop`.
        &format!(
            "{}{}",
            trust_of(&[&b]),
            mock_target("lab", &cloud.url, "[targets.lab.engine]\nrate = 20\n")
        ),
    );
    enqueue(work.path(), &b, "lab", &url);
    let mut w = Worker::start(work.path(), &url, "worker-db");
    w.wait_for("claimed job", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(700));
    // `pg_ctl stop -m fast` (SIGINT to the postmaster): sessions end, the worker's journal
    // writes fail.
    pg.stop().unwrap();
    let at_stop = cloud.stats()["devices"].as_u64().unwrap();
    assert!(at_stop < 120, "the job ended before the database stopped");
    std::thread::sleep(Duration::from_secs(2));
    pg.restart().unwrap();
    wait_all_finished(&url, 1, Duration::from_secs(180));
    exactly_once(&cloud, 120);
    // A call made without its write-ahead record would be sent again as new on resume (its
    // device still `pending`) and refused as a duplicate; one with its record is looked up.
    assert_eq!(
        cloud.stats()["duplicates_refused"],
        0,
        "a call was made without its write-ahead record: {}",
        cloud.stats()
    );
    w.terminate();
    assert!(w.wait(Duration::from_secs(60)).success());
}

fn refused_while_held(url: &str) {
    let cloud = MockCloud::start(&[]);
    let work = tempfile::tempdir().unwrap();
    write_config(work.path(), &mock_target("lab", &cloud.url, ""));
    let b = batch(5);
    let id = enqueue(work.path(), &b, "lab", url);
    let rt = rt();
    let j = rt.block_on(async { journal::open(url).unwrap() });
    let claim = rt.block_on(j.acquire_lease(
        &journal::job_lease(&id),
        "worker:elsewhere:4242",
        600_000,
        journal::now_ms(),
    ));
    assert!(matches!(claim.unwrap(), LeaseClaim::Granted(_)));
    let o = run(
        work.path(),
        &[
            "resume",
            &id,
            "--journal",
            url,
            "--trust",
            b.root.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(code(&o), 0);
    assert!(err.contains("worker:elsewhere:4242"), "{err}");
    assert_eq!(cloud.stats()["creates"], 0, "nothing ran twice");
    rt.block_on(j.release_lease(&journal::job_lease(&id), "worker:elsewhere:4242"))
        .unwrap();
    let o = run(
        work.path(),
        &[
            "resume",
            &id,
            "--journal",
            url,
            "--trust",
            b.root.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    exactly_once(&cloud, 5);
}

#[test]
fn resume_of_a_held_job_is_refused_naming_the_holder_postgres() {
    refused_while_held(&shared_database());
}

#[test]
fn resume_of_a_held_job_is_refused_naming_the_holder_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    refused_while_held(&format!(
        "sqlite:{}",
        dir.path().join("journal.sqlite").display()
    ));
}

/// A worker taking up a queued job judges its stored certificates again with the trust of its
/// own config, as `resume` does: a device a CRL now revokes, or whose CA the worker does not
/// trust, is recorded failed with the reason and never sent.
#[test]
fn a_worker_verifies_stored_certificates_again_with_its_own_trust() {
    let cloud = MockCloud::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let url = format!("sqlite:{}", w.join("journal.sqlite").display());
    let lab = mock_target("lab", &cloud.url, "");
    write_config(w, &lab);
    let pki = TestPki::infineon_like().unwrap();
    std::fs::write(
        w.join("root.pem"),
        format!("{}{}", pki.root_pem(), pki.ca_pem()),
    )
    .unwrap();
    let write_batch = |name: &str, first: u64, n: u64| -> Vec<String> {
        let (devices, bundle) = pki.batch(first, n).unwrap();
        std::fs::write(w.join(name), bundle).unwrap();
        devices
            .iter()
            .map(|d| idbridge_core::DeviceId::of_der(&d.cert_der).to_string())
            .collect()
    };
    let enqueue = |file: &str| -> String {
        let o = run(
            w,
            &[
                "provision",
                file,
                "--trust",
                "root.pem",
                "--target",
                "lab",
                "--journal",
                &url,
                "--enqueue",
            ],
        );
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    let work_off = || {
        let o = run(w, &["worker", "--store", &url, "--exit-when-idle"]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    };
    let records = |job: &str| -> Vec<serde_json::Value> {
        let o = run(w, &["status", job, "--journal", &url, "--output", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["devices"].as_array().unwrap().clone()
    };

    // Verified when queued; by the time a worker takes it up, its trust has a CRL listing
    // device 2.
    let ids = write_batch("batch.pem", 1, 4);
    let job = enqueue("batch.pem");
    std::fs::write(w.join("ca.crl"), pki.crl(&[2]).unwrap()).unwrap();
    write_config(
        w,
        &format!("[trust]\nanchors = [\"root.pem\"]\ncrls = [\"ca.crl\"]\n{lab}"),
    );
    work_off();
    let mut sent: Vec<String> = cloud.devices().into_iter().map(|(_, fp)| fp).collect();
    sent.sort();
    let mut want = vec![ids[0].clone(), ids[2].clone(), ids[3].clone()];
    want.sort();
    assert_eq!(sent, want, "the revoked device was not sent");
    assert_eq!(cloud.stats()["creates"], 3);
    let recs = records(&job);
    let revoked = recs.iter().find(|r| r["device_id"] == ids[1]).unwrap();
    assert_eq!(revoked["state"], "failed", "{revoked}");
    let reason = revoked["reason"].as_str().unwrap();
    assert!(
        reason.contains("no longer verifies") && reason.contains("revoked"),
        "{reason}"
    );
    assert!(
        recs.iter()
            .filter(|r| r["device_id"] != ids[1])
            .all(|r| r["state"] == "done"),
        "{recs:?}"
    );

    // A worker whose config does not trust the CA: nothing of the job is sent.
    let more = write_batch("more.pem", 10, 3);
    write_config(w, &lab);
    let job = enqueue("more.pem");
    work_off();
    assert_eq!(cloud.stats()["creates"], 3, "nothing more created");
    let recs = records(&job);
    assert_eq!(recs.len(), more.len());
    for r in &recs {
        assert_eq!(r["state"], "failed", "{r}");
        assert!(
            r["reason"].as_str().unwrap().contains("no longer verifies"),
            "{r}"
        );
    }
}
