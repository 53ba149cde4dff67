//! The CSV layout schools export per bimester: which column holds which field of the JSON
//! layout ([`AttendanceInput`]), and a row read into it, to be validated by
//! [`crate::record::validate`] exactly as a JSON record is.
//!
//! How a file is cut into records and fields (quoting, the `,` or `;` delimiter, line ends,
//! UTF-8) is the dialect every adapter shares, [`ponte_edge::csv`], documented for senders in
//! `docs/integration/csv.md`. This module never publishes and never panics on input.
use ponte_edge::csv::{Columns, read_record};

use crate::record::{AttendanceInput, RecordError};

/// The columns a header may name: the fields of [`AttendanceInput`], under the same names.
pub const COLUMNS: [&str; 12] = [
    "nis",
    "inep_school_code",
    "month",
    "bimester",
    "unit",
    "given",
    "attended",
    "attendance_percent",
    "low_attendance_reason",
    "version",
    "recorded_at",
    "retraction",
];

const REQUIRED: [&str; 3] = ["nis", "inep_school_code", "month"];

/// The first record of a file: its columns and delimiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    columns: Columns,
    delimiter: char,
}

/// Why a header cannot be read; the whole file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header: {0}")]
pub struct HeaderError(pub String);

impl Header {
    /// The header's column names (as the CSV reader gave them) and the file's delimiter.
    /// Names are those of the JSON layout, in any order and case; `nis`, `inep_school_code`
    /// and `month` are required, unknown or repeated names are refused.
    pub fn new(names: &[String], delimiter: u8) -> Result<Header, HeaderError> {
        let columns = Columns::new(names, &COLUMNS, &REQUIRED).map_err(HeaderError)?;
        Ok(Header {
            columns,
            delimiter: char::from(delimiter),
        })
    }

    /// Reads a header line on its own (a UTF-8 byte-order mark is skipped), for tools that
    /// read a file line by line.
    pub fn parse(line: &[u8]) -> Result<Header, HeaderError> {
        let (names, delimiter) = read_record(line, None);
        let names = names.map_err(|e| HeaderError(e.to_string()))?;
        Header::new(&names, delimiter)
    }

    /// The delimiter found in the header.
    pub fn delimiter(&self) -> char {
        self.delimiter
    }

    /// Reads one data line on its own into the JSON layout's record, for tools that read a
    /// file line by line (a field of it cannot hold a line break).
    pub fn parse_row(&self, line: &[u8]) -> Result<AttendanceInput, RecordError> {
        let delimiter = u8::try_from(self.delimiter).unwrap_or(b',');
        let (cells, _) = read_record(line, Some(delimiter));
        self.row(&cells.map_err(RecordError::malformed)?)
    }

    /// One row's cells (as the CSV reader gave them) as the JSON layout's record. An empty
    /// cell is an absent field.
    pub fn row(&self, cells: &[String]) -> Result<AttendanceInput, RecordError> {
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
        for (name, value) in self.columns.cells(cells).map_err(RecordError::malformed)? {
            if value.is_empty() {
                continue;
            }
            let text = value.to_owned();
            match name {
                "nis" => input.nis = text,
                "inep_school_code" => input.inep_school_code = text,
                "month" => input.month = text,
                "bimester" => input.bimester = Some(text),
                "unit" => input.unit = Some(text),
                "low_attendance_reason" => input.low_attendance_reason = Some(text),
                "recorded_at" => input.recorded_at = Some(text),
                "given" => input.given = Some(whole(name, value)?),
                "attended" => input.attended = Some(whole(name, value)?),
                "version" => input.version = Some(whole(name, value)?),
                "attendance_percent" => {
                    input.attendance_percent = Some(decimal(name, value, self.delimiter)?);
                }
                "retraction" => input.retraction = boolean(name, value)?,
                _ => {}
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

    #[test]
    fn rows_come_from_the_shared_reader_quoted_or_not() {
        // A whole upload as the service reads it: the reader cuts records and fields, the
        // header maps them.
        let mut reader = ponte_edge::csv::Reader::new(4096);
        let mut records = Vec::new();
        reader.push(
            b"nis;inep_school_code;month;unit;low_attendance_reason\r\n\
              \"268.27649.96-0\" ; 35012345;2025-04;\"days\";\"6;2\"\r\n",
            &mut records,
        );
        reader.finish(&mut records);
        let h = Header::new(
            records[0].fields.as_ref().unwrap(),
            reader.delimiter().unwrap(),
        )
        .unwrap();
        assert_eq!(h.delimiter(), ';');
        let row = h.row(records[1].fields.as_ref().unwrap()).unwrap();
        assert_eq!(row.nis, "268.27649.96-0");
        assert_eq!(row.inep_school_code, "35012345");
        assert_eq!(row.unit.as_deref(), Some("days"));
        assert_eq!(row.low_attendance_reason.as_deref(), Some("6;2"));
        // The line-by-line form reads the same.
        let line = h
            .parse_row(b"\"268.27649.96-0\" ; 35012345;2025-04;\"days\";\"6;2\"")
            .unwrap();
        assert_eq!(format!("{line:?}"), format!("{row:?}"));
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
                "never closed",
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
