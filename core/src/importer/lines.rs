//! A line reader with a bound on line length, so a file without newlines never sits in
//! memory whole. `BufRead::read_line` has no bound.

use std::io::{self, BufRead};

/// Reads `\n`-terminated lines (a trailing `\r` is removed), at most `max` bytes each.
pub(crate) struct LineReader {
    inner: Box<dyn BufRead + Send>,
    max: usize,
    line_no: u64,
    buf: Vec<u8>,
}

/// A line longer than the bound.
#[derive(Debug)]
pub(crate) enum LineError {
    Io(io::Error),
    TooLong { line: u64, max: usize },
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::Io(e) => write!(f, "read error: {e}"),
            LineError::TooLong { line, max } => {
                write!(f, "line {line} is longer than {max} bytes")
            }
        }
    }
}

impl LineReader {
    pub(crate) fn new(inner: Box<dyn BufRead + Send>, max: usize) -> Self {
        LineReader {
            inner,
            max,
            line_no: 0,
            buf: Vec::new(),
        }
    }

    /// The next line (1-based number, bytes without the terminator), or None at the end.
    pub(crate) fn next_line(&mut self) -> Result<Option<(u64, &[u8])>, LineError> {
        self.buf.clear();
        let mut saw_any = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LineError::Io(e)),
            };
            if available.is_empty() {
                break;
            }
            saw_any = true;
            let (take, done) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if self.buf.len() + take > self.max + 2 {
                self.line_no += 1;
                let line = self.line_no;
                // Skip the rest of the line so a caller may continue after the error.
                self.inner.consume(take);
                if !done {
                    self.skip_to_newline().map_err(LineError::Io)?;
                }
                return Err(LineError::TooLong {
                    line,
                    max: self.max,
                });
            }
            self.buf.extend_from_slice(&available[..take]);
            self.inner.consume(take);
            if done {
                break;
            }
        }
        if !saw_any {
            return Ok(None);
        }
        self.line_no += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        Ok(Some((self.line_no, &self.buf)))
    }

    fn skip_to_newline(&mut self) -> io::Result<()> {
        loop {
            let available = self.inner.fill_buf()?;
            if available.is_empty() {
                return Ok(());
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.inner.consume(i + 1);
                    return Ok(());
                }
                None => {
                    let n = available.len();
                    self.inner.consume(n);
                }
            }
        }
    }
}
