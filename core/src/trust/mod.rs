//! Trust verification: is this certificate really a chip from the vendor?
//!
//! A [`TrustStore`] holds the pinned vendor certificates ([`TrustStore::builtin`]: Infineon
//! OPTIGA roots and Trust M CAs, Microchip roots and signers, Microchip manifest signers) plus
//! anchors the user adds. A [`Verifier`] judges one certificate at a time and returns a
//! [`Verdict`]. Intermediates are verified once and cached by fingerprint, so each device costs
//! one signature verification.
//!
//! Test roots (Infineon Trust M Test CA 000, the Microchip Example Signer FFFF) are built in but
//! refused unless [`TrustOptions::allow_test_roots`]: their private keys are public, so a chip
//! signed by them proves nothing.

mod builtin;
mod crl;
mod jws;
mod keys;
pub(crate) mod sig;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ::time::OffsetDateTime;
use aws_lc_rs::digest;
use serde::Serialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::error::{Error, ErrorKind, Result};
use crate::identity::{DeviceIdentity, Source};

pub use jws::ManifestEntry;
pub use keys::DuplicateKeys;

use self::builtin::Role;
use self::sig::PublicKey;

/// The judgement on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Verdict {
    /// Chains to a trusted anchor, within validity, not revoked.
    Valid {
        /// The anchor it chains to (CN of the root, or of a user-added anchor).
        anchor: String,
    },
    /// Must not be provisioned: forged, unknown root, test root, expired, revoked ...
    Invalid {
        /// Why, one line.
        reason: String,
    },
    /// Genuine, but there is nothing a cloud could register (e.g. a Microchip "lite" entry
    /// without keys or certificate).
    NotProvisionable {
        /// Why, one line.
        reason: String,
    },
}

impl Verdict {
    /// Whether the device may be provisioned.
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid { .. })
    }

    /// `valid`, `invalid` or `not_provisionable`.
    pub fn status(&self) -> &'static str {
        match self {
            Verdict::Valid { .. } => "valid",
            Verdict::Invalid { .. } => "invalid",
            Verdict::NotProvisionable { .. } => "not_provisionable",
        }
    }

    /// The reason, for anything but `Valid`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Valid { .. } => None,
            Verdict::Invalid { reason } | Verdict::NotProvisionable { reason } => Some(reason),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid { anchor } => write!(f, "valid ({anchor})"),
            Verdict::Invalid { reason } => write!(f, "invalid: {reason}"),
            Verdict::NotProvisionable { reason } => write!(f, "not provisionable: {reason}"),
        }
    }
}

/// At which time certificate validity is judged. Factory certificates live 20–28 years, so
/// the default, "now", rarely bites; `Ignore` is for forensic inspection of expired stock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValidityPolicy {
    /// At the time the verifier is built.
    #[default]
    Now,
    /// At a fixed time.
    At(OffsetDateTime),
    /// Never check validity periods (signatures and anchors still are).
    Ignore,
}

impl std::str::FromStr for ValidityPolicy {
    type Err = Error;

    /// `now`, `ignore`, or an RFC 3339 time.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "now" => Ok(ValidityPolicy::Now),
            "ignore" => Ok(ValidityPolicy::Ignore),
            t => OffsetDateTime::parse(t, &::time::format_description::well_known::Rfc3339)
                .map(ValidityPolicy::At)
                .map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "validity policy {t:?}: not `now`, `ignore` or an RFC 3339 time: {e}"
                        ),
                    )
                }),
        }
    }
}

/// How to build a [`Verifier`].
#[derive(Debug, Clone, Default)]
pub struct TrustOptions {
    /// Extra anchors: PEM (one or a bundle) or DER files, or directories of them.
    pub anchors: Vec<PathBuf>,
    /// Accept chains to the built-in test roots (whose private keys are public).
    pub allow_test_roots: bool,
    /// Offline CRLs (DER or PEM), each signed by a CA of the store.
    pub crls: Vec<PathBuf>,
    /// When validity is judged.
    pub validity: ValidityPolicy,
    /// Leave out the built-in vendor anchors (only the `anchors` are trusted).
    pub no_builtin: bool,
    /// What a CRL past its `nextUpdate` does: a warning (default) or refusing the devices of
    /// its CA.
    pub stale_crl: StaleCrlPolicy,
    /// How often, at most, a verifier looks at its CRL files' modification time and length to
    /// reload the ones that changed; `None`: [`DEFAULT_CRL_CHECK`]. [`Verifier::reload_crls`]
    /// checks at once (on SIGHUP).
    pub crl_check_every: Option<Duration>,
}

