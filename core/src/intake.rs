//! Intake: every input file, imported and judged, as one stream.
//!
//! [`Intake::open`] checks the inputs and the trust configuration up front (an `Err` there is an
//! unusable input or configuration, and names the file); iterating then yields, lazily and in
//! input order, one item per device or entry:
//!
//! - `Ok(Checked)`: a certificate with its [`Verdict`] (valid, invalid with a reason).
//! - `Err(Rejected)`: an entry that is not a judged certificate: unreadable (names file and
//!   line/entry), a certificate-less Microchip "lite" entry (not provisionable), something
//!   skipped (a duplicate of a certificate already seen, a private-key PEM block), or the rest of
//!   a file abandoned ([`RejectKind::InputUnusable`], e.g. a truncated archive; what came before
//!   it stands and the next input is still read).
//!
//! One bad device never loses the others. A million-device input is never held in memory: only
//! 16 bytes of each device id and 8 bytes per vendor id are kept, to find duplicates.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::identity::{DeviceIdentity, Source, VendorAttributes};
use crate::importer::{self, EntryError, ImportOptions, Imported, Items, Record};
use crate::trust::{ManifestEntry, Verifier};

pub use crate::importer::{Format, Limits, Slot};
pub use crate::trust::{StaleCrlPolicy, TrustOptions, ValidityPolicy, Verdict};

/// How to read and judge inputs.
#[derive(Debug, Clone, Default)]
pub struct IntakeOptions {
    /// Force a format; `None` detects it per file from the content.
    pub format: Option<Format>,
    /// Infineon slot(s) to import (default E0E0).
    pub slot: Slot,
    /// Trust anchors, test roots, CRLs, validity policy.
    pub trust: TrustOptions,
    /// Resource bounds for archives and entries.
    pub limits: Limits,
}

/// A certificate with its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The device.
    pub identity: DeviceIdentity,
    /// Valid, invalid or not provisionable, with the reason.
    pub verdict: Verdict,
    /// Remarks that do not change the verdict.
    pub warnings: Vec<String>,
}

/// What kind of entry a [`Rejected`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectKind {
    /// A certificate-less entry that failed its own check (a forged Microchip lite entry).
    Invalid,
    /// Genuine but nothing to provision (Microchip version 2 "lite" entry).
    NotProvisionable,
    /// This entry could not be read; the rest of the file continues.
    Unreadable,
    /// The rest of this input could not be read (truncated archive, I/O error, syntax error
    /// that loses the thread). Entries before it stand; the next input is read.
    InputUnusable,
    /// Not an error: skipped on purpose (a certificate seen before, a non-certificate PEM block).
    Skipped,
}

impl RejectKind {
    /// `invalid`, `not_provisionable`, `unreadable`, `input_unusable`, `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Invalid => "invalid",
            RejectKind::NotProvisionable => "not_provisionable",
            RejectKind::Unreadable => "unreadable",
            RejectKind::InputUnusable => "input_unusable",
            RejectKind::Skipped => "skipped",
        }
    }

    /// Whether it counts as a failure (everything but `Skipped`).
    pub fn is_failure(self) -> bool {
        !matches!(self, RejectKind::Skipped)
    }
}

/// An entry that is not a judged certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// File and line or entry.
    pub source: Source,
    /// What the entry said about the device, if anything.
    pub vendor: VendorAttributes,
    /// What kind.
    pub kind: RejectKind,
    /// Why, one line.
    pub reason: String,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.source,
            self.kind.as_str(),
            self.reason
        )
    }
}

impl std::error::Error for Rejected {}

/// The stream of every input's devices, judged. See the module docs.
///
/// Verification runs on a bounded pool of threads (one per core by default, see
/// [`Intake::with_workers`]) fed by the one reader thread that imports the files; items come out
/// in input order, exactly as a single thread would yield them.
pub struct Intake {
    inputs: Vec<(PathBuf, Format)>,
    verifier: Arc<Verifier>,
    notes: Vec<String>,
    workers: usize,
    chunk: usize,
    state: State,
}

/// Where the stream stands: not started (serial or pooled), running serially, or pooled.
enum State {
    Idle(Box<Reader>),
    Serial(Box<Reader>, ManifestCache),
    Pooled(pool::Pool),
    Done,
}

