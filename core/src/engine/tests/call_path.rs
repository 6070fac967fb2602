//! Every connector call goes through the engine's one call path (issue #9): lookups, list,
//! finish and health checks are paced outside the attempt timeout, retried from one budget,
//! and a job-stopping error from any of them stops the work like one from register.

use super::*;

/// A cloud whose every call asks the pacer for its API's token (several tokens for `finish`,
/// which makes several wire calls), records each acquisition and wire call, and fails as
/// scripted per API.
#[derive(Debug, Default)]
struct Calls {
    quotas: Vec<Quota>,
    /// Per API: the answers of its next calls, in order (None: success).
    faults: Mutex<HashMap<&'static str, VecDeque<Option<Error>>>>,
    /// Every acquisition started: (API, when).
    acquired: Mutex<Vec<(&'static str, tokio::time::Instant)>>,
    /// Every wire call made (after its tokens): (API, when).
    wire: Mutex<Vec<(&'static str, tokio::time::Instant)>>,
    registered: Mutex<Vec<DeviceId>>,
}

/// Wire calls `finish` makes, each paced (a manifest writer: flush, sign, rename).
const FINISH_CALLS: usize = 3;

impl Calls {
    fn new(quotas: &[(&str, f64)]) -> Arc<Self> {
        Arc::new(Calls {
            quotas: quotas.iter().map(|(a, q)| Quota::new(*a, *q)).collect(),
            ..Default::default()
        })
    }

    fn fail(&self, api: &'static str, errors: impl IntoIterator<Item = Error>) {
        self.script(api, errors.into_iter().map(Some));
    }

    fn script(&self, api: &'static str, answers: impl IntoIterator<Item = Option<Error>>) {
        self.faults
            .lock()
            .unwrap()
            .entry(api)
            .or_default()
            .extend(answers);
    }

    /// One paced wire call of `api`: the token, then the scripted answer.
    async fn call(&self, ctx: &CallContext, api: &'static str) -> Result<()> {
        self.acquired
            .lock()
            .unwrap()
            .push((api, tokio::time::Instant::now()));
        ctx.acquire(api).await;
        self.wire
            .lock()
            .unwrap()
            .push((api, tokio::time::Instant::now()));
        match self
            .faults
            .lock()
            .unwrap()
            .get_mut(api)
            .and_then(VecDeque::pop_front)
            .flatten()
        {
            Some(e) => Err(e.with_operation(api_op(api))),
            None => Ok(()),
        }
    }

    fn acquired(&self, api: &str) -> usize {
        self.acquired
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| *a == api)
            .count()
    }

    fn wire(&self, api: &str) -> Vec<tokio::time::Instant> {
        self.wire
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| *a == api)
            .map(|(_, t)| *t)
            .collect()
    }
}

fn api_op(api: &str) -> &'static str {
    match api {
        "Lookup" => "lookup",
        "List" => "list",
        "Finish" => "finish",
        "Health" => "health_check",
        _ => "register",
    }
}

#[async_trait]
impl Connector for Calls {
    fn info(&self) -> Capabilities {
        Capabilities {
            kind: "calls",
            max_batch_size: 1,
            quotas: self.quotas.clone(),
            supports_list: true,
            idempotent_register: false,
            ..Default::default()
        }
    }

    async fn register(
        &self,
        ctx: &CallContext,
        devices: &[DeviceIdentity],
    ) -> Result<Vec<RegisterOutcome>> {
        self.call(ctx, "Register").await?;
        let mut reg = self.registered.lock().unwrap();
        Ok(devices
            .iter()
            .map(|d| {
                reg.push(d.device_id.clone());
                RegisterOutcome::Created(RemoteDevice::named(d.device_id.short()))
            })
            .collect())
    }

    async fn lookup(
        &self,
        ctx: &CallContext,
        device: &DeviceIdentity,
    ) -> Result<Option<RemoteDevice>> {
        self.call(ctx, "Lookup").await?;
        Ok(self
            .registered
            .lock()
            .unwrap()
            .contains(&device.device_id)
            .then(|| RemoteDevice::named(device.device_id.short())))
    }

    async fn list(
        &self,
        ctx: &CallContext,
        _cursor: Option<String>,
    ) -> Result<crate::connector::ListPage> {
        self.call(ctx, "List").await?;
        Ok(crate::connector::ListPage::default())
    }

