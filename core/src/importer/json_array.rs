//! Streams the elements of a top-level JSON array, one raw element at a time.
//!
//! serde_json can stream whitespace-separated values but not the elements of one array, and a
//! Microchip manifest of a million devices is one array of ~3 GB. This scanner only tracks
//! strings, escapes and nesting depth to cut the array into elements; each element is then
//! parsed by serde_json. (ADR 0101.)

use std::io::{self, BufRead};

/// One raw element: its 0-based index, the 1-based line where it starts, its bytes.
pub(crate) struct Element {
    pub index: u64,
    pub line: u64,
    pub bytes: Vec<u8>,
}

/// Why the array could not be read further.
#[derive(Debug)]
pub(crate) enum ScanError {
    Io(io::Error),
    /// Not an array, unbalanced, truncated ...: the rest of the input is unusable.
    Syntax {
        line: u64,
        message: String,
    },
    /// One element is larger than the bound; it was skipped.
    TooLarge {
        index: u64,
        line: u64,
        max: usize,
    },
}

pub(crate) struct ArrayScanner {
    inner: Box<dyn BufRead + Send>,
    max: usize,
    line: u64,
    index: u64,
    started: bool,
    finished: bool,
}

impl ArrayScanner {
    pub(crate) fn new(inner: Box<dyn BufRead + Send>, max: usize) -> Self {
        ArrayScanner {
            inner,
            max,
            line: 1,
            index: 0,
            started: false,
            finished: false,
        }
    }

    fn byte(&mut self) -> Result<Option<u8>, ScanError> {
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ScanError::Io(e)),
            };
            let Some(&b) = buf.first() else {
                return Ok(None);
            };
            self.inner.consume(1);
            if b == b'\n' {
                self.line += 1;
            }
            return Ok(Some(b));
        }
    }

    fn skip_ws(&mut self) -> Result<Option<u8>, ScanError> {
        loop {
            match self.byte()? {
                Some(b) if b.is_ascii_whitespace() => continue,
                Some(0xEF) if !self.started => {
                    // UTF-8 BOM
                    self.byte()?;
                    self.byte()?;
                }
                other => return Ok(other),
            }
        }
    }

    fn syntax(&mut self, message: impl Into<String>) -> ScanError {
        self.finished = true;
        ScanError::Syntax {
            line: self.line,
            message: message.into(),
        }
    }

    /// The next element, or None after the closing `]`.
    pub(crate) fn next_element(&mut self) -> Result<Option<Element>, ScanError> {
        if self.finished {
            return Ok(None);
        }
        if !self.started {
            self.started = true;
            match self.skip_ws()? {
                Some(b'[') => {}
                Some(_) => return Err(self.syntax("not a JSON array")),
                None => return Err(self.syntax("empty input")),
            }
            match self.skip_ws()? {
                Some(b']') => {
                    self.finished = true;
                    return Ok(None);
                }
                Some(b) => return self.element(b).map(Some),
                None => return Err(self.syntax("truncated: the array is never closed")),
            }
        }
        match self.skip_ws()? {
            Some(b',') => {}
            Some(b']') => {
                self.finished = true;
                if let Some(b) = self.skip_ws()? {
                    return Err(ScanError::Syntax {
                        line: self.line,
                        message: format!("unexpected {:?} after the closing ]", b as char),
                    });
                }
                return Ok(None);
            }
            Some(b) => {
                return Err(self.syntax(format!("expected , or ] but found {:?}", b as char)));
            }
            None => return Err(self.syntax("truncated: the array is never closed")),
        }
        match self.skip_ws()? {
            Some(b) => self.element(b).map(Some),
            None => Err(self.syntax("truncated after ,")),
        }
    }

    /// Reads one element starting with `first`, through its end.
    fn element(&mut self, first: u8) -> Result<Element, ScanError> {
        let index = self.index;
        self.index += 1;
        let line = self.line;
        let mut bytes = vec![first];
        let mut too_large = false;
        let mut depth: u32 = 0;
        let mut in_string = false;
        let mut escape = false;
        let mut push = |bytes: &mut Vec<u8>, b: u8, max: usize| {
            if bytes.len() < max {
                bytes.push(b);
            } else {
                too_large = true;
            }
        };
        match first {
            b'{' | b'[' => depth = 1,
            b'"' => in_string = true,
            b']' | b',' | b'}' | b':' => {
                return Err(self.syntax(format!("unexpected {:?}", first as char)));
            }
            _ => {}
        }
        // Scalars (numbers, true, null): read until a delimiter, which must stay unread; peek.
        if depth == 0 && !in_string {
            loop {
                let peek = match self.inner.fill_buf() {
                    Ok(b) => b.first().copied(),
                    Err(e) => return Err(ScanError::Io(e)),
                };
                match peek {
                    Some(b) if b == b',' || b == b']' || b.is_ascii_whitespace() => break,
                    Some(b) => {
                        self.inner.consume(1);
                        push(&mut bytes, b, self.max);
                    }
                    None => break,
                }
            }
        } else {
            while depth > 0 || in_string {
                let Some(b) = self.byte()? else {
                    return Err(self.syntax(format!(
                        "truncated inside entry {index} (started at line {line})"
                    )));
                };
                push(&mut bytes, b, self.max);
                if in_string {
                    if escape {
                        escape = false;
                    } else if b == b'\\' {
                        escape = true;
                    } else if b == b'"' {
                        in_string = false;
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => depth -= 1,
                    _ => {}
                }
            }
        }
        if too_large {
            return Err(ScanError::TooLarge {
                index,
                line,
                max: self.max,
            });
        }
        Ok(Element { index, line, bytes })
    }
}
