//! Espressif CSV `MAC,cn,cert` (quoted multi-line PEM fields), streamed record by record.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{EntryError, Imported, Record, source};
use crate::identity::DeviceIdentity;

/// Counts bytes read since the last record, so one endless quoted field cannot exhaust
/// memory (the csv crate buffers a whole record).
struct Bounded {
    inner: Box<dyn std::io::BufRead + Send>,
    since_record: Arc<AtomicUsize>,
    max: usize,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.since_record.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.max {
            return Err(std::io::Error::other(format!(
                "a record larger than {} bytes",
                self.max
            )));
        }
        Ok(n)
    }
}

pub(crate) struct EspressifImporter {
    reader: csv::Reader<Bounded>,
    since_record: Arc<AtomicUsize>,
    name: String,
    columns: Option<(usize, usize, usize)>,
    record: csv::ByteRecord,
    index: u64,
    done: bool,
}

impl EspressifImporter {
    pub(crate) fn new(reader: Box<dyn std::io::BufRead + Send>, name: String, max: usize) -> Self {
        let since_record = Arc::new(AtomicUsize::new(0));
        let bounded = Bounded {
            inner: reader,
            since_record: Arc::clone(&since_record),
            max,
        };
        EspressifImporter {
            reader: csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .from_reader(bounded),
            since_record,
            name,
            columns: None,
            record: csv::ByteRecord::new(),
            index: 0,
            done: false,
        }
    }

    fn header(&mut self) -> Result<(usize, usize, usize), EntryError> {
        if let Some(c) = self.columns {
            return Ok(c);
        }
        let at_header = source(&self.name, Some(1), None);
        let headers = self.reader.byte_headers().map_err(|e| {
            EntryError::fatal(at_header.clone(), format!("CSV header unreadable: {e}"))
        })?;
        let find = |want: &str| {
            headers
                .iter()
                .position(|h| String::from_utf8_lossy(h).trim().eq_ignore_ascii_case(want))
        };
        match (find("MAC"), find("cn"), find("cert")) {
            (Some(m), Some(c), Some(p)) => {
                self.columns = Some((m, c, p));
                Ok((m, c, p))
            }
            _ => Err(EntryError::fatal(
                at_header,
                "CSV header must have the columns MAC, cn, cert",
            )),
        }
    }
}

impl Iterator for EspressifImporter {
    type Item = Result<Imported, EntryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (mac_col, cn_col, cert_col) = match self.header() {
            Ok(c) => c,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        self.since_record.store(0, Ordering::Relaxed);
        let more = match self.reader.read_byte_record(&mut self.record) {
            Ok(m) => m,
            Err(e) => {
                let line = e.position().map(|p| p.line());
                // A CSV syntax error leaves the reader's position unreliable: stop this file.
                self.done = true;
                return Some(Err(EntryError::fatal(
                    source(&self.name, line, Some(self.index)),
                    format!("CSV unreadable: {e}"),
                )));
            }
        };
        if !more {
            self.done = true;
            if self.index == 0 {
                return Some(Err(EntryError::fatal(
                    source(&self.name, None, None),
                    "CSV has a header but no rows",
                )));
            }
            return None;
        }
        let line = self.record.position().map(|p| p.line());
        let src = source(&self.name, line, Some(self.index));
        self.index += 1;
        let field = |i: usize| -> Result<&str, EntryError> {
            let raw = self.record.get(i).unwrap_or_default();
            std::str::from_utf8(raw).map_err(|e| {
                EntryError::at(
                    src.clone(),
                    format!(
                        "column {} is not UTF-8 (invalid byte at offset {})",
                        i + 1,
                        e.valid_up_to()
                    ),
                )
            })
        };
        let (mac, cn, pem) = match (field(mac_col), field(cn_col), field(cert_col)) {
            (Ok(m), Ok(c), Ok(p)) => (m.trim().to_owned(), c.trim().to_owned(), p.to_owned()),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Some(Err(e)),
        };
        let der = match ::pem::parse(pem.as_bytes()) {
            Ok(p) if p.tag() == "CERTIFICATE" => p.into_contents(),
            Ok(p) => {
                return Some(Err(EntryError::at(
                    src,
                    format!(
                        "cert column holds a {:?} PEM block, not a certificate",
                        p.tag()
                    ),
                )));
            }
            Err(e) => {
                return Some(Err(EntryError::at(
                    src,
                    format!("cert column is not a PEM certificate: {e}"),
                )));
            }
        };
        let identity = match DeviceIdentity::from_der(der, src.clone()) {
            Ok(i) => i,
            Err(e) => {
                return Some(Err(EntryError::at(
                    src,
                    super::pem::strip_source(e.message(), ""),
                )));
            }
        };
        let mut record = Record::new(identity);
        let mac_ok = mac.len() == 12 && mac.bytes().all(|b| b.is_ascii_hexdigit());
        if !mac_ok {
            record
                .problems
                .push(format!("MAC {mac:?} is not 12 hex digits"));
        }
        let mac = mac.to_ascii_uppercase();
        if record.identity.subject_cn.as_deref() != Some(cn.as_str()) {
            record.problems.push(format!(
                "CSV cn {cn:?} differs from the certificate CN {:?}",
                record.identity.subject_cn.as_deref().unwrap_or("")
            ));
        }
        record.vendor_key = Some(format!("espressif:{mac}"));
        record.identity.vendor.vendor = Some("espressif".to_owned());
        record.identity.vendor.mac = Some(mac);
        Some(Ok(Imported::Cert(Box::new(record))))
    }
}