/// How often a long-running verifier looks for changed CRL files by default.
pub const DEFAULT_CRL_CHECK: Duration = Duration::from_secs(10);

/// What a CRL past its `nextUpdate` (at the verification time) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StaleCrlPolicy {
    /// Log a warning once per CRL (and a note in `inspect`); devices are still judged by it.
    #[default]
    Warn,
    /// Refuse every device issued by the CRL's CA until a fresh CRL is in place.
    Error,
}

impl std::str::FromStr for StaleCrlPolicy {
    type Err = Error;

    /// `warn` or `error`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "warn" => Ok(StaleCrlPolicy::Warn),
            "error" => Ok(StaleCrlPolicy::Error),
            other => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("stale CRL policy {other:?}: not `warn` or `error`"),
            )),
        }
    }
}

/// A CA certificate of the store.
pub(crate) struct CaCert {
    pub(crate) der: Arc<[u8]>,
    fingerprint: [u8; 32],
    pub(crate) name: String,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    anchor: bool,
    test: bool,
    is_ca: bool,
    /// keyUsage present without keyCertSign (a CA that may not sign certificates).
    no_cert_sign: bool,
    /// basicConstraints pathLenConstraint.
    path_len: Option<u32>,
    serial_raw: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    ski: Option<Vec<u8>>,
    pub(crate) key: PublicKey,
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaCert({})", self.name)
    }
}

impl CaCert {
    fn parse(der: &[u8], anchor: bool, test: bool) -> std::result::Result<Self, String> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "{} bytes of garbage after the certificate",
                rest.len()
            ));
        }
        let tbs = &cert.tbs_certificate;
        let key = PublicKey::from_spki(tbs.public_key()).map_err(|e| e.to_string())?;
        let ski = tbs
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.0.to_vec())
                }
                _ => None,
            });
        let no_cert_sign = cert
            .key_usage()
            .ok()
            .flatten()
            .is_some_and(|ku| !ku.value.key_cert_sign());
        let path_len = cert
            .basic_constraints()
            .ok()
            .flatten()
            .and_then(|bc| bc.value.path_len_constraint);
        Ok(CaCert {
            der: Arc::from(der),
            no_cert_sign,
            path_len,
            serial_raw: tbs.raw_serial().to_vec(),
            fingerprint: sha256(der),
            name: display_name(&cert),
            subject_raw: tbs.subject.as_raw().to_vec(),
            issuer_raw: tbs.issuer.as_raw().to_vec(),
            anchor,
            test,
            is_ca: cert.is_ca(),
            not_before: tbs.validity.not_before.to_datetime(),
            not_after: tbs.validity.not_after.to_datetime(),
            ski,
            key,
        })
    }
}

/// A Microchip manifest signer.
pub(crate) struct ManifestSigner {
    pub(crate) name: String,
    /// base64url(SHA-256(DER)), the JWS `x5t#S256`.
    pub(crate) x5t_s256: String,
    /// base64url(SubjectKeyIdentifier), the JWS `kid`.
    pub(crate) kid: Option<String>,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) test: bool,
    pub(crate) key: aws_lc_rs::signature::ParsedPublicKey,
}

/// The certificates idbridge trusts: built-in vendor anchors plus the user's.
#[derive(Clone, Default)]
pub struct TrustStore {
    cas: Vec<Arc<CaCert>>,
    by_subject: HashMap<Vec<u8>, Vec<usize>>,
    signers: Vec<Arc<ManifestSigner>>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("cas", &self.cas.len())
            .field("manifest_signers", &self.signers.len())
            .finish()
    }
}

impl TrustStore {
    /// An empty store.
    pub fn empty() -> Self {
        TrustStore::default()
    }

