//! The CSV batch layout for registry person profiles, read as a stream: bytes arrive in chunks,
//! [`LineSplitter`] cuts them into numbered lines (never holding more than one line), the
//! header names the columns, and each row becomes a [`PersonInput`] validated like a JSON
//! record.
//!
//! The layout is deliberately simple so that a spreadsheet export or a database dump produces
//! it: UTF-8, one record per line (fields cannot contain line breaks), `,` or `;` as the
//! delimiter (taken from the header), fields optionally quoted with `"` (`""` inside quotes is
//! a quote), list fields (`cns`, `memberships`) separated by `|`. This module never guesses:
//! a row it cannot read is rejected with its line number and the reason.
use std::time::SystemTime;

use crate::person::{OneOrMany, PersonInput, validate};
use crate::record::{RecordError, ValidRecord};

/// The columns the profile layout knows, in documentation order.
pub const COLUMNS: [&str; 16] = [
    "nis",
    "family_id",
    "birth_date",
    "sex",
    "municipality",
    "inep_school_code",
    "cns",
    "cpf",
    "pregnant",
    "expected_delivery_date",
    "peti",
    "memberships",
    "basic_education_completed",
    "version",
    "recorded_at",
    "retraction",
];

/// One line of the upload, numbered from 1, without its line terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line.
    Text { number: u64, bytes: Vec<u8> },
    /// A line longer than the limit: its first `limit` bytes; the rest was skipped.
    TooLong { number: u64, prefix: Vec<u8> },
}

/// Cuts a byte stream into lines, holding at most one line (bounded by `max_line` bytes).
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    number: u64,
    max_line: usize,
    overlong: bool,
}

impl LineSplitter {
    /// A splitter for lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            number: 0,
            max_line: max_line.max(1),
            overlong: false,
        }
    }

    /// Lines completed so far (including the one being read when it ends).
    pub fn lines_seen(&self) -> u64 {
        self.number
    }

    fn emit(&mut self, out: &mut Vec<Line>) {
        self.number += 1;
        let mut bytes = std::mem::take(&mut self.buf);
        if self.overlong {
            self.overlong = false;
            out.push(Line::TooLong {
                number: self.number,
                prefix: bytes,
            });
            return;
        }
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        out.push(Line::Text {
            number: self.number,
            bytes,
        });
    }

    /// Feeds a chunk; complete lines are appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Line>) {
        while !chunk.is_empty() {
            let (part, rest, ended) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &[][..], false),
            };
            if !self.overlong {
                let room = self.max_line.saturating_sub(self.buf.len());
                if part.len() > room {
                    self.buf.extend_from_slice(&part[..room]);
                    self.overlong = true;
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            if ended {
                self.emit(out);
            }
            chunk = rest;
        }
    }

    /// Ends the stream: a last line without a terminator is emitted.
    pub fn finish(&mut self, out: &mut Vec<Line>) {
        if !self.buf.is_empty() || self.overlong {
            self.emit(out);
        }
    }
}

/// Splits one CSV line into fields.
pub fn split_fields(line: &str, delimiter: char) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        // Leading spaces before a quote are allowed (`a, "b"`).
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => {
                        return Err(format!(
                            "field {} has an opening quote without a closing one",
                            fields.len() + 1
                        ));
                    }
                }
            }
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(c) if c == delimiter => fields.push(field),
                Some(c) => {
                    return Err(format!(
                        "field {}: {c:?} after the closing quote (expected {delimiter:?} or the end of the line)",
                        fields.len() + 1
                    ));
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(c) if c == delimiter => {
                        fields.push(field);
                        break;
                    }
                    Some('"') => {
                        return Err(format!(
                            "field {}: a quote inside an unquoted field (quote the whole field and double the quote)",
                            fields.len() + 1
                        ));
                    }
                    Some(c) => field.push(c),
                }
            }
        }
    }
}

/// The header of a profile upload: the delimiter and which column is which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub delimiter: char,
    /// Index into [`COLUMNS`] of each column of the file.
    columns: Vec<usize>,
}

