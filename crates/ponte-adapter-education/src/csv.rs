//! The CSV batch layout schools export per bimester, parsed line by line so that a file of any
//! size goes through in bounded memory.
//!
//! - [`LineSplitter`] cuts a byte stream, fed in arbitrary pieces, into numbered lines, never
//!   holding more than one line (at most `max_line_bytes`) at a time.
//! - [`Header`] reads the first line: which column holds which field of the JSON layout
//!   ([`AttendanceInput`]), and the delimiter (`,`, or `;` as spreadsheets in Brazil export).
//! - [`Header::parse_row`] turns one data line into an [`AttendanceInput`], validated by
//!   [`crate::record::validate`] exactly as a JSON record is.
//!
//! A line is one record: quoted fields (`"..."`, `""` for a quote) are accepted but may not span
//! lines; no field of this layout needs a line break. This module never publishes and never
//! panics on input.
use crate::record::{AttendanceInput, RecordError};

/// One line of the body, without its terminator (`\n` or `\r\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the file, as a spreadsheet or `sed -n Np` shows it.
    pub number: u64,
    /// The line's bytes; when `truncated`, only its first `max_line_bytes`.
    pub bytes: Vec<u8>,
    /// The line was longer than the limit; the rest of it was discarded.
    pub truncated: bool,
}

/// Cuts a stream of byte chunks into lines with bounded memory.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    truncated: bool,
    number: u64,
    /// True once anything of the current line was seen (distinguishes "no last line" from an
    /// empty last line without a terminator).
    started: bool,
}

impl LineSplitter {
    /// A splitter keeping at most `max_line_bytes` of any one line.
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max_line_bytes.max(1),
            truncated: false,
            number: 0,
            started: false,
        }
    }

    fn append(&mut self, part: &[u8]) {
        self.started |= !part.is_empty();
        let room = self.max.saturating_sub(self.buf.len());
        if part.len() > room {
            self.buf.extend_from_slice(&part[..room]);
            self.truncated = true;
        } else {
            self.buf.extend_from_slice(part);
        }
    }

    fn emit(&mut self, out: &mut Vec<Line>) {
        self.number += 1;
        let mut bytes = std::mem::take(&mut self.buf);
        if !self.truncated && bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        out.push(Line {
            number: self.number,
            bytes,
            truncated: self.truncated,
        });
        self.truncated = false;
        self.started = false;
    }

    /// Feeds the next piece of the stream; complete lines are appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Line>) {
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            self.append(&chunk[..i]);
            self.emit(out);
            chunk = &chunk[i + 1..];
        }
        self.append(chunk);
    }

    /// The stream ended: the last line, if it had no terminator.
    pub fn finish(&mut self, out: &mut Vec<Line>) {
        if self.started || self.truncated {
            self.emit(out);
        }
    }

    /// Lines completed so far.
    pub fn lines(&self) -> u64 {
        self.number
    }
}

/// A column of the layout: the fields of [`AttendanceInput`], under the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Nis,
    InepSchoolCode,
    Month,
    Bimester,
    Unit,
    Given,
    Attended,
    AttendancePercent,
    LowAttendanceReason,
    Version,
    RecordedAt,
    Retraction,
}

const COLUMNS: [(&str, Column); 12] = [
    ("nis", Column::Nis),
    ("inep_school_code", Column::InepSchoolCode),
    ("month", Column::Month),
    ("bimester", Column::Bimester),
    ("unit", Column::Unit),
    ("given", Column::Given),
    ("attended", Column::Attended),
    ("attendance_percent", Column::AttendancePercent),
    ("low_attendance_reason", Column::LowAttendanceReason),
    ("version", Column::Version),
    ("recorded_at", Column::RecordedAt),
    ("retraction", Column::Retraction),
];

const REQUIRED: [Column; 3] = [Column::Nis, Column::InepSchoolCode, Column::Month];

fn column_name(c: Column) -> &'static str {
    COLUMNS
        .iter()
        .find(|(_, col)| *col == c)
        .map_or("?", |(name, _)| name)
}

/// The first line of a file: its columns and delimiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    columns: Vec<Column>,
    delimiter: char,
}

/// Why a header line cannot be read; the whole file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header: {0}")]
pub struct HeaderError(pub String);

/// Splits a line into fields. Unquoted fields are trimmed; quoted ones are kept as written.
pub fn split_fields(line: &str, delimiter: char) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        // One field.
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut field = String::new();
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
                            "field {} opens a quote that the line never closes",
                            fields.len() + 1
                        ));
                    }
                }
            }
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
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
                        "field {}: {c:?} after the closing quote",
                        fields.len() + 1
                    ));
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end().to_owned());
                        return Ok(fields);
                    }
                    Some(c) if c == delimiter => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim_end().to_owned());
        }
    }
}

