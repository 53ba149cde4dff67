//! The one CSV dialect of every adapter that takes files: RFC 4180, read as a stream in bounded
//! memory. Senders find the rules in `docs/integration/csv.md`; in short:
//!
//! - Records end with CRLF or LF. Fields are separated by the delimiter, `,` or `;`: the first
//!   of the two found outside quotes in the header (the first record) decides, since
//!   spreadsheets in Brazil export `;`.
//! - A field may be quoted with `"`. Inside quotes `""` is a quote, and the delimiter and line
//!   breaks are text (RFC 4180 §2.6), so one record may span several lines.
//! - A quote opens a quoted field only at the start of a field; anywhere else in an unquoted
//!   field it is an error of that record. Spaces and tabs around an unquoted value or around
//!   the quotes are not part of the value.
//! - UTF-8 only; a byte-order mark at the start of the file is skipped. Blank lines are skipped.
//! - A record longer than the reader's limit is reported as too long with its first bytes
//!   (for the dead letter), without ever being held whole; reading goes on after it.
//! - A record is numbered by the 1-based line it starts on, as a spreadsheet shows it.
//!
//! [`Reader`] is fed the body in pieces cut anywhere, even inside a quoted field or a UTF-8
//! character: the records it gives do not depend on the cuts. [`Columns`] matches a header
//! against the column names of an adapter's layout; what a row means stays in the adapter.
//! Nothing here panics on input.
use std::fmt;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Why a record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsvError {
    /// Longer than the reader's limit; only its first `max` bytes were kept.
    TooLong {
        max: usize,
        /// How many lines the record ran over (more than one hints at a quote left open).
        lines: u64,
    },
    /// Not UTF-8, from byte `offset` of the record on.
    NotUtf8 { offset: usize },
    /// A `"` inside an unquoted field (1-based field number).
    QuoteInUnquoted { field: usize },
    /// Something other than the delimiter or the end of the record after a closing quote.
    AfterClosingQuote { field: usize, found: u8 },
    /// A quote opened on `line` is never closed: the input ends inside the field.
    UnclosedQuote { field: usize, line: u64 },
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsvError::TooLong { max, lines } => {
                write!(f, "record longer than {max} bytes")?;
                if *lines > 1 {
                    write!(
                        f,
                        " (it runs over {lines} lines: a quote that opens a field and is never \
                         closed makes the lines after it part of the field)"
                    )?;
                }
                Ok(())
            }
            CsvError::NotUtf8 { offset } => write!(
                f,
                "not UTF-8 (from byte {offset} of the record on); send the file in UTF-8"
            ),
            CsvError::QuoteInUnquoted { field } => write!(
                f,
                "field {field}: a quote inside an unquoted field (quote the whole field and \
                 double the quote: \"a \"\"b\"\"\")"
            ),
            CsvError::AfterClosingQuote { field, found } => {
                write!(f, "field {field}: ")?;
                if found.is_ascii_graphic() {
                    write!(f, "{:?}", char::from(*found))?;
                } else {
                    write!(f, "byte 0x{found:02X}")?;
                }
                write!(
                    f,
                    " after the closing quote (expected the delimiter or the end of the record)"
                )
            }
            CsvError::UnclosedQuote { field, line } => write!(
                f,
                "field {field} opens a quote on line {line} that is never closed: the file ends \
                 inside it"
            ),
        }
    }
}

impl std::error::Error for CsvError {}

/// One record of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1-based line the record starts on.
    pub line: u64,
    /// 1-based line the record ends on (the same as `line` unless a quoted field holds a line
    /// break).
    pub last_line: u64,
    /// The record's bytes as sent, without its line break: for the dead letter. When the
    /// record is too long, its first bytes only.
    pub raw: Vec<u8>,
    /// Its fields, or why it cannot be read.
    pub fields: Result<Vec<String>, CsvError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// At the start of a field (blanks before it are skipped).
    #[default]
    Start,
    /// Inside an unquoted field.
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// A quote inside a quoted field: the closing one, or the first of `""`.
    QuoteInQuoted,
    /// After a closing quote: blanks, then the delimiter or the end of the record.
    AfterQuoted,
}