    /// The pinned vendor certificates (see `core/certs/README.md`).
    pub fn builtin() -> Self {
        let mut store = TrustStore::empty();
        for (file, role, der) in builtin::BUILTIN {
            let added = match role {
                Role::Root => store.add_ca(der, true, false),
                Role::Intermediate => store.add_ca(der, false, false),
                Role::TestRoot => store.add_ca(der, true, true),
                Role::ManifestSigner => store.add_manifest_signer(der, false),
                Role::TestManifestSigner => store.add_manifest_signer(der, true),
            };
            // The built-in certificates are fixed bytes checked by the unit tests; a failure
            // here can only be a broken build, and leaving one out is safe (fewer anchors).
            if let Err(e) = added {
                tracing::error!(file, %e, "built-in certificate unusable");
            }
        }
        store
    }

    /// Adds a trusted anchor (DER). It is trusted as is, self-signed or not.
    pub fn add_anchor_der(&mut self, der: &[u8]) -> Result<()> {
        self.add_ca(der, true, false)
            .map_err(|e| Error::new(ErrorKind::ConfigInvalid, e))
    }

    /// Adds an intermediate CA (DER). Unlike an anchor it is trusted only once its own chain
    /// to an anchor verifies (once, then cached).
    pub fn add_intermediate_der(&mut self, der: &[u8]) -> Result<()> {
        self.add_ca(der, false, false)
            .map_err(|e| Error::new(ErrorKind::ConfigInvalid, e))
    }

    /// Adds a Microchip-style manifest (JWS) signer certificate (DER, P-256): a TrustFLEX
    /// customer's own signer, or a generated one in tests and benchmarks.
    pub fn add_manifest_signer_der(&mut self, der: &[u8]) -> Result<()> {
        self.add_manifest_signer(der, false)
            .map_err(|e| Error::new(ErrorKind::ConfigInvalid, e))
    }

    /// Adds every certificate of a PEM or DER file, or of every `.pem`/`.crt`/`.cer`/`.der`
    /// file in a directory, as anchors. Returns how many were added.
    pub fn add_path(&mut self, path: &Path) -> Result<usize> {
        let config_err = |msg: String| Error::new(ErrorKind::ConfigInvalid, msg);
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| config_err(format!("{}: cannot read directory: {e}", path.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                        matches!(
                            x.to_ascii_lowercase().as_str(),
                            "pem" | "crt" | "cer" | "der"
                        )
                    })
                })
                .collect();
            files.sort();
            let mut n = 0;
            for f in files {
                n += self.add_path(&f)?;
            }
            if n == 0 {
                return Err(config_err(format!(
                    "{}: no certificate files (.pem, .crt, .cer, .der) in this directory",
                    path.display()
                )));
            }
            return Ok(n);
        }
        let bytes = std::fs::read(path)
            .map_err(|e| config_err(format!("{}: cannot read: {e}", path.display())))?;
        let ders =
            certificates_in(&bytes).map_err(|e| config_err(format!("{}: {e}", path.display())))?;
        for (i, der) in ders.iter().enumerate() {
            self.add_ca(der, true, false).map_err(|e| {
                config_err(format!("{}: certificate {}: {e}", path.display(), i + 1))
            })?;
        }
        Ok(ders.len())
    }

    /// Names of the anchors and CAs in the store, with their role.
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .cas
            .iter()
            .map(|c| {
                let role = match (c.anchor, c.test) {
                    (true, true) => "test root",
                    (true, false) => "anchor",
                    _ => "intermediate",
                };
                format!("{} ({role})", c.name)
            })
            .collect();
        out.extend(self.signers.iter().map(|s| {
            format!(
                "{} ({})",
                s.name,
                if s.test {
                    "test manifest signer"
                } else {
                    "manifest signer"
                }
            )
        }));
        out
    }

    fn add_ca(&mut self, der: &[u8], anchor: bool, test: bool) -> std::result::Result<(), String> {
        let ca = CaCert::parse(der, anchor, test)?;
        if let Some(existing) = self
            .cas
            .iter()
            .position(|c| c.fingerprint == ca.fingerprint)
        {
            // Re-adding a built-in intermediate as an anchor makes it an anchor.
            if anchor && !self.cas[existing].anchor {
                self.cas[existing] = Arc::new(ca);
            }
            return Ok(());
        }
        let idx = self.cas.len();
        self.by_subject
            .entry(ca.subject_raw.clone())
            .or_default()
            .push(idx);
        self.cas.push(Arc::new(ca));
        Ok(())
    }

    fn add_manifest_signer(&mut self, der: &[u8], test: bool) -> std::result::Result<(), String> {
        let ca = CaCert::parse(der, true, test)?;
        let key = aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            ca.key.raw(),
        )
        .map_err(|_| "manifest signer key is not P-256".to_owned())?;
        self.signers.push(Arc::new(ManifestSigner {
            name: ca.name.clone(),
            x5t_s256: b64url(&sha256(der)),
            kid: ca.ski.as_deref().map(b64url),
            not_before: ca.not_before,
            not_after: ca.not_after,
            test,
            key,
        }));
        Ok(())
    }

    fn issuers_named(&self, raw_name: &[u8]) -> impl Iterator<Item = &Arc<CaCert>> {
        self.by_subject
            .get(raw_name)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.cas.get(i))
    }
}

