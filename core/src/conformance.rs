//! The connector conformance suite, run by every connector crate against its mock cloud or
//! emulator: [`Suite`] chooses the scenarios by the connector's [`Capabilities`] (a scenario it
//! cannot run is reported by name with the reason, never skipped silently) and runs them with a
//! [`RecordingPacer`], so a connector that calls its cloud without `acquire` on the pacer fails.
//!
//! ```no_run
//! # async fn demo(c: &dyn idbridge_core::Connector, throttled: &dyn idbridge_core::Connector,
//! #     devices: Vec<idbridge_core::DeviceIdentity>) {
//! use idbridge_core::conformance::Suite;
//! let report = Suite::new(c, devices).throttled(throttled).run().await;
//! assert!(report.ran.contains(&"register_then_lookup"));
//! # }
//! ```
//!
//! The scenarios are also plain async fns taking `&dyn Connector` (each panics with a message
//! on failure, and runs with the same pacing check as [`Wire::Network`]). Devices passed in
//! must be distinct, valid identities the target has never seen.
//!
//! [`Capabilities`]: crate::connector::Capabilities

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::FutureExt as _;

use crate::connector::{CallContext, Connector, DeregisterOutcome, Pacer, RegisterOutcome};
use crate::error::{ErrorKind, Result};
use crate::identity::DeviceIdentity;

/// Where a connector's calls go: what the pacing check expects of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wire {
    /// Every call the target answers went over the network at least once (HTTP and SDK
    /// targets): the connector must `acquire` on the pacer before it.
    Network,
    /// The target writes local files (manifest): its calls reach no cloud, so pacing is not
    /// checked; the report says so.
    Local,
}

/// A pacer that grants every acquisition at once and records it.
#[derive(Debug, Default)]
pub struct RecordingPacer {
    log: Mutex<Vec<(String, u32)>>,
}

impl RecordingPacer {
    /// Every acquisition so far: (API, units), in order.
    pub fn acquisitions(&self) -> Vec<(String, u32)> {
        lock(&self.log).clone()
    }

    /// How many acquisitions so far.
    pub fn count(&self) -> usize {
        lock(&self.log).len()
    }
}

#[async_trait]
impl Pacer for RecordingPacer {
    async fn acquire(&self, api: &str, units: u32) {
        lock(&self.log).push((api.to_owned(), units));
    }
}

/// The suite for one connector.
pub struct Suite<'a> {
    connector: &'a dyn Connector,
    devices: Vec<DeviceIdentity>,
    throttled: Option<&'a dyn Connector>,
    bad_credentials: Option<&'a dyn Connector>,
    wire: Wire,
}

/// What a [`Suite`] run did: the scenarios run, and those skipped with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Scenarios that ran and passed, in order.
    pub ran: Vec<&'static str>,
    /// Scenarios (and checks) not run, each with why.
    pub skipped: Vec<(&'static str, String)>,
}

impl<'a> Suite<'a> {
    /// The suite for `connector`, with distinct, valid devices the target has never seen (one
    /// per scenario: six cover every scenario).
    pub fn new(connector: &'a dyn Connector, devices: Vec<DeviceIdentity>) -> Self {
        Suite {
            connector,
            devices,
            throttled: None,
            bad_credentials: None,
            wire: Wire::Network,
        }
    }

    /// The same target with throttling scripted on its mock (every call answered 429 or the
    /// cloud's throttling error): runs `throttling_is_rate_limited`.
    pub fn throttled(mut self, c: &'a dyn Connector) -> Self {
        self.throttled = Some(c);
        self
    }

    /// The same target built with bad credentials: runs `bad_credentials_are_permanent`.
    pub fn bad_credentials(mut self, c: &'a dyn Connector) -> Self {
        self.bad_credentials = Some(c);
        self
    }

    /// Where the connector's calls go (default [`Wire::Network`]).
    pub fn wire(mut self, wire: Wire) -> Self {
        self.wire = wire;
        self
    }

