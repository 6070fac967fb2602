//! One conformance suite for every journal store: each scenario is a plain `async fn` taking
//! `&dyn Journal`, run on a fresh SQLite file and on a fresh database of a real PostgreSQL
//! (started by the test with initdb + pg_ctl). Lease expiry runs on injected time.

use std::sync::Arc;

use super::*;
use crate::identity::Source;

fn cert(n: u32) -> DeviceIdentity {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("dev {n}"));
    let c = p.self_signed(&key).unwrap();
    DeviceIdentity::from_der(
        c.der().to_vec(),
        Source {
            file: "t.pem".into(),
            line: Some(u64::from(n)),
            entry: None,
        },
    )
    .unwrap()
}

fn spec(target: &str, devs: &[DeviceIdentity]) -> JobSpec {
    JobSpec::for_devices(
        Operation::Provision,
        target,
        devs.iter().map(|d| &d.device_id),
    )
}

/// Jobs open by key, devices keep input order, updates (grouped or not) land, identities
/// come back, finished jobs are not reopened.
async fn jobs_devices_and_updates(j: &dyn Journal) {
    let devs: Vec<_> = (0..4).map(cert).collect();
    // A duplicate in the input is kept once, at its first position.
    let mut input = devs.clone();
    input.push(devs[0].clone());
    let spec = spec("demo", &devs);
    let opened = j.open_job(&spec, &input).await.unwrap();
    assert!(!opened.resumed);
    let again = j.open_job(&spec, &input).await.unwrap();
    assert_eq!(again.id, opened.id);
    assert!(again.resumed);
    let id = opened.id;

    // In flight, then done with resources, then a later update without them: resources stay.
    let d1 = devs[1].device_id.clone();
    j.record(
        &id,
        vec![DeviceUpdate::state(d1.clone(), DeviceState::InFlight, 1)],
        false,
    )
    .await
    .unwrap();
    let mut u = DeviceUpdate::state(d1.clone(), DeviceState::Done, 1);
    u.outcome = Some(Outcome::Created);
    u.remote_name = Some("thing-1".into());
    u.resources.insert("etag".into(), "e1".into());
    j.record(&id, vec![u], false).await.unwrap();
    let mut later = DeviceUpdate::state(d1.clone(), DeviceState::Done, 2);
    later.outcome = Some(Outcome::AlreadyPresent);
    j.record(&id, vec![later], false).await.unwrap();
    let mut failed = DeviceUpdate::state(devs[3].device_id.clone(), DeviceState::Failed, 3);
    failed.outcome = Some(Outcome::Error);
    failed.error_kind = Some("invalid_input".into());
    failed.reason = Some("bad".into());
    failed.request_id = Some("req-9".into());
    j.record(
        &id,
        vec![
            DeviceUpdate::state(devs[2].device_id.clone(), DeviceState::InFlight, 1),
            failed,
        ],
        true,
    )
    .await
    .unwrap();
    j.flush().await.unwrap();

    let recs = j.devices(&id).await.unwrap();
    assert_eq!(recs.len(), 4);
    let ids: Vec<_> = recs.iter().map(|r| r.device_id.clone()).collect();
    let want: Vec<_> = devs.iter().map(|d| d.device_id.clone()).collect();
    assert_eq!(ids, want, "input order");
    assert_eq!(recs[0].state, DeviceState::Pending);
    assert_eq!(recs[1].state, DeviceState::Done);
    assert_eq!(recs[1].outcome, Some(Outcome::AlreadyPresent));
    assert_eq!(recs[1].attempts, 2);
    assert_eq!(recs[1].remote_name.as_deref(), Some("thing-1"));
    assert_eq!(recs[1].resources["etag"], "e1");
    assert_eq!(recs[2].state, DeviceState::InFlight);
    assert!(recs[2].state.needs_reconcile());
    assert_eq!(recs[3].state, DeviceState::Failed);
    assert_eq!(recs[3].request_id.as_deref(), Some("req-9"));
    assert_eq!(recs[3].source, "t.pem:3");

    assert_eq!(j.identities(&id).await.unwrap(), devs);
    let info = j.job(&id).await.unwrap().unwrap();
    assert_eq!(info.counts.total(), 4);
    assert_eq!(
        (
            info.counts.pending,
            info.counts.in_flight,
            info.counts.done,
            info.counts.failed
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(info.state, JobState::Running);
    assert_eq!(info.spec, spec);
    assert!(info.lease.is_none());

    j.set_job_state(&id, JobState::Finished).await.unwrap();
    let fresh = j.open_job(&spec, &devs).await.unwrap();
    assert!(!fresh.resumed, "a finished job is not reopened");
    assert_ne!(fresh.id, id);
    let all = j.jobs().await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(j.job("job-none").await.unwrap().is_none());
    assert!(j.devices("job-none").await.unwrap().is_empty());
}

/// Many devices updated in many concurrent groups all land.
async fn many_updates(j: &dyn Journal) {
    let devs: Vec<_> = (100..160).map(cert).collect();
    let id = j.open_job(&spec("bulk", &devs), &devs).await.unwrap().id;
    futures::future::join_all(devs.chunks(7).map(|chunk| {
        let id = id.clone();
        async move {
            for d in chunk {
                j.record(
                    &id,
                    vec![DeviceUpdate::state(
                        d.device_id.clone(),
                        DeviceState::InFlight,
                        1,
                    )],
                    true,
                )
                .await
                .unwrap();
                let mut u = DeviceUpdate::state(d.device_id.clone(), DeviceState::Done, 1);
                u.outcome = Some(Outcome::Created);
                j.record(&id, vec![u], false).await.unwrap();
            }
        }
    }))
    .await;
    j.flush().await.unwrap();
    let info = j.job(&id).await.unwrap().unwrap();
    assert_eq!(info.counts.done, 60, "{:?}", info.counts);
}

/// The lease rule on injected time: free, expired or one's own is granted; live and another's
/// is refused with the holder.
async fn lease_expiry(j: &dyn Journal) {
    let name = job_lease("job-lease-test");
    let a = j
        .acquire_lease(&name, "worker:a", 100, 1_000)
        .await
        .unwrap();
    assert_eq!(
        a,
        LeaseClaim::Granted(Lease {
            name: name.clone(),
            owner: "worker:a".into(),
            expires_ms: 1_100
        })
    );
    match j
        .acquire_lease(&name, "worker:b", 100, 1_050)
        .await
        .unwrap()
    {
        LeaseClaim::Held(l) => {
            assert_eq!(l.owner, "worker:a");
            assert!(l.live_at(1_050));
        }
        other => panic!("b got {other:?} while a holds it"),
    }
    assert!(j.renew_lease(&name, "worker:a", 100, 1_050).await.unwrap());
    assert!(matches!(
        j.acquire_lease(&name, "worker:b", 100, 1_149)
            .await
            .unwrap(),
        LeaseClaim::Held(_)
    ));
    // Renewed until 1150: at 1150 it has expired and b takes it over.
    assert!(matches!(
        j.acquire_lease(&name, "worker:b", 100, 1_150)
            .await
            .unwrap(),
        LeaseClaim::Granted(_)
    ));
    assert!(
        !j.renew_lease(&name, "worker:a", 100, 1_160).await.unwrap(),
        "a lost it"
    );
    assert!(matches!(
        j.acquire_lease(&name, "worker:a", 100, 1_160).await.unwrap(),
        LeaseClaim::Held(Lease { ref owner, .. }) if owner == "worker:b"
    ));
    // Re-acquiring one's own lease extends it.
    assert!(matches!(
        j.acquire_lease(&name, "worker:b", 500, 1_200)
            .await
            .unwrap(),
        LeaseClaim::Granted(Lease {
            expires_ms: 1_700,
            ..
        })
    ));
    j.release_lease(&name, "worker:a").await.unwrap();
    assert_eq!(j.lease(&name).await.unwrap().unwrap().owner, "worker:b");
    j.release_lease(&name, "worker:b").await.unwrap();
    assert!(j.lease(&name).await.unwrap().is_none());
    assert!(matches!(
        j.acquire_lease(&name, "worker:a", 100, 1_300)
            .await
            .unwrap(),
        LeaseClaim::Granted(_)
    ));
    j.release_lease(&name, "worker:a").await.unwrap();
}

/// `claim_job`: one job per target at a time, only configured targets, takeover after expiry,
/// and `job` shows the holder.
async fn claims(j: &dyn Journal) {
    let t1 = "claim-t1".to_owned();
    let t2 = "claim-t2".to_owned();
    let a: Vec<_> = (200..202).map(cert).collect();
    let b: Vec<_> = (202..204).map(cert).collect();
    let c: Vec<_> = (204..206).map(cert).collect();
    let j1 = j.open_job(&spec(&t1, &a), &a).await.unwrap().id;
    let j2 = j.open_job(&spec(&t1, &b), &b).await.unwrap().id;
    let j3 = j.open_job(&spec(&t2, &c), &c).await.unwrap().id;
    let targets = vec![t1.clone(), t2.clone()];

    assert!(
        j.claim_job("w9", &["elsewhere".to_owned()], 100, 10_000)
            .await
            .unwrap()
            .is_none(),
        "only configured targets"
    );
    let first = j
        .claim_job("w1", &targets, 100, 10_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.lease.as_ref().unwrap().owner, "w1");
    let second = j
        .claim_job("w2", &targets, 100, 10_000)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(
        first.spec.target, second.spec.target,
        "one worker per target"
    );
    assert!(
        j.claim_job("w3", &targets, 100, 10_050)
            .await
            .unwrap()
            .is_none(),
        "every target is driven"
    );
    let t1_job = if first.spec.target == t1 {
        &first
    } else {
        &second
    };
    assert!([&j1, &j2].contains(&&t1_job.id));
    assert_eq!(second.id == j3, second.spec.target == t2);

    // The holder of t1 dies (stops renewing); at expiry w3 takes its job over.
    let holder = t1_job.lease.as_ref().unwrap().owner.clone();
    let other = if holder == "w1" { "w2" } else { "w1" };
    assert!(
        j.renew_lease(&target_lease(&t2), other, 100, 10_080)
            .await
            .unwrap()
    );
    assert!(
        j.renew_lease(
            &job_lease(if t1_job.id == first.id {
                &second.id
            } else {
                &first.id
            }),
            other,
            100,
            10_080
        )
        .await
        .unwrap()
    );
    let taken = j
        .claim_job("w3", &targets, 100, 10_100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        taken.id, t1_job.id,
        "the expired job is resumed first (oldest)"
    );
    assert_eq!(taken.lease.unwrap().owner, "w3");
    assert!(
        !j.renew_lease(&job_lease(&t1_job.id), &holder, 100, 10_110)
            .await
            .unwrap()
    );

    // Finished jobs are never claimed; when the job finishes and leases are released the
    // other job of t1 goes to the next claimer.
    j.set_job_state(&taken.id, JobState::Finished)
        .await
        .unwrap();
    j.release_lease(&job_lease(&taken.id), "w3").await.unwrap();
    j.release_lease(&target_lease(&t1), "w3").await.unwrap();
    let next = j
        .claim_job("w4", std::slice::from_ref(&t1), 100, 10_120)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(next.id, taken.id);
    assert_eq!(next.spec.target, t1);
}

/// Claimers racing for 3 targets × 2 jobs: never two on one target.
async fn racing_claims(j: &dyn Journal) {
    let mut targets = Vec::new();
    for t in 0..3u32 {
        let target = format!("race-{t}");
        for k in 0..2u32 {
            let devs = vec![cert(300 + t * 10 + k)];
            j.open_job(&spec(&target, &devs), &devs).await.unwrap();
        }
        targets.push(target);
    }
    let claimed = futures::future::join_all((0..8).map(|w| {
        let targets = targets.clone();
        async move {
            j.claim_job(&format!("racer-{w}"), &targets, 1_000, 50_000)
                .await
                .unwrap()
        }
    }))
    .await;
    let got: Vec<_> = claimed.into_iter().flatten().collect();
    let mut per_target: Vec<_> = got.iter().map(|i| i.spec.target.clone()).collect();
    per_target.sort();
    per_target.dedup();
    assert_eq!(
        per_target.len(),
        got.len(),
        "two claims on one target: {got:?}"
    );
    assert_eq!(got.len(), 3, "every target claimed once");
}

/// Pages of records and identities cover the job once, in input order (positions with gaps where
/// the input repeated a device); records by id return exactly the job's devices asked for.
async fn pages(j: &dyn Journal) {
    let devs: Vec<_> = (200..207).map(cert).collect();
    let mut input = devs.clone();
    input.insert(3, devs[1].clone());
    let id = j.open_job(&spec("pages", &devs), &input).await.unwrap().id;
    let mut u = DeviceUpdate::state(devs[5].device_id.clone(), DeviceState::Done, 1);
    u.outcome = Some(Outcome::Created);
    j.record(&id, vec![u], true).await.unwrap();

    let mut records = Vec::new();
    let mut after = None;
    loop {
        let page = j.devices_page(&id, after, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        records.extend(page);
    }
    assert_eq!(records, j.devices(&id).await.unwrap());
    assert_eq!(records.len(), 7);
    assert_eq!(records[5].state, DeviceState::Done);
    // The time the outcome was recorded (RFC 3339); a device never updated has none.
    let at = records[5]
        .updated
        .as_deref()
        .expect("updated of a recorded device");
    assert!(
        ::time::OffsetDateTime::parse(at, &::time::format_description::well_known::Rfc3339).is_ok(),
        "{at}"
    );
    assert_eq!(records[0].updated, None);

    let mut identities = Vec::new();
    let mut after = None;
    loop {
        let page = j.identities_page(&id, after, 2).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        identities.extend(page);
    }
    let seqs: Vec<u64> = identities.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, records.iter().map(|r| r.seq).collect::<Vec<_>>());
    assert_eq!(
        identities.into_iter().map(|(_, d)| d).collect::<Vec<_>>(),
        devs
    );
    assert!(
        j.devices_page(&id, Some(1_000), 5)
            .await
            .unwrap()
            .is_empty()
    );

    let stranger = cert(299);
    let ask = [
        devs[6].device_id.clone(),
        stranger.device_id.clone(),
        devs[5].device_id.clone(),
    ];
    let mut got = j.records_of(&id, &ask).await.unwrap();
    got.sort_by_key(|r| r.seq);
    assert_eq!(got, vec![records[5].clone(), records[6].clone()]);
    assert!(j.records_of(&id, &[]).await.unwrap().is_empty());
    assert!(j.records_of("job-none", &ask).await.unwrap().is_empty());
}

/// A job opened from a stream of chunks: the same key as `open_job` for the same devices
/// (either way finds the other's job), repeats kept once at their first position, a second
/// streamed open continues the job and leaves no staged copy, a failing stream leaves nothing.
async fn streamed_open(j: &dyn Journal) {
    let devs: Vec<_> = (400..405).map(cert).collect();
    let chunks = |fail: bool| -> DeviceChunks<'static> {
        let mut v: Vec<Result<Vec<DeviceIdentity>>> = vec![
            Ok(vec![devs[0].clone(), devs[1].clone()]),
            Ok(vec![devs[2].clone(), devs[0].clone(), devs[3].clone()]),
        ];
        if fail {
            v.push(Err(Error::new(
                ErrorKind::InvalidInput,
                "input.pem: unreadable",
            )));
        }
        v.push(Ok(vec![devs[4].clone()]));
        futures::stream::iter(v).boxed()
    };
    let jobs_before = j.jobs().await.unwrap().len();
    let opened = j
        .open_job_streamed(
            Operation::Provision,
            "streamed",
            serde_json::json!({"a": 1}),
            chunks(false),
        )
        .await
        .unwrap();
    assert!(!opened.resumed);
    let info = j.job(&opened.id).await.unwrap().unwrap();
    assert_eq!(info.spec.key, spec("streamed", &devs).key);
    assert_eq!(info.state, JobState::Running);
    assert_eq!(info.counts.pending, 5);
    assert_eq!(info.spec.params, serde_json::json!({"a": 1}));
    let records = j.devices(&opened.id).await.unwrap();
    let ids: Vec<_> = records.iter().map(|r| r.device_id.clone()).collect();
    assert_eq!(
        ids,
        devs.iter().map(|d| d.device_id.clone()).collect::<Vec<_>>()
    );
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
    let stored: Vec<_> = j.identities(&opened.id).await.unwrap();
    assert_eq!(stored, devs);

    let again = j.open_job(&spec("streamed", &devs), &devs).await.unwrap();
    assert_eq!(
        again,
        OpenedJob {
            id: opened.id.clone(),
            resumed: true
        }
    );
    let streamed_again = j
        .open_job_streamed(
            Operation::Provision,
            "streamed",
            serde_json::Value::Null,
            chunks(false),
        )
        .await
        .unwrap();
    assert_eq!(
        streamed_again,
        OpenedJob {
            id: opened.id.clone(),
            resumed: true
        }
    );
    assert_eq!(j.jobs().await.unwrap().len(), jobs_before + 1);

    let err = j
        .open_job_streamed(
            Operation::Provision,
            "streamed-2",
            serde_json::Value::Null,
            chunks(true),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("input.pem"), "{err}");
    assert_eq!(j.jobs().await.unwrap().len(), jobs_before + 1);
}

#[test]
fn job_key_builder_is_for_devices_key() {
    let devs: Vec<_> = (500..506).map(cert).collect();
    let mut b = JobKeyBuilder::new(Operation::Deprovision, "t");
    for d in devs.iter().rev().chain(devs.iter().take(2)) {
        b.add(&d.device_id);
    }
    let want = JobSpec::for_devices(
        Operation::Deprovision,
        "t",
        devs.iter().map(|d| &d.device_id),
    );
    assert_eq!(b.finish(), want.key);
    let other = JobSpec::for_devices(Operation::Provision, "t", devs.iter().map(|d| &d.device_id));
    assert_ne!(other.key, want.key);
}

async fn conformance(j: Arc<dyn Journal>) {
    jobs_devices_and_updates(&*j).await;
    pages(&*j).await;
    streamed_open(&*j).await;
    many_updates(&*j).await;
    lease_expiry(&*j).await;
    claims(&*j).await;
    racing_claims(&*j).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_journal_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(&format!("sqlite:{}", dir.path().join("j.sqlite").display())).unwrap();
    conformance(j).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_journal_conformance() {
    let url = tokio::task::spawn_blocking(|| {
        let pg = idbridge_local_postgres::LocalPostgres::shared().unwrap_or_else(|e| panic!("{e}"));
        pg.database().unwrap()
    })
    .await
    .unwrap();
    let j = open(&url).unwrap();
    conformance(j).await;
}

#[tokio::test]
async fn postgres_url_errors_name_no_password() {
    let e = open("postgres://u:hunter2@127.0.0.1:1/db?sslmode=bogus").unwrap_err();
    assert!(!format!("{e}").contains("hunter2"), "{e}");
    // A database that is not there: a temporary network error, password not in it.
    let j = PostgresJournal::open(
        "postgres://u:hunter2@127.0.0.1:1/db",
        PostgresOptions {
            attempts: 1,
            acquire_timeout: std::time::Duration::from_millis(500),
            ..PostgresOptions::default()
        },
    )
    .unwrap();
    let e = j.jobs().await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert!(!format!("{e}").contains("hunter2"), "{e}");
    assert!(format!("{e}").contains("127.0.0.1:1/db"), "{e}");
}

#[tokio::test]
async fn sqlite_write_ahead_is_synced_and_a_failed_deferred_write_surfaces_at_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.sqlite");
    let j = SqliteJournal::open(&path).unwrap();
    let devs: Vec<_> = (0..2).map(cert).collect();
    let id = j.open_job(&spec("t", &devs), &devs).await.unwrap().id;
    let update = |n: usize, state, attempts| {
        vec![DeviceUpdate::state(
            devs[n].device_id.clone(),
            state,
            attempts,
        )]
    };
    j.record(&id, update(0, DeviceState::Pending, 0), false)
        .await
        .unwrap();
    j.flush().await.unwrap();
    assert_eq!(j.synced_commits(), 0, "ordinary updates are not synced");
    // The write-ahead mark before a non-idempotent call: committed with synchronous = FULL.
    j.record(&id, update(0, DeviceState::InFlight, 1), true)
        .await
        .unwrap();
    assert_eq!(j.synced_commits(), 1);

    // Another connection makes every later update fail (a full disk, an I/O error).
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "CREATE TRIGGER fail_updates BEFORE UPDATE ON devices
         BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;",
    )
    .unwrap();
    drop(c);
    // Deferred: nobody waits for it ...
    j.record(&id, update(1, DeviceState::Done, 1), false)
        .await
        .unwrap();
    // ... so it surfaces at flush, never silently.
    let e = j.flush().await.unwrap_err();
    assert!(e.to_string().contains("injected write failure"), "{e}");
}