/// What a chain resolves to.
#[derive(Debug, Clone)]
struct AnchorInfo {
    name: String,
    test: bool,
    /// How many intermediates may still be below the CA this was resolved for (pathLen).
    budget: Option<u32>,
    /// The earliest notAfter above the device (which CA), checked at every verification.
    first_expiry: Option<(OffsetDateTime, String)>,
    /// The latest notBefore above the device (which CA).
    last_start: Option<(OffsetDateTime, String)>,
}

/// Judges certificates against a [`TrustStore`]. `Sync`: share one across threads.
pub struct Verifier {
    store: TrustStore,
    allow_test_roots: bool,
    validity: ValidityPolicy,
    crls: RwLock<Arc<crl::CrlSet>>,
    stale_crl: StaleCrlPolicy,
    crl_check_every: Duration,
    /// When the CRL files were last looked at.
    crl_checked: Mutex<Instant>,
    chains: RwLock<HashMap<[u8; 32], std::result::Result<AnchorInfo, String>>>,
    extras: RwLock<HashMap<[u8; 32], Arc<CaCert>>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("store", &self.store)
            .field("allow_test_roots", &self.allow_test_roots)
            .field("validity", &self.validity)
            .finish()
    }
}

/// Most input-supplied intermediates (Microchip `x5c[1]`) kept parsed at once.
const MAX_EXTRA_CAS: usize = 4096;
/// Longest chain followed above the device certificate.
const MAX_CHAIN_DEPTH: usize = 6;

impl Verifier {
    /// A verifier over `store` with `opts` (its `anchors` are ignored here: add them to the
    /// store; its `crls` are loaded and their signatures checked against the store).
    pub fn new(store: TrustStore, opts: &TrustOptions) -> Result<Self> {
        let crls = crl::CrlSet::load_all(&opts.crls, &store)?;
        let verifier = Verifier {
            store,
            allow_test_roots: opts.allow_test_roots,
            validity: opts.validity,
            crls: RwLock::new(Arc::new(crls)),
            stale_crl: opts.stale_crl,
            crl_check_every: opts.crl_check_every.unwrap_or(DEFAULT_CRL_CHECK),
            crl_checked: Mutex::new(Instant::now()),
            chains: RwLock::new(HashMap::new()),
            extras: RwLock::new(HashMap::new()),
        };
        for note in verifier.stale_crl_notes() {
            tracing::warn!("{note}");
        }
        // Anchors outside their validity are reported (they still anchor: the chain's own
        // validity is checked at every verification).
        if let Some(at) = verifier.at() {
            for ca in verifier.store.cas.iter().filter(|c| c.anchor) {
                if at > ca.not_after || at < ca.not_before {
                    tracing::warn!(
                        anchor = %ca.name,
                        not_before = %date(ca.not_before),
                        not_after = %date(ca.not_after),
                        "trust anchor outside its validity period"
                    );
                }
            }
        }
        Ok(verifier)
    }

