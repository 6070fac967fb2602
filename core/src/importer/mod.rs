//! Importers: one per vendor batch format, each a streaming iterator of certificates.
//!
//! The format is detected from the content ([`detect`]); `--format` overrides. Every importer
//! yields [`Imported`] items or [`EntryError`]s naming the file and the line or entry; one bad
//! entry never loses the others. An error marked `fatal` means the rest of that file could not
//! be read (a truncated archive, an I/O error): what came before it stands.
//!
//! Nothing here judges trust: that is [`crate::trust`]'s job, driven by [`crate::intake`].
//! Formats are described in `docs/formats.md`.

mod bundle;
mod espressif;
mod json_array;
mod lines;
mod manifest;
mod microchip;
mod optiga;
mod pem;

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::identity::{DeviceIdentity, Source, VendorAttributes};
use crate::trust::ManifestEntry;

pub use manifest::{MANIFEST_FORMAT, MANIFEST_VERSION, ManifestDevice, ManifestHeader};

/// An input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// PEM: one certificate or a bundle; LF or CRLF.
    Pem,
    /// DER: one certificate, or several concatenated.
    Der,
    /// OPTIGA object data, binary or hex text, bare DER or with the TLS identity tag
    /// `C0 | len | chain len | cert len`.
    Optiga,
    /// An OPTIGA object dump: JSON object keyed by OID (`e0e0`, `e0c2` ...), `data` in hex.
    OptigaDump,
    /// Infineon CIRRENT Cloud ID bundle: 7z of per-slot 7z archives of `<chipID>_<slot>.pem`.
    CloudIdBundle,
    /// Microchip Trust Platform manifest: JSON array of flattened JWS.
    MicrochipManifest,
    /// Espressif CSV `MAC,cn,cert`.
    EspressifCsv,
    /// idbridge's own manifest, JSON Lines.
    IdbridgeManifest,
}

impl Format {
    /// Every format, in `--format` spelling order.
    pub const ALL: [Format; 8] = [
        Format::Pem,
        Format::Der,
        Format::Optiga,
        Format::OptigaDump,
        Format::CloudIdBundle,
        Format::MicrochipManifest,
        Format::EspressifCsv,
        Format::IdbridgeManifest,
    ];

    /// The `--format` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pem => "pem",
            Format::Der => "der",
            Format::Optiga => "optiga",
            Format::OptigaDump => "optiga-dump",
            Format::CloudIdBundle => "cloud-id-bundle",
            Format::MicrochipManifest => "microchip-manifest",
            Format::EspressifCsv => "espressif-csv",
            Format::IdbridgeManifest => "idbridge-manifest",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Format::ALL.iter().map(|f| f.as_str()).collect();
                Error::new(
                    ErrorKind::InvalidInput,
                    format!("unknown format {s:?}; one of: {}", names.join(", ")),
                )
            })
    }
}

/// Which OPTIGA certificate slot(s) to import from Infineon inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Slot {
    /// E0E0: the ECC device certificate (default).
    #[default]
    E0E0,
    /// E0E1: the second ECC certificate; on Express only usable over a shielded connection.
    E0E1,
    /// E0E2: the RSA-2048 certificate (Express / MTR).
    E0E2,
    /// All three.
    All,
}

impl Slot {
    /// `E0E0`, `E0E1`, `E0E2` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::E0E0 => "E0E0",
            Slot::E0E1 => "E0E1",
            Slot::E0E2 => "E0E2",
            Slot::All => "all",
        }
    }

    /// Whether this choice includes `slot` (`"E0E0"`, any case).
    pub fn includes(self, slot: &str) -> bool {
        match self {
            Slot::All => ["E0E0", "E0E1", "E0E2"]
                .iter()
                .any(|s| s.eq_ignore_ascii_case(slot)),
            one => one.as_str().eq_ignore_ascii_case(slot),
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Slot {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "E0E0" => Ok(Slot::E0E0),
            "E0E1" => Ok(Slot::E0E1),
            "E0E2" => Ok(Slot::E0E2),
            "ALL" => Ok(Slot::All),
            _ => Err(Error::new(
                ErrorKind::InvalidInput,
                format!("unknown slot {s:?}; one of: E0E0, E0E1, E0E2, all"),
            )),
        }
    }
}