    /// Runs every scenario the connector's capabilities (and the connectors given) call for.
    /// Panics naming the first scenario that fails; prints and reports the skipped ones.
    pub async fn run(self) -> Report {
        let caps = self.connector.info();
        let mut report = Report::default();
        let mut devices = self.devices.into_iter();
        let mut next = |name: &str| {
            devices.next().unwrap_or_else(|| {
                panic!("conformance: {name} needs a fresh device; give the suite more devices")
            })
        };
        let c = self.connector;
        let wire = self.wire;
        let d = next("register_then_lookup");
        scenario(&mut report, "register_then_lookup", || {
            register_then_lookup_with(c, &d, wire)
        })
        .await;
        let d = next("reregister_is_idempotent");
        scenario(&mut report, "reregister_is_idempotent", || {
            reregister_is_idempotent_with(c, &d, wire)
        })
        .await;
        if caps.supports_deregister {
            let d = next("deregister_is_idempotent");
            scenario(&mut report, "deregister_is_idempotent", || {
                deregister_is_idempotent_with(c, &d, wire)
            })
            .await;
        } else {
            skip(
                &mut report,
                "deregister_is_idempotent",
                "the target cannot deregister (supports_deregister = false)",
            );
        }
        if caps.supports_list {
            let d = next("list_includes_registered");
            scenario(&mut report, "list_includes_registered", || {
                list_includes_registered_with(c, &d, wire)
            })
            .await;
        } else {
            skip(
                &mut report,
                "list_includes_registered",
                "the target cannot list (supports_list = false)",
            );
        }
        match self.throttled {
            Some(t) => {
                let d = next("throttling_is_rate_limited");
                scenario(&mut report, "throttling_is_rate_limited", || {
                    throttling_is_rate_limited_with(t, &d, wire)
                })
                .await;
            }
            None => skip(
                &mut report,
                "throttling_is_rate_limited",
                "no throttled connector given (Suite::throttled)",
            ),
        }
        match self.bad_credentials {
            Some(b) => {
                let d = next("bad_credentials_are_permanent");
                scenario(&mut report, "bad_credentials_are_permanent", || {
                    bad_credentials_are_permanent_with(b, &d, wire)
                })
                .await;
            }
            None => skip(
                &mut report,
                "bad_credentials_are_permanent",
                "no connector with bad credentials given (Suite::bad_credentials)",
            ),
        }
        if wire == Wire::Local {
            skip(
                &mut report,
                "pacing",
                "local target (Wire::Local): its calls reach no cloud",
            );
        }
        report
    }
}

/// register → lookup finds it with the same fingerprint (where the target reports one).
pub async fn register_then_lookup(c: &dyn Connector, device: &DeviceIdentity) {
    register_then_lookup_with(c, device, Wire::Network).await;
}

/// registering the same device twice is success the second time, not an error or a duplicate.
pub async fn reregister_is_idempotent(c: &dyn Connector, device: &DeviceIdentity) {
    reregister_is_idempotent_with(c, device, Wire::Network).await;
}

/// deregister removes, lookup then finds nothing, and a second deregister is NotFound
/// (success). A target that cannot deregister is reported skipped (use [`Suite`] to have it in
/// the report).
pub async fn deregister_is_idempotent(c: &dyn Connector, device: &DeviceIdentity) {
    if !c.info().supports_deregister {
        eprintln!(
            "conformance: skipped deregister_is_idempotent: the target cannot deregister \
             (supports_deregister = false)"
        );
        return;
    }
    deregister_is_idempotent_with(c, device, Wire::Network).await;
}

/// The target throttles (the caller scripted it to): the error is RateLimited and temporary,
/// either for the whole call or per device.
pub async fn throttling_is_rate_limited(c: &dyn Connector, device: &DeviceIdentity) {
    throttling_is_rate_limited_with(c, device, Wire::Network).await;
}

/// With bad credentials (the caller built `c` with them) every call is a permanent
/// Unauthenticated or PermissionDenied error.
pub async fn bad_credentials_are_permanent(c: &dyn Connector, device: &DeviceIdentity) {
    bad_credentials_are_permanent_with(c, device, Wire::Network).await;
}

/// The context scenarios call with: paced by a [`RecordingPacer`], checked after each call.
struct Probe {
    pacer: Arc<RecordingPacer>,
    ctx: CallContext,
    wire: Wire,
}

impl Probe {
    fn new(wire: Wire) -> Self {
        let pacer = Arc::new(RecordingPacer::default());
        Probe {
            ctx: CallContext::paced(pacer.clone()),
            pacer,
            wire,
        }
    }

