//! End-to-end tests of the `idbridge` binary: one test binary (ripgrep's layout).

#[cfg(feature = "aws-iot")]
mod aws;
#[cfg(feature = "azure")]
mod azure;
#[cfg(feature = "azure")]
mod azure_identity;
#[cfg(feature = "http")]
mod console;
mod crash;
#[cfg(feature = "aws-iot")]
mod embed;
mod engine_support;
#[cfg(all(feature = "gcp", feature = "http"))]
mod gcp;
#[cfg(feature = "http")]
mod hostile;
#[cfg(feature = "http")]
mod hostile_flood;
#[cfg(feature = "http")]
mod hostile_tls;
mod inspect;
#[cfg(feature = "http")]
mod interop;
mod ops;
mod ops_docs;
mod ops_guard;
mod provision;
mod quota;
mod resume;
#[cfg(feature = "http")]
mod serve;
#[cfg(feature = "http")]
mod serve_support;
#[cfg(feature = "http")]
mod service;
#[cfg(feature = "http")]
mod service_scale;
mod service_store;
mod test_logs;
#[cfg(feature = "http")]
mod trust_reload;
#[cfg(feature = "http")]
mod webhook;
mod workers;