/// Bounds that keep a hostile input from exhausting memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most entries in one 7z archive.
    pub max_archive_entries: usize,
    /// Most bytes decompressed from one input in total, all nesting levels together (a Cloud
    /// ID bundle's inner archives, then their entries), checked against declared sizes before
    /// anything is decoded.
    pub max_decompressed: u64,
    /// Largest single entry (a certificate file, a nested archive) in bytes.
    pub max_entry: u64,
    /// Largest archive file read into memory.
    pub max_archive_file: u64,
    /// Longest text line, and largest JSON entry or PEM block.
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_archive_entries: 200_000,
            max_decompressed: 1 << 30,
            max_entry: 64 << 20,
            max_archive_file: 1 << 30,
            max_line: 1 << 20,
        }
    }
}

/// Options for the importers.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Infineon slot choice.
    pub slot: Slot,
    /// Resource bounds.
    pub limits: Limits,
}

/// A certificate read from an input, with what the format says about it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The parsed certificate with vendor attributes and source.
    pub identity: DeviceIdentity,
    /// Intermediates that came with it (Microchip `x5c[1]`, an OPTIGA chain).
    pub chain: Vec<Arc<[u8]>>,
    /// The signed manifest entry it came from, to be checked by the verifier.
    pub manifest: Option<Arc<ManifestEntry>>,
    /// The public key the manifest states (`04 || x || y`), to compare with the certificate.
    pub stated_key: Option<Vec<u8>>,
    /// Reasons the format itself makes it invalid (a CSV `cn` that differs from the CN ...).
    pub problems: Vec<String>,
    /// Remarks that do not make it invalid.
    pub warnings: Vec<String>,
    /// The vendor identifier it claims (`infineon:<chipID>:<slot>` ...): two different
    /// certificates claiming one is an error.
    pub vendor_key: Option<String>,
}

impl Record {
    pub(crate) fn new(identity: DeviceIdentity) -> Self {
        Record {
            identity,
            chain: Vec::new(),
            manifest: None,
            stated_key: None,
            problems: Vec::new(),
            warnings: Vec::new(),
            vendor_key: None,
        }
    }
}

/// One item of an input.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Imported {
    /// A certificate.
    Cert(Box<Record>),
    /// An entry that carries no certificate (a Microchip version-2 "lite" entry).
    NoCertificate {
        /// Where.
        source: Source,
        /// What the entry says.
        vendor: VendorAttributes,
        /// The signed entry, to be checked.
        manifest: Option<Arc<ManifestEntry>>,
        /// Why there is no certificate.
        reason: String,
    },
    /// Something skipped on purpose (a private key PEM block, a README in a directory).
    Skipped {
        /// Where.
        source: Source,
        /// What and why.
        reason: String,
    },
}

/// An entry that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    /// Where.
    pub source: Source,
    /// What is wrong.
    pub message: String,
    /// The rest of the file was abandoned.
    pub fatal: bool,
}

impl EntryError {
    pub(crate) fn at(source: Source, message: impl Into<String>) -> Self {
        EntryError {
            source,
            message: message.into(),
            fatal: false,
        }
    }

    pub(crate) fn fatal(source: Source, message: impl Into<String>) -> Self {
        EntryError {
            source,
            message: message.into(),
            fatal: true,
        }
    }
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

/// The items of one input.
pub type Items = Box<dyn Iterator<Item = std::result::Result<Imported, EntryError>> + Send>;

/// Detects the format of a file from its first bytes. Fails (naming the file) when the file
/// cannot be read, is empty, or is no format idbridge knows.
pub fn detect(path: &Path) -> Result<Format> {
    let mut head = Vec::with_capacity(4096);
    File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(|e| input_error(path, format!("cannot read: {e}")))?;
    detect_bytes(&head).map_err(|msg| input_error(path, msg))
}

/// Detects a format from the first bytes (up to 4 KiB) of an input.
pub fn detect_bytes(head: &[u8]) -> std::result::Result<Format, String> {
    if head.is_empty() {
        return Err("empty file".to_owned());
    }
    if head.starts_with(&[b'7', b'z', 0xBC, 0xAF, 0x27, 0x1C]) {
        return Ok(Format::CloudIdBundle);
    }
    if optiga::is_hex_text(head) {
        return Ok(Format::Optiga);
    }
    match head[0] {
        0x30 => return Ok(Format::Der),
        0xC0 => return Ok(Format::Optiga),
        _ => {}
    }
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let trimmed: &[u8] = {
        let start = text
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(text.len());
        &text[start..]
    };
    if trimmed.starts_with(b"-----BEGIN") {
        return Ok(Format::Pem);
    }
    if starts_with_ignore_case(trimmed, b"mac,") {
        return Ok(Format::EspressifCsv);
    }
    if trimmed.starts_with(b"[") {
        return Ok(Format::MicrochipManifest);
    }
    if trimmed.starts_with(b"{") {
        let first_line = trimmed.split(|&b| b == b'\n').next().unwrap_or_default();
        if contains(first_line, b"\"idbridge-manifest\"") {
            return Ok(Format::IdbridgeManifest);
        }
        if contains(trimmed, b"\"e0e0\"")
            || contains(trimmed, b"\"e0c2\"")
            || first_key_is_oid(trimmed)
        {
            return Ok(Format::OptigaDump);
        }
        return Err(
            "a JSON object that is neither an idbridge manifest nor an OPTIGA object dump"
                .to_owned(),
        );
    }
    if contains(trimmed, b"-----BEGIN CERTIFICATE-----") {
        // PEM after a preamble (openssl -text output, comments).
        return Ok(Format::Pem);
    }
    if trimmed.is_empty() {
        return Err("only whitespace".to_owned());
    }
    Err("unknown format (not PEM, DER, OPTIGA data, 7z, a Microchip manifest, an Espressif CSV or an idbridge manifest); use --format".to_owned())
}

/// Opens one input file for reading in `format`.
pub fn open(path: &Path, format: Format, opts: &ImportOptions) -> Result<Items> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| input_error(path, format!("cannot open: {e}")))?;
    let reader = BufReader::with_capacity(64 * 1024, file);
    Ok(open_reader(Box::new(reader), name, format, opts))
}