/// The sequential half of intake: files, importers, and the bookkeeping that depends on input
/// order (duplicates, vendor-id claims). Everything costly is left to [`judge`].
struct Reader {
    queue: VecDeque<(PathBuf, Format)>,
    current: Option<Items>,
    import: ImportOptions,
    seen: HashSet<u128>,
    claims: HashMap<u64, u128>,
}

/// One entry after the reader's sequential checks, before its signatures are checked.
// Moved once per entry, in chunks of 64: the few hundred bytes of the rare certificate-less
// variant cost nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Work {
    /// Judged already (unreadable, skipped, duplicate, unusable input); boxed, as it is rare.
    Done(Box<Rejected>),
    /// A certificate-less entry whose manifest signature is to be checked.
    NoCertificate {
        source: Source,
        vendor: VendorAttributes,
        manifest: Option<Arc<ManifestEntry>>,
        reason: String,
    },
    /// A certificate to verify.
    Cert(Box<Record>),
}

/// The last manifest entry checked, and its result: an entry holding several keys is checked
/// once (per pool chunk).
type ManifestCache = Option<(Arc<ManifestEntry>, std::result::Result<String, String>)>;

impl fmt::Debug for Intake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intake")
            .field("inputs", &self.inputs)
            .field("verifier", &self.verifier)
            .field("workers", &self.workers)
            .finish()
    }
}

impl Intake {
    /// Opens `inputs` (files or directories) with a verifier built from `opts.trust`.
    pub fn open(inputs: &[PathBuf], opts: &IntakeOptions) -> Result<Intake> {
        let verifier = Arc::new(Verifier::from_options(&opts.trust)?);
        Intake::with_verifier(inputs, opts, verifier)
    }

    /// Opens `inputs` judged by an existing verifier (its trust options win over
    /// `opts.trust`).
    pub fn with_verifier(
        inputs: &[PathBuf],
        opts: &IntakeOptions,
        verifier: Arc<Verifier>,
    ) -> Result<Intake> {
        if inputs.is_empty() {
            return Err(Error::new(ErrorKind::InvalidInput, "no input given"));
        }
        let mut files = Vec::new();
        let mut notes = verifier.stale_crl_notes();
        for path in inputs {
            let meta = std::fs::metadata(path)
                .map_err(|e| importer::input_error(path, format!("cannot open: {e}")))?;
            if meta.is_dir() {
                let before = files.len();
                walk(path, 0, opts.format, &mut files, &mut notes)?;
                if files.len() == before {
                    return Err(importer::input_error(
                        path,
                        "directory holds no certificate input",
                    ));
                }
            } else {
                let format = match opts.format {
                    Some(f) => f,
                    None => importer::detect(path)?,
                };
                files.push((path.clone(), format));
            }
        }
        let reader = Reader::new(
            files.iter().cloned().collect(),
            None,
            ImportOptions {
                slot: opts.slot,
                limits: opts.limits,
            },
        );
        Ok(Intake::build(files, notes, verifier, reader))
    }

    /// Judges one already-open input (an upload, stdin) named `name` in messages, in
    /// `format`, with `verifier`. Nothing is read until the first item is asked for.
    pub fn from_reader(
        reader: Box<dyn std::io::BufRead + Send>,
        name: &str,
        format: Format,
        opts: &IntakeOptions,
        verifier: Arc<Verifier>,
    ) -> Intake {
        let import = ImportOptions {
            slot: opts.slot,
            limits: opts.limits,
        };
        let items = importer::open_reader(reader, name.to_owned(), format, &import);
        let reader = Reader::new(VecDeque::new(), Some(items), import);
        Intake::build(Vec::new(), Vec::new(), verifier, reader)
    }

    /// Verifies on `workers` threads (0: one per available core; 1: on the calling thread,
    /// nothing spawned). Takes effect only before the first item is read.
    pub fn with_workers(mut self, workers: usize) -> Intake {
        self.workers = if workers == 0 {
            default_workers()
        } else {
            workers
        };
        self
    }

    /// How many threads verify (see [`Intake::with_workers`]).
    pub fn workers(&self) -> usize {
        self.workers
    }