impl Header {
    /// Reads a header line (a UTF-8 byte-order mark is skipped). Column names are those of the
    /// JSON layout, in any order and case; `nis`, `inep_school_code` and `month` are required,
    /// unknown or repeated names are refused.
    pub fn parse(line: &[u8]) -> Result<Header, HeaderError> {
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        let text = std::str::from_utf8(line)
            .map_err(|_| HeaderError("not UTF-8".to_owned()))?
            .trim_end_matches('\r');
        let delimiter = if text.contains(';') && !text.contains(',') {
            ';'
        } else {
            ','
        };
        let names = split_fields(text, delimiter).map_err(HeaderError)?;
        let mut columns = Vec::with_capacity(names.len());
        for name in &names {
            let key = name.trim().to_ascii_lowercase();
            let col = COLUMNS
                .iter()
                .find(|(n, _)| *n == key)
                .map(|(_, c)| *c)
                .ok_or_else(|| {
                    HeaderError(format!(
                        "unknown column {name:?}; the columns are {}",
                        COLUMNS.map(|(n, _)| n).join(", ")
                    ))
                })?;
            if columns.contains(&col) {
                return Err(HeaderError(format!("column {key:?} appears twice")));
            }
            columns.push(col);
        }
        if let Some(missing) = REQUIRED.iter().find(|c| !columns.contains(c)) {
            return Err(HeaderError(format!(
                "required column {:?} is missing",
                column_name(*missing)
            )));
        }
        Ok(Header { columns, delimiter })
    }

    /// The delimiter found in the header.
    pub fn delimiter(&self) -> char {
        self.delimiter
    }

    /// Reads one data line into the JSON layout's record. An empty cell is an absent field.
    pub fn parse_row(&self, line: &[u8]) -> Result<AttendanceInput, RecordError> {
        let text = std::str::from_utf8(line)
            .map_err(|e| RecordError::malformed(format!("line is not UTF-8 ({e})")))?;
        let fields = split_fields(text, self.delimiter).map_err(RecordError::malformed)?;
        if fields.len() != self.columns.len() {
            return Err(RecordError::malformed(format!(
                "{} fields where the header has {} columns",
                fields.len(),
                self.columns.len()
            )));
        }
        let mut input = AttendanceInput {
            nis: String::new(),
            inep_school_code: String::new(),
            month: String::new(),
            bimester: None,
            unit: None,
            given: None,
            attended: None,
            attendance_percent: None,
            low_attendance_reason: None,
            version: None,
            recorded_at: None,
            retraction: false,
        };
        for (col, value) in self.columns.iter().zip(fields) {
            let name = column_name(*col);
            if value.is_empty() {
                continue;
            }
            match col {
                Column::Nis => input.nis = value,
                Column::InepSchoolCode => input.inep_school_code = value,
                Column::Month => input.month = value,
                Column::Bimester => input.bimester = Some(value),
                Column::Unit => input.unit = Some(value),
                Column::LowAttendanceReason => input.low_attendance_reason = Some(value),
                Column::RecordedAt => input.recorded_at = Some(value),
                Column::Given => input.given = Some(whole(name, &value)?),
                Column::Attended => input.attended = Some(whole(name, &value)?),
                Column::Version => input.version = Some(whole(name, &value)?),
                Column::AttendancePercent => {
                    input.attendance_percent = Some(decimal(name, &value, self.delimiter)?);
                }
                Column::Retraction => input.retraction = boolean(name, &value)?,
            }
        }
        Ok(input)
    }
}

fn whole<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, RecordError> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RecordError::new(
            field,
            "invalid_value",
            format!("{value:?} is not a whole number"),
        ));
    }
    value
        .parse()
        .map_err(|_| RecordError::new(field, "invalid_value", format!("{value:?} is out of range")))
}

/// A decimal number; in `;`-delimited files the decimal comma (`87,5`) is accepted too.
fn decimal(field: &str, value: &str, delimiter: char) -> Result<f64, RecordError> {
    let normal = if delimiter == ';' {
        value.replace(',', ".")
    } else {
        value.to_owned()
    };
    let shape_ok = !normal.is_empty()
        && normal.bytes().filter(|b| *b == b'.').count() <= 1
        && normal.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && normal.bytes().any(|b| b.is_ascii_digit());
    if !shape_ok {
        return Err(RecordError::new(
            field,
            "invalid_value",
            format!("{value:?} is not a decimal number"),
        ));
    }
    normal.parse().map_err(|_| {
        RecordError::new(
            field,
            "invalid_value",
            format!("{value:?} is not a decimal number"),
        )
    })
}

