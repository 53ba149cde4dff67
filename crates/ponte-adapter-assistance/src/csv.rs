//! The CSV layout for registry person profiles: which column holds which field of the JSON
//! layout, and a row read into a [`PersonInput`] validated like a JSON record. List fields
//! (`cns`, `memberships`) are separated by `|`; an empty cell is an absent field. This module
//! never guesses: a row it cannot read is rejected with the reason.
//!
//! How a file is cut into records and fields (quoting, the `,` or `;` delimiter, line ends,
//! UTF-8) is the dialect every adapter shares, [`ponte_edge::csv`], documented for senders in
//! `docs/integration/csv.md`.
use std::time::SystemTime;

use ponte_edge::csv::{Columns, read_record};

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

/// The header of a profile upload: the delimiter and which column is which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub delimiter: char,
    columns: Columns,
}

impl Header {
    /// The header's column names (as the CSV reader gave them) and the file's delimiter.
    /// Names are matched case-insensitively; every one must be known, none repeated, and
    /// `nis` present.
    pub fn new(names: &[String], delimiter: u8) -> Result<Header, String> {
        Ok(Header {
            delimiter: char::from(delimiter),
            columns: Columns::new(names, &COLUMNS, &["nis"])?,
        })
    }

    /// Reads a header line on its own (a UTF-8 byte-order mark is skipped), for tools that
    /// read a file line by line.
    pub fn parse(line: &str) -> Result<Header, String> {
        let (names, delimiter) = read_record(line.as_bytes(), None);
        Header::new(&names.map_err(|e| e.to_string())?, delimiter)
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

/// One row's cells (as the CSV reader gave them) as the JSON layout's input (the same
/// validation then applies).
pub fn cells_to_input(header: &Header, cells: &[String]) -> Result<PersonInput, RecordError> {
    let mut input = PersonInput::default();
    for (name, value) in header
        .columns
        .cells(cells)
        .map_err(RecordError::malformed)?
    {
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

/// Reads and validates one row's cells.
pub fn row(
    header: &Header,
    cells: &[String],
    source_system: &str,
    now: SystemTime,
) -> Result<ValidRecord, RecordError> {
    validate(&cells_to_input(header, cells)?, source_system, now)
}

/// Reads one data line on its own into the JSON layout's input, for tools that read a file
/// line by line (a field of it cannot hold a line break).
pub fn row_to_input(header: &Header, line: &str) -> Result<PersonInput, RecordError> {
    let delimiter = u8::try_from(header.delimiter).unwrap_or(b',');
    let (cells, _) = read_record(line.as_bytes(), Some(delimiter));
    cells_to_input(header, &cells.map_err(RecordError::malformed)?)
}

/// Reads and validates one data line on its own (see [`row_to_input`]).
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

    #[test]
    fn a_row_with_a_quoted_line_break_maps_from_the_shared_reader() {
        let mut reader = ponte_edge::csv::Reader::new(64 * 1024);
        let mut records = Vec::new();
        reader.push(
            b"nis;family_id;birth_date;sex;municipality;memberships\r\n\
              268.27649.96-0;\"12;34\";2014-03-09;F;3550308;\"PETI|\r\nPBF\"\r\n",
            &mut records,
        );
        reader.finish(&mut records);
        let h = Header::new(
            records[0].fields.as_ref().unwrap(),
            reader.delimiter().unwrap(),
        )
        .unwrap();
        assert_eq!(h.delimiter, ';');
        let input = cells_to_input(&h, records[1].fields.as_ref().unwrap()).unwrap();
        assert_eq!(input.family_id.as_deref(), Some("12;34"));
        // `|`-separated lists trim their items, so the line break inside the quotes is nothing.
        assert_eq!(
            input.memberships,
            Some(vec!["PETI".to_owned(), "PBF".to_owned()])
        );
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
                "6 fields where the header has 7",
            ),
            (
                "26827649960,1,2014-03-09,F,\"3550308,",
                "record",
                "never closed",
            ),
            (
                "26827649960,1,2014-03-09,F,35\"50308,,",
                "record",
                "quote inside an unquoted field",
            ),
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
