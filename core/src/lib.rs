//! # idbridge-core
//!
//! The domain model and machinery of idbridge: device identities parsed from vendor batch
//! files ([`identity`], [`importer`]), verification against pinned vendor roots ([`trust`]), the
//! object-safe [`Connector`](connector::Connector) trait every cloud target implements, the
//! provisioning [`engine`] and its crash-safe [`journal`].
//!
//! A device is always keyed by the lowercase hex SHA-256 of its certificate DER
//! ([`DeviceId`](identity::DeviceId)); vendor identifiers are attributes, never the key.
#![deny(missing_docs)]

pub mod connector;
pub mod engine;
pub mod error;
pub mod identity;
pub mod importer;
pub mod intake;
pub mod journal;
pub mod lease;
pub mod trust;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use connector::{
    CallContext, Capabilities, Connector, DeregisterOutcome, ListPage, Quota, RegisterOutcome,
    RemoteDevice,
};
pub use error::{Error, ErrorKind, Result};
pub use identity::{BatchRef, DeviceId, DeviceIdentity, KeyAlgorithm, Source, VendorAttributes};
