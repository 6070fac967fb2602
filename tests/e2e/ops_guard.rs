//! Operator guards and reports through the CLI: `deprovision` removes only verified devices
//! unless `--include-invalid`, shows its plan with `--dry-run`, asks a person at a terminal and
//! refuses a non-terminal without `--yes`, and `--revoke` is its own flag; reports as CSV (read
//! back with the `csv` crate), JSON Lines, and `status JOB --output csv`, with the vendors' ids
//! beside the cloud's.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use super::engine_support::{MockCloud, batch, code, run, stdout, write_config};

fn lab_config(url: &str) -> String {
    format!(
        "[targets.lab]\nkind = \"mock\"\nurl = \"{url}\"\nallow_http = true\n\
         token = \"t0ken\"\nquota = 100000\n"
    )
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `args` on a pseudo-terminal (util-linux `script`), typing `answer`.
fn run_on_terminal(dir: &Path, args: &[&str], answer: &str) -> Output {
    let mut cmd = String::from(env!("CARGO_BIN_EXE_idbridge"));
    for a in args {
        cmd.push_str(&format!(" '{a}'"));
    }
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .current_dir(dir)
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs (apt-get install bsdutils)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn deprovision_removes_only_verified_devices_after_a_dry_run_and_a_confirmation() {
    let cloud = MockCloud::start(&[]);
    let b = batch(4);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    write_config(w, &lab_config(&cloud.url));
    let (pem, trust) = (b.pem.to_str().unwrap(), b.root.to_str().unwrap());
    let o = run(w, &["provision", pem, "--trust", trust, "--target", "lab"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(cloud.stats()["devices"], 4);

    // Not a terminal and no --yes: refused before any call, naming the way out.
    let o = run(
        w,
        &["deprovision", pem, "--trust", trust, "--target", "lab"],
    );
    assert_eq!(code(&o), 2, "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("stdin is not a terminal")
            && err.contains("--yes")
            && err.contains("4 devices"),
        "{err}"
    );
    assert_eq!(cloud.stats()["devices"], 4, "nothing removed");

    // --dry-run lists what would go and changes nothing (no --yes needed).
    let o = run(
        w,
        &[
            "deprovision",
            pem,
            "--trust",
            trust,
            "--target",
            "lab",
            "--dry-run",
        ],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = stdout(&o);
    assert!(out.contains("4 would remove, 0 not in the target"), "{out}");
    assert!(
        out.contains(&b.device_ids[0][..12]),
        "devices listed: {out}"
    );
    assert_eq!(cloud.stats()["devices"], 4);
    let o = run(w, &["status", "--output", "json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1, "a dry run writes no job");

    // At a terminal the list is shown and anything but `yes` removes nothing.
    let o = run_on_terminal(
        w,
        &["deprovision", pem, "--trust", trust, "--target", "lab"],
        "no\n",
    );
    let seen = String::from_utf8_lossy(&o.stdout);
    assert!(
        seen.contains("About to remove 4 devices from target \"lab\""),
        "{}",
        text(&o)
    );
    assert!(seen.contains(&b.device_ids[1][..12]), "{seen}");
    assert!(seen.contains("nothing removed"), "{seen}");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(cloud.stats()["devices"], 4);

    // Without the batch's root the certificates do not verify: refused, still in the cloud.
    let o = run(w, &["deprovision", pem, "--target", "lab", "--yes"]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(stdout(&o).contains("4 refused"), "{}", text(&o));
    assert_eq!(cloud.stats()["devices"], 4);

    // --include-invalid removes them anyway.
    let o = run(
        w,
        &[
            "deprovision",
            pem,
            "--target",
            "lab",
            "--yes",
            "--include-invalid",
        ],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(stdout(&o).contains("4 deleted"), "{}", text(&o));
    assert_eq!(cloud.stats()["devices"], 0);

    // --revoke is for targets that revoke (AWS IoT); a mock target refuses it.
    let o = run(
        w,
        &[
            "deprovision",
            pem,
            "--trust",
            trust,
            "--target",
            "lab",
            "--yes",
            "--revoke",
        ],
    );
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--revoke is for aws-iot targets"),
        "{}",
        text(&o)
    );
}

fn fixture(rel: &str) -> String {
    format!("{}/tests/fixtures/real/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn csv_and_jsonl_reports_and_status_csv_carry_vendor_ids_beside_cloud_ids() {
    let cloud = MockCloud::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    write_config(w, &lab_config(&cloud.url));
    let infineon = fixture("infineon/cloud-id-bundle/extracted-sample");
    let microchip = fixture("microchip/manifests/thingpress_ECC608C-TNGTLSU-B.json");
    let espressif = fixture("espressif/thingpress_manifest-espressif.csv");
    let inputs = [infineon.as_str(), microchip.as_str(), espressif.as_str()];
    let mut args = vec!["provision"];
    args.extend(inputs);
    args.extend(["--target", "lab", "--report", "report.csv"]);
    let o = run(w, &args);
    // The Espressif test certificates do not verify (their CA is not a vendor root): refused.
    assert_eq!(code(&o), 1, "{}", text(&o));

    let mut csv = csv::Reader::from_path(w.join("report.csv")).unwrap();
    let headers = csv.headers().unwrap().clone();
    for h in [
        "job_id",
        "device_id",
        "vendor",
        "chip_id",
        "slot",
        "unique_id",
        "mac",
        "serial",
        "state",
        "outcome",
        "error",
        "request_id",
        "cloud_name",
        "resources",
        "job_created",
        "finished_at",
    ] {
        assert!(headers.iter().any(|x| x == h), "column {h} in {headers:?}");
    }
    let rows: Vec<HashMap<String, String>> = csv.deserialize().map(|r| r.unwrap()).collect();
    let by = |col: &str, v: &str| rows.iter().filter(|r| r[col] == v).collect::<Vec<_>>();
    for chip in [
        "0A091B5C001500070063",
        "0A091B5C0015000C0069",
        "0A091B5C001500110067",
    ] {
        let chip_rows = by("chip_id", chip);
        assert!(!chip_rows.is_empty(), "chip {chip} in the report");
        for r in chip_rows {
            assert_eq!(r["outcome"], "created", "{r:?}");
            assert_eq!(r["state"], "done", "{r:?}");
            assert!(
                ["E0E0", "E0E1", "E0E2"].contains(&r["slot"].as_str()),
                "{r:?}"
            );
            assert!(
                !r["serial"].is_empty() && !r["cloud_name"].is_empty(),
                "{r:?}"
            );
            assert_eq!(r["device_id"].len(), 64, "{r:?}");
            assert!(r["job_id"].starts_with("job-") && !r["job_created"].is_empty());
            assert!(!r["finished_at"].is_empty(), "{r:?}");
        }
    }
    let mchp = by("unique_id", "0123994afca075b501");
    assert_eq!(mchp.len(), 1, "Microchip uniqueId in the report");
    assert_eq!(mchp[0]["outcome"], "created");
    let esp = by("mac", "4BA2BB8764BD");
    assert_eq!(esp.len(), 1, "Espressif MAC in the report");
    assert_eq!(esp[0]["state"], "invalid");
    assert!(esp[0]["error"].contains("not a known CA"), "{:?}", esp[0]);
    let job = rows[0]["job_id"].clone();
    // finished_at: when the journal recorded each outcome, an RFC 3339 time within the job's
    // life; empty for entries never sent.
    let rfc3339 = |v: &str| {
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("finished_at {v:?}: {e}"))
    };
    let report_finished: HashMap<String, String> = rows
        .iter()
        .filter(|r| r["state"] == "done")
        .map(|r| (r["device_id"].clone(), r["finished_at"].clone()))
        .collect();
    assert!(report_finished.len() >= 4, "{rows:?}");
    for r in rows.iter().filter(|r| r["state"] == "done") {
        let at = rfc3339(&r["finished_at"]);
        assert!(at >= rfc3339(&r["job_created"]), "{r:?}");
        assert!(at <= time::OffsetDateTime::now_utc(), "{r:?}");
    }
    assert!(esp.iter().all(|r| r["finished_at"].is_empty()), "{esp:?}");

    // status JOB --output csv: the same devices from the journal, vendor ids included.
    let o = run(w, &["status", &job, "--output", "csv"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let mut csv = csv::Reader::from_reader(&o.stdout[..]);
    let rows: Vec<HashMap<String, String>> = csv.deserialize().map(|r| r.unwrap()).collect();
    // The journal's times, the same as in the run's report.
    for r in rows.iter().filter(|r| r["state"] == "done") {
        assert_eq!(
            Some(&r["finished_at"]),
            report_finished.get(&r["device_id"]),
            "{r:?}"
        );
    }
    assert!(
        rows.iter().any(|r| r["chip_id"] == "0A091B5C001500110067"
            && r["outcome"] == "created"
            && !r["cloud_name"].is_empty()),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r["unique_id"] == "0123994afca075b501"));

    // A JSON Lines report: one object per device, then the summary.
    let mut args = vec!["provision", infineon.as_str()];
    args.extend(["--target", "lab", "--report", "again.jsonl"]);
    let o = run(w, &args);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let text = std::fs::read_to_string(w.join("again.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (summary, devices) = lines.split_last().unwrap();
    assert!(devices.len() >= 3, "{text}");
    assert!(
        devices.iter().all(
            |d| d["outcome"] == "already_present" && !d["chip_id"].as_str().unwrap().is_empty()
        ),
        "{text}"
    );
    assert_eq!(summary["summary"]["already_present"], devices.len());
}

#[test]
fn the_config_trust_table_judges_inputs_of_inspect_diff_and_provision() {
    let cloud = MockCloud::start(&[]);
    let b = batch(3);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::copy(&b.root, w.join("root.pem")).unwrap();
    let pem = b.pem.to_str().unwrap();
    // Without the anchor the devices do not verify.
    write_config(w, &lab_config(&cloud.url));
    let o = run(w, &["inspect", pem]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    // `[trust] anchors`, relative to the config file, is used by every command.
    write_config(
        w,
        &format!(
            "[trust]\nanchors = [\"root.pem\"]\n{}",
            lab_config(&cloud.url)
        ),
    );
    let o = run(w, &["inspect", pem]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = run(w, &["provision", pem, "--target", "lab"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(cloud.stats()["devices"], 3);
    let o = run(w, &["diff", pem, "--target", "lab"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    // A bad validity_at is an error naming the key.
    write_config(
        w,
        &format!(
            "[trust]\nvalidity_at = \"yesterday\"\n{}",
            lab_config(&cloud.url)
        ),
    );
    let o = run(w, &["inspect", pem]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("[trust] validity_at"),
        "{}",
        text(&o)
    );
}

/// POSTs a JSON body to a mock cloud's control route (no client dependency).
fn post_json(url: &str, body: &str) {
    use std::io::Read;
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 2"), "POST {url}: {resp}");
}

#[test]
fn ctrl_c_stops_a_provision_cleanly_and_resume_finishes_it_with_nothing_twice() {
    use std::io::{BufRead, BufReader};
    const N: u64 = 60;
    let cloud = MockCloud::start(&[]);
    // Every call takes 300 ms: two at a time, the job needs about 9 s.
    post_json(
        &format!("{}/_mock/latency", cloud.url),
        r#"{"fixed_ms":300,"jitter_ms":0,"seed":1}"#,
    );
    let b = batch(N);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    write_config(w, &lab_config(&cloud.url));
    let mut child = super::engine_support::idbridge()
        .current_dir(w)
        .args(["provision", b.pem.to_str().unwrap(), "--trust"])
        .arg(&b.root)
        .args(["--target", "lab", "--concurrency", "2", "--batch-size", "1"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env_remove("IDBRIDGE_CONFIG")
        .env_remove("IDBRIDGE_JOURNAL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // Wait for the job to start (the first JSON progress line on a non-terminal).
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no start: {seen}");
        seen.push_str(&line);
        if line.contains("\"event\":\"started\"") {
            break;
        }
    }
    let job: serde_json::Value = serde_json::from_str(seen.lines().last().unwrap()).unwrap();
    let job = job["job"].as_str().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_millis(700));
    // The run's Prometheus metrics, while it runs.
    let addr = seen
        .lines()
        .find_map(|l| l.strip_prefix("idbridge: metrics at http://"))
        .expect("metrics address announced")
        .trim_end_matches("/metrics")
        .to_owned();
    let metrics = http_get_text(&addr, "/metrics");
    assert!(
        metrics.contains(
            "idbridge_connector_calls_total{target=\"lab\",api=\"register\",result=\"ok\"}"
        ),
        "{metrics}"
    );
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    seen.push_str(&rest);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {seen}");
    assert!(seen.contains("stopping: no new calls"), "{seen}");
    assert!(seen.contains(&format!("idbridge resume {job}")), "{seen}");
    let registered = cloud.stats()["devices"].as_u64().unwrap();
    assert!(registered < N, "stopped early: {registered} of {N}");

    // The journal holds the rest; resume finishes it, each device registered once.
    post_json(
        &format!("{}/_mock/latency", cloud.url),
        r#"{"fixed_ms":0,"jitter_ms":0,"seed":1}"#,
    );
    let o = run(w, &["resume", &job, "--trust", b.root.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let stats = cloud.stats();
    assert_eq!(stats["devices"], N, "{stats}");
    assert_eq!(stats["creates"], N, "nothing created twice: {stats}");
    let o = run(w, &["status", &job, "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["job"]["counts"]["done"], N);
}

/// GET `path` from `addr` and return the body (no client dependency).
fn http_get_text(addr: &str, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "GET {path}: {resp}");
    resp
}

#[test]
fn json_logs_carry_the_job_and_call_spans() {
    let cloud = MockCloud::start(&[]);
    let b = batch(2);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    write_config(w, &lab_config(&cloud.url));
    // The first register call fails with a 503: the engine retries it as attempt 2.
    post_json(
        &format!("{}/_mock/faults", cloud.url),
        r#"[{"method":"POST","times":1,"fault":{"type":"status","status":503}}]"#,
    );
    let o = run(
        w,
        &[
            "provision",
            b.pem.to_str().unwrap(),
            "--trust",
            b.root.to_str().unwrap(),
            "--target",
            "lab",
            "--batch-size",
            "2",
            "--log-format",
            "json",
            "--log",
            "idbridge=debug",
        ],
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let events: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    let failed = events
        .iter()
        .find(|v| v["fields"]["message"] == "call failed" && v["span"]["api"] == "register")
        .unwrap_or_else(|| panic!("no failed call event: {err}"));
    assert_eq!(failed["span"]["attempt"], 1, "{failed}");
    assert_eq!(failed["span"]["error_kind"], "server_error", "{failed}");
    let call = events
        .iter()
        .find(|v| {
            v["fields"]["message"] == "call ok"
                && v["span"]["api"] == "register"
                && v["span"]["attempt"] == 2
        })
        .unwrap_or_else(|| panic!("no successful retry as attempt 2: {err}"));
    let spans = call["spans"].as_array().unwrap();
    let job = spans.iter().find(|s| s["name"] == "job").expect("job span");
    assert!(
        job["job_id"].as_str().unwrap().starts_with("job-"),
        "{call}"
    );
    assert_eq!(job["target_name"], "lab");
    assert_eq!(job["operation"], "provision");
    assert_eq!(call["span"]["target_name"], "lab");
    assert!(call["span"]["devices"].as_u64().unwrap() >= 1, "{call}");
    assert!(!err.contains("t0ken"), "no secret in the logs");
}