/// The record being read.
#[derive(Debug, Default)]
struct Partial {
    /// Some byte of it (even a lone line break) was seen.
    started: bool,
    line: u64,
    raw: Vec<u8>,
    too_long: bool,
    fields: Vec<Vec<u8>>,
    field: Vec<u8>,
    /// Fields completed, also those not kept once the record is too long.
    count: usize,
    state: State,
    /// A `\r` outside quotes: the end of the record if `\n` follows, else text.
    pending_cr: bool,
    /// Line of the last opening quote.
    quote_line: u64,
    error: Option<CsvError>,
}

impl Partial {
    fn push(&mut self, b: u8) {
        if !self.too_long {
            self.field.push(b);
        }
    }

    fn end_field(&mut self) {
        let mut field = std::mem::take(&mut self.field);
        if self.state == State::Unquoted {
            while field.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
                field.pop();
            }
        }
        if !self.too_long {
            self.fields.push(field);
        }
        self.count += 1;
        self.state = State::Start;
    }

    fn fail(&mut self, e: CsvError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Bom {
    /// At the start of the input, this many bytes of a byte-order mark seen.
    Matching(usize),
    Done,
}

/// Cuts a byte stream, fed in pieces of any size, into CSV records. It holds at most one
/// record (its raw bytes and fields, each at most `max_record_bytes`) at a time.
#[derive(Debug)]
pub struct Reader {
    max: usize,
    delimiter: Option<u8>,
    bom: Bom,
    /// Line of the next byte.
    line: u64,
    /// Lines whose records are all given (blank lines included).
    lines_done: u64,
    /// The last byte read was `\n` (for where a record cut by the end of input ends).
    after_lf: bool,
    rec: Partial,
}

impl Reader {
    /// A reader keeping at most `max_record_bytes` of any one record; the delimiter comes from
    /// the header.
    pub fn new(max_record_bytes: usize) -> Self {
        Self {
            max: max_record_bytes.max(1),
            delimiter: None,
            bom: Bom::Matching(0),
            line: 1,
            lines_done: 0,
            after_lf: false,
            rec: Partial::default(),
        }
    }

    /// A reader for records whose delimiter is known (no header decides it).
    pub fn with_delimiter(max_record_bytes: usize, delimiter: u8) -> Self {
        Self {
            delimiter: Some(delimiter),
            ..Self::new(max_record_bytes)
        }
    }

    /// The delimiter, once the header has shown it (`,` when the header has a single column).
    pub fn delimiter(&self) -> Option<u8> {
        self.delimiter
    }

    /// Lines read whose records have all been given, blank lines included.
    pub fn lines(&self) -> u64 {
        self.lines_done
    }

    /// Feeds the next piece of the stream; the records it completes are appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Record>) {
        let mut rest = chunk;
        while let Bom::Matching(n) = self.bom {
            let Some((&b, tail)) = rest.split_first() else {
                return;
            };
            if b == BOM[n] {
                rest = tail;
                self.bom = if n + 1 == BOM.len() {
                    Bom::Done
                } else {
                    Bom::Matching(n + 1)
                };
            } else {
                // Not a byte-order mark after all: what looked like one is data.
                self.bom = Bom::Done;
                for &p in &BOM[..n] {
                    self.step(p, out);
                }
            }
        }
        for &b in rest {
            self.step(b, out);
        }
    }

    /// The stream ended: the last record, if it had no line break. A quoted field still open
    /// makes it an [`CsvError::UnclosedQuote`].
    pub fn finish(&mut self, out: &mut Vec<Record>) {
        if let Bom::Matching(n) = self.bom {
            self.bom = Bom::Done;
            for &p in &BOM[..n] {
                self.step(p, out);
            }
        }
        // A `\r` at the very end is a line end.
        self.rec.pending_cr = false;
        if !self.rec.started {
            return;
        }
        if self.rec.state == State::Quoted {
            let e = CsvError::UnclosedQuote {
                field: self.rec.count + 1,
                line: self.rec.quote_line,
            };
            // The real story, even when the record also grew too long.
            self.rec.error = Some(e);
        }
        // A line break inside the open quote ended the last line.
        let last_line = if self.after_lf {
            self.line - 1
        } else {
            self.line
        };
        self.end_record(out, last_line);
    }

    fn step(&mut self, b: u8, out: &mut Vec<Record>) {
        self.after_lf = b == b'\n';
        if !self.rec.started {
            self.rec.started = true;
            self.rec.line = self.line;
        }
        if self.rec.pending_cr {
            self.rec.pending_cr = false;
            if b == b'\n' {
                self.end_record(out, self.line);
                self.line += 1;
                return;
            }
            self.consume(b'\r');
        }
        if self.rec.state != State::Quoted {
            match b {
                b'\n' => {
                    self.end_record(out, self.line);
                    self.line += 1;
                    return;
                }
                b'\r' => {
                    self.rec.pending_cr = true;
                    return;
                }
                _ => {}
            }
        }
        self.consume(b);
        if b == b'\n' {
            self.line += 1;
        }
    }

    /// True when `b`, outside quotes, separates fields. Until the header shows the delimiter,
    /// the first `,` or `;` decides it.
    fn is_delimiter(&mut self, b: u8) -> bool {
        match self.delimiter {
            Some(d) => b == d,
            None if b == b',' || b == b';' => {
                self.delimiter = Some(b);
                true
            }
            None => false,
        }
    }

    /// One byte of the record (not its line break).
    fn consume(&mut self, b: u8) {
        let delimiter = self.rec.state != State::Quoted && b != b'"' && self.is_delimiter(b);
        let r = &mut self.rec;
        if !r.too_long {
            if r.raw.len() >= self.max {
                r.too_long = true;
                r.fields = Vec::new();
                r.field = Vec::new();
            } else {
                r.raw.push(b);
            }
        }
        let mut state = r.state;
        if state == State::QuoteInQuoted {
            if b == b'"' {
                r.push(b'"');
                r.state = State::Quoted;
                return;
            }
            r.state = State::AfterQuoted;
            state = State::AfterQuoted;
        }
        match state {
            State::Start => match b {
                b' ' | b'\t' => {}
                b'"' => {
                    r.state = State::Quoted;
                    r.quote_line = self.line;
                }
                _ if delimiter => r.end_field(),
                _ => {
                    r.state = State::Unquoted;
                    r.push(b);
                }
            },
            State::Unquoted => {
                if delimiter {
                    r.end_field();
                } else {
                    if b == b'"' {
                        let field = r.count + 1;
                        r.fail(CsvError::QuoteInUnquoted { field });
                    }
                    r.push(b);
                }
            }
            State::Quoted => {
                if b == b'"' {
                    r.state = State::QuoteInQuoted;
                } else {
                    r.push(b);
                }
            }
            State::AfterQuoted => match b {
                b' ' | b'\t' => {}
                _ if delimiter => r.end_field(),
                _ => {
                    let field = r.count + 1;
                    r.fail(CsvError::AfterClosingQuote { field, found: b });
                    // Read on as an unquoted field to find where the record ends.
                    r.state = State::Unquoted;
                    r.push(b);
                }
            },
            State::QuoteInQuoted => {} // handled above
        }
    }

    /// The record ends; its last line is `last_line`.
    fn end_record(&mut self, out: &mut Vec<Record>, last_line: u64) {
        self.lines_done = last_line;
        let mut r = std::mem::take(&mut self.rec);
        if !r.too_long && r.raw.iter().all(u8::is_ascii_whitespace) {
            return; // a blank line: no record
        }
        r.end_field();
        let fields = match (r.error, r.too_long) {
            (Some(e @ CsvError::UnclosedQuote { .. }), _) => Err(e),
            (_, true) => Err(CsvError::TooLong {
                max: self.max,
                lines: last_line - r.line + 1,
            }),
            (Some(e), false) => Err(e),
            (None, false) => match std::str::from_utf8(&r.raw) {
                Err(e) => Err(CsvError::NotUtf8 {
                    offset: e.valid_up_to(),
                }),
                // Fields are the record minus ASCII quotes and blanks, cut at an ASCII
                // delimiter: UTF-8 when the record is.
                Ok(_) => Ok(r
                    .fields
                    .into_iter()
                    .map(|f| String::from_utf8(f).unwrap_or_default())
                    .collect()),
            },
        };
        // The header decided the delimiter; one with a single column leaves it `,`.
        self.delimiter.get_or_insert(b',');
        out.push(Record {
            line: r.line,
            last_line,
            raw: r.raw,
            fields,
        });
    }
}