fn boolean(field: &str, value: &str) -> Result<bool, RecordError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(RecordError::new(
            field,
            "invalid_value",
            format!("{value:?} is not true/false/1/0"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::record::validate;

    fn lines(pieces: &[&[u8]], max: usize) -> Vec<Line> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn lines_are_numbered_whatever_the_chunking() {
        let text = b"a,b\r\nc,d\n\ne,f";
        let whole = lines(&[text], 100);
        let bytes: Vec<_> = whole.iter().map(|l| (l.number, l.bytes.clone())).collect();
        assert_eq!(
            bytes,
            vec![
                (1, b"a,b".to_vec()),
                (2, b"c,d".to_vec()),
                (3, b"".to_vec()),
                (4, b"e,f".to_vec())
            ]
        );
        // One byte at a time gives the same lines.
        let singles: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(lines(&singles, 100), whole);
        // A trailing newline does not make an extra line.
        assert_eq!(lines(&[b"a\n"], 100).len(), 1);
        assert!(lines(&[b""], 100).is_empty());
    }

    #[test]
    fn a_long_line_is_cut_at_the_limit_and_the_next_line_survives() {
        let out = lines(&[b"0123456789abc\nok\n"], 4);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].bytes, b"0123");
        assert!(out[0].truncated);
        assert_eq!(out[1].bytes, b"ok");
        assert!(!out[1].truncated);
        assert_eq!(out[1].number, 2);
    }

    #[test]
    fn fields_split_with_quotes_and_trim() {
        assert_eq!(
            split_fields(r#" a , "b,c" ,"d""e",,"#, ',').unwrap(),
            vec!["a", "b,c", "d\"e", "", ""]
        );
        assert!(
            split_fields(r#"a,"b"#, ',')
                .unwrap_err()
                .contains("never closes")
        );
        assert!(
            split_fields(r#""b"x,c"#, ',')
                .unwrap_err()
                .contains("after the closing quote")
        );
    }

    #[test]
    fn the_header_names_columns_of_the_json_layout() {
        let h =
            Header::parse(b"\xEF\xBB\xBFNIS,inep_school_code,month,unit,given,attended\r").unwrap();
        assert_eq!(h.delimiter(), ',');
        let h2 = Header::parse(b"nis;inep_school_code;month;attendance_percent").unwrap();
        assert_eq!(h2.delimiter(), ';');
        for (line, msg) in [
            (&b"nis,inep_school_code"[..], "\"month\" is missing"),
            (b"nis,inep_school_code,month,presence", "unknown column"),
            (b"nis,inep_school_code,month,nis", "twice"),
            (b"\xFFnis", "UTF-8"),
        ] {
            let e = Header::parse(line).unwrap_err();
            assert!(e.0.contains(msg), "{e}");
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600)
    }

    #[test]
    fn a_row_is_validated_like_the_same_json_record() {
        let h = Header::parse(
            b"nis,inep_school_code,month,bimester,unit,given,attended,attendance_percent,low_attendance_reason,version,recorded_at,retraction",
        )
        .unwrap();
        let row = h
            .parse_row(b"268.27649.96-0,35012345,2025-04,2025-B2,days,20,15,,62,3,,")
            .unwrap();
        let from_csv = validate(&row, "education", now()).unwrap();
        let json: AttendanceInput = serde_json::from_str(
            r#"{"nis":"268.27649.96-0","inep_school_code":"35012345","month":"2025-04","bimester":"2025-B2","unit":"days","given":20,"attended":15,"low_attendance_reason":"62","version":3}"#,
        )
        .unwrap();
        assert_eq!(from_csv, validate(&json, "education", now()).unwrap());
        assert_eq!(
            from_csv.event.record_id,
            "education:35012345:26827649960:2025-04"
        );
    }

    #[test]
    fn semicolon_files_take_the_decimal_comma() {
        let h = Header::parse(b"nis;inep_school_code;month;attendance_percent").unwrap();
        let row = h.parse_row(b"26827649960;35012345;2025-10;87,5").unwrap();
        assert_eq!(row.attendance_percent, Some(87.5));
    }

    #[test]
    fn bad_cells_name_their_column() {
        let h = Header::parse(
            b"nis,inep_school_code,month,unit,given,attended,attendance_percent,version,retraction",
        )
        .unwrap();
        for (line, field, reason) in [
            (
                &b"26827649960,35012345,2025-04,days,twenty,1,,,"[..],
                "given",
                "whole number",
            ),
            (
                b"26827649960,35012345,2025-04,days,-1,1,,,",
                "given",
                "whole number",
            ),
            (
                b"26827649960,35012345,2025-04,days,99999999999,1,,,",
                "given",
                "out of range",
            ),
            (
                b"26827649960,35012345,2025-04,,,,inf,,",
                "attendance_percent",
                "decimal",
            ),
            (
                b"26827649960,35012345,2025-04,,,,1e2,,",
                "attendance_percent",
                "decimal",
            ),
            (
                b"26827649960,35012345,2025-04,,,,90,,yes",
                "retraction",
                "true/false",
            ),
            (
                b"26827649960,35012345,2025-04,,,,90,",
                "record",
                "8 fields where the header has 9",
            ),
            (
                b"26827649960,35012345,2025-04,,,,\"90,,",
                "record",
                "never closes",
            ),
            (b"\xC3\x28,35012345,2025-04,,,,90,,", "record", "UTF-8"),
        ] {
            let e = h.parse_row(line).unwrap_err();
            assert_eq!(e.field, field, "{}", String::from_utf8_lossy(line));
            assert!(e.reason.contains(reason), "{}", e.reason);
        }
        // Valid shape, invalid content: validate names the field.
        let row = h
            .parse_row(b"26827649961,35012345,2025-04,,,,90,,")
            .unwrap();
        assert_eq!(validate(&row, "education", now()).unwrap_err().field, "nis");
    }
}
