//! Offline CRLs (`--crl FILE`, DER or PEM). A CRL is used only when its signature verifies with
//! a CA of the store; otherwise loading fails (a CRL nobody can vouch for is a config error).
//!
//! A long-running verifier watches its CRL files: [`CrlSet::changed`] compares each file's
//! modification time and length with what was loaded, and [`CrlSet::reloaded`] reads the files
//! that changed. A file that no longer loads keeps its previous revocations (revocation is never
//! dropped silently) and the failure is logged once per change, naming the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use ::time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::{TrustStore, date};
use crate::error::{Error, ErrorKind, Result};

/// Revoked (issuer, serial) pairs, with the CRL they came from.
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    revoked: HashMap<(Vec<u8>, Vec<u8>), String>,
}

impl Revocations {
    /// Why `serial` of `issuer` is revoked, if it is.
    pub(crate) fn revoked(&self, issuer_raw: &[u8], serial_raw: &[u8]) -> Option<String> {
        if self.revoked.is_empty() {
            return None;
        }
        self.revoked
            .get(&(issuer_raw.to_vec(), strip_zeros(serial_raw).to_vec()))
            .cloned()
    }
}

/// What a file looked like when it was last read: modification time and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        })
    }
}

/// One loaded CRL file.
#[derive(Debug)]
pub(crate) struct CrlFile {
    pub(crate) path: PathBuf,
    /// The stamp of the last read attempt (successful or not).
    stamp: Option<Stamp>,
    revocations: Revocations,
    /// The issuer's raw DN: the CA whose certificates this CRL covers.
    pub(crate) issuer_raw: Vec<u8>,
    /// The issuer, readable.
    pub(crate) issuer: String,
    /// `nextUpdate`, when the CRL has one.
    pub(crate) next_update: Option<OffsetDateTime>,
    /// Whether its staleness was already logged (once per loaded CRL).
    pub(crate) stale_logged: AtomicBool,
}

impl CrlFile {
    /// `Some(reason)` when this CRL is past its `nextUpdate` at `at`.
    pub(crate) fn stale_at(&self, at: OffsetDateTime) -> Option<String> {
        let next = self.next_update?;
        (at > next).then(|| {
            format!(
                "CRL {} of {:?} is past its nextUpdate {}",
                self.path.display(),
                self.issuer,
                date(next)
            )
        })
    }

    /// Logs staleness at `at`, the first time only.
    pub(crate) fn warn_if_stale(&self, at: OffsetDateTime) {
        if let Some(why) = self.stale_at(at)
            && !self.stale_logged.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(file = %self.path.display(), "{why}: revocations may be missing");
        }
    }
}

/// Every CRL of a verifier, each with the stamp it was read at.
#[derive(Debug, Default)]
pub(crate) struct CrlSet {
    pub(crate) files: Vec<CrlFile>,
    /// Bumped by every reload that changed revocations (cache entries of older generations
    /// are not stored).
    pub(crate) generation: u64,
}

impl CrlSet {
    /// Loads every file; any failure is an error (a CRL given at start-up must load).
    pub(crate) fn load_all(paths: &[PathBuf], store: &TrustStore) -> Result<CrlSet> {
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            files.push(load(path, store)?);
        }
        Ok(CrlSet {
            files,
            generation: 0,
        })
    }

    /// Why `serial` of `issuer` is revoked, if any CRL says so.
    pub(crate) fn revoked(&self, issuer_raw: &[u8], serial_raw: &[u8]) -> Option<String> {
        self.files
            .iter()
            .find_map(|f| f.revocations.revoked(issuer_raw, serial_raw))
    }

    /// Whether some file's modification time or length differs from its last read.
    pub(crate) fn changed(&self) -> bool {
        self.files.iter().any(|f| Stamp::of(&f.path) != f.stamp)
    }

    /// A new set where every changed file is read again. A file that fails keeps its previous
    /// revocations (with the new stamp, so the failure is logged once per change).
    pub(crate) fn reloaded(&self, store: &TrustStore) -> CrlSet {
        let mut files = Vec::with_capacity(self.files.len());
        for old in &self.files {
            let now = Stamp::of(&old.path);
            if now == old.stamp {
                files.push(old.clone_loaded(old.stamp));
                continue;
            }
            match load(&old.path, store) {
                Ok(new) => {
                    tracing::info!(
                        file = %old.path.display(),
                        issuer = %new.issuer,
                        "CRL changed on disk: reloaded"
                    );
                    files.push(new);
                }
                Err(e) => {
                    tracing::error!(
                        file = %old.path.display(),
                        %e,
                        "CRL reload failed: keeping the revocations loaded before"
                    );
                    files.push(old.clone_loaded(now));
                }
            }
        }
        CrlSet {
            files,
            generation: self.generation + 1,
        }
    }
}