/// Reads `bytes` as one record (tools and tests reading a file line by line). With
/// `delimiter` `None` the record is a header and decides it; the delimiter is returned. A
/// blank line has no fields.
pub fn read_record(bytes: &[u8], delimiter: Option<u8>) -> (Result<Vec<String>, CsvError>, u8) {
    let mut reader = match delimiter {
        Some(d) => Reader::with_delimiter(bytes.len(), d),
        None => Reader::new(bytes.len()),
    };
    let mut out = Vec::new();
    reader.push(bytes, &mut out);
    reader.finish(&mut out);
    let delimiter = reader.delimiter().unwrap_or(b',');
    match out.into_iter().next() {
        Some(record) => (record.fields, delimiter),
        None => (Ok(Vec::new()), delimiter),
    }
}

/// A header matched against the column names of an adapter's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The layout's name of each column of the file, in the file's order.
    names: Vec<&'static str>,
}

impl Columns {
    /// Matches the header's names against `known`, case-insensitively. Every name must be
    /// known and appear once, and every `required` name must be there.
    pub fn new(
        header: &[String],
        known: &[&'static str],
        required: &[&str],
    ) -> Result<Columns, String> {
        let mut names: Vec<&'static str> = Vec::with_capacity(header.len());
        for name in header {
            let key = name.trim().to_ascii_lowercase();
            let Some(&column) = known.iter().find(|k| **k == key) else {
                return Err(format!(
                    "unknown column {name:?}; the columns are {}",
                    known.join(", ")
                ));
            };
            if names.contains(&column) {
                return Err(format!("column {key:?} appears twice"));
            }
            names.push(column);
        }
        if let Some(missing) = required.iter().find(|r| !names.contains(r)) {
            return Err(format!("required column {missing:?} is missing"));
        }
        Ok(Columns { names })
    }

    /// The layout's name of each column, in the file's order.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when there are no columns (never, for a header read from a file).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The cells of a row with the name of their column. A row with another number of fields
    /// than the header has columns is refused.
    pub fn cells<'r>(
        &self,
        row: &'r [String],
    ) -> Result<impl Iterator<Item = (&'static str, &'r str)>, String> {
        if row.len() != self.names.len() {
            return Err(format!(
                "{} fields where the header has {} columns",
                row.len(),
                self.names.len()
            ));
        }
        Ok(self
            .names
            .iter()
            .copied()
            .zip(row.iter().map(String::as_str)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn read_pieces(pieces: &[&[u8]], max: usize) -> (Vec<Record>, u64, Option<u8>) {
        let mut reader = Reader::new(max);
        let mut out = Vec::new();
        for p in pieces {
            reader.push(p, &mut out);
        }
        reader.finish(&mut out);
        (out, reader.lines(), reader.delimiter())
    }

    fn read(text: &[u8]) -> Vec<Record> {
        read_pieces(&[text], 1 << 20).0
    }

    /// (line, fields) of every record, the fields joined with `|` (or the error).
    fn summary(records: &[Record]) -> Vec<(u64, String)> {
        records
            .iter()
            .map(|r| {
                let fields = match &r.fields {
                    Ok(f) => f.join("|"),
                    Err(e) => format!("ERR {e}"),
                };
                (r.line, fields)
            })
            .collect()
    }

    #[test]
    fn a_quoted_field_holds_the_delimiter_a_line_break_and_doubled_quotes() {
        let text = b"name,note\r\n\
                     \"Silva, Ana\",\"line one\r\nline two\"\r\n\
                     plain,\"she said \"\"oi\"\"\"\r\n\
                     \"\",x\r\n";
        let records = read(text);
        assert_eq!(
            summary(&records),
            [
                (1, "name|note".to_owned()),
                (2, "Silva, Ana|line one\r\nline two".to_owned()),
                (4, "plain|she said \"oi\"".to_owned()),
                (5, "|x".to_owned()),
            ]
        );
        assert_eq!(records[1].last_line, 3);
        assert_eq!(
            records[1].raw,
            b"\"Silva, Ana\",\"line one\r\nline two\"".to_vec()
        );
    }

    #[test]
    fn the_header_decides_the_delimiter() {
        let (records, _, delimiter) = read_pieces(&[b"nis;month\n\"1;2\";2025-04\n3,5;x\n"], 100);
        assert_eq!(delimiter, Some(b';'));
        assert_eq!(
            summary(&records),
            [
                (1, "nis|month".to_owned()),
                (2, "1;2|2025-04".to_owned()),
                (3, "3,5|x".to_owned()),
            ]
        );
        // The first `,` or `;` outside quotes decides; quoted ones do not.
        let (records, _, delimiter) = read_pieces(&[b"\"a;b\",c;d\n"], 100);
        assert_eq!(delimiter, Some(b','));
        assert_eq!(summary(&records), [(1, "a;b|c;d".to_owned())]);
        // A single column: `,`.
        let (_, _, delimiter) = read_pieces(&[b"nis\n1;2\n"], 100);
        assert_eq!(delimiter, Some(b','));
    }

    #[test]
    fn lf_and_crlf_end_records_and_blank_lines_are_skipped_but_counted() {
        let (records, lines, _) = read_pieces(&[b"a,b\n\r\n  \nc,d\r\ne,f"], 100);
        assert_eq!(
            summary(&records),
            [
                (1, "a|b".to_owned()),
                (4, "c|d".to_owned()),
                (5, "e|f".to_owned())
            ]
        );
        assert_eq!(lines, 5);
        assert_eq!(records[1].raw, b"c,d");
        // A trailing line break makes no extra line; a `\r` alone inside a field is text.
        let (records, lines, _) = read_pieces(&[b"a,b\r\nc\rd,e\n\n"], 100);
        assert_eq!(summary(&records)[1], (2, "c\rd|e".to_owned()));
        assert_eq!(lines, 3);
        assert!(read(b"").is_empty());
        assert!(read(b"\n\r\n").is_empty());
    }

    #[test]
    fn blanks_around_values_and_quotes_are_not_part_of_the_value() {
        let records = read(b"a,b,c\n  x  , \"  y \" ,\tz\t\n");
        assert_eq!(summary(&records)[1], (2, "x|  y |z".to_owned()));
        // Empty fields, also the last one.
        assert_eq!(summary(&read(b"a,b,c\n,,\n"))[1], (2, "||".to_owned()));
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_skipped_wherever_the_pieces_are_cut() {
        let text = b"\xEF\xBB\xBFnis,month\n1,2\n";
        for cut in 0..text.len() {
            let (records, _, _) = read_pieces(&[&text[..cut], &text[cut..]], 100);
            assert_eq!(records[0].fields, Ok(vec!["nis".into(), "month".into()]));
            assert_eq!(records[0].raw, b"nis,month");
        }
        // Only at the start: later, U+FEFF is a character of the value.
        let records = read(b"a,b\n\xEF\xBB\xBFc,d\n");
        assert_eq!(
            records[1].fields,
            Ok(vec!["\u{feff}c".to_owned(), "d".to_owned()])
        );
        let records = read(b"\xEF\xBBx,y\n");
        assert_eq!(
            records[0].fields,
            Err(CsvError::NotUtf8 { offset: 0 }),
            "a broken mark is not skipped"
        );
    }

    #[test]
    fn a_record_longer_than_the_limit_is_cut_and_the_next_one_is_read_whole() {
        let (records, lines, _) = read_pieces(&[b"a,b\n0123", b"456789\nok,1\n"], 5);
        assert_eq!(records[1].line, 2);
        assert_eq!(records[1].raw, b"01234");
        assert_eq!(
            records[1].fields,
            Err(CsvError::TooLong { max: 5, lines: 1 })
        );
        assert_eq!(summary(&records)[2], (3, "ok|1".to_owned()));
        assert_eq!(lines, 3);
        // Exactly the limit is fine, the line break not counted.
        let (records, _, _) = read_pieces(&[b"a,b\r\nab,cd\r\n"], 5);
        assert_eq!(summary(&records)[1], (2, "ab|cd".to_owned()));
        // A quote left open runs over lines until the limit: the error says so.
        let (records, _, _) = read_pieces(&[b"a,b\n\"x,1\n2,3\n4,5\"\n6,7\n"], 8);
        assert_eq!(records[1].line, 2);
        let e = records[1].fields.as_ref().unwrap_err();
        assert_eq!(*e, CsvError::TooLong { max: 8, lines: 3 });
        assert!(e.to_string().contains("runs over 3 lines"), "{e}");
        assert_eq!(summary(&records)[2], (5, "6|7".to_owned()));
    }

    #[test]
    fn an_unterminated_quote_at_the_end_is_an_error_naming_its_line() {
        let (records, lines, _) = read_pieces(&[b"a,b\n1,2\n\"26827649960,broken\n"], 100);
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].line, 3);
        let e = records[2].fields.as_ref().unwrap_err();
        assert_eq!(*e, CsvError::UnclosedQuote { field: 1, line: 3 });
        assert!(e.to_string().contains("on line 3"), "{e}");
        assert_eq!(records[2].raw, b"\"26827649960,broken\n");
        assert_eq!((records[2].last_line, lines), (3, 3));
        // Also when it has grown too long by then.
        let (records, _, _) = read_pieces(&[b"a,b\n1,\"2\n3\n4\n5\n"], 4);
        assert_eq!(
            records[1].fields,
            Err(CsvError::UnclosedQuote { field: 2, line: 2 })
        );
    }

    #[test]
    fn quotes_out_of_place_reject_the_record_only() {
        let records = read(b"a,b\nx\"y,1\n\"p\"q,2\nok,3\n\"s\" ,4\n");
        assert_eq!(
            records[1].fields,
            Err(CsvError::QuoteInUnquoted { field: 1 })
        );
        assert_eq!(
            records[2].fields,
            Err(CsvError::AfterClosingQuote {
                field: 1,
                found: b'q'
            })
        );
        assert!(
            records[2]
                .fields
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("'q' after the closing quote")
        );
        assert_eq!(summary(&records)[3], (4, "ok|3".to_owned()));
        assert_eq!(summary(&records)[4], (5, "s|4".to_owned()));
    }

    #[test]
    fn a_record_not_in_utf8_is_an_error_and_the_next_one_is_read() {
        let records = read(b"a,b\n\xC3\x28,1\n\xC3\xA9,2\n");
        assert_eq!(records[1].fields, Err(CsvError::NotUtf8 { offset: 0 }));
        assert_eq!(records[1].raw, b"\xC3\x28,1");
        assert_eq!(summary(&records)[2], (3, "é|2".to_owned()));
    }

    #[test]
    fn one_record_alone() {
        assert_eq!(
            read_record(b"nis;\"a;b\"", None),
            (Ok(vec!["nis".to_owned(), "a;b".to_owned()]), b';')
        );
        assert_eq!(
            read_record(b"1,2", Some(b';')),
            (Ok(vec!["1,2".to_owned()]), b';')
        );
        assert_eq!(read_record(b"", Some(b',')), (Ok(vec![]), b','));
        assert!(matches!(
            read_record(b"a,\"b", Some(b',')).0,
            Err(CsvError::UnclosedQuote { field: 2, .. })
        ));
    }

    #[test]
    fn columns_are_matched_by_name() {
        let names = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        let known = ["nis", "month", "unit"];
        let c = Columns::new(&names("Month, NIS"), &known, &["nis"]).unwrap();
        assert_eq!(c.names(), ["month", "nis"]);
        let row = names("2025-04,1");
        let cells: Vec<_> = c.cells(&row).unwrap().collect();
        assert_eq!(cells, [("month", "2025-04"), ("nis", "1")]);
        assert!(
            c.cells(&names("1"))
                .err()
                .unwrap()
                .contains("1 fields where the header has 2 columns")
        );
        for (header, msg) in [
            ("nis,presence", "unknown column \"presence\""),
            ("nis,unit,NIS", "\"nis\" appears twice"),
            ("month,unit", "required column \"nis\" is missing"),
        ] {
            let e = Columns::new(&names(header), &known, &["nis"]).unwrap_err();
            assert!(e.contains(msg), "{e}");
        }
    }

    #[test]
    fn the_example_of_the_documentation_reads_as_it_says() {
        let doc = include_str!("../../../docs/integration/csv.md");
        let start = doc.find("```csv\n").unwrap() + "```csv\n".len();
        let example = &doc[start..start + doc[start..].find("```").unwrap()];
        for text in [example.to_owned(), example.replace('\n', "\r\n")] {
            let (records, lines, delimiter) = read_pieces(&[text.as_bytes()], 4096);
            assert_eq!(delimiter, Some(b';'));
            let eol = if text.contains('\r') { "\r\n" } else { "\n" };
            assert_eq!(
                summary(&records),
                [
                    (1, "nis|name|note".to_owned()),
                    (2, "26827649960|Silva; Ana|plain text".to_owned()),
                    (3, format!("46952280637|Souza|first line{eol}second line")),
                    (6, "47935263528|Escola \"Modelo\"|".to_owned()),
                ]
            );
            assert_eq!(records[2].last_line, 4);
            assert_eq!(lines, 6);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Properties
    // ---------------------------------------------------------------------------------------

    /// A field value: any mix of the characters that matter to the dialect.
    fn value() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("7"),
                Just(" "),
                Just(","),
                Just(";"),
                Just("\""),
                Just("\n"),
                Just("\r\n"),
                Just("é"),
                Just("字"),
            ],
            0..6,
        )
        .prop_map(|parts| parts.concat())
    }

    #[derive(Debug, Clone)]
    struct File {
        bytes: Vec<u8>,
        delimiter: u8,
        /// Every record, with the line it starts on.
        records: Vec<(u64, Vec<String>)>,
    }

    /// A file written by the dialect's rules from known records, in varied styles.
    fn file() -> impl Strategy<Value = File> {
        let record = proptest::collection::vec((value(), any::<bool>()), 1..5);
        (
            proptest::collection::vec(record, 1..8),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(0..3usize, 8),
        )
            .prop_map(|(records, semicolon, crlf, bom, blanks)| {
                let delimiter = if semicolon { b';' } else { b',' };
                let eol = if crlf { "\r\n" } else { "\n" };
                let mut text = String::new();
                if bom {
                    text.push('\u{feff}');
                }
                let mut line = 1u64;
                let mut out = Vec::new();
                for (i, fields) in records.iter().enumerate() {
                    // The header needs two columns to show its delimiter.
                    let mut fields = fields.clone();
                    if i == 0 && fields.len() < 2 {
                        fields.push((String::new(), false));
                    }
                    for _ in 0..blanks[i % blanks.len()] {
                        text.push_str(eol);
                        line += 1;
                    }
                    let mut cells = Vec::new();
                    for (v, quote) in &fields {
                        let must = v.is_empty() && fields.len() == 1
                            || v.contains([',', ';', '"', '\n', '\r'])
                            || v.starts_with(' ')
                            || v.ends_with(' ');
                        if *quote || must {
                            cells.push(format!("\"{}\"", v.replace('"', "\"\"")));
                        } else {
                            cells.push(v.clone());
                        }
                    }
                    let written = cells.join(&char::from(delimiter).to_string());
                    out.push((line, fields.into_iter().map(|(v, _)| v).collect()));
                    line += written.matches('\n').count() as u64;
                    text.push_str(&written);
                    if i + 1 < records.len() || crlf {
                        text.push_str(eol);
                        line += 1;
                    }
                }
                File {
                    bytes: text.into_bytes(),
                    delimiter,
                    records: out,
                }
            })
    }

    /// Cuts `bytes` into pieces at the given sizes (repeated), the last piece what is left.
    fn cut(bytes: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
        let mut pieces = Vec::new();
        let mut rest = bytes;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i % sizes.len()].min(rest.len());
            pieces.push(rest[..n].to_vec());
            rest = &rest[n..];
            i += 1;
        }
        pieces
    }

    proptest! {
        #[test]
        fn written_records_read_back_the_same_in_pieces_of_any_size(
            f in file(),
            sizes in proptest::collection::vec(1..9usize, 1..6),
        ) {
            let pieces = cut(&f.bytes, &sizes);
            let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let (whole, lines, delimiter) = read_pieces(&[&f.bytes], 1 << 20);
            let (cut, cut_lines, _) = read_pieces(&pieces, 1 << 20);
            prop_assert_eq!(&cut, &whole);
            prop_assert_eq!(cut_lines, lines);
            prop_assert_eq!(delimiter, Some(f.delimiter));
            let got: Vec<(u64, Vec<String>)> = whole
                .iter()
                .map(|r| (r.line, r.fields.clone().unwrap_or_default()))
                .collect();
            prop_assert_eq!(got, f.records);
        }

        #[test]
        fn any_bytes_give_the_same_records_whatever_the_cuts(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'a'), Just(b' '), Just(b','), Just(b';'), Just(b'"'),
                    Just(b'\n'), Just(b'\r'), Just(0xEF), Just(0xBB), Just(0xBF), Just(0xC3),
                    Just(0xA9), any::<u8>(),
                ],
                0..200,
            ),
            sizes in proptest::collection::vec(1..7usize, 1..5),
            max in 1..12usize,
        ) {
            let pieces = cut(&bytes, &sizes);
            let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
            let (whole, lines, delimiter) = read_pieces(&[&bytes], max);
            let (cut, cut_lines, cut_delimiter) = read_pieces(&pieces, max);
            prop_assert_eq!(&cut, &whole);
            prop_assert_eq!((cut_lines, cut_delimiter), (lines, delimiter));
            let mut last = 0;
            for r in &whole {
                prop_assert!(r.raw.len() <= max);
                prop_assert!(r.line > last && r.line <= r.last_line && r.last_line <= lines.max(1));
                last = r.last_line;
            }
        }
    }
}