    /// The built-in store (unless `no_builtin`) plus `opts.anchors`, with `opts`.
    pub fn from_options(opts: &TrustOptions) -> Result<Self> {
        let mut store = if opts.no_builtin {
            TrustStore::empty()
        } else {
            TrustStore::builtin()
        };
        for path in &opts.anchors {
            store.add_path(path)?;
        }
        Verifier::new(store, opts)
    }

    /// The store.
    pub fn store(&self) -> &TrustStore {
        &self.store
    }

    /// Looks at the CRL files now and reloads those whose modification time or length
    /// changed; `true` when something was reloaded. A file that no longer loads keeps its
    /// previous revocations and the failure is logged naming the file. Verification calls
    /// this by itself at most every `crl_check_every`; a SIGHUP handler calls it directly.
    pub fn reload_crls(&self) -> bool {
        let mut checked = match self.crl_checked.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *checked = Instant::now();
        self.reload_changed_crls()
    }

    /// Notes on CRLs past their `nextUpdate` at the verification time (for `inspect`).
    pub fn stale_crl_notes(&self) -> Vec<String> {
        let Some(at) = self.at() else {
            return Vec::new();
        };
        let crls = self.crls();
        crls.files
            .iter()
            .filter_map(|f| f.stale_at(at))
            .map(|why| match self.stale_crl {
                StaleCrlPolicy::Warn => format!("{why}: revocations may be missing"),
                StaleCrlPolicy::Error => {
                    format!("{why}: devices of this CA are refused (stale_crl = \"error\")")
                }
            })
            .collect()
    }