    fn build(
        inputs: Vec<(PathBuf, Format)>,
        notes: Vec<String>,
        verifier: Arc<Verifier>,
        reader: Reader,
    ) -> Intake {
        Intake {
            inputs,
            verifier,
            notes,
            workers: default_workers(),
            chunk: pool::CHUNK,
            state: State::Idle(Box::new(reader)),
        }
    }

    /// Every input file with its format, in reading order.
    pub fn inputs(&self) -> &[(PathBuf, Format)] {
        &self.inputs
    }

    /// Remarks from opening (files skipped inside directories).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The verifier judging the devices.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }
}

impl Reader {
    fn new(
        queue: VecDeque<(PathBuf, Format)>,
        current: Option<Items>,
        import: ImportOptions,
    ) -> Self {
        Reader {
            queue,
            current,
            import,
            seen: HashSet::new(),
            claims: HashMap::new(),
        }
    }

    /// The next entry of the inputs, with the checks that depend on input order done.
    fn next_work(&mut self) -> Option<Work> {
        loop {
            if let Some(items) = self.current.as_mut() {
                if let Some(item) = items.next() {
                    return Some(self.sequential(item));
                }
                self.current = None;
            }
            let (path, format) = self.queue.pop_front()?;
            match importer::open(&path, format, &self.import) {
                Ok(items) => self.current = Some(items),
                Err(e) => {
                    return Some(Work::Done(Box::new(Rejected {
                        source: Source {
                            file: path.display().to_string(),
                            line: None,
                            entry: None,
                        },
                        vendor: VendorAttributes::default(),
                        kind: RejectKind::InputUnusable,
                        reason: e.message().to_owned(),
                    })));
                }
            }
        }
    }

    fn sequential(&mut self, item: std::result::Result<Imported, EntryError>) -> Work {
        match item {
            Err(e) => Work::Done(Box::new(Rejected {
                source: e.source,
                vendor: VendorAttributes::default(),
                kind: if e.fatal {
                    RejectKind::InputUnusable
                } else {
                    RejectKind::Unreadable
                },
                reason: e.message,
            })),
            Ok(Imported::Skipped { source, reason }) => Work::Done(Box::new(Rejected {
                source,
                vendor: VendorAttributes::default(),
                kind: RejectKind::Skipped,
                reason,
            })),
            Ok(Imported::NoCertificate {
                source,
                vendor,
                manifest,
                reason,
            }) => Work::NoCertificate {
                source,
                vendor,
                manifest,
                reason,
            },
            Ok(Imported::Cert(mut record)) => {
                let id128 = id_prefix(&record.identity);
                if !self.seen.insert(id128) {
                    return Work::Done(Box::new(Rejected {
                        source: record.identity.source.clone(),
                        vendor: record.identity.vendor.clone(),
                        kind: RejectKind::Skipped,
                        reason: format!(
                            "the same certificate again (device {}): counted once",
                            record.identity.device_id
                        ),
                    }));
                }
                if let Some(key) = &record.vendor_key {
                    let mut h = DefaultHasher::new();
                    key.hash(&mut h);
                    let k = h.finish();
                    match self.claims.get(&k) {
                        Some(&other) if other != id128 => record.problems.push(format!(
                            "{key} is claimed by two different certificates: device {:032x}… (earlier) and device {}",
                            other, record.identity.device_id
                        )),
                        Some(_) => {}
                        None => {
                            self.claims.insert(k, id128);
                        }
                    }
                }
                Work::Cert(record)
            }
        }
    }
}

/// The costly half of intake: signatures and chains. Runs on any thread.
// Checked and Rejected are both a few hundred bytes and are moved once per device; boxing only
// the error side would buy nothing.
#[allow(clippy::result_large_err)]
fn judge(
    verifier: &Verifier,
    work: Work,
    cache: &mut ManifestCache,
) -> std::result::Result<Checked, Rejected> {
    match work {
        Work::Done(rejected) => Err(*rejected),
        Work::NoCertificate {
            source,
            vendor,
            manifest,
            reason,
        } => {
            let checked = manifest.map(|m| check_manifest(verifier, &m, cache));
            let (kind, reason) = match checked {
                Some(Err(why)) => (RejectKind::Invalid, format!("manifest entry: {why}")),
                Some(Ok(signer)) => (
                    RejectKind::NotProvisionable,
                    format!("{reason} (entry signature valid, {signer})"),
                ),
                None => (RejectKind::NotProvisionable, reason),
            };
            Err(Rejected {
                source,
                vendor,
                kind,
                reason,
            })
        }
        Work::Cert(record) => Ok(judge_record(verifier, *record, cache)),
    }
}