    /// Awaits one connector call; panics when the target answered it but the connector
    /// acquired nothing on the pacer first. A call that failed may have failed before the wire
    /// (Unsupported, a bad configuration) and is not judged.
    async fn call<T>(&self, what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let before = self.pacer.count();
        let r = call.await;
        if self.wire == Wire::Network && r.is_ok() && self.pacer.count() == before {
            panic!(
                "{what}: the target answered, but the connector called it without `acquire` on \
                 the pacer (every wire call must be paced by the engine)"
            );
        }
        r
    }
}

async fn register_then_lookup_with(c: &dyn Connector, device: &DeviceIdentity, wire: Wire) {
    let p = Probe::new(wire);
    let out = p
        .call("register", c.register(&p.ctx, std::slice::from_ref(device)))
        .await
        .expect("register call");
    assert_eq!(out.len(), 1, "one outcome per device");
    match &out[0] {
        RegisterOutcome::Created(_) => {}
        other => panic!(
            "first register of {} should be Created, got {other:?}",
            device.device_id
        ),
    }
    let remote = p
        .call("lookup", c.lookup(&p.ctx, device))
        .await
        .expect("lookup")
        .expect("registered device is found");
    if let Some(id) = &remote.device_id {
        assert_eq!(
            id, &device.device_id,
            "lookup reports the registered certificate"
        );
    }
    assert!(
        remote.differences.is_empty(),
        "fresh registration differs: {:?}",
        remote.differences
    );
}

async fn reregister_is_idempotent_with(c: &dyn Connector, device: &DeviceIdentity, wire: Wire) {
    let p = Probe::new(wire);
    let first = p
        .call("register", c.register(&p.ctx, std::slice::from_ref(device)))
        .await
        .expect("register");
    assert!(
        matches!(
            first[0],
            RegisterOutcome::Created(_) | RegisterOutcome::AlreadyPresent(_)
        ),
        "first register: {:?}",
        first[0]
    );
    let second = p
        .call(
            "re-register",
            c.register(&p.ctx, std::slice::from_ref(device)),
        )
        .await
        .expect("re-register");
    assert!(
        matches!(second[0], RegisterOutcome::AlreadyPresent(_)),
        "re-register should be AlreadyPresent, got {:?}",
        second[0]
    );
}

async fn deregister_is_idempotent_with(c: &dyn Connector, device: &DeviceIdentity, wire: Wire) {
    let p = Probe::new(wire);
    let reg = p
        .call("register", c.register(&p.ctx, std::slice::from_ref(device)))
        .await
        .expect("register");
    assert!(
        matches!(
            reg[0],
            RegisterOutcome::Created(_) | RegisterOutcome::AlreadyPresent(_)
        ),
        "register: {:?}",
        reg[0]
    );
    let first = p
        .call(
            "deregister",
            c.deregister(&p.ctx, std::slice::from_ref(device)),
        )
        .await
        .expect("deregister");
    assert!(
        matches!(first[0], DeregisterOutcome::Deleted),
        "deregister: {:?}",
        first[0]
    );
    assert!(
        p.call("lookup", c.lookup(&p.ctx, device))
            .await
            .expect("lookup")
            .is_none(),
        "gone after deregister"
    );
    let second = p
        .call(
            "deregister again",
            c.deregister(&p.ctx, std::slice::from_ref(device)),
        )
        .await
        .expect("deregister again");
    assert!(
        matches!(second[0], DeregisterOutcome::NotFound),
        "second deregister: {:?}",
        second[0]
    );
}

/// A registered device is on some page of `list`, by fingerprint or by the name lookup gives.
async fn list_includes_registered_with(c: &dyn Connector, device: &DeviceIdentity, wire: Wire) {
    let p = Probe::new(wire);
    let out = p
        .call("register", c.register(&p.ctx, std::slice::from_ref(device)))
        .await
        .expect("register");
    assert!(
        matches!(
            out[0],
            RegisterOutcome::Created(_) | RegisterOutcome::AlreadyPresent(_)
        ),
        "register: {:?}",
        out[0]
    );
    let name = p
        .call("lookup", c.lookup(&p.ctx, device))
        .await
        .expect("lookup")
        .expect("registered device is found")
        .name;
    let mut cursor = None;
    for _ in 0..10_000 {
        let page = p
            .call("list", c.list(&p.ctx, cursor.take()))
            .await
            .expect("list");
        if page
            .devices
            .iter()
            .any(|r| r.device_id.as_ref() == Some(&device.device_id) || r.name == name)
        {
            return;
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    panic!("registered device {name:?} is on no page of list");
}

async fn throttling_is_rate_limited_with(c: &dyn Connector, device: &DeviceIdentity, wire: Wire) {
    let p = Probe::new(wire);
    match p
        .call("register", c.register(&p.ctx, std::slice::from_ref(device)))
        .await
    {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::RateLimited, "throttled call: {e}");
            assert!(e.is_temporary(), "throttling must be temporary: {e}");
        }
        Ok(out) => match &out[0] {
            RegisterOutcome::Failed(e) => {
                assert_eq!(e.kind(), ErrorKind::RateLimited, "throttled device: {e}");
                assert!(e.is_temporary(), "throttling must be temporary: {e}");
            }
            other => panic!("expected throttling, got {other:?}"),
        },
    }
}

