//! # idbridge-mock-clouds
//!
//! Local fake clouds for idbridge's tests and demos. Each speaks its cloud's real wire protocol
//! (paths, headers, auth signatures, error bodies, quotas) over a socket, starts in-process on
//! `127.0.0.1:0` and returns its URL, or runs standalone through `idbridge mock-cloud <kind>`.
//!
//! Shared machinery: [`server`] (HTTP/HTTPS serving with a scripted-fault layer reachable
//! in-process and over the socket at `/_mock/faults`), [`tls`] (a generated test CA, server
//! certificates and a mutual-TLS device endpoint that admits only registered devices).
//!
//! Mock clouds never depend on idbridge-core: they are the other side of the wire.
#![deny(missing_docs)]

pub mod aws;
pub mod azure;
pub mod devices;
pub mod fault_proxy;
pub mod gcp_emulator;
pub mod interop;
pub mod registry;
pub mod server;
pub mod tls;
pub mod webhook;

pub use devices::{TestDevice, TestPki};
pub use fault_proxy::FaultProxy;
pub use gcp_emulator::{Emulator, EmulatorKind};
pub use registry::{Registry, RegistryConfig};
pub use server::{Fault, FaultRule, FaultScript, RunningServer};
pub use tls::{DeviceHello, TestCa};