    /// The CRLs in force.
    fn crls(&self) -> Arc<crl::CrlSet> {
        match self.crls.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reloads changed CRL files when `crl_check_every` has passed since the last look.
    fn maybe_reload_crls(&self) {
        if self.crls().files.is_empty() {
            return;
        }
        // Another thread looking right now is as good as this one looking.
        let Ok(mut checked) = self.crl_checked.try_lock() else {
            return;
        };
        if checked.elapsed() < self.crl_check_every {
            return;
        }
        *checked = Instant::now();
        self.reload_changed_crls();
    }

    fn reload_changed_crls(&self) -> bool {
        let current = self.crls();
        if !current.changed() {
            return false;
        }
        let next = Arc::new(current.reloaded(&self.store));
        match self.crls.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        // Cached chains hold the revocation status of intermediates.
        match self.chains.write() {
            Ok(mut m) => m.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
        true
    }

    /// The time validity is judged at, evaluated now (at every verification).
    fn at(&self) -> Option<OffsetDateTime> {
        match self.validity {
            ValidityPolicy::Now => Some(OffsetDateTime::now_utc()),
            ValidityPolicy::At(t) => Some(t),
            ValidityPolicy::Ignore => None,
        }
    }

    /// Anchors outside their validity at the verification time: `(name, notBefore, notAfter)`.
    pub fn anchors_outside_validity(&self) -> Vec<(String, String, String)> {
        let Some(at) = self.at() else {
            return Vec::new();
        };
        self.store
            .cas
            .iter()
            .filter(|c| c.anchor && (at > c.not_after || at < c.not_before))
            .map(|c| (c.name.clone(), date(c.not_before), date(c.not_after)))
            .collect()
    }

    /// Parses and judges one DER certificate from memory (the HTTP receiver's entry point).
    /// When it is not a certificate, the error says why and the verdict is `Invalid`.
    pub fn verify_der(&self, der: &[u8]) -> (Result<DeviceIdentity>, Verdict) {
        let source = Source {
            file: "<request>".to_owned(),
            line: None,
            entry: None,
        };
        match DeviceIdentity::from_der(der.to_vec(), source) {
            Ok(identity) => {
                let verdict = self.verify_identity(&identity, &[]);
                (Ok(identity), verdict)
            }
            Err(e) => {
                let reason = e.message().to_owned();
                (Err(e), Verdict::Invalid { reason })
            }
        }
    }

    /// Judges a parsed device certificate; `chain` holds intermediates that came with it
    /// (Microchip `x5c[1]`), which must themselves chain to an anchor.
    pub fn verify_identity(&self, identity: &DeviceIdentity, chain: &[Arc<[u8]>]) -> Verdict {
        self.verify_identity_with(identity, chain, false)
    }

    /// As [`Verifier::verify_identity`]; with `issued_by_first`, the device must be signed by
    /// `chain[0]` itself (a Microchip `x5c[1]`), not merely by some CA of the same name.
    pub(crate) fn verify_identity_with(
        &self,
        identity: &DeviceIdentity,
        chain: &[Arc<[u8]>],
        issued_by_first: bool,
    ) -> Verdict {
        let cert = match X509Certificate::from_der(&identity.der) {
            Ok((_, cert)) => cert,
            Err(e) => {
                return Verdict::Invalid {
                    reason: format!("not an X.509 certificate: {e}"),
                };
            }
        };
        self.maybe_reload_crls();
        let crls = self.crls();
        let mut reasons: Vec<String> = Vec::new();
        let mut anchor_name = None;
        let at = self.at();
        let chained = self.chain_of(&cert, chain);
        if issued_by_first
            && let Some(first) = chain.first()
            && !matches!(&chained, Ok((_, fp)) if *fp == sha256(first))
        {
            reasons.push(match &chained {
                Err(why) => format!("x5c[0] is not signed by x5c[1] ({why})"),
                Ok(_) => "x5c[0] is not signed by x5c[1]".to_owned(),
            });
        }
        if let (Some(at), Ok((info, _))) = (at, &chained) {
            if let Some((t, name)) = &info.first_expiry
                && at > *t
            {
                reasons.push(format!("intermediate {name:?} expired on {}", date(*t)));
            }
            if let Some((t, name)) = &info.last_start
                && at < *t
            {
                reasons.push(format!(
                    "intermediate {name:?} not valid before {}",
                    date(*t)
                ));
            }
        }
        match chained {
            Ok((anchor, _)) if anchor.test && !self.allow_test_roots => reasons.push(format!(
                "chains to the test root {:?}, whose private key is public (accepted only with --allow-test-roots)",
                anchor.name
            )),
            Ok((anchor, _)) => {
                anchor_name = Some(if anchor.test {
                    format!("{} (TEST ROOT)", anchor.name)
                } else {
                    anchor.name
                })
            }
            Err(reason) => reasons.push(reason),
        }
        if cert.is_ca() {
            reasons.push("is a CA certificate (basicConstraints CA:TRUE), not a device".to_owned());
        }
        if let Some(at) = at {
            let nb = cert.tbs_certificate.validity.not_before.to_datetime();
            let na = cert.tbs_certificate.validity.not_after.to_datetime();
            if at > na {
                reasons.push(format!("expired on {}", date(na)));
            } else if at < nb {
                reasons.push(format!("not valid before {}", date(nb)));
            }
        }
        let issuer_raw = cert.tbs_certificate.issuer.as_raw();
        if let Some(why) = crls.revoked(issuer_raw, cert.tbs_certificate.raw_serial()) {
            reasons.push(why);
        }
        if let Some(at) = at {
            for f in crls.files.iter().filter(|f| f.issuer_raw == issuer_raw) {
                match self.stale_crl {
                    StaleCrlPolicy::Warn => f.warn_if_stale(at),
                    StaleCrlPolicy::Error => {
                        if let Some(why) = f.stale_at(at) {
                            reasons.push(format!(
                                "{why}: revocation cannot be checked (stale_crl = \"error\")"
                            ));
                        }
                    }
                }
            }
        }
        match (reasons.is_empty(), anchor_name) {
            (true, Some(anchor)) => Verdict::Valid { anchor },
            (true, None) => Verdict::Invalid {
                reason: "no chain to a trusted anchor".to_owned(),
            },
            (false, _) => Verdict::Invalid {
                reason: reasons.join("; "),
            },
        }
    }

    /// Checks a Microchip manifest entry's JWS. `Ok(signer name)`, or `Err(reason)`.
    pub fn check_manifest_entry(
        &self,
        entry: &ManifestEntry,
    ) -> std::result::Result<String, String> {
        jws::check(entry, &self.store.signers, self.allow_test_roots)
    }

    /// Checks that `child` (DER) is signed by the key of `issuer` (DER), nothing more.
    pub fn signed_by(&self, child: &[u8], issuer: &[u8]) -> std::result::Result<(), String> {
        let (_, cert) =
            X509Certificate::from_der(child).map_err(|e| format!("not a certificate: {e}"))?;
        let ca = self
            .extra(issuer)
            .ok_or("the issuer is not a usable certificate")?;
        ca.key
            .verify(
                &cert.signature_algorithm,
                cert.tbs_certificate.as_ref(),
                &cert.signature_value.data,
            )
            .map_err(|e| format!("{e} with the key of {:?}", ca.name))
    }

    /// Finds the issuer of `cert` among the store and `chain`, verifies `cert`'s signature,
    /// then resolves the issuer to an anchor (cached).
    fn chain_of(
        &self,
        cert: &X509Certificate<'_>,
        chain: &[Arc<[u8]>],
    ) -> std::result::Result<(AnchorInfo, [u8; 32]), String> {
        let issuer_raw = cert.tbs_certificate.issuer.as_raw();
        let extras: Vec<Arc<CaCert>> = chain.iter().filter_map(|der| self.extra(der)).collect();
        // The chain that came with the device first: when it names the issuer, one
        // verification both proves "signed by x5c[1]" and finds the path.
        let candidates = extras
            .iter()
            .filter(|c| c.subject_raw == issuer_raw)
            .chain(self.store.issuers_named(issuer_raw));
        let mut failure = None;
        for ca in candidates {
            match ca.key.verify(
                &cert.signature_algorithm,
                cert.tbs_certificate.as_ref(),
                &cert.signature_value.data,
            ) {
                Ok(()) => return self.resolve(ca, &extras, 0, 0).map(|a| (a, ca.fingerprint)),
                Err(e) => failure = Some(format!("{e} with the key of {:?}", ca.name)),
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        if cert.tbs_certificate.subject.as_raw() == issuer_raw {
            Err(format!(
                "self-signed by {:?}, which is not a trusted anchor",
                name_of(&cert.tbs_certificate.issuer)
            ))
        } else {
            Err(format!(
                "issuer {:?} is not a known CA (add it with --trust)",
                name_of(&cert.tbs_certificate.issuer)
            ))
        }
    }

    /// Resolves a CA certificate to its anchor, once per CA; `depth` intermediates are below
    /// it on this path, `level` counts the recursion.
    fn resolve(
        &self,
        ca: &Arc<CaCert>,
        extras: &[Arc<CaCert>],
        depth: usize,
        level: usize,
    ) -> std::result::Result<AnchorInfo, String> {
        if level >= MAX_CHAIN_DEPTH {
            return Err(format!("chain through {:?} is too long", ca.name));
        }
        let info = if ca.anchor {
            Ok(AnchorInfo {
                name: ca.name.clone(),
                test: ca.test,
                budget: ca.path_len,
                first_expiry: None,
                last_start: None,
            })
        } else if let Some(hit) = self
            .chains
            .read()
            .ok()
            .and_then(|m| m.get(&ca.fingerprint).cloned())
        {
            hit
        } else {
            // Cached without the depth it was reached at: pathLen is checked below against
            // the budget, validity at every verification.
            let generation = self.crls().generation;
            let result = self.resolve_uncached(ca, extras, level);
            // Not cached when the CRLs were reloaded meanwhile (it may hold the old status).
            if let Ok(mut m) = self.chains.write()
                && self.crls().generation == generation
            {
                m.insert(ca.fingerprint, result.clone());
            }
            result
        }?;
        if let Some(b) = info.budget
            && depth as u64 > u64::from(b)
        {
            return Err(format!(
                "{:?} allows {b} intermediate(s) below it (pathLenConstraint), the chain has {depth}",
                ca.name
            ));
        }
        Ok(info)
    }

    fn resolve_uncached(
        &self,
        ca: &Arc<CaCert>,
        extras: &[Arc<CaCert>],
        level: usize,
    ) -> std::result::Result<AnchorInfo, String> {
        if !ca.is_ca {
            return Err(format!(
                "intermediate {:?} is not a CA certificate",
                ca.name
            ));
        }
        if ca.no_cert_sign {
            return Err(format!(
                "intermediate {:?} may not sign certificates (keyUsage without keyCertSign)",
                ca.name
            ));
        }
        if let Some(why) = self.crls().revoked(&ca.issuer_raw, &ca.serial_raw) {
            return Err(format!("intermediate {:?} {why}", ca.name));
        }
        let (_, parsed) = X509Certificate::from_der(&ca.der)
            .map_err(|e| format!("intermediate {:?} unparseable: {e}", ca.name))?;
        let mut failure = None;
        let candidates = self
            .store
            .issuers_named(&ca.issuer_raw)
            .chain(extras.iter().filter(|c| c.subject_raw == ca.issuer_raw))
            .filter(|c| c.fingerprint != ca.fingerprint);
        for issuer in candidates {
            match issuer.key.verify(
                &parsed.signature_algorithm,
                parsed.tbs_certificate.as_ref(),
                &parsed.signature_value.data,
            ) {
                Ok(()) => {
                    // `ca` is one intermediate below `issuer` (self-issued ones do not count).
                    let below = usize::from(ca.subject_raw != ca.issuer_raw);
                    let up = self.resolve(issuer, extras, below, level + 1)?;
                    let budget = match (
                        up.budget.map(|b| b.saturating_sub(below as u32)),
                        ca.path_len,
                    ) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let earlier = |x: Option<(OffsetDateTime, String)>,
                                   y: (OffsetDateTime, String),
                                   first: bool| match x {
                        Some(x) if (x.0 < y.0) == first => Some(x),
                        _ => Some(y),
                    };
                    return Ok(AnchorInfo {
                        budget,
                        first_expiry: earlier(
                            up.first_expiry.clone(),
                            (ca.not_after, ca.name.clone()),
                            true,
                        ),
                        last_start: earlier(
                            up.last_start.clone(),
                            (ca.not_before, ca.name.clone()),
                            false,
                        ),
                        ..up
                    });
                }
                Err(e) => {
                    failure = Some(format!(
                        "intermediate {:?}: {e} with the key of {:?}",
                        ca.name, issuer.name
                    ))
                }
            }
        }
        Err(failure.unwrap_or_else(|| {
            format!(
                "intermediate {:?} is issued by {:?}, which is not a known CA",
                ca.name,
                name_of(&parsed.tbs_certificate.issuer)
            )
        }))
    }

    /// An input-supplied intermediate, parsed once.
    fn extra(&self, der: &[u8]) -> Option<Arc<CaCert>> {
        let fp = sha256(der);
        if let Some(hit) = self.extras.read().ok().and_then(|m| m.get(&fp).cloned()) {
            return Some(hit);
        }
        let ca = Arc::new(CaCert::parse(der, false, false).ok()?);
        if let Ok(mut m) = self.extras.write()
            && m.len() < MAX_EXTRA_CAS
        {
            m.insert(fp, Arc::clone(&ca));
        }
        Some(ca)
    }
}

/// Every certificate in a PEM text (any number of CERTIFICATE blocks) or a single DER.
pub(crate) fn certificates_in(bytes: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    if bytes.first() == Some(&0x30) {
        return Ok(vec![bytes.to_vec()]);
    }
    let blocks = ::pem::parse_many(bytes).map_err(|e| format!("not PEM or DER: {e}"))?;
    let ders: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect();
    if ders.is_empty() {
        return Err("no CERTIFICATE block".to_owned());
    }
    Ok(ders)
}

/// The raw public key of a DER certificate (EC point or PKCS#1 RSA key).
pub(crate) fn public_key_raw(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(
        cert.tbs_certificate
            .public_key()
            .subject_public_key
            .data
            .to_vec(),
    )
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The CN, or the whole DN when there is none.
fn name_of(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| name.to_string())
}

fn display_name(cert: &X509Certificate<'_>) -> String {
    name_of(&cert.tbs_certificate.subject)
}

pub(crate) fn date(t: OffsetDateTime) -> String {
    t.format(&::time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests;