    async fn health_check(&self, ctx: &CallContext) -> Result<()> {
        self.call(ctx, "Health").await
    }

    async fn finish(&self, ctx: &CallContext) -> Result<()> {
        for _ in 0..FINISH_CALLS {
            self.call(ctx, "Finish").await?;
        }
        Ok(())
    }
}

/// One-second attempts: every quota below makes a call wait longer than that for its tokens.
fn short_attempts() -> EngineOptions {
    EngineOptions {
        attempt_timeout: Duration::from_secs(1),
        ..opts()
    }
}

#[tokio::test(start_paused = true)]
async fn lookups_and_list_are_paced_outside_the_timeout_and_share_one_budget() {
    // Eight lookups at 2/s with sixteen in flight: the last waits about 3.6 s for its token,
    // far past the one-second attempt timeout, and is still one attempt.
    let cloud = Calls::new(&[("Lookup", 2.0), ("List", 1.0)]);
    let devs = devices(8);
    let s = journal();
    let e = Engine::new(cloud.clone(), s.journal.clone(), short_attempts());
    let plan = e.diff(&devs).await.unwrap();
    assert_eq!((plan.missing, plan.errors), (8, 0), "{plan:?}");
    assert!(plan.listed);
    assert_eq!(
        cloud.acquired("Lookup"),
        8,
        "one attempt per lookup: waiting for tokens is not a timeout"
    );
    assert!(max_in_any_second(&cloud.wire("Lookup")) <= 2, "paced");

    // A throttled page is retried (after its Retry-After) from the plan's one budget.
    let cloud = Calls::new(&[]);
    cloud.fail(
        "List",
        [error(ErrorKind::RateLimited, Some(Duration::from_secs(3)))],
    );
    let e = Engine::new(cloud.clone(), s.journal.clone(), short_attempts());
    let start = tokio::time::Instant::now();
    let plan = e.diff(&devs[..2]).await.unwrap();
    assert!(plan.listed);
    assert_eq!(cloud.wire("List").len(), 2, "retried once");
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "after Retry-After"
    );

    // The budget is the plan's, shared by its lookups and pages: two retries in all. One
    // throttled lookup and one throttled page spend it; a second throttled page is not retried.
    let cloud = Calls::new(&[]);
    cloud.fail("Lookup", [error(ErrorKind::RateLimited, None)]);
    cloud.fail(
        "List",
        [
            error(ErrorKind::RateLimited, None),
            error(ErrorKind::RateLimited, None),
        ],
    );
    let mut o = short_attempts();
    o.retry.budget_min = 2;
    o.retry.budget_ratio = 0.0;
    let e = Engine::new(cloud.clone(), s.journal.clone(), o);
    let err = e.diff(&devs[..2]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    assert_eq!(
        cloud.wire("Lookup").len(),
        3,
        "the throttled lookup retried"
    );
    assert_eq!(cloud.wire("List").len(), 2, "one retry left for the pages");
}

#[tokio::test(start_paused = true)]
async fn a_job_stopping_error_from_a_lookup_stops_the_work() {
    // diff: no further lookup starts after the refusal; the error is the plan's.
    let cloud = Calls::new(&[]);
    let devs = devices(6);
    cloud.script(
        "Lookup",
        [None, Some(error(ErrorKind::Unauthenticated, None))],
    );
    let s = journal();
    let mut o = short_attempts();
    o.concurrency = 1;
    let e = Engine::new(cloud.clone(), s.journal.clone(), o.clone());
    let err = e.diff(&devs).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    assert_eq!(cloud.wire("Lookup").len(), 2, "stopped at the refusal");
    assert!(cloud.wire("List").is_empty());

    // A job's reconcile lookup (a device in flight when the last run died): the job stops,
    // nothing is sent, and the devices are left for a later run, not failed.
    let cloud = Calls::new(&[]);
    let e = Engine::new(cloud.clone(), s.journal.clone(), o);
    let opened = e
        .open(
            Operation::Provision,
            "t",
            &devs[..3],
            serde_json::Value::Null,
        )
        .await
        .unwrap();
    s.journal
        .record(
            &opened.id,
            vec![DeviceUpdate::state(
                devs[0].device_id.clone(),
                DeviceState::InFlight,
                1,
            )],
            true,
        )
        .await
        .unwrap();
    cloud.fail("Lookup", [error(ErrorKind::PermissionDenied, None)]);
    let r = e
        .run(
            &opened,
            Operation::Provision,
            "t",
            devs[..3].to_vec(),
            &NoProgress,
        )
        .await
        .unwrap();
    assert!(!r.finished);
    assert!(
        r.aborted.as_deref().unwrap().contains("permission_denied"),
        "{r:?}"
    );
    assert_eq!(r.counts.failed, 0, "nothing failed for good: {r:?}");
    assert!(cloud.wire("Register").is_empty(), "nothing sent");
}

