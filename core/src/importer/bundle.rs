//! Infineon CIRRENT Cloud ID bundle: a 7z holding one 7z per slot
//! (`<reel>_<batch GUID>_<slot>_Certs.7z`, each with `<chipID>_<slot>.pem` files), the
//! password-protected keys archive and a README. Everything is read in memory with bounds on
//! entry count, declared and actual sizes; no archive path ever becomes a path on disk. The
//! keys archive is never opened. A 7z holding PEM files directly (one inner archive given on
//! its own) is read the same way.

use std::io::{BufRead, Cursor, Read};

use sevenz_rust2::{Archive, BlockDecoder, Password};

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
    let outer = redact_guids(&name);
    let fatal = |msg: String| -> Items {
        Box::new(std::iter::once(Err(EntryError::fatal(
            source(&outer, None, None),
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
    // One budget for every byte decoded from this input, outer and inner archives alike.
    let mut budget = Budget::new(limits.max_decompressed);
    // Entries of the outer archive we want: (name, bytes).
    let entries = match read_entries(bytes, &limits, &mut budget, |entry| {
        entry.ends_with(".7z") && slot_of_archive(entry).is_some_and(|s| opts.slot.includes(s))
            || entry.to_ascii_lowercase().ends_with(".pem")
    }) {
        Ok(e) => e,
        Err(msg) => return fatal(msg),
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
                &format!("{outer}!{}", redact_guids(&entry)),
                i as u64,
                &data,
                None,
            )
        })
        .collect();
    let mut exhausted = false;
    let nested = archives.into_iter().flat_map(move |(inner, data)| {
        let batch = batch_of_archive(&inner).map(|guid| BatchRef::new(&guid));
        let inner_name = format!("{outer}!{}", redact_guids(&inner));
        if exhausted {
            // An earlier inner archive ran out of budget: the rest are not read either.
            return Vec::new();
        }
        match read_entries(data, &limits, &mut budget, |e| {
            e.to_ascii_lowercase().ends_with(".pem")
        }) {
            Ok(pems) => pems
                .into_iter()
                .enumerate()
                .map(|(i, (entry, data))| {
                    pem_entry(
                        &format!("{inner_name}!{}", redact_guids(&entry)),
                        i as u64,
                        &data,
                        batch.clone(),
                    )
                })
                .collect::<Vec<_>>(),
            Err(msg) => {
                exhausted = budget.exhausted;
                vec![Err(EntryError::fatal(
                    source(&inner_name, None, None),
                    format!("inner archive refused: {msg}"),
                ))]
            }
        }
    });
    Box::new(direct.into_iter().chain(nested))
}

/// What may still be decompressed from one input, across all its nesting levels.
struct Budget {
    limit: u64,
    left: u64,
    /// A charge was refused: nothing more of this input is decoded.
    exhausted: bool,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Budget {
            limit,
            left: limit,
            exhausted: false,
        }
    }

    /// Takes `bytes` from the budget, or says why not (and takes nothing).
    fn charge(&mut self, bytes: u64) -> Result<(), String> {
        if bytes > self.left {
            self.exhausted = true;
            return Err(format!(
                "it needs {bytes} bytes decompressed, more than the {} left of this input's \
                 limit of {} bytes decompressed in total (all nesting levels together)",
                self.left, self.limit
            ));
        }
        self.left -= bytes;
        Ok(())
    }
}

/// Reads the entries of a 7z whose name passes `want`, within `limits`, charging `budget`.
///
/// Everything is decided from the header before a byte is decoded: every wanted entry's
/// declared size against `Limits::max_entry`, and the bytes that must be decoded to reach
/// the wanted entries (in a solid block, the entries before them too) against the budget.
/// Blocks holding no wanted entry are never decoded, nor is a block past its last wanted
/// entry. The decoder never yields more than an entry declares (a surplus is an error), so
/// the declared sizes bound the work and the memory. Messages name entries with batch GUIDs
/// redacted.
fn read_entries(
    bytes: Vec<u8>,
    limits: &Limits,
    budget: &mut Budget,
    want: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let password = Password::empty();
    let mut cursor = Cursor::new(bytes);
    let archive = Archive::read_with_memory_limit(&mut cursor, &password, MEMORY_LIMIT_KB)
        .map_err(|e| format!("not a readable 7z archive: {e}"))?;
    let files = &archive.files;
    if files.len() > limits.max_archive_entries {
        return Err(format!(
            "{} entries, more than the limit of {}",
            files.len(),
            limits.max_archive_entries
        ));
    }
    let block_of = &archive.stream_map.file_block_index;
    let wanted = |i: usize| {
        let f = &files[i];
        !f.is_directory && want(&f.name)
    };
    // Per block: how many wanted entries it holds, and the bytes decoded up to its last one.
    let mut plan: Vec<(usize, u64)> = vec![(0, 0); archive.blocks.len()];
    let mut pending: Vec<u64> = vec![0; archive.blocks.len()];
    let mut empty = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let block = match block_of.get(i).copied().flatten() {
            Some(b) if f.has_stream && b < plan.len() => b,
            _ => {
                if wanted(i) {
                    empty.push(f.name.clone());
                }
                continue;
            }
        };
        // Bytes decoded through, counted once a later wanted entry makes them necessary.
        pending[block] = pending[block].saturating_add(f.size);
        if wanted(i) {
            if f.size > limits.max_entry {
                return Err(format!(
                    "entry {:?} declares {} bytes, more than the limit of {} per entry",
                    redact_guids(&f.name),
                    f.size,
                    limits.max_entry
                ));
            }
            let (count, cost) = &mut plan[block];
            *count += 1;
            *cost = cost.saturating_add(pending[block]);
            pending[block] = 0;
        }
    }
    let cost = plan
        .iter()
        .fold(0u64, |sum, (_, cost)| sum.saturating_add(*cost));
    budget.charge(cost)?;

    let mut out = Vec::new();
    for (block, (mut count, _)) in plan.into_iter().enumerate() {
        if count == 0 {
            // Nothing wanted (README, the keys archive): never decoded.
            continue;
        }
        let decoder = BlockDecoder::new_with_memory_limit(
            1,
            MEMORY_LIMIT_KB,
            block,
            &archive,
            &password,
            &mut cursor,
        );
        decoder
            .for_each_entries(&mut |entry, data| {
                if !entry.has_stream || entry.is_directory || !want(&entry.name) {
                    // Before a wanted entry in a solid block: decoded through (and checked
                    // against its CRC) by the library, nothing kept.
                    return Ok(true);
                }
                // Reading to the end checks the CRC and that nothing follows the declared
                // size; the declared size was checked against `max_entry` above.
                let mut buf = Vec::new();
                data.take(limits.max_entry + 1).read_to_end(&mut buf)?;
                if buf.len() as u64 > limits.max_entry {
                    return Err(sevenz_rust2::Error::Other(
                        format!(
                            "entry {:?} decompresses beyond the limit of {} per entry",
                            redact_guids(&entry.name),
                            limits.max_entry
                        )
                        .into(),
                    ));
                }
                out.push((entry.name.clone(), buf));
                count -= 1;
                // Past the last wanted entry, the rest of the block is not decoded.
                Ok(count > 0)
            })
            .map_err(|e| format!("not a readable 7z archive: {e}"))?;
    }
    out.extend(empty.into_iter().map(|name| (name, Vec::new())));
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
