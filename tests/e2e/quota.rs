//! The quota test: with a quota of 50/s the mock cloud never sees more than 50 calls in any
//! second (sliding window, measured by the mock on arrival), and throttles none.
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use super::engine_support::{MockCloud, batch, code, run, write_config};

#[test]
fn a_quota_of_50_per_second_is_never_exceeded() {
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
    let started = std::time::Instant::now();
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
    let took = started.elapsed();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    let stats = cloud.stats();
    eprintln!("quota test: {stats} in {took:?}");
    assert_eq!(stats["creates"], 160);
    assert_eq!(stats["throttled"], 0, "the engine went over the quota");
    let max = stats["max_requests_in_any_second"].as_u64().unwrap();
    assert!(max <= 50, "{max} calls in one second");
    assert!(max >= 40, "the quota should be used, not starved: {max}/s");
}