#[tokio::test(start_paused = true)]
async fn finish_is_paced_outside_the_timeout_retried_and_can_stop_the_job() {
    // finish makes three paced wire calls at 1/s: about two seconds of waiting in a one-second
    // attempt, and one throttled answer retried from the job's budget.
    let cloud = Calls::new(&[("Finish", 1.0)]);
    cloud.fail("Finish", [error(ErrorKind::RateLimited, None)]);
    let devs = devices(2);
    let s = journal();
    let e = Engine::new(cloud.clone(), s.journal.clone(), short_attempts());
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
    assert!(r.all_done(), "{r:?}");
    assert_eq!(
        cloud.wire("Finish").len(),
        1 + FINISH_CALLS,
        "the throttled call, then one whole finish"
    );
    assert_eq!(
        cloud.acquired("Finish"),
        1 + FINISH_CALLS,
        "no timed-out attempt"
    );
    assert!(max_in_any_second(&cloud.wire("Finish")) <= 1, "paced");

    // An authentication error from finish stops the job like one from register: not
    // finished, nothing failed, and the same command finishes it once the target is back.
    let cloud = Calls::new(&[]);
    cloud.fail("Finish", [error(ErrorKind::Unauthenticated, None)]);
    let s = journal();
    let e = Engine::new(cloud.clone(), s.journal.clone(), short_attempts());
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
    assert!(
        r.aborted.as_deref().unwrap().contains("unauthenticated"),
        "{r:?}"
    );
    assert_eq!(r.counts.failed, 0);
    assert_eq!(cloud.wire("Finish").len(), 1, "not retried");
    let info = s.journal.job(&r.job_id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Running, "left for resume");
    let r2 = e
        .execute(
            Operation::Provision,
            "t",
            devs,
            serde_json::Value::Null,
            &NoProgress,
        )
        .await
        .unwrap();
    assert_eq!(r2.job_id, r.job_id);
    assert!(r2.finished, "{r2:?}");
}

#[tokio::test(start_paused = true)]
async fn health_checks_and_lookups_outside_jobs_take_the_same_path() {
    let cloud = Calls::new(&[("Health", 1.0)]);
    cloud.fail(
        "Health",
        [error(ErrorKind::RateLimited, Some(Duration::from_secs(2)))],
    );
    let caller = Caller::new(cloud.clone(), &short_attempts());
    let start = tokio::time::Instant::now();
    caller.health_check().await.unwrap();
    assert_eq!(cloud.wire("Health").len(), 2, "throttled, then retried");
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "after Retry-After"
    );
    // Paced: the second health check waits for its token (1/s), outside its timeout.
    caller.health_check().await.unwrap();
    assert!(max_in_any_second(&cloud.wire("Health")) <= 1);
    assert_eq!(cloud.acquired("Health"), 3);

    cloud.fail("Health", [error(ErrorKind::Unauthenticated, None)]);
    let err = caller.health_check().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated);
    assert_eq!(
        cloud.wire("Health").len(),
        4,
        "a permanent error is not retried"
    );

    let d = &devices(1)[0];
    cloud.fail("Lookup", [error(ErrorKind::ServerError, None)]);
    assert_eq!(caller.lookup(d).await.unwrap(), None);
    assert_eq!(cloud.wire("Lookup").len(), 2);
}

#[test]
fn diff_is_send_for_servers() {
    fn send<T: Send>(_: &T) {}
    let s = journal();
    let cloud = Calls::new(&[]);
    let e = Engine::new(cloud, s.journal.clone(), opts());
    let devs: Vec<DeviceIdentity> = Vec::new();
    send(&e.diff(&devs));
    send(&e.caller().health_check());
}
