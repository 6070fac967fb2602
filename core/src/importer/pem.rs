//! PEM: one certificate or a bundle, LF or CRLF, streamed block by block. Text outside the
//! blocks (comments, `openssl x509 -text` output) is ignored; blocks that are not
//! certificates are skipped with a note.

use base64::Engine;

use super::lines::{LineError, LineReader};
use super::{EntryError, Imported, Limits, Record, apply_infineon_name, source};
use crate::identity::DeviceIdentity;

pub(crate) struct PemImporter {
    lines: LineReader,
    name: String,
    limits: Limits,
    found: u64,
    done: bool,
    /// The open block: (label, start line, base64 collected).
    block: Option<(String, u64, Vec<u8>)>,
}

impl PemImporter {
    pub(crate) fn new(
        reader: Box<dyn std::io::BufRead + Send>,
        name: String,
        limits: Limits,
    ) -> Self {
        PemImporter {
            lines: LineReader::new(reader, limits.max_line),
            name,
            limits,
            found: 0,
            done: false,
            block: None,
        }
    }
}

impl Iterator for PemImporter {
    type Item = Result<Imported, EntryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let (no, line) = match self.lines.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(LineError::TooLong { line, max }) => {
                    self.block = None;
                    return Some(Err(EntryError::at(
                        source(&self.name, Some(line), None),
                        format!("line longer than {max} bytes, skipped"),
                    )));
                }
                Err(e @ LineError::Io(_)) => {
                    self.done = true;
                    return Some(Err(EntryError::fatal(
                        source(&self.name, None, None),
                        e.to_string(),
                    )));
                }
            };
            let trimmed = trim(line);
            if let Some(label) = trimmed
                .strip_prefix(b"-----BEGIN ")
                .and_then(|r| r.strip_suffix(b"-----"))
            {
                let label = String::from_utf8_lossy(label).into_owned();
                if let Some((old, start, _)) = self.block.take() {
                    // A BEGIN inside a block: the earlier block was truncated.
                    let err = EntryError::at(
                        source(&self.name, Some(start), None),
                        format!("PEM block {old:?} has no END line (truncated)"),
                    );
                    self.block = Some((label, no, Vec::new()));
                    return Some(Err(err));
                }
                self.block = Some((label, no, Vec::new()));
                continue;
            }
            if let Some(label) = trimmed
                .strip_prefix(b"-----END ")
                .and_then(|r| r.strip_suffix(b"-----"))
            {
                let Some((begin, start, b64)) = self.block.take() else {
                    return Some(Err(EntryError::at(
                        source(&self.name, Some(no), None),
                        "PEM END line without BEGIN",
                    )));
                };
                if label != begin.as_bytes() {
                    return Some(Err(EntryError::at(
                        source(&self.name, Some(start), None),
                        format!(
                            "PEM block BEGIN {begin:?} ends with END {:?}",
                            String::from_utf8_lossy(label)
                        ),
                    )));
                }
                let src = source(&self.name, Some(start), None);
                if begin != "CERTIFICATE" {
                    return Some(Ok(Imported::Skipped {
                        source: src,
                        reason: format!("PEM block {begin:?} is not a certificate"),
                    }));
                }
                self.found += 1;
                let der = match base64::engine::general_purpose::STANDARD.decode(&b64) {
                    Ok(d) => d,
                    Err(e) => {
                        return Some(Err(EntryError::at(
                            src,
                            format!("PEM base64 is corrupt: {e}"),
                        )));
                    }
                };
                return Some(match DeviceIdentity::from_der(der, src.clone()) {
                    Ok(identity) => {
                        let mut record = Record::new(identity);
                        apply_infineon_name(&mut record, &self.name);
                        Ok(Imported::Cert(Box::new(record)))
                    }
                    Err(e) => Err(EntryError::at(src, strip_source(e.message(), &self.name))),
                });
            }
            if let Some((_, start, b64)) = self.block.as_mut() {
                if b64.len() + trimmed.len() > self.limits.max_line {
                    let start = *start;
                    self.block = None;
                    return Some(Err(EntryError::at(
                        source(&self.name, Some(start), None),
                        format!("PEM block larger than {} bytes", self.limits.max_line),
                    )));
                }
                // Headers such as "Proc-Type:" are not base64; skip them.
                if !trimmed.contains(&b':') {
                    b64.extend(trimmed.iter().filter(|b| !b.is_ascii_whitespace()));
                }
            }
        }
        self.done = true;
        if let Some((label, start, _)) = self.block.take() {
            return Some(Err(EntryError::at(
                source(&self.name, Some(start), None),
                format!("PEM block {label:?} has no END line (truncated)"),
            )));
        }
        if self.found == 0 {
            return Some(Err(EntryError::fatal(
                source(&self.name, None, None),
                "no PEM CERTIFICATE block found",
            )));
        }
        None
    }
}

fn trim(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &line[start..end.max(start)]
}

/// `DeviceIdentity::from_der` messages start with the source; the entry error adds it again.
pub(crate) fn strip_source(message: &str, _name: &str) -> String {
    match message.split_once(": ") {
        Some((_, rest)) => rest.to_owned(),
        None => message.to_owned(),
    }
}
