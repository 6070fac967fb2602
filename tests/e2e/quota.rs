//! Provisioning under a cloud quota, through the CLI and a standalone mock cloud that enforces
//! 50 calls/s: every device is created exactly once and the job finishes, whether or not a
//! loaded machine made some calls arrive bunched (then the mock answers 429 + Retry-After and
//! the engine retries).
//!
//! That the engine never exceeds a quota is proven on paused time in the engine's own tests
//! (`a_quota_is_never_exceeded_and_is_used`); how close it runs to a real cloud's quota over
//! real sockets is measured by `idbridge bench quota`, never asserted on the clock here.
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use super::engine_support::{MockCloud, batch, code, run, write_config};

#[test]
fn under_a_quota_every_device_is_created_once() {
    let cloud = MockCloud::start(&["--quota", "50"]);
    let b = batch(160);
    let work = tempfile::tempdir().unwrap();
    write_config(
        work.path(),
        &format!(
            "[targets.lab]\nkind = \"mock\"\nurl = \"{}\"\nallow_http = true\ntoken = \"t0ken\"\n\
             quota = 50\n[targets.lab.engine]\nconcurrency = 32\n",
            cloud.url
        ),
    );
    let o = run(
        work.path(),
        &[
            "provision",
            b.pem.to_str().unwrap(),
            "--trust",
            b.root.to_str().unwrap(),
            "--target",
            "lab",
        ],
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    let stats = cloud.stats();
    eprintln!("quota test: {stats}");
    assert_eq!(stats["creates"], 160);
    assert_eq!(stats["max_creates_per_device"], 1);
    let mut held: Vec<String> = cloud.devices().into_iter().map(|(_, fp)| fp).collect();
    held.sort();
    let mut want = b.device_ids.clone();
    want.sort();
    assert_eq!(held, want, "the cloud holds exactly the batch");
}