impl CrlFile {
    fn clone_loaded(&self, stamp: Option<Stamp>) -> CrlFile {
        CrlFile {
            path: self.path.clone(),
            stamp,
            revocations: Revocations {
                revoked: self.revocations.revoked.clone(),
            },
            issuer_raw: self.issuer_raw.clone(),
            issuer: self.issuer.clone(),
            next_update: self.next_update,
            stale_logged: AtomicBool::new(self.stale_logged.load(Ordering::Relaxed)),
        }
    }
}

/// Loads one CRL file and checks its signature against `store`.
pub(crate) fn load(path: &Path, store: &TrustStore) -> Result<CrlFile> {
    let err = |msg: String| {
        Error::new(
            ErrorKind::ConfigInvalid,
            format!("{}: {msg}", path.display()),
        )
    };
    // The stamp is taken before the read: a write racing the read shows up as a change next
    // time.
    let stamp = Stamp::of(path);
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read CRL: {e}")))?;
    let der = if bytes.first() == Some(&0x30) {
        bytes
    } else {
        let block = ::pem::parse(&bytes).map_err(|e| err(format!("not a DER or PEM CRL: {e}")))?;
        if block.tag() != "X509 CRL" {
            return Err(err(format!(
                "PEM block is {:?}, expected X509 CRL",
                block.tag()
            )));
        }
        block.into_contents()
    };
    let (_, crl) = CertificateRevocationList::from_der(&der)
        .map_err(|e| err(format!("not an X.509 CRL: {e}")))?;
    let issuer_raw = crl.tbs_cert_list.issuer.as_raw();
    let mut verified = false;
    for ca in store.issuers_named(issuer_raw) {
        if ca
            .key
            .verify(
                &crl.signature_algorithm,
                crl.tbs_cert_list.as_ref(),
                &crl.signature_value.data,
            )
            .is_ok()
        {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(err(format!(
            "CRL issuer {} is not a CA of the trust store, or its signature does not verify",
            crl.tbs_cert_list.issuer
        )));
    }
    let file = path.display().to_string();
    let mut out = Revocations::default();
    for revoked in crl.iter_revoked_certificates() {
        let when = date(revoked.revocation_date.to_datetime());
        out.revoked.insert(
            (
                issuer_raw.to_vec(),
                strip_zeros(revoked.raw_serial()).to_vec(),
            ),
            format!("revoked on {when} (CRL {file})"),
        );
    }
    Ok(CrlFile {
        path: path.to_path_buf(),
        stamp,
        revocations: out,
        issuer_raw: issuer_raw.to_vec(),
        issuer: super::name_of(&crl.tbs_cert_list.issuer),
        next_update: crl.next_update().map(|t| t.to_datetime()),
        stale_logged: AtomicBool::new(false),
    })
}

fn strip_zeros(serial: &[u8]) -> &[u8] {
    let mut s = serial;
    while s.len() > 1 && s[0] == 0 && s[1] & 0x80 == 0 {
        s = &s[1..];
    }
    s
}
