//! End-to-end tests of the `idbridge` binary: one test binary (ripgrep's layout).

#[cfg(feature = "aws-iot")]
mod aws;
mod crash;
mod engine_support;
mod inspect;
mod interop;
mod provision;
mod quota;
mod serve;
mod webhook;
