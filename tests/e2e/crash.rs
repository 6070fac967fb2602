//! The crash test: `kill -9` the CLI at random moments while it provisions 10,000 devices into
//! a standalone mock cloud process (and into the manifest target), rerun (the same command or
//! `idbridge resume JOB`) until done: every device registered exactly once, the journal says
//! done for all.
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::engine_support::{MockCloud, big_batch, code, idbridge, run, test_seed, write_config};

const KILLS: usize = 20;

/// How one run ended.
enum Ended {
    Killed,
    Exited(i32),
}

/// Starts `args` in `dir`; kills it with SIGKILL `delay` after the job started, or `early` after
/// the process started if that comes first. Returns how it ended and the job id if it announced
/// one.
fn run_and_kill(
    dir: &Path,
    args: &[String],
    env: &[(&str, &str)],
    delay: Duration,
    early: Option<Duration>,
) -> (Ended, Option<String>, Duration) {
    let mut child = idbridge()
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut job = None;
    let mut deadline = early.map(|e| started + e);
    let mut job_started: Option<Instant> = None;
    let ran = |t: Option<Instant>| t.map_or(Duration::ZERO, |t| t.elapsed());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let _ = reader.join();
            while let Ok(line) = rx.try_recv() {
                job = job.or_else(|| job_of(&line));
            }
            return (
                Ended::Exited(status.code().unwrap_or(-1)),
                job,
                ran(job_started),
            );
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(1))
            && let Some(j) = job_of(&line)
        {
            job = Some(j);
            job_started = Some(Instant::now());
            let after_start = Instant::now() + delay;
            deadline = Some(deadline.map_or(after_start, |d| d.min(after_start)));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // SIGKILL: no destructor, no flush, no signal handler runs.
            let _ = child.kill();
            let status = child.wait().unwrap();
            let _ = reader.join();
            if status.code() == Some(0) {
                return (Ended::Exited(0), job, ran(job_started));
            }
            return (Ended::Killed, job, ran(job_started));
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "a run took 10 minutes"
        );
    }
}

fn job_of(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["event"] == "started").then(|| v["job"].as_str().map(str::to_owned))?
}

/// Kills runs until KILLS kills landed or the job finished, then reruns until done. Runs
/// alternate between the same command and `resume JOB`. Returns the job id.
fn crash_until_done(
    dir: &Path,
    command: &[String],
    env: &[(&str, &str)],
    total: u64,
    rate: f64,
) -> (String, usize) {
    let mut max_delay_ms = (total as f64 / (KILLS + 1) as f64 / rate * 1000.0) as u64;
    // The kill moments are drawn from a seed (printed; replay with IDBRIDGE_TEST_SEED=...).
    let mut rng = StdRng::seed_from_u64(test_seed());
    let mut job: Option<String> = None;
    let mut kills = 0;
    let mut runs = 0;
    let mut early_kills = 0;
    let mut finished = false;
    while !finished && runs < 200 {
        runs += 1;
        // Mostly `resume JOB` (no inputs to re-read); every fourth run the same command again.
        // resume verifies every certificate again: with the command's trust flags.
        let args: Vec<String> = match (&job, runs % 4) {
            (Some(j), 0..=2) => ["resume".to_owned(), j.clone()]
                .into_iter()
                .chain(trust_flags(command))
                .collect(),
            _ => command.to_vec(),
        };
        let killing = kills < KILLS;
        // About one kill in three of the runs that read the inputs lands before the job starts
        // (reading inputs, opening the journal, inserting the job's rows); the others at a
        // random moment of the job.
        let early = (killing && args[0] != "resume" && rng.random_range(0..3) == 0)
            .then(|| Duration::from_millis(rng.random_range(0..3000)));
        let delay = if killing {
            Duration::from_millis(rng.random_range(0..max_delay_ms.max(2)))
        } else {
            Duration::from_secs(3600)
        };
        let before = job.as_deref().map_or(0, |j| done_count(dir, j));
        let (ended, j, ran) = run_and_kill(dir, &args, env, delay, early);
        if job.is_none() {
            job = j;
        }
        match ended {
            Ended::Killed => {
                kills += 1;
                if ran.is_zero() {
                    early_kills += 1;
                } else if let Some(j) = &job {
                    // Aim the next kills so that they all land before the job ends: a kill's
                    // delay is at most the remaining devices' share of the kills left.
                    let after = done_count(dir, j);
                    // The job is paced at `rate` devices/s, so it cannot get further than that.
                    let remaining = total.saturating_sub(after) as f64;
                    let left = (KILLS - kills + 1) as f64;
                    // (Four fifths of it: the pacer's first burst and a late read of the
                    // "started" line must not let the job end before the last kill.)
                    max_delay_ms = ((remaining / left / rate) * 800.0) as u64;
                    eprintln!(
                        "run {runs}: killed {ran:?} into the job, {before} -> {after} done, \
                         next delay < {max_delay_ms} ms"
                    );
                }
            }
            Ended::Exited(0) => finished = true,
            Ended::Exited(c) => panic!("run {runs} ({args:?}) exited {c}"),
        }
    }
    eprintln!("crash test: {runs} runs, {kills} kills ({early_kills} before the job started)");
    assert!(finished, "not finished after {runs} runs");
    (job.expect("the job announced its id"), kills)
}

