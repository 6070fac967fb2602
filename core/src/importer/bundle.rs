//! Infineon CIRRENT Cloud ID bundle: a 7z holding one 7z per slot
//! (`<reel>_<batch GUID>_<slot>_Certs.7z`, each with `<chipID>_<slot>.pem` files), the
//! password-protected keys archive and a README. Everything is read in memory with bounds on
//! entry count, declared and actual sizes; no archive path ever becomes a path on disk. The
//! keys archive is never opened. A 7z holding PEM files directly (one inner archive given on
//! its own) is read the same way.

use std::io::{BufRead, Cursor, Read};

use sevenz_rust2::{ArchiveReader, EntryDecision, Password};

use super::{
    EntryError, ImportOptions, Imported, Items, Limits, Record, apply_infineon_name, source,
};
use crate::identity::{BatchRef, DeviceIdentity};

/// Memory bound for the LZMA dictionary and headers, KiB (the real bundles use 16 MiB).
const MEMORY_LIMIT_KB: usize = 128 * 1024;

pub(crate) fn open(
    mut reader: Box<dyn BufRead + Send>,
    name: String,
    opts: &ImportOptions,
) -> Items {
    let limits = opts.limits;
    let fatal = |msg: String| -> Items {
        Box::new(std::iter::once(Err(EntryError::fatal(
            source(&name, None, None),
            msg,
        ))))
    };
    let mut bytes = Vec::new();
    if let Err(e) = (&mut reader)
        .take(limits.max_archive_file + 1)
        .read_to_end(&mut bytes)
    {
        return fatal(format!("read error: {e}"));
    }
    if bytes.len() as u64 > limits.max_archive_file {
        return fatal(format!(
            "archive larger than {} bytes",
            limits.max_archive_file
        ));
    }
    // Entries of the outer archive we want: (name, bytes).
    let entries = match read_entries(bytes, &limits, |entry| {
        entry.ends_with(".7z") && slot_of_archive(entry).is_some_and(|s| opts.slot.includes(s))
            || entry.to_ascii_lowercase().ends_with(".pem")
    }) {
        Ok(e) => e,
        Err(msg) => return fatal(format!("not a readable 7z archive: {msg}")),
    };
    let (archives, pems): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|(n, _)| n.ends_with(".7z"));
    if archives.is_empty() && pems.is_empty() {
        return fatal(format!(
            "no {} certificate archive (`*_{}_Certs.7z`) and no PEM files in this 7z",
            opts.slot, opts.slot
        ));
    }
    let direct: Vec<Result<Imported, EntryError>> = pems
        .into_iter()
        .enumerate()
        .map(|(i, (entry, data))| {
            pem_entry(
                &format!("{}!{entry}", redact_guids(&name)),
                i as u64,
                &data,
                None,
            )
        })
        .collect();
    let outer = redact_guids(&name);
    let nested = archives.into_iter().flat_map(move |(inner, data)| {
        let batch = batch_of_archive(&inner).map(|guid| BatchRef::new(&guid));
        let inner_name = format!("{outer}!{}", redact_guids(&inner));
        match read_entries(data, &limits, |e| e.to_ascii_lowercase().ends_with(".pem")) {
            Ok(pems) => pems
                .into_iter()
                .enumerate()
                .map(|(i, (entry, data))| {
                    pem_entry(
                        &format!("{inner_name}!{entry}"),
                        i as u64,
                        &data,
                        batch.clone(),
                    )
                })
                .collect::<Vec<_>>(),
            Err(msg) => vec![Err(EntryError::fatal(
                source(&inner_name, None, None),
                format!("inner archive unreadable: {msg}"),
            ))],
        }
    });
    Box::new(direct.into_iter().chain(nested))
}