impl Header {
    /// Reads the header line. Column names are matched case-insensitively; every one must be
    /// known, none repeated, and `nis` present. A UTF-8 byte-order mark is skipped.
    pub fn parse(line: &str) -> Result<Header, String> {
        let line = line.strip_prefix('\u{feff}').unwrap_or(line);
        let delimiter = if line.contains(';') && !line.contains(',') {
            ';'
        } else {
            ','
        };
        let names = split_fields(line, delimiter)?;
        let mut columns = Vec::with_capacity(names.len());
        for name in &names {
            let n = name.trim().to_ascii_lowercase();
            let Some(i) = COLUMNS.iter().position(|c| *c == n) else {
                return Err(format!(
                    "unknown column {name:?}; known columns: {}",
                    COLUMNS.join(", ")
                ));
            };
            if columns.contains(&i) {
                return Err(format!("column {n:?} appears twice"));
            }
            columns.push(i);
        }
        if !columns.contains(&0) {
            return Err("no `nis` column".to_owned());
        }
        Ok(Header { delimiter, columns })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// True when the header has no columns (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

fn boolean(field: &str, s: &str) -> Result<Option<bool>, RecordError> {
    match s.trim().to_lowercase().as_str() {
        "" => Ok(None),
        "true" | "1" | "s" | "sim" | "y" | "yes" => Ok(Some(true)),
        "false" | "0" | "n" | "não" | "nao" | "no" => Ok(Some(false)),
        other => Err(RecordError::value(
            field,
            format!("{other:?} is not a boolean (true/false, 1/0, S/N)"),
        )),
    }
}

fn list(s: &str) -> Vec<String> {
    s.split('|')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn text(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// Reads one data row into the JSON layout's input (the same validation then applies).
pub fn row_to_input(header: &Header, line: &str) -> Result<PersonInput, RecordError> {
    let fields = split_fields(line, header.delimiter).map_err(RecordError::malformed)?;
    if fields.len() != header.len() {
        return Err(RecordError::malformed(format!(
            "{} fields, but the header has {} columns",
            fields.len(),
            header.len()
        )));
    }
    let mut input = PersonInput::default();
    for (&column, value) in header.columns.iter().zip(&fields) {
        let name = COLUMNS[column];
        match name {
            "nis" => input.nis = text(value),
            "family_id" => input.family_id = text(value),
            "birth_date" => input.birth_date = text(value),
            "sex" => input.sex = text(value),
            "municipality" => input.municipality = text(value),
            "inep_school_code" => input.inep_school_code = text(value),
            "cns" => input.cns = Some(OneOrMany::Many(list(value))),
            "cpf" => input.cpf = text(value),
            "pregnant" => input.pregnant = boolean(name, value)?,
            "expected_delivery_date" => input.expected_delivery_date = text(value),
            "peti" => input.peti = boolean(name, value)?,
            "memberships" => input.memberships = Some(list(value)),
            "basic_education_completed" => input.basic_education_completed = boolean(name, value)?,
            "version" => {
                input.version = text(value)
                    .map(|v| {
                        v.parse::<u64>().map_err(|_| {
                            RecordError::value(name, format!("{v:?} is not a whole number"))
                        })
                    })
                    .transpose()?;
            }
            "recorded_at" => input.recorded_at = text(value),
            "retraction" => input.retraction = boolean(name, value)?.unwrap_or(false),
            _ => {}
        }
    }
    Ok(input)
}

/// Reads and validates one data row.
pub fn parse_row(
    header: &Header,
    line: &str,
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    validate(&row_to_input(header, line)?, source_system, now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::record::testing::now;
    use ponte_proto::events::v1::event::Record;

    fn lines(chunks: &[&[u8]], max: usize) -> Vec<Line> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    fn text_line(number: u64, s: &str) -> Line {
        Line::Text {
            number,
            bytes: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn lines_are_numbered_across_chunk_boundaries_and_crlf_is_accepted() {
        let out = lines(&[b"a,b\r\nc", b",d\n\n", b"e"], 100);
        assert_eq!(
            out,
            [
                text_line(1, "a,b"),
                text_line(2, "c,d"),
                text_line(3, ""),
                text_line(4, "e")
            ]
        );
        assert_eq!(lines(&[b"a\n"], 100), [text_line(1, "a")]);
        assert!(lines(&[b""], 100).is_empty());
    }

    #[test]
    fn an_overlong_line_is_cut_and_the_next_one_is_read_whole() {
        let out = lines(&[b"0123", b"456789\nok\n"], 4);
        assert_eq!(
            out,
            [
                Line::TooLong {
                    number: 1,
                    prefix: b"0123".to_vec()
                },
                text_line(2, "ok")
            ]
        );
    }

    #[test]
    fn fields_follow_the_quoting_rules() {
        type Case<'a> = (&'a str, char, Result<&'a [&'a str], &'a str>);
        let cases: &[Case<'_>] = &[
            ("a,b,,c", ',', Ok(&["a", "b", "", "c"])),
            (r#""a,1", "b""c""#, ',', Ok(&["a,1", r#"b"c"#])),
            ("a;b", ';', Ok(&["a", "b"])),
            ("", ',', Ok(&[""])),
            ("a,", ',', Ok(&["a", ""])),
            (r#""open"#, ',', Err("without a closing one")),
            (r#""a"b"#, ',', Err("after the closing quote")),
            (r#"a"b"#, ',', Err("quote inside an unquoted field")),
        ];
        for (line, delim, want) in cases {
            match (split_fields(line, *delim), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{line}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{line}: {got}"),
                (got, want) => panic!("{line}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_header_picks_the_delimiter_and_rejects_unknown_or_repeated_columns() {
        let h = Header::parse("\u{feff}NIS;family_id;birth_date").unwrap();
        assert_eq!((h.delimiter, h.len()), (';', 3));
        assert!(
            Header::parse("nis,gender")
                .unwrap_err()
                .contains("\"gender\"")
        );
        assert!(Header::parse("nis,sex,sex").unwrap_err().contains("twice"));
        assert!(Header::parse("family_id,sex").unwrap_err().contains("nis"));
    }

    #[test]
    fn a_row_maps_like_the_json_layout() {
        let h = Header::parse(&COLUMNS.join(",")).unwrap();
        let v = parse_row(
            &h,
            "268.27649.96-0,1234567890,2014-03-09,F,3550308,35012345,700000000000005|268276499600008,,N,,S,PBF,0,3,,",
            "assistance",
            now(),
        )
        .unwrap();
        assert_eq!(v.key, "26827649960");
        assert_eq!(v.event.version, 3);
        let Some(Record::PersonProfile(p)) = &v.event.record else {
            panic!("{v:?}")
        };
        assert_eq!(p.cns, ["268276499600008", "700000000000005"]);
        assert_eq!(p.memberships, ["PBF", "PETI"]);
        assert!(!p.pregnant);
    }

    #[test]
    fn each_row_rule_names_its_field() {
        let h =
            Header::parse("nis,family_id,birth_date,sex,municipality,pregnant,version").unwrap();
        let cases = [
            (
                "26827649960,1,2014-03-09,F,3550308,talvez,1",
                "pregnant",
                "not a boolean",
            ),
            (
                "26827649960,1,2014-03-09,F,3550308,,v1",
                "version",
                "not a whole number",
            ),
            (
                "26827649960,1,2014-03-09,F,3550308,",
                "record",
                "6 fields, but the header has 7",
            ),
            ("26827649960,1,2014-03-09,F,\"3550308,", "record", "closing"),
            ("26827649961,1,2014-03-09,F,3550308,,", "nis", "check digit"),
            (",1,2014-03-09,F,3550308,,", "nis", "required"),
            (
                "26827649960,1,09/03/2014,F,3550308,,",
                "birth_date",
                "YYYY-MM-DD",
            ),
        ];
        for (line, field, reason) in cases {
            let err = parse_row(&h, line, "assistance", now()).unwrap_err();
            assert_eq!(err.field, field, "{line}");
            assert!(err.reason.contains(reason), "{line}: {}", err.reason);
        }
    }
}