fn done_count(dir: &Path, job: &str) -> u64 {
    let o = run(dir, &["status", job, "--output", "jsonl"]);
    let text = String::from_utf8_lossy(&o.stdout);
    let last = text.lines().last().unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
    v["counts"]["done"].as_u64().unwrap_or(0) + v["counts"]["failed"].as_u64().unwrap_or(0)
}

fn journal_says_all_done(dir: &Path, job: &str, n: usize) {
    let o = run(dir, &["status", job, "--output", "json"]);
    assert_eq!(
        code(&o),
        0,
        "status: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["job"]["state"], "finished");
    assert_eq!(v["job"]["counts"]["done"], n as u64);
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(devices.len(), n);
    assert!(devices.iter().all(|d| d["state"] == "done"));
}

#[test]
fn kill_9_at_random_moments_against_a_standalone_mock_cloud() {
    let batch = big_batch();
    let cloud = MockCloud::start(&[]);
    let work = tempfile::tempdir().unwrap();
    write_config(
        work.path(),
        &format!(
            "[targets.lab]\nkind = \"mock\"\nurl = \"{}\"\nallow_http = true\n\
             token = \"${{CRASH_TOKEN}}\"\nquota = 1000000\n\
             [targets.lab.engine]\nconcurrency = 32\nrate = 1000\n",
            cloud.url
        ),
    );
    // The token comes from the environment, as an operator's would.
    let command: Vec<String> = [
        "provision",
        batch.pem.to_str().unwrap(),
        "--trust",
        batch.root.to_str().unwrap(),
        "--target",
        "lab",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (job, kills) = crash_until_done(
        work.path(),
        &command,
        &[("CRASH_TOKEN", "t0ken")],
        10_000,
        1000.0,
    );
    let stats = cloud.stats();
    eprintln!("mock cloud: {stats}");
    assert_eq!(stats["devices"], 10_000);
    assert_eq!(stats["creates"], 10_000, "every device created once");
    assert_eq!(stats["max_creates_per_device"], 1);
    assert_eq!(
        stats["duplicates_refused"], 0,
        "a device was sent again without a lookup"
    );
    let mut held: Vec<String> = cloud.devices().into_iter().map(|(_, fp)| fp).collect();
    held.sort();
    let mut want = batch.device_ids.clone();
    want.sort();
    assert_eq!(held, want, "the cloud holds exactly the batch");
    journal_says_all_done(work.path(), &job, 10_000);
    assert_eq!(
        kills, KILLS,
        "only {kills} kills landed before the job finished"
    );
}

#[test]
fn kill_9_at_random_moments_into_the_manifest_target() {
    let batch = big_batch();
    let work = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(work.path().join("operator.pem"), key.serialize_pem()).unwrap();
    write_config(
        work.path(),
        "[targets.files]\nkind = \"manifest\"\ndir = \"out\"\nsigning_key = \"operator.pem\"\n\
         [targets.files.engine]\nbatch_size = 20\nrate = 2000\n",
    );
    let command: Vec<String> = [
        "provision",
        batch.pem.to_str().unwrap(),
        "--trust",
        batch.root.to_str().unwrap(),
        "--target",
        "files",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (job, kills) = crash_until_done(work.path(), &command, &[], 10_000, 2000.0);
    let out = work.path().join("out");
    let manifest = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap();
    let mut lines = manifest.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["devices"], 10_000);
    let mut ids: Vec<String> = lines
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["device_id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    let mut want = batch.device_ids.clone();
    want.sort();
    assert_eq!(ids, want, "manifest.jsonl holds each device exactly once");
    let point = idbridge_manifest::SigningKey::from_pem(&key.serialize_pem(), "k")
        .unwrap()
        .public_point();
    let jws = std::fs::read_to_string(out.join("manifest.jsonl.jws")).unwrap();
    idbridge_manifest::verify_detached(manifest.as_bytes(), &jws, &point).unwrap();
    for file in [
        "aws-bulk.jsonl",
        "azure-import-devices.jsonl",
        ".idbridge-staging.jsonl",
    ] {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        let mut seen: Vec<&str> = text.lines().collect();
        assert_eq!(seen.len(), 10_000, "{file}");
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000, "{file}: a device twice");
    }
    journal_says_all_done(work.path(), &job, 10_000);
    assert_eq!(
        kills, KILLS,
        "only {kills} kills landed before the job finished"
    );
}

/// The `--trust FILE` pairs of a command line.
fn trust_flags(command: &[String]) -> Vec<String> {
    command
        .windows(2)
        .filter(|w| w[0] == "--trust")
        .flat_map(|w| w.to_vec())
        .collect()
}
