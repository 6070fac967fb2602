//! The connector conformance suite: plain async scenarios taking `&dyn Connector`, run by every
//! connector crate against its mock cloud or emulator. Each panics with a message on failure.
//!
//! Devices passed in must be distinct, valid identities the target has never seen.

use crate::connector::{CallContext, Connector, DeregisterOutcome, RegisterOutcome};
use crate::error::ErrorKind;
use crate::identity::DeviceIdentity;

/// register → lookup finds it with the same fingerprint (where the target reports one).
pub async fn register_then_lookup(c: &dyn Connector, device: &DeviceIdentity) {
    let ctx = CallContext::unpaced();
    let out = c
        .register(&ctx, std::slice::from_ref(device))
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
    let remote = c
        .lookup(&ctx, device)
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

/// registering the same device twice is success the second time, not an error or a duplicate.
pub async fn reregister_is_idempotent(c: &dyn Connector, device: &DeviceIdentity) {
    let ctx = CallContext::unpaced();
    let first = c
        .register(&ctx, std::slice::from_ref(device))
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
    let second = c
        .register(&ctx, std::slice::from_ref(device))
        .await
        .expect("re-register");
    assert!(
        matches!(second[0], RegisterOutcome::AlreadyPresent(_)),
        "re-register should be AlreadyPresent, got {:?}",
        second[0]
    );
}

/// deregister removes, lookup then finds nothing, and a second deregister is NotFound (success).
pub async fn deregister_is_idempotent(c: &dyn Connector, device: &DeviceIdentity) {
    if !c.info().supports_deregister {
        return;
    }
    let ctx = CallContext::unpaced();
    let reg = c
        .register(&ctx, std::slice::from_ref(device))
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
    let first = c
        .deregister(&ctx, std::slice::from_ref(device))
        .await
        .expect("deregister");
    assert!(
        matches!(first[0], DeregisterOutcome::Deleted),
        "deregister: {:?}",
        first[0]
    );
    assert!(
        c.lookup(&ctx, device).await.expect("lookup").is_none(),
        "gone after deregister"
    );
    let second = c
        .deregister(&ctx, std::slice::from_ref(device))
        .await
        .expect("deregister again");
    assert!(
        matches!(second[0], DeregisterOutcome::NotFound),
        "second deregister: {:?}",
        second[0]
    );
}

/// The target throttles (the caller scripted it to): the error is RateLimited and temporary,
/// either for the whole call or per device.
pub async fn throttling_is_rate_limited(c: &dyn Connector, device: &DeviceIdentity) {
    let ctx = CallContext::unpaced();
    match c.register(&ctx, std::slice::from_ref(device)).await {
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

/// With bad credentials (the caller built `c` with them) every call is a permanent
/// Unauthenticated or PermissionDenied error.
pub async fn bad_credentials_are_permanent(c: &dyn Connector, device: &DeviceIdentity) {
    let ctx = CallContext::unpaced();
    let e = c
        .health_check(&ctx)
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
    let err = match c.register(&ctx, std::slice::from_ref(device)).await {
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
