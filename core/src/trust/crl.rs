//! Offline CRLs (`--crl FILE`, DER or PEM). A CRL is used only when its signature verifies with
//! a CA of the store; otherwise loading fails (a CRL nobody can vouch for is a config error).

use std::collections::HashMap;
use std::path::Path;

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
    pub(crate) fn extend(&mut self, other: Revocations) {
        self.revoked.extend(other.revoked);
    }

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

/// Loads one CRL file and checks its signature against `store`.
pub(crate) fn load(path: &Path, store: &TrustStore) -> Result<Revocations> {
    let err = |msg: String| {
        Error::new(
            ErrorKind::ConfigInvalid,
            format!("{}: {msg}", path.display()),
        )
    };
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
    Ok(out)
}

fn strip_zeros(serial: &[u8]) -> &[u8] {
    let mut s = serial;
    while s.len() > 1 && s[0] == 0 && s[1] & 0x80 == 0 {
        s = &s[1..];
    }
    s
}