async fn bad_credentials_are_permanent_with(
    c: &dyn Connector,
    device: &DeviceIdentity,
    wire: Wire,
) {
    let p = Probe::new(wire);
    let e = p
        .call("health check", c.health_check(&p.ctx))
        .await
        .expect_err("health check with bad credentials");
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Unauthenticated | ErrorKind::PermissionDenied
        ),
        "bad credentials: {e}"
    );
    assert!(!e.is_temporary(), "bad credentials must be permanent: {e}");
    let err = match p
        .call("register", c.register(&p.ctx, std::slice::from_ref(device)))
        .await
    {
        Err(e) => e,
        Ok(mut out) => match out.remove(0) {
            RegisterOutcome::Failed(e) => e,
            other => panic!("register with bad credentials succeeded: {other:?}"),
        },
    };
    assert!(
        !err.is_temporary(),
        "bad credentials must be permanent: {err}"
    );
}

/// Runs one scenario; a failure panics with the scenario's name and the reason.
async fn scenario<F, Fut>(report: &mut Report, name: &'static str, f: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    if let Err(panic) = AssertUnwindSafe(f()).catch_unwind().await {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "(no message)".to_owned());
        panic!("conformance scenario {name} failed: {why}");
    }
    report.ran.push(name);
}

fn skip(report: &mut Report, name: &'static str, why: &str) {
    eprintln!("conformance: skipped {name}: {why}");
    report.skipped.push((name, why.to_owned()));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoned only after a panic in a scenario, which fails the test anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::connector::{Capabilities, ListPage, RemoteDevice};
    use crate::error::Error;
    use crate::identity::{DeviceId, Source};

    /// An in-memory target. `pace_lookup = false` makes a deliberately bad connector: its
    /// lookup answers without acquiring on the pacer.
    #[derive(Debug)]
    struct Memory {
        held: Mutex<HashSet<DeviceId>>,
        pace_lookup: bool,
        deregister: bool,
    }

    impl Memory {
        fn new(pace_lookup: bool, deregister: bool) -> Self {
            Memory {
                held: Mutex::new(HashSet::new()),
                pace_lookup,
                deregister,
            }
        }
    }

    #[async_trait]
    impl Connector for Memory {
        fn info(&self) -> Capabilities {
            Capabilities {
                kind: "memory",
                supports_list: true,
                supports_deregister: self.deregister,
                ..Capabilities::default()
            }
        }

        async fn register(
            &self,
            ctx: &CallContext,
            devices: &[DeviceIdentity],
        ) -> Result<Vec<RegisterOutcome>> {
            ctx.acquire("write").await;
            let mut held = lock(&self.held);
            Ok(devices
                .iter()
                .map(|d| {
                    let remote = RemoteDevice {
                        device_id: Some(d.device_id.clone()),
                        ..RemoteDevice::named(d.device_id.short())
                    };
                    if held.insert(d.device_id.clone()) {
                        RegisterOutcome::Created(remote)
                    } else {
                        RegisterOutcome::AlreadyPresent(remote)
                    }
                })
                .collect())
        }

        async fn deregister(
            &self,
            ctx: &CallContext,
            devices: &[DeviceIdentity],
        ) -> Result<Vec<DeregisterOutcome>> {
            assert!(self.deregister, "deregister called on a target without it");
            ctx.acquire("write").await;
            let mut held = lock(&self.held);
            Ok(devices
                .iter()
                .map(|d| {
                    if held.remove(&d.device_id) {
                        DeregisterOutcome::Deleted
                    } else {
                        DeregisterOutcome::NotFound
                    }
                })
                .collect())
        }

        async fn lookup(
            &self,
            ctx: &CallContext,
            device: &DeviceIdentity,
        ) -> Result<Option<RemoteDevice>> {
            if self.pace_lookup {
                ctx.acquire("read").await;
            }
            Ok(lock(&self.held)
                .contains(&device.device_id)
                .then(|| RemoteDevice {
                    device_id: Some(device.device_id.clone()),
                    ..RemoteDevice::named(device.device_id.short())
                }))
        }

        async fn list(&self, ctx: &CallContext, _cursor: Option<String>) -> Result<ListPage> {
            ctx.acquire("read").await;
            Ok(ListPage {
                devices: lock(&self.held)
                    .iter()
                    .map(|id| RemoteDevice::named(id.short()))
                    .collect(),
                next: None,
            })
        }

        async fn health_check(&self, ctx: &CallContext) -> Result<()> {
            ctx.acquire("read").await;
            Ok(())
        }
    }

    /// A target whose every call is refused as throttled, or as unauthenticated.
    #[derive(Debug)]
    struct Refusing(ErrorKind);

    #[async_trait]
    impl Connector for Refusing {
        fn info(&self) -> Capabilities {
            Capabilities::default()
        }

        async fn register(
            &self,
            ctx: &CallContext,
            _devices: &[DeviceIdentity],
        ) -> Result<Vec<RegisterOutcome>> {
            ctx.acquire("write").await;
            Err(Error::new(self.0, "refused"))
        }

        async fn lookup(
            &self,
            ctx: &CallContext,
            _device: &DeviceIdentity,
        ) -> Result<Option<RemoteDevice>> {
            ctx.acquire("read").await;
            Err(Error::new(self.0, "refused"))
        }

        async fn health_check(&self, ctx: &CallContext) -> Result<()> {
            ctx.acquire("read").await;
            Err(Error::new(self.0, "refused"))
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
                DeviceIdentity::from_der(c.der().to_vec(), Source::default()).unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn scenarios_follow_the_capabilities_and_skips_are_named() {
        let good = Memory::new(true, true);
        let throttled = Refusing(ErrorKind::RateLimited);
        let bad = Refusing(ErrorKind::Unauthenticated);
        let report = Suite::new(&good, devices(6))
            .throttled(&throttled)
            .bad_credentials(&bad)
            .run()
            .await;
        assert_eq!(
            report.ran,
            [
                "register_then_lookup",
                "reregister_is_idempotent",
                "deregister_is_idempotent",
                "list_includes_registered",
                "throttling_is_rate_limited",
                "bad_credentials_are_permanent",
            ]
        );
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);

        // No deregister (never called: Memory asserts it), nothing scripted: each skip is
        // named with its reason.
        let no_deregister = Memory::new(true, false);
        let report = Suite::new(&no_deregister, devices(3)).run().await;
        assert_eq!(
            report.ran,
            [
                "register_then_lookup",
                "reregister_is_idempotent",
                "list_includes_registered"
            ]
        );
        let skipped: Vec<&str> = report.skipped.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            skipped,
            [
                "deregister_is_idempotent",
                "throttling_is_rate_limited",
                "bad_credentials_are_permanent"
            ]
        );
        assert!(report.skipped[0].1.contains("supports_deregister = false"));
    }

    /// The deliberately bad connector: its lookup answers without `acquire`.
    #[tokio::test]
    async fn a_wire_call_without_acquire_fails_the_suite() {
        let bad = Memory::new(false, true);
        let failed = AssertUnwindSafe(Suite::new(&bad, devices(6)).run())
            .catch_unwind()
            .await
            .expect_err("the suite must fail a connector that does not pace its calls");
        let msg = failed.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("register_then_lookup")
                && msg.contains("lookup")
                && msg.contains("without `acquire`"),
            "{msg}"
        );
        // A local target (files, no cloud) is not held to it, and the report says so.
        let local = Memory::new(false, true);
        let report = Suite::new(&local, devices(6)).wire(Wire::Local).run().await;
        assert!(report.ran.contains(&"register_then_lookup"));
        assert!(report.skipped.iter().any(|(n, _)| *n == "pacing"));
    }

    #[tokio::test]
    async fn the_recording_pacer_records_every_acquisition() {
        let pacer = Arc::new(RecordingPacer::default());
        let ctx = CallContext::paced(pacer.clone());
        ctx.acquire("a").await;
        ctx.acquire_n("b", 100).await;
        assert_eq!(
            pacer.acquisitions(),
            [("a".to_owned(), 1), ("b".to_owned(), 100)]
        );
    }
}