fn judge_record(verifier: &Verifier, record: Record, cache: &mut ManifestCache) -> Checked {
    let Record {
        mut identity,
        chain,
        manifest,
        stated_key,
        mut problems,
        warnings,
        vendor_key: _,
    } = record;
    if identity.vendor.vendor.is_none() {
        identity.vendor.vendor = guess_vendor(&identity.issuer);
    }
    if let Some(m) = &manifest {
        if let Err(why) = check_manifest(verifier, m, cache) {
            problems.push(format!("manifest entry: {why}"));
        }
        if let Some(stated) = &stated_key
            && crate::trust::public_key_raw(&identity.der).as_deref() != Some(stated.as_slice())
        {
            problems.push("the JWK x/y differ from the certificate's public key".to_owned());
        }
    }
    let verdict = verifier.verify_identity_with(&identity, &chain, manifest.is_some());
    let verdict = if problems.is_empty() {
        verdict
    } else {
        if let Some(r) = verdict.reason() {
            problems.push(r.to_owned());
        }
        Verdict::Invalid {
            reason: problems.join("; "),
        }
    };
    Checked {
        identity,
        verdict,
        warnings,
    }
}

/// The JWS check of a manifest entry, once per entry even when it holds several keys.
fn check_manifest(
    verifier: &Verifier,
    m: &Arc<ManifestEntry>,
    cache: &mut ManifestCache,
) -> std::result::Result<String, String> {
    if let Some((last, result)) = cache
        && Arc::ptr_eq(last, m)
    {
        return result.clone();
    }
    let result = verifier.check_manifest_entry(m);
    *cache = Some((Arc::clone(m), result.clone()));
    result
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Iterator for Intake {
    type Item = std::result::Result<Checked, Rejected>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match &mut self.state {
                State::Idle(_) => {
                    let State::Idle(reader) = std::mem::replace(&mut self.state, State::Done)
                    else {
                        continue;
                    };
                    self.state = if self.workers <= 1 {
                        State::Serial(reader, None)
                    } else {
                        State::Pooled(pool::Pool::start(
                            *reader,
                            Arc::clone(&self.verifier),
                            self.workers,
                            self.chunk,
                        ))
                    };
                }
                State::Serial(reader, cache) => {
                    let Some(work) = reader.next_work() else {
                        self.state = State::Done;
                        return None;
                    };
                    return Some(judge(&self.verifier, work, cache));
                }
                State::Pooled(pool) => {
                    let item = pool.next();
                    if item.is_none() {
                        self.state = State::Done;
                    }
                    return item;
                }
                State::Done => return None,
            }
        }
    }
}

/// Collects the files of a directory (sorted, recursive, hidden files left out).
fn walk(
    dir: &Path,
    depth: usize,
    format: Option<Format>,
    files: &mut Vec<(PathBuf, Format)>,
    notes: &mut Vec<String>,
) -> Result<()> {
    if depth > 8 {
        notes.push(format!("{}: nested too deep, skipped", dir.display()));
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| importer::input_error(dir, format!("cannot read directory: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, depth + 1, format, files, notes)?;
            continue;
        }
        match format {
            Some(f) => files.push((path, f)),
            None => match importer::detect(&path) {
                Ok(f) => files.push((path, f)),
                Err(e) => notes.push(format!("skipped {}", e.message())),
            },
        }
    }
    Ok(())
}

fn id_prefix(identity: &DeviceIdentity) -> u128 {
    // Invariant: a DeviceId is 64 hex characters, so the first 32 always parse.
    u128::from_str_radix(&identity.device_id.as_str()[..32], 16).unwrap_or_default()
}

fn guess_vendor(issuer: &str) -> Option<String> {
    let lower = issuer.to_ascii_lowercase();
    if lower.contains("infineon") {
        Some("infineon".to_owned())
    } else if lower.contains("microchip") || lower.contains("atecc") {
        Some("microchip".to_owned())
    } else if lower.contains("espressif") {
        Some("espressif".to_owned())
    } else {
        None
    }
}

mod pool;

#[cfg(test)]
mod tests;
