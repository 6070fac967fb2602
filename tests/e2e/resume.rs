//! `resume` judges the certificates stored in the journal again with the trust store of its own
//! command line (`--config`'s `[trust]`, `--trust`, `--crl`), and builds the target from the
//! config of its command line, never from a path stored in the journal.
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use std::path::Path;

use idbridge_mock_clouds::TestPki;

use super::engine_support::{MockCloud, code, run, stdout, write_config};

fn lab_config(url: &str) -> String {
    format!(
        "[targets.lab]\nkind = \"mock\"\nurl = \"{url}\"\nallow_http = true\n\
         token = \"t0ken\"\nquota = 100000\n"
    )
}

/// Writes devices `first..first+n` of `pki` into `dir/name`; their device ids.
fn write_batch(dir: &Path, pki: &TestPki, name: &str, first: u64, n: u64) -> Vec<String> {
    let (devices, bundle) = pki.batch(first, n).unwrap();
    std::fs::write(dir.join(name), bundle).unwrap();
    devices
        .iter()
        .map(|d| idbridge_core::DeviceId::of_der(&d.cert_der).to_string())
        .collect()
}

/// Records a provision job of `file` without running it (`--enqueue`); its id.
fn enqueue(dir: &Path, file: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "provision",
        file,
        "--trust",
        "root.pem",
        "--target",
        "lab",
        "--enqueue",
    ];
    args.extend(extra);
    let o = run(dir, &args);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let id = stdout(&o).trim().to_owned();
    assert!(id.starts_with("job-"), "{id}");
    id
}

/// The job's device records, from `status JOB --output json`.
fn records(dir: &Path, job: &str) -> Vec<serde_json::Value> {
    let o = run(dir, &["status", job, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["devices"].as_array().unwrap().clone()
}

fn fingerprints(cloud: &MockCloud) -> Vec<String> {
    let mut v: Vec<String> = cloud.devices().into_iter().map(|(_, fp)| fp).collect();
    v.sort();
    v
}

#[test]
fn resume_verifies_every_stored_certificate_again() {
    let cloud = MockCloud::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    write_config(w, &lab_config(&cloud.url));
    let pki = TestPki::infineon_like().unwrap();
    std::fs::write(
        w.join("root.pem"),
        format!("{}{}", pki.root_pem(), pki.ca_pem()),
    )
    .unwrap();

    // Verified when queued; since then a CRL lists device 2.
    let ids = write_batch(w, &pki, "batch.pem", 1, 4);
    let job = enqueue(w, "batch.pem", &[]);
    std::fs::write(w.join("ca.crl"), pki.crl(&[2]).unwrap()).unwrap();
    let o = run(
        w,
        &["resume", &job, "--trust", "root.pem", "--crl", "ca.crl"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), 1, "one device failed: {}{err}", stdout(&o));
    let mut want = vec![ids[0].clone(), ids[2].clone(), ids[3].clone()];
    want.sort();
    assert_eq!(
        fingerprints(&cloud),
        want,
        "the revoked device was not sent"
    );
    assert_eq!(cloud.stats()["creates"], 3);
    let recs = records(w, &job);
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

    // A CA no longer trusted (the run's `--trust root.pem` not given again, no `[trust]` that
    // holds it): nothing of the job is sent, every device says why.
    let ids = write_batch(w, &pki, "more.pem", 10, 3);
    let job = enqueue(w, "more.pem", &[]);
    let o = run(w, &["resume", &job]);
    assert_eq!(code(&o), 1, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(cloud.stats()["creates"], 3, "nothing more created");
    let recs = records(w, &job);
    assert_eq!(recs.len(), ids.len());
    for r in &recs {
        assert_eq!(r["state"], "failed", "{r}");
        let reason = r["reason"].as_str().unwrap();
        assert!(reason.contains("no longer verifies"), "{reason}");
    }
    // Trusted again (through `[trust]` this time): the same job finishes.
    write_config(
        w,
        &format!(
            "[trust]\nanchors = [\"root.pem\"]\n{}",
            lab_config(&cloud.url)
        ),
    );
    let o = run(w, &["resume", &job]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(cloud.stats()["creates"], 6);
}

#[test]
fn resume_builds_the_target_from_its_own_config_not_the_journals() {
    let (ran_with, here) = (MockCloud::start(&[]), MockCloud::start(&[]));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // The job is queued with `--config ran.toml` (its path is stored with the job) ...
    std::fs::write(w.join("ran.toml"), lab_config(&ran_with.url)).unwrap();
    write_config(w, &lab_config(&here.url));
    let pki = TestPki::infineon_like().unwrap();
    std::fs::write(
        w.join("root.pem"),
        format!("{}{}", pki.root_pem(), pki.ca_pem()),
    )
    .unwrap();
    write_batch(w, &pki, "batch.pem", 1, 2);
    let job = enqueue(w, "batch.pem", &["--config", "ran.toml"]);
    // ... and resumed without one: the default ./idbridge.toml is the config.
    let o = run(w, &["resume", &job, "--trust", "root.pem"]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(here.stats()["creates"], 2);
    assert_eq!(
        ran_with.stats()["creates"],
        0,
        "the stored path was not used"
    );

    // A config without the job's target says which config the job ran with.
    std::fs::write(w.join("empty.toml"), "").unwrap();
    let job = enqueue(w, "batch.pem", &["--config", "ran.toml"]);
    let o = run(
        w,
        &[
            "resume",
            &job,
            "--config",
            "empty.toml",
            "--trust",
            "root.pem",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(code(&o), 2, "{err}");
    assert!(
        err.contains("ran with --config") && err.contains("ran.toml"),
        "{err}"
    );
}