/// Opens an already-open reader (named `name` in messages) in `format`.
pub fn open_reader(
    reader: Box<dyn std::io::BufRead + Send>,
    name: String,
    format: Format,
    opts: &ImportOptions,
) -> Items {
    match format {
        Format::Pem => Box::new(pem::PemImporter::new(reader, name, opts.limits)),
        Format::Der => Box::new(optiga::binary(reader, name, opts.limits, false)),
        Format::Optiga => Box::new(optiga::binary(reader, name, opts.limits, true)),
        Format::OptigaDump => Box::new(optiga::dump(reader, name, opts)),
        Format::CloudIdBundle => bundle::open(reader, name, opts),
        Format::MicrochipManifest => {
            Box::new(microchip::MicrochipImporter::new(reader, name, opts.limits))
        }
        Format::EspressifCsv => Box::new(espressif::EspressifImporter::new(
            reader,
            name,
            opts.limits.max_line,
        )),
        Format::IdbridgeManifest => {
            Box::new(manifest::ManifestImporter::new(reader, name, opts.limits))
        }
    }
}

pub(crate) fn input_error(path: &Path, msg: impl fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("{}: {msg}", path.display()),
    )
}

pub(crate) fn source(file: &str, line: Option<u64>, entry: Option<u64>) -> Source {
    Source {
        file: file.to_owned(),
        line,
        entry,
    }
}

/// `{ "e0f0": ...`: a JSON object whose first key is a 4-hex-digit OPTIGA OID.
fn first_key_is_oid(json: &[u8]) -> bool {
    let rest = &json[1..];
    let start = rest
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    let rest = &rest[start..];
    rest.len() >= 6
        && rest[0] == b'"'
        && rest[5] == b'"'
        && rest[1..5].iter().all(u8::is_ascii_hexdigit)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn starts_with_ignore_case(hay: &[u8], prefix: &[u8]) -> bool {
    hay.len() >= prefix.len() && hay[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `<chipID>_<slot>.pem` (20 hex, E0E0/E0E1/E0E2), as in Cloud ID bundles.
pub(crate) fn infineon_file_name(name: &str) -> Option<(String, String)> {
    let base = name.rsplit(['/', '\\', '!']).next()?;
    let stem = base
        .strip_suffix(".pem")
        .or_else(|| base.strip_suffix(".PEM"))?;
    let (chip, slot) = stem.split_once('_')?;
    let slot = slot.to_ascii_uppercase();
    if chip.len() == 20
        && chip.bytes().all(|b| b.is_ascii_hexdigit())
        && matches!(slot.as_str(), "E0E0" | "E0E1" | "E0E2")
    {
        Some((chip.to_ascii_uppercase(), slot))
    } else {
        None
    }
}

/// Sets Infineon attributes from a `<chipID>_<slot>.pem` name, if it is one.
pub(crate) fn apply_infineon_name(record: &mut Record, name: &str) {
    if let Some((chip, slot)) = infineon_file_name(name) {
        record.vendor_key = Some(format!("infineon:{chip}:{slot}"));
        let v = &mut record.identity.vendor;
        v.vendor = Some("infineon".to_owned());
        v.chip_id = Some(chip);
        v.slot = Some(slot);
    }
}

#[cfg(test)]
mod tests;
