//! The engine against a scripted fake connector, on paused tokio time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::*;
use crate::connector::CallContext;
use crate::identity::{DeviceId, Source};
use crate::journal::SqliteJournal;

#[derive(Debug, Clone)]
enum Fault {
    /// This device fails with this error kind (and Retry-After).
    Device(ErrorKind, Option<Duration>),
    /// The whole call fails.
    Call(ErrorKind),
    /// The call takes effect, then the answer takes this long.
    StallAfterEffect(Duration),
}

#[derive(Debug, Default)]
struct FakeCloud {
    idempotent: bool,
    batch: usize,
    faults: Mutex<HashMap<DeviceId, VecDeque<Fault>>>,
    registered: Mutex<HashMap<DeviceId, u32>>,
    calls: Mutex<Vec<Vec<DeviceId>>>,
    lookups: Mutex<Vec<DeviceId>>,
    finished: Mutex<u32>,
}

impl FakeCloud {
    fn new(batch: usize, idempotent: bool) -> Arc<Self> {
        Arc::new(FakeCloud {
            idempotent,
            batch,
            ..Default::default()
        })
    }

    fn script(&self, d: &DeviceIdentity, faults: &[Fault]) {
        self.faults
            .lock()
            .unwrap()
            .entry(d.device_id.clone())
            .or_default()
            .extend(faults.iter().cloned());
    }

    fn creates(&self, d: &DeviceIdentity) -> u32 {
        self.registered
            .lock()
            .unwrap()
            .get(&d.device_id)
            .copied()
            .unwrap_or(0)
    }

    fn calls_with(&self, d: &DeviceIdentity) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.contains(&d.device_id))
            .count()
    }
}

fn error(kind: ErrorKind, after: Option<Duration>) -> Error {
    let mut e = Error::new(kind, "scripted").with_context("request_id", "req-1");
    if let Some(a) = after {
        e = e.with_retry_after(a);
    }
    e
}

#[async_trait]
impl Connector for FakeCloud {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "fake",
            max_batch_size: self.batch,
            max_deregister_batch_size: 0,
            supports_list: true,
            supports_deregister: true,
            idempotent_register: self.idempotent,
            ..Default::default()
        }
    }

    async fn register(
        &self,
        _ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        self.calls
            .lock()
            .unwrap()
            .push(devices.iter().map(|d| d.device_id.clone()).collect());
        let mut stall = None;
        let mut out = Vec::new();
        {
            let mut faults = self.faults.lock().unwrap();
            for d in devices {
                if let Some(q) = faults.get_mut(&d.device_id)
                    && let Some(Fault::Call(kind)) = q.front().cloned()
                {
                    q.pop_front();
                    return Err(error(kind, None));
                }
            }
            let mut reg = self.registered.lock().unwrap();
            for d in devices {
                let fault = faults.get_mut(&d.device_id).and_then(VecDeque::pop_front);
                match fault {
                    Some(Fault::Device(kind, after)) => {
                        out.push(RegisterOutcome::Failed(error(kind, after)));
                        continue;
                    }
                    Some(Fault::StallAfterEffect(t)) => stall = Some(t),
                    Some(Fault::Call(_)) | None => {}
                }
                let n = reg.entry(d.device_id.clone()).or_default();
                let remote = RemoteDevice::named(d.device_id.short());
                if *n > 0 {
                    out.push(RegisterOutcome::AlreadyPresent(remote));
                } else {
                    *n += 1;
                    out.push(RegisterOutcome::Created(remote.with_resource("etag", "e1")));
                }
            }
        }
        if let Some(t) = stall {
            tokio::time::sleep(t).await;
        }
        Ok(out)
    }

    async fn deregister(
        &self,
        _ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<DeregisterOutcome>> {
        self.calls
            .lock()
            .unwrap()
            .push(devices.iter().map(|d| d.device_id.clone()).collect());
        let mut faults = self.faults.lock().unwrap();
        let mut reg = self.registered.lock().unwrap();
        Ok(devices
            .iter()
            .map(|d| {
                if let Some(Fault::Device(kind, after)) =
                    faults.get_mut(&d.device_id).and_then(VecDeque::pop_front)
                {
                    return DeregisterOutcome::Failed(error(kind, after));
                }
                match reg.remove(&d.device_id) {
                    Some(_) => DeregisterOutcome::Deleted,
                    None => DeregisterOutcome::NotFound,
                }
            })
            .collect())
    }

    async fn lookup(
        &self,
        _ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        self.lookups.lock().unwrap().push(device.device_id.clone());
        Ok(self
            .registered
            .lock()
            .unwrap()
            .contains_key(&device.device_id)
            .then(|| {
                let mut r = RemoteDevice::named(device.device_id.short());
                r.device_id = Some(device.device_id.clone());
                r
            }))
    }

    async fn list(
        &self,
        _ctx: &CallContext,
        _cursor: Option<String>,
    ) -> Result<crate::connector::ListPage> {
        Ok(crate::connector::ListPage {
            devices: self
                .registered
                .lock()
                .unwrap()
                .keys()
                .map(|id| {
                    let mut r = RemoteDevice::named(id.short());
                    r.device_id = Some(id.clone());
                    r
                })
                .collect(),
            next: None,
        })
    }

    async fn health_check(&self, _ctx: &CallContext) -> Result<()> {
        Ok(())
    }

    async fn finish(&self, _ctx: &CallContext) -> Result<()> {
        *self.finished.lock().unwrap() += 1;
        Ok(())
    }
}

