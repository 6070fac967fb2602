//! End-to-end tests of the `idbridge` binary: one test binary (ripgrep's layout).

mod crash;
mod engine_support;
mod inspect;
mod provision;
mod quota;
mod interop;
mod serve;
mod webhook;
