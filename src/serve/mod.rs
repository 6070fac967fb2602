//! `idbridge serve`: a Cloud ID "interop" v1 receiver that provisions what it receives into
//! the configured targets through the engine.
//!
//! Routes (as Infineon's receivers): `GET /` health (`OK`), `GET /auth` token self-test,
//! `POST /interop` with actions `info`, `provision`, `status` and the `deprovision`
//! extension. Authentication is in [`auth`]; request parsing and limits in [`api`]; the work
//! is done by a [`Backend`] (certificate verification against the trust store, then the
//! engine into every target).
//!
//! Bound: a `provision` request is answered within `sync_deadline_secs` (default 20 s). Items
//! finished by then carry their final result; the rest are answered `ERROR` with code
//! `outcome_unknown` (a v1 sender knows only `SUCCESS`/`ERROR`), or `ACCEPTED` when the caller
//! sent `Prefer: respond-async`, both with a `job` id; `{"action":"status","job":ID}` reports
//! every item's final state once done (docs/interop-receiver.md).

pub mod api;
pub mod auth;
pub mod backend;
pub mod config;
pub mod jobs;
pub mod request;
pub mod server;
pub use idbridge::tls;

use async_trait::async_trait;
use idbridge_http::client::FingerprintStatus;

pub use config::ServeConfig;
pub use request::Item;

/// The result of one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Registered (or already registered with this certificate) in every target.
    Success {
        /// Where the device connects, if a target has an endpoint.
        endpoint: Option<String>,
        /// False when every target already held it.
        created: bool,
    },
    /// Deprovision of a device no target held.
    NotFound,
    /// Failed: Infineon-compatible message plus idbridge's code.
    Error {
        /// Text for the `message` field.
        message: String,
        /// Machine-readable `code` (`invalid_certificate`, `untrusted`, `target_error` ...).
        code: &'static str,
    },
}

/// What `serve` drives: verification and the engine.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Verifies and provisions; one outcome per item, in order.
    async fn provision(&self, items: &[Item]) -> Vec<Outcome>;
    /// Deprovisions; one outcome per item, in order.
    async fn deprovision(&self, items: &[Item]) -> Vec<Outcome>;
    /// Whether each device id (SHA-256 hex) is provisioned.
    async fn lookup(&self, fingerprints: &[String]) -> Vec<FingerprintStatus>;
}
