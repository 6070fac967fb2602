//! `provision`, `deprovision`, `diff`, `status`, `mock-cloud` end to end.
#![allow(clippy::unwrap_used)] // test helpers: a failure is a test failure

use super::engine_support::{MockCloud, batch, code, run, stdout, write_config};

fn lab_config(url: &str) -> String {
    format!(
        "[targets.lab]\nkind = \"mock\"\nurl = \"{url}\"\nallow_http = true\n\
         token = \"t0ken\"\nquota = 100000\n"
    )
}

#[test]
fn readme_command_provisions_the_example_batch_into_the_built_in_mock() {
    let work = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/batch.pem");
    let o = run(work.path(), &["provision", example, "--target", "demo"]);
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("10 done (10 created"), "{out}");
    assert!(work.path().join("idbridge-journal.sqlite").exists());
    let o = run(work.path(), &["status"]);
    assert!(stdout(&o).contains("finished"), "{}", stdout(&o));
}

#[test]
fn dry_run_changes_nothing_and_diff_after_provision_shows_nothing_missing() {
    let cloud = MockCloud::start(&[]);
    let b = batch(12);
    let work = tempfile::tempdir().unwrap();
    write_config(work.path(), &lab_config(&cloud.url));
    let (pem, trust) = (b.pem.to_str().unwrap(), b.root.to_str().unwrap());
    let args = |cmd: &'static str| vec![cmd, pem, "--trust", trust, "--target", "lab"];

    let mut dry = args("provision");
    dry.push("--dry-run");
    let o = run(work.path(), &dry);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains("12 would create"), "{}", stdout(&o));
    let stats = cloud.stats();
    assert_eq!(
        (stats["creates"].as_u64(), stats["devices"].as_u64()),
        (Some(0), Some(0))
    );
    let o = run(work.path(), &["status", "--output", "json"]);
    assert_eq!(stdout(&o).trim(), "[]", "a dry run writes no job");

    let o = run(work.path(), &args("diff"));
    assert_eq!(code(&o), 1, "missing devices: exit 1");
    assert!(
        stdout(&o).contains("12 missing, 0 identical"),
        "{}",
        stdout(&o)
    );

    let mut prov = args("provision");
    prov.extend(["--output", "json"]);
    let o = run(work.path(), &prov);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["job"]["counts"]["done"], 12);
    assert_eq!(v["job"]["devices"][0]["outcome"], "created");

    let o = run(work.path(), &args("diff"));
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("0 missing, 12 identical, 0 different, 0 extra in the target"),
        "{}",
        stdout(&o)
    );
    // A diff of fewer devices shows the others as extra.
    let small = batch(1);
    let o = run(
        work.path(),
        &[
            "diff",
            small.pem.to_str().unwrap(),
            "--trust",
            small.root.to_str().unwrap(),
            "--target",
            "lab",
        ],
    );
    assert!(
        stdout(&o).contains("1 missing, 0 identical, 0 different, 12 extra"),
        "{}",
        stdout(&o)
    );

    // Provisioning again is a new job where everything is already present.
    let o = run(work.path(), &args("provision"));
    assert_eq!(code(&o), 0);
    assert!(
        stdout(&o).contains("12 done (0 created, 12 already present"),
        "{}",
        stdout(&o)
    );
    assert_eq!(cloud.stats()["creates"], 12);

    let mut deprov = args("deprovision");
    deprov.push("--yes");
    let o = run(work.path(), &deprov);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("12 deleted"), "{}", stdout(&o));
    assert_eq!(cloud.stats()["devices"], 0);
    let o = run(work.path(), &deprov);
    assert!(stdout(&o).contains("12 not found"), "{}", stdout(&o));
}

#[test]
fn invalid_devices_are_reported_and_never_sent() {
    let cloud = MockCloud::start(&[]);
    let b = batch(3);
    let work = tempfile::tempdir().unwrap();
    write_config(work.path(), &lab_config(&cloud.url));
    let report = work.path().join("report.json");
    // Without --trust the generated vendor is unknown: every device is invalid.
    let o = run(
        work.path(),
        &[
            "provision",
            b.pem.to_str().unwrap(),
            "--target",
            "lab",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("invalid"), "{}", stdout(&o));
    assert_eq!(cloud.stats()["requests"], 0, "nothing sent");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["refused"].as_array().unwrap().len(), 3);
    assert!(
        r["refused"][0]["source"]
            .as_str()
            .unwrap()
            .contains("batch.pem:1")
    );
}

#[test]
fn bad_credentials_stop_the_job_and_never_leak_the_token() {
    let cloud = MockCloud::start(&[]);
    let b = batch(5);
    let work = tempfile::tempdir().unwrap();
    write_config(
        work.path(),
        &format!(
            "[targets.lab]\nkind = \"mock\"\nurl = \"{}\"\nallow_http = true\n\
             token = \"${{LAB_TOKEN}}\"\n",
            cloud.url
        ),
    );
    let secret = super::test_logs::secret("lab-token-provision-e2e");
    let o = super::engine_support::idbridge()
        .current_dir(work.path())
        .args([
            "provision",
            b.pem.to_str().unwrap(),
            "--trust",
            b.root.to_str().unwrap(),
        ])
        .args(["--target", "lab", "--output", "json", "--log", "debug"])
        .env("LAB_TOKEN", secret)
        .output()
        .unwrap();
    super::test_logs::record(&["provision", "--target", "lab"], &o);
    assert_eq!(code(&o), 1);
    let all = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(all.contains("unauthenticated"), "{all}");
    assert!(!all.contains(secret), "the token leaked into the output");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["job"]["finished"], false);
    assert_eq!(v["job"]["counts"]["failed"], 0, "nothing failed for good");
    for f in std::fs::read_dir(work.path()).unwrap() {
        let p = f.unwrap().path();
        if p.to_string_lossy().contains("journal") {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "the token is in {}",
                p.display()
            );
        }
    }
    // Unset variable: exit 2, naming the variable and the file.
    let o = run(
        work.path(),
        &["provision", b.pem.to_str().unwrap(), "--target", "lab"],
    );
    assert_eq!(code(&o), 2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("LAB_TOKEN") && err.contains("idbridge.toml"),
        "{err}"
    );
}

#[test]
fn configuration_errors_exit_2_with_a_clear_message() {
    let work = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/batch.pem");
    let o = run(work.path(), &["provision", example, "--target", "nope"]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no target \"nope\""));
    write_config(work.path(), "[targets.x]\nkind = \"carrier-pigeon\"\n");
    let o = run(work.path(), &["provision", example, "--target", "x"]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown kind \"carrier-pigeon\""));
    write_config(work.path(), "[targets.x]\nkind = \"mock\"\nurl = 5\n");
    let o = run(work.path(), &["provision", example, "--target", "x"]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("[targets.x]"));
    let o = run(work.path(), &["status", "job-0000"]);
    assert_eq!(code(&o), 2);
}
