//! `idbridge` as a library: the application layer ([`app`]) that the `idbridge` binary's
//! commands, the interop receiver and the registration service all call, for programs that
//! embed idbridge.
//!
//! Layering: [`idbridge_core`] (identities, trust, engine, journal) knows no connector; the
//! connector crates know no front end; [`app`] joins configuration, connectors and the engine;
//! front ends translate their input into [`app`] calls.

#![deny(missing_docs)]

pub mod app;
pub mod service;
pub mod tls;