fn devices(n: u32) -> Vec<DeviceIdentity> {
    (0..n)
        .map(|i| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, format!("dev {i}"));
            let c = p.self_signed(&key).unwrap();
            DeviceIdentity::from_der(
                c.der().to_vec(),
                Source {
                    file: "batch.pem".into(),
                    line: Some(u64::from(i) * 12 + 1),
                    entry: None,
                },
            )
            .unwrap()
        })
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    journal: Arc<SqliteJournal>,
}

fn journal() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(SqliteJournal::open(dir.path().join("j.sqlite")).unwrap());
    Setup { _dir: dir, journal }
}

fn engine(cloud: &Arc<FakeCloud>, s: &Setup, opts: EngineOptions) -> Engine {
    Engine::new(cloud.clone(), s.journal.clone(), opts)
}

fn opts() -> EngineOptions {
    EngineOptions {
        seed: Some(1),
        attempt_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

/// The seed of a test's randomness: `IDBRIDGE_TEST_SEED` when set, else drawn; printed so that
/// a failure can be replayed.
fn test_seed() -> u64 {
    let seed = std::env::var("IDBRIDGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("IDBRIDGE_TEST_SEED={seed}");
    seed
}

fn record<'a>(r: &'a JobReport, d: &DeviceIdentity) -> &'a DeviceRecord {
    r.devices
        .iter()
        .find(|x| x.device_id == d.device_id)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn throttling_honours_retry_after_and_retries_only_that_device() {
    let cloud = FakeCloud::new(4, true);
    let devs = devices(4);
    cloud.script(
        &devs[2],
        &[Fault::Device(
            ErrorKind::RateLimited,
            Some(Duration::from_secs(3)),
        )],
    );
    let s = journal();
    let start = tokio::time::Instant::now();
    let r = engine(&cloud, &s, opts())
        .execute(
            Operation::Provision,
            "t",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.all_done(), "{r:?}");
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "Retry-After honoured"
    );
    let calls = cloud.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1],
        vec![devs[2].device_id.clone()],
        "only the failed item"
    );
    assert_eq!(record(&r, &devs[2]).attempts, 2);
    assert_eq!(record(&r, &devs[2]).outcome, Some(Outcome::Created));
    assert_eq!(record(&r, &devs[0]).attempts, 1);
    assert_eq!(*cloud.finished.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn server_errors_and_resets_are_retried_with_backoff() {
    let cloud = FakeCloud::new(1, true);
    let devs = devices(2);
    cloud.script(
        &devs[0],
        &[
            Fault::Call(ErrorKind::ServerError),
            Fault::Call(ErrorKind::Network),
        ],
    );
    let s = journal();
    let start = tokio::time::Instant::now();
    let r = engine(&cloud, &s, opts())
        .execute(
            Operation::Provision,
            "t",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.all_done());
    assert_eq!(cloud.calls_with(&devs[0]), 3);
    assert_eq!(cloud.calls_with(&devs[1]), 1);
    // Two backoffs: at least 100 ms + 200 ms (half of 200 ms and of 400 ms).
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(cloud.creates(&devs[0]), 1);
}

#[tokio::test(start_paused = true)]
async fn stall_past_timeout_is_reconciled_with_lookup_not_resent() {
    let cloud = FakeCloud::new(1, false);
    let devs = devices(2);
    cloud.script(
        &devs[1],
        &[Fault::StallAfterEffect(Duration::from_secs(60))],
    );
    let s = journal();
    let r = engine(&cloud, &s, opts())
        .execute(
            Operation::Provision,
            "t",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.all_done(), "{r:?}");
    assert_eq!(cloud.calls_with(&devs[1]), 1, "never sent twice");
    assert_eq!(cloud.creates(&devs[1]), 1);
    assert_eq!(
        cloud.lookups.lock().unwrap().as_slice(),
        std::slice::from_ref(&devs[1].device_id),
        "looked up before any new attempt"
    );
    assert_eq!(record(&r, &devs[1]).outcome, Some(Outcome::AlreadyPresent));
    assert_eq!(record(&r, &devs[0]).outcome, Some(Outcome::Created));
}

#[tokio::test(start_paused = true)]
async fn timeout_on_idempotent_call_is_resent_without_lookup() {
    let cloud = FakeCloud::new(1, true);
    let devs = devices(1);
    cloud.script(
        &devs[0],
        &[Fault::StallAfterEffect(Duration::from_secs(60))],
    );
    let s = journal();
    let r = engine(&cloud, &s, opts())
        .execute(
            Operation::Provision,
            "t",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.all_done());
    assert_eq!(cloud.calls_with(&devs[0]), 2);
    assert!(cloud.lookups.lock().unwrap().is_empty());
    assert_eq!(record(&r, &devs[0]).outcome, Some(Outcome::AlreadyPresent));
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_fail_that_device_only_and_are_not_retried() {
    let cloud = FakeCloud::new(3, true);
    let devs = devices(3);
    cloud.script(&devs[1], &[Fault::Device(ErrorKind::InvalidInput, None)]);
    let s = journal();
    let r = engine(&cloud, &s, opts())
        .execute(
            Operation::Provision,
            "t",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.finished);
    assert_eq!(r.counts.done, 2);
    assert_eq!(r.counts.failed, 1);
    let bad = record(&r, &devs[1]);
    assert_eq!(bad.state, DeviceState::Failed);
    assert_eq!(bad.error_kind.as_deref(), Some("invalid_input"));
    assert_eq!(bad.request_id.as_deref(), Some("req-1"));
    assert_eq!(cloud.calls.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_max_attempts() {
    let cloud = FakeCloud::new(1, true);
    let devs = devices(1);
    cloud.script(
        &devs[0],
        &vec![Fault::Device(ErrorKind::ServerError, None); 20],
    );
    let s = journal();
    let mut o = opts();
    o.retry.max_attempts = 4;
    let r = engine(&cloud, &s, o)
        .execute(
            Operation::Provision,
            "t",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(cloud.calls_with(&devs[0]), 4);
    let rec = record(&r, &devs[0]);
    assert_eq!(rec.state, DeviceState::Failed);
    assert!(
        rec.reason.as_deref().unwrap().contains("gave up after 4"),
        "{rec:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_credentials_stop_the_job_and_leave_devices_pending() {
    let cloud = FakeCloud::new(1, true);
    let devs = devices(3);
    for d in &devs {
        cloud.script(d, &[Fault::Call(ErrorKind::Unauthenticated)]);
    }
    let s = journal();
    let mut o = opts();
    o.concurrency = 1;
    let e = engine(&cloud, &s, o);
    let r = e
        .execute(
            Operation::Provision,
            "t",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(!r.finished);
    assert!(r.aborted.as_deref().unwrap().contains("unauthenticated"));
    assert_eq!(r.counts.failed, 0, "nothing failed for good");
    assert!(cloud.calls.lock().unwrap().len() < 3, "stopped early");
    // Credentials fixed (faults used up): the same command finishes the same job.
    cloud.faults.lock().unwrap().clear();
    let r2 = e
        .execute(
            Operation::Provision,
            "t",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(r2.job_id, r.job_id);
    assert!(r2.resumed && r2.all_done());
}

#[tokio::test(start_paused = true)]
async fn a_per_device_fatal_error_stops_the_job_and_leaves_the_rest_pending() {
    for (kind, op) in [
        (ErrorKind::TargetDisabled, Operation::Provision),
        (ErrorKind::PermissionDenied, Operation::Provision),
        (ErrorKind::Unauthenticated, Operation::Deprovision),
    ] {
        // Non-idempotent too: the write-ahead mark of the refused device is taken back.
        for idempotent in [true, false] {
            let cloud = FakeCloud::new(1, idempotent);
            let devs = devices(4);
            cloud.script(&devs[1], &[Fault::Device(kind, None)]);
            let s = journal();
            let mut o = opts();
            o.concurrency = 1;
            let e = engine(&cloud, &s, o);
            let r = e
                .execute(op, "t", devs.clone(), serde_json::Value::Null, &NoProgress)
                .await
                .unwrap();
            assert!(!r.finished, "{kind:?}");
            assert!(
                r.aborted.as_deref().unwrap().contains(kind.as_str()),
                "{kind:?}: {r:?}"
            );
            assert_eq!(
                r.counts.failed, 0,
                "{kind:?}: nothing failed for good: {r:?}"
            );
            assert_eq!(record(&r, &devs[0]).state, DeviceState::Done);
            for d in &devs[1..] {
                assert_eq!(record(&r, d).state, DeviceState::Pending, "{kind:?}");
            }
            assert_eq!(
                cloud.calls.lock().unwrap().len(),
                2,
                "no call after the refusal"
            );
            // The target is back: the same command finishes the same job.
            let r2 = e
                .execute(op, "t", devs.clone(), serde_json::Value::Null, &NoProgress)
                .await
                .unwrap();
            assert_eq!(r2.job_id, r.job_id);
            assert!(r2.resumed && r2.all_done(), "{r2:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn crash_after_send_is_reconciled_on_rerun() {
    // A device the journal says was in flight, which the cloud did create (the process died
    // between the call and recording its answer), and one in flight the cloud never saw.
    let cloud = FakeCloud::new(1, false);
    let devs = devices(3);
    let s = journal();
    let e = engine(&cloud, &s, opts());
    let opened = e
        .open(Operation::Provision, "t", &devs, serde_json::Value::Null)
        .await
        .unwrap();
    s.journal
        .record(
            &opened.id,
            vec![
                DeviceUpdate::state(devs[0].device_id.clone(), DeviceState::InFlight, 1),
                DeviceUpdate::state(devs[1].device_id.clone(), DeviceState::InFlight, 1),
            ],
            true,
        )
        .await
        .unwrap();
    cloud
        .registered
        .lock()
        .unwrap()
        .insert(devs[0].device_id.clone(), 1);
    let r = e
        .execute(
            Operation::Provision,
            "t",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(r.job_id, opened.id);
    assert!(r.all_done());
    assert_eq!(cloud.calls_with(&devs[0]), 0, "found by lookup, not resent");
    assert_eq!(cloud.calls_with(&devs[1]), 1);
    assert_eq!(cloud.calls_with(&devs[2]), 1);
    for d in &devs {
        assert_eq!(cloud.creates(d), 1);
    }
    assert_eq!(record(&r, &devs[0]).outcome, Some(Outcome::AlreadyPresent));
    // Resume by job id alone, from the journal's stored identities: nothing left to do.
    let again = e.resume(&opened.id, &NoProgress).await.unwrap();
    assert!(again.all_done());
    assert_eq!(cloud.calls.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn deprovision_and_diff() {
    let cloud = FakeCloud::new(2, false);
    let devs = devices(3);
    let s = journal();
    let e = engine(&cloud, &s, opts());
    let plan = e.diff(&devs).await.unwrap();
    assert_eq!(plan.missing, 3);
    assert_eq!(cloud.calls.lock().unwrap().len(), 0, "diff changes nothing");
    e.execute(
        Operation::Provision,
        "t",
        devs[..2].to_vec(),
        serde_json::Value::Null,
        &NoProgress,
    )
    .await
    .unwrap();
    let plan = e.diff(&devs[1..]).await.unwrap();
    assert_eq!((plan.missing, plan.identical, plan.extra), (1, 1, 1));
    let r = e
        .execute(
            Operation::Deprovision,
            "t",
            devs.clone(),
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.all_done());
    assert_eq!(record(&r, &devs[0]).outcome, Some(Outcome::Deleted));
    assert_eq!(record(&r, &devs[2]).outcome, Some(Outcome::NotFound));
    assert!(cloud.registered.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn target_rate_paces_devices() {
    let cloud = FakeCloud::new(1, true);
    let devs = devices(21);
    let s = journal();
    let mut o = opts();
    o.rate = Some(10.0);
    let start = tokio::time::Instant::now();
    let r = engine(&cloud, &s, o)
        .execute(
            Operation::Provision,
            "t",
            devs,
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(r.all_done());
    let t = start.elapsed().as_secs_f64();
    assert!((t - 20.0 / 9.7).abs() < 0.05, "took {t}");
}

#[test]
fn execute_is_send_for_servers() {
    // `idbridge serve` runs jobs from request handlers on a multi-threaded runtime.
    fn send<T: Send>(_: &T) {}
    fn sync<T: Send + Sync>() {}
    sync::<Engine>();
    let s = journal();
    let cloud = FakeCloud::new(1, true);
    let e = engine(&cloud, &s, opts());
    let f = e.execute(
        Operation::Provision,
        "t",
        Vec::new(),
        serde_json::Value::Null,
        &NoProgress,
    );
    send(&f);
}

/// A cloud with a per-API quota, whose calls take a seeded random time: records when each wire
/// call is made (after the pacer granted it).
#[derive(Debug)]
struct QuotaCloud {
    quota: f64,
    burst: u32,
    batch: usize,
    latency: Mutex<rand::rngs::StdRng>,
    arrivals: Mutex<Vec<tokio::time::Instant>>,
}

#[async_trait]
impl Connector for QuotaCloud {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "quota",
            max_batch_size: self.batch,
            max_deregister_batch_size: 0,
            quotas: vec![Quota {
                burst: self.burst,
                ..Quota::new("Create", self.quota)
            }],
            idempotent_register: true,
            ..Default::default()
        }
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        use rand::Rng;
        let n = u32::try_from(devices.len()).unwrap();
        ctx.acquire_n("Create", n).await;
        {
            let mut a = self.arrivals.lock().unwrap();
            for _ in 0..n {
                a.push(tokio::time::Instant::now());
            }
        }
        let wire = Duration::from_millis(self.latency.lock().unwrap().random_range(0..300));
        tokio::time::sleep(wire).await;
        Ok(devices
            .iter()
            .map(|d| RegisterOutcome::Created(RemoteDevice::named(d.device_id.short())))
            .collect())
    }

    async fn lookup(&self, _: &CallContext, _: &DeviceIdentity) -> Result<Option<RemoteDevice>> {
        Ok(None)
    }

    async fn health_check(&self, _: &CallContext) -> Result<()> {
        Ok(())
    }
}

/// The most calls in any one-second window (sliding, starting at each call).
fn max_in_any_second(times: &[tokio::time::Instant]) -> usize {
    let mut t = times.to_vec();
    t.sort();
    (0..t.len())
        .map(|i| {
            t[i..]
                .iter()
                .take_while(|u| **u - t[i] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn a_quota_is_never_exceeded_and_is_used() {
    // 32 calls in flight, each taking 0-300 ms, against a quota; single devices and bulk calls
    // of 7 counted per device (a bulk API declares a burst of at least one call, as Azure's
    // does: a cloud cannot admit a call bigger than its bucket).
    // On paused time the answer is exact, however loaded the machine.
    let seed = test_seed();
    for (batch, quota, burst) in [(1, 50.0, 1), (1, 10.0, 1), (7, 50.0, 7), (1, 50.0, 5)] {
        let cloud = Arc::new(QuotaCloud {
            quota,
            burst,
            batch,
            latency: Mutex::new(rand::SeedableRng::seed_from_u64(seed)),
            arrivals: Mutex::new(Vec::new()),
        });
        let s = journal();
        let mut o = opts();
        o.concurrency = 32;
        let start = tokio::time::Instant::now();
        let n = 160;
        let r = Engine::new(cloud.clone(), s.journal.clone(), o)
            .execute(
                Operation::Provision,
                "t",
                devices(n),
                serde_json::Value::Null,
                &NoProgress,
            )
            .await
            .unwrap();
        assert!(r.all_done(), "{r:?}");
        let arrivals = cloud.arrivals.lock().unwrap().clone();
        assert_eq!(arrivals.len(), n as usize);
        let case = format!("batch {batch}, {quota}/s, burst {burst} (seed {seed})");
        // A quota of Q/s with a burst of B admits at most Q + B - 1 calls in any second.
        let max = max_in_any_second(&arrivals);
        let limit = quota as usize + burst as usize - 1;
        assert!(
            max <= limit,
            "{case}: {max} calls in one second, limit {limit}"
        );
        // Used, not starved: the job takes about n / (0.97 * quota) seconds.
        let took = start.elapsed().as_secs_f64();
        let ideal = f64::from(n) / (quota * HEADROOM);
        assert!(
            took < ideal * 1.05 + 0.3,
            "{case}: {took} s for {n} devices"
        );
    }
}

/// The devices a run may hold: the calls in flight, one batch queued, one being handed over,
/// and the window with a batch being formed.
fn held_bound(o: &EngineOptions, batch: usize) -> usize {
    let window = o.window.max(batch);
    (o.max_concurrency.max(o.concurrency) + 3) * batch + window
}

/// A cloud like AWS IoT: each device is four calls in a row, each answered after 50 ms ± 20 ms
/// (seeded), the first at a quota of 100/s, the others at 1,000/s; the first device also reads
/// a setting at 10/s (AWS's GetPolicy), which must not pin the sizing to 10/s.
#[derive(Debug)]
struct SlowCloud {
    latency: Mutex<rand::rngs::StdRng>,
    set_up: AtomicBool,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

#[async_trait]
impl Connector for SlowCloud {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "slow",
            max_batch_size: 1,
            quotas: vec![
                Quota::new("Register", 100.0),
                Quota::new("Thing", 1000.0),
                Quota::new("Attach", 1000.0),
                Quota::new("Policy", 1000.0),
                Quota::new("Setup", 10.0),
            ],
            idempotent_register: true,
            ..Default::default()
        }
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        use rand::Rng;
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(now, Ordering::AcqRel);
        if !self.set_up.swap(true, Ordering::AcqRel) {
            ctx.acquire("Setup").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for api in ["Register", "Thing", "Attach", "Policy"] {
            ctx.acquire(api).await;
            let ms = self.latency.lock().unwrap().random_range(30..=70);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        Ok(devices
            .iter()
            .map(|d| RegisterOutcome::Created(RemoteDevice::named(d.device_id.short())))
            .collect())
    }

    async fn lookup(&self, _: &CallContext, _: &DeviceIdentity) -> Result<Option<RemoteDevice>> {
        Ok(None)
    }

    async fn health_check(&self, _: &CallContext) -> Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn concurrency_grows_with_latency_until_the_quota_binds() {
    // 2,000 devices at 100/s take 20.6 s at the quota (97% headroom). Each device takes about
    // 200 ms of the cloud's time, so 16 calls in flight would reach only 80/s (25 s): the run
    // must size its concurrency from the quota and the latency it sees. Paused time: exact.
    let seed = test_seed();
    let run = |max_concurrency: usize| async move {
        let cloud = Arc::new(SlowCloud {
            latency: Mutex::new(rand::SeedableRng::seed_from_u64(seed)),
            set_up: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let s = journal();
        let o = EngineOptions {
            concurrency: 16,
            max_concurrency,
            ..opts()
        };
        let start = tokio::time::Instant::now();
        let r = Engine::new(cloud.clone(), s.journal.clone(), o)
            .execute(
                Operation::Provision,
                "t",
                devices(2000),
                serde_json::Value::Null,
                &NoProgress,
            )
            .await
            .unwrap();
        assert!(r.all_done(), "{r:?}");
        (
            start.elapsed().as_secs_f64(),
            cloud.peak.load(Ordering::Acquire),
        )
    };
    let floor = 2000.0 / (100.0 * HEADROOM);
    let (fixed, fixed_peak) = run(16).await;
    assert_eq!(fixed_peak, 16, "seed {seed}");
    assert!(fixed > floor * 1.15, "fixed at 16: {fixed} s (seed {seed})");
    let (sized, peak) = run(DEFAULT_MAX_CONCURRENCY).await;
    assert!(
        sized <= floor * 1.05,
        "sized: {sized} s against a floor of {floor} s, peak {peak} in flight (seed {seed})"
    );
    assert!(
        (20..=64).contains(&peak),
        "peak {peak} in flight (seed {seed})"
    );
}

#[tokio::test(start_paused = true)]
async fn a_run_holds_a_bounded_window_and_sends_each_device_once() {
    let cloud = FakeCloud::new(3, false);
    let devs = devices(60);
    // The input repeats devices, near (same window) and far (a later window).
    let mut input = devs.clone();
    input.insert(2, devs[1].clone());
    input.extend(devs[..10].iter().cloned());
    let s = journal();
    let o = EngineOptions {
        concurrency: 2,
        window: 8,
        ..opts()
    };
    let e = engine(&cloud, &s, o.clone());
    let opened = e
        .open(Operation::Provision, "t", &input, serde_json::Value::Null)
        .await
        .unwrap();
    let mut u = DeviceUpdate::state(devs[5].device_id.clone(), DeviceState::Done, 1);
    u.outcome = Some(Outcome::Created);
    s.journal.record(&opened.id, vec![u], true).await.unwrap();
    let r = e
        .run(&opened, Operation::Provision, "t", input, &NoProgress)
        .await
        .unwrap();
    assert!(r.all_done(), "{r:?}");
    assert_eq!(r.counts.total(), 60);
    for (i, d) in devs.iter().enumerate() {
        let want = usize::from(i != 5);
        assert_eq!(cloud.calls_with(d), want, "device {i}");
        assert_eq!(cloud.creates(d), u32::from(i != 5), "device {i}");
    }
    assert!(
        (1..=held_bound(&o, 3)).contains(&r.peak_held),
        "held at most {} of 60",
        r.peak_held
    );
    assert_eq!(e.held().now(), 0, "nothing held after the run");
    assert_eq!(e.held().peak(), r.peak_held);
}

#[tokio::test(start_paused = true)]
async fn resume_reads_the_journal_a_page_at_a_time() {
    let cloud = FakeCloud::new(2, false);
    let devs = devices(40);
    let s = journal();
    let o = EngineOptions {
        concurrency: 3,
        window: 4,
        ..opts()
    };
    let e = engine(&cloud, &s, o.clone());
    let opened = e
        .open(Operation::Provision, "t", &devs, serde_json::Value::Null)
        .await
        .unwrap();
    // An earlier run finished the first ten and crashed with the 13th in flight, after the
    // cloud created it.
    let mut marks: Vec<_> = devs[..10]
        .iter()
        .map(|d| {
            let mut u = DeviceUpdate::state(d.device_id.clone(), DeviceState::Done, 1);
            u.outcome = Some(Outcome::Created);
            u
        })
        .collect();
    marks.push(DeviceUpdate::state(
        devs[12].device_id.clone(),
        DeviceState::InFlight,
        1,
    ));
    s.journal.record(&opened.id, marks, true).await.unwrap();
    cloud
        .registered
        .lock()
        .unwrap()
        .insert(devs[12].device_id.clone(), 1);
    let r = e.resume(&opened.id, &NoProgress).await.unwrap();
    assert!(r.all_done(), "{r:?}");
    assert!(r.resumed);
    for (i, d) in devs.iter().enumerate() {
        let sent = usize::from(i >= 10 && i != 12);
        assert_eq!(cloud.calls_with(d), sent, "device {i}");
    }
    assert_eq!(
        cloud.creates(&devs[12]),
        1,
        "found by lookup, not created again"
    );
    assert_eq!(record(&r, &devs[12]).outcome, Some(Outcome::AlreadyPresent));
    assert!(
        (1..=held_bound(&o, 2)).contains(&r.peak_held),
        "held at most {} of 40",
        r.peak_held
    );
}

mod call_path;
