//! # idbridge-gcp
//!
//! Google Cloud targets of idbridge, over the Firestore and Pub/Sub REST v1 APIs with
//! [google-cloud-auth](https://docs.rs/google-cloud-auth) credentials:
//!
//! - [`FirestoreConnector`] (`kind = "gcp-firestore"`): a device allowlist, one document per
//!   device whose ID is the device id (SHA-256 of the certificate DER), written with create-only
//!   `documents:batchWrite` (≤ 500 writes), read back and compared on `ALREADY_EXISTS`, looked up
//!   with `GET`, removed with precondition deletes and listed for `diff`.
//! - [`PubSubConnector`] (`kind = "gcp-pubsub"`): `device.authorized` / `device.revoked` events
//!   on a topic (≤ 1,000 messages and ≤ 10 MB per publish), with an `idempotencyKey` attribute.
//!
//! Both never retry or sleep: the engine does, around them. Configuration keys, environment
//! variables, the emulators that cover them and a deployment on Google Cloud are in `docs.md`.
#![doc = include_str!("../docs.md")]
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod error;
pub mod firestore;
pub mod pubsub;

use idbridge_core::Error;

pub use config::{Auth, FirestoreConfig, PubSubConfig};
pub use firestore::{FIRESTORE_READ_API, FIRESTORE_WRITE_API, FirestoreConnector};
pub use pubsub::{EVENT_AUTHORIZED, EVENT_REVOKED, PUBSUB_PUBLISH_API, PubSubConnector};

/// A copy of an error for each device of a failed request (until `Error` is `Clone`).
pub(crate) fn copy_error(e: &Error) -> Error {
    let mut c = Error::new(e.kind(), e.message())
        .with_operation(e.operation())
        .set_temporary(e.is_temporary());
    for key in ["status", "code", "target"] {
        if let Some(v) = e.context(key) {
            c = c.with_context(key, v);
        }
    }
    if let Some(after) = e.retry_after() {
        c = c.with_retry_after(after);
    }
    c
}