/// Reads the entries of a 7z whose name passes `want`, within `limits`.
fn read_entries(
    bytes: Vec<u8>,
    limits: &Limits,
    want: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut archive = ArchiveReader::new_with_memory_limit(
        Cursor::new(bytes),
        Password::empty(),
        MEMORY_LIMIT_KB,
    )
    .map_err(|e| e.to_string())?;
    archive.set_thread_count(1);
    let files = &archive.archive().files;
    if files.len() > limits.max_archive_entries {
        return Err(format!(
            "{} entries, more than the limit of {}",
            files.len(),
            limits.max_archive_entries
        ));
    }
    let mut total: u64 = 0;
    for f in files.iter().filter(|f| want(&f.name)) {
        if f.size > limits.max_entry {
            return Err(format!(
                "entry {:?} declares {} bytes, more than the limit of {}",
                f.name, f.size, limits.max_entry
            ));
        }
        total = total.saturating_add(f.size);
    }
    if total > limits.max_decompressed {
        return Err(format!(
            "entries declare {total} bytes in total, more than the limit of {}",
            limits.max_decompressed
        ));
    }
    let mut out = Vec::new();
    let mut decompressed: u64 = 0;
    archive
        .for_each_entries_with_decision(|entry, data| {
            if entry.is_directory || !want(&entry.name) {
                // Not wanted (README, the keys archive): never read; solid blocks are decoded
                // through by the library but nothing is kept.
                return Ok(EntryDecision::Continue);
            }
            let mut buf = Vec::new();
            data.take(limits.max_entry + 1).read_to_end(&mut buf)?;
            decompressed += buf.len() as u64;
            if buf.len() as u64 > limits.max_entry || decompressed > limits.max_decompressed {
                return Err(sevenz_rust2::Error::Other(
                    format!("entry {:?} decompresses beyond the size limit", entry.name).into(),
                ));
            }
            out.push((entry.name.clone(), buf));
            Ok(EntryDecision::Continue)
        })
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn pem_entry(
    name: &str,
    index: u64,
    data: &[u8],
    batch: Option<BatchRef>,
) -> Result<Imported, EntryError> {
    let src = source(name, None, Some(index));
    let block = ::pem::parse(data)
        .map_err(|e| EntryError::at(src.clone(), format!("not a PEM certificate: {e}")))?;
    if block.tag() != "CERTIFICATE" {
        return Err(EntryError::at(
            src,
            format!("PEM block {:?} is not a certificate", block.tag()),
        ));
    }
    let identity = DeviceIdentity::from_der(block.into_contents(), src.clone())
        .map_err(|e| EntryError::at(src, super::pem::strip_source(e.message(), "")))?;
    let mut record = Record::new(identity);
    apply_infineon_name(&mut record, name);
    record.identity.batch = batch;
    Ok(Imported::Cert(Box::new(record)))
}

/// `E0E0` from `<reel>_<guid>_E0E0_Certs.7z`.
fn slot_of_archive(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    ["E0E0", "E0E1", "E0E2"]
        .into_iter()
        .find(|s| upper.ends_with(&format!("_{s}_CERTS.7Z")))
}

/// The batch GUID from `<reel>_<guid>_<slot>_Certs.7z`.
fn batch_of_archive(name: &str) -> Option<String> {
    let base = name.rsplit('/').next()?;
    let mut parts = base.split('_');
    let _reel = parts.next()?;
    let guid = parts.next()?;
    (guid.len() == 36 && guid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| guid.to_owned())
}

/// Replaces every UUID-shaped run (the batch GUID, a claim secret) with its batch tag, so
/// archive names can be shown: `78211223032C7EFA_batch:10fac72646a1_E0E0_Certs.7z`.
pub(crate) fn redact_guids(name: &str) -> String {
    let bytes = name.as_bytes();
    let is_uuid = |s: &[u8]| {
        s.len() == 36
            && s.iter().enumerate().all(|(i, b)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    *b == b'-'
                } else {
                    b.is_ascii_hexdigit()
                }
            })
    };
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    while i < bytes.len() {
        if i + 36 <= bytes.len() && is_uuid(&bytes[i..i + 36]) {
            // Invariant: the 36 bytes are ASCII, so this slice is on char boundaries.
            out.push_str(BatchRef::new(&name[i..i + 36]).tag());
            i += 36;
        } else {
            let ch = name[i..].chars().next().unwrap_or('?');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}
