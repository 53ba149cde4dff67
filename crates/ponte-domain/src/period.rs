//! Calendar types: dates, months and the monitoring periods (education bimesters, health
//! semesters).
//!
//! This module never reads the clock: every "today" is passed in by the caller.
//!
//! Period calendars (docs/rules.md#periods-and-ages; the source key S9 is docs/sources.md#s9,
//! S11 docs/sources.md#s11):
//! - education bimesters B1 Feb–Mar, B2 Apr–May, B3 Jun–Jul, B4 Aug–Sep, B5 Oct–Nov (MEC Sistema
//!   Presença [S9]); January and December are in no bimester;
//! - health semesters (vigências) S1 Jan–Jun, S2 Jul–Dec (Sistema BFA [S11]).
//!
//! Which calendar a conditionality uses is chosen by the rule set, not here.

use std::fmt;
use std::str::FromStr;

/// Why a date or period was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    /// The text does not have the expected shape.
    #[error("invalid {what} {input:?}: expected the form {form}")]
    Format {
        /// What was being parsed ("month", "bimester", ...).
        what: &'static str,
        /// The input text.
        input: String,
        /// The expected form, e.g. `YYYY-MM`.
        form: &'static str,
    },
    /// Year outside 1..=9999.
    #[error("year must be between 1 and 9999, got {0}")]
    Year(i32),
    /// Month outside 1..=12.
    #[error("month must be between 1 and 12, got {0}")]
    Month(u8),
    /// Day outside the month.
    #[error("day must be between 1 and {max} for {year:04}-{month:02}, got {day}")]
    Day {
        /// Year.
        year: i32,
        /// Month.
        month: u8,
        /// Last valid day.
        max: u8,
        /// Day given.
        day: u8,
    },
    /// Bimester number outside 1..=5.
    #[error("bimester must be between 1 and 5, got {0}")]
    Bimester(u8),
    /// Semester number outside 1..=2.
    #[error("semester must be 1 or 2, got {0}")]
    Semester(u8),
}

fn check_year(year: i32) -> Result<(), PeriodError> {
    if (1..=9999).contains(&year) {
        Ok(())
    } else {
        Err(PeriodError::Year(year))
    }
}

/// Parses a 4-digit year followed by `sep` and a number of 1–2 digits (`2025-04`, `2025-B2`).
fn split_year<'a>(input: &'a str, sep: &str) -> Option<(i32, &'a str)> {
    let (y, rest) = input.split_once(sep)?;
    if y.len() != 4 || !y.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((y.parse().ok()?, rest))
}

fn small_number(s: &str, max_len: usize) -> Option<u8> {
    if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Implements Display-based Serialize and parse-based Deserialize and FromStr.
macro_rules! string_form {
    ($t:ty) => {
        impl FromStr for $t {
            type Err = PeriodError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$t>::parse(s)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                <$t>::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Date
// ---------------------------------------------------------------------------------------------

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// A calendar date (proleptic Gregorian), years 1–9999. Written `2025-04-01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date {
    year: i32,
    month: u8,
    day: u8,
}

impl Date {
    /// 0001-01-01, the earliest date: the fixed content of tombstones
    /// ([`crate::records`]), never a real fact.
    pub const MIN: Date = Date {
        year: 1,
        month: 1,
        day: 1,
    };

    /// The last representable date, 9999-12-31.
    pub const MAX: Date = Date {
        year: 9999,
        month: 12,
        day: 31,
    };

    /// Builds a date, checking the year, month and day.
    pub fn new(year: i32, month: u8, day: u8) -> Result<Date, PeriodError> {
        check_year(year)?;
        if !(1..=12).contains(&month) {
            return Err(PeriodError::Month(month));
        }
        let max = days_in_month(year, month);
        if day == 0 || day > max {
            return Err(PeriodError::Day {
                year,
                month,
                max,
                day,
            });
        }
        Ok(Date { year, month, day })
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(input: &str) -> Result<Date, PeriodError> {
        let bad = || PeriodError::Format {
            what: "date",
            input: input.to_owned(),
            form: "YYYY-MM-DD",
        };
        let (year, rest) = split_year(input, "-").ok_or_else(bad)?;
        let (m, d) = rest.split_once('-').ok_or_else(bad)?;
        if m.len() != 2 || d.len() != 2 {
            return Err(bad());
        }
        let month = small_number(m, 2).ok_or_else(bad)?;
        let day = small_number(d, 2).ok_or_else(bad)?;
        Date::new(year, month, day)
    }

    /// Year.
    pub fn year(&self) -> i32 {
        self.year
    }

    /// Month, 1–12.
    pub fn month(&self) -> u8 {
        self.month
    }

    /// Day of the month, 1–31.
    pub fn day(&self) -> u8 {
        self.day
    }

    /// The month this date falls in.
    pub fn month_of(&self) -> Month {
        Month {
            year: self.year,
            month: self.month,
        }
    }

    /// Days since 1970-01-01 (negative before). Howard Hinnant's `days_from_civil`.
    pub fn to_days(&self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date `days` days after 1970-01-01. Howard Hinnant's `civil_from_days`.
    pub fn from_days(days: i64) -> Result<Date, PeriodError> {
        // Outside years 1..=9999 anyway; also keeps the arithmetic below from overflowing.
        if !(-719_162..=2_932_896).contains(&days) {
            return Err(PeriodError::Year(if days < 0 { 0 } else { 10_000 }));
        }
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let year = i32::try_from(year).map_err(|_| PeriodError::Year(i32::MAX))?;
        Date::new(year, month, day)
    }

    /// This date plus `days` (may be negative).
    pub fn add_days(&self, days: i64) -> Result<Date, PeriodError> {
        let total = self
            .to_days()
            .checked_add(days)
            .ok_or(PeriodError::Year(i32::MAX))?;
        Date::from_days(total)
    }

    /// Days from `self` to `other` (positive when `other` is later).
    pub fn days_until(&self, other: Date) -> i64 {
        other.to_days() - self.to_days()
    }

    /// Age in completed years on `on` for someone born on `self`; `None` if not yet born.
    ///
    /// A person born on 29 February completes a year on 1 March in common years (the birthday
    /// has not happened while (month, day) < (2, 29)).
    pub fn age_on(&self, on: Date) -> Option<u32> {
        if on < *self {
            return None;
        }
        let mut years = on.year - self.year;
        if (on.month, on.day) < (self.month, self.day) {
            years -= 1;
        }
        u32::try_from(years).ok()
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.digits() {
            Some(d) => f.pad(d.text()),
            None => write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day),
        }
    }
}

string_form!(Date);

impl Date {
    /// The date's text (`2025-04-07`) on the stack; `None` for a year [`Digits`] does not take.
    fn digits(&self) -> Option<Digits> {
        let mut d = Digits::year(self.year)?;
        d.push(b'-').two(self.month).push(b'-').two(self.day);
        Some(d)
    }

    /// Appends the date as [`fmt::Display`] writes it, without the formatter.
    pub(crate) fn push_text(&self, out: &mut String) {
        match self.digits() {
            Some(d) => out.push_str(d.text()),
            None => out.push_str(&self.to_string()),
        }
    }
}

/// The text of a date or period, written digit by digit into a buffer on the stack: views and
/// evidence print thousands of months and dates per second, and `write!` with padded fields
/// costs several times more. Only years 0–9999 (four digits, as written); the others go
/// through `write!`.
struct Digits {
    buf: [u8; 10],
    len: usize,
}

impl Digits {
    fn year(year: i32) -> Option<Self> {
        let y = u16::try_from(year).ok().filter(|y| *y <= 9999)?;
        let mut d = Digits {
            buf: [0; 10],
            len: 0,
        };
        d.two((y / 100) as u8).two((y % 100) as u8);
        Some(d)
    }

    fn push(&mut self, b: u8) -> &mut Self {
        self.buf[self.len] = b;
        self.len += 1;
        self
    }

    /// Two digits of `n` (0–99); callers hold months, days and half-years.
    fn two(&mut self, n: u8) -> &mut Self {
        self.push(b'0' + (n / 10) % 10).push(b'0' + n % 10)
    }

    fn text(&self) -> &str {
        // Only ASCII digits and separators were pushed.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// Month
// ---------------------------------------------------------------------------------------------

/// A calendar month, the unit in which attendance is recorded. Written `2025-04`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    year: i32,
    month: u8,
}

impl Month {
    /// 0001-01, the earliest month: the fixed content of tombstones ([`crate::records`]).
    pub const MIN: Month = Month { year: 1, month: 1 };

    /// Builds a month, checking the year (1–9999) and month (1–12).
    pub fn new(year: i32, month: u8) -> Result<Month, PeriodError> {
        check_year(year)?;
        if !(1..=12).contains(&month) {
            return Err(PeriodError::Month(month));
        }
        Ok(Month { year, month })
    }

    /// Parses `YYYY-MM`.
    pub fn parse(input: &str) -> Result<Month, PeriodError> {
        let bad = || PeriodError::Format {
            what: "month",
            input: input.to_owned(),
            form: "YYYY-MM",
        };
        let (year, m) = split_year(input, "-").ok_or_else(bad)?;
        if m.len() != 2 {
            return Err(bad());
        }
        Month::new(year, small_number(m, 2).ok_or_else(bad)?)
    }

    /// Year.
    pub fn year(&self) -> i32 {
        self.year
    }

    /// Month number, 1–12.
    pub fn month(&self) -> u8 {
        self.month
    }

    /// First day of the month.
    pub fn first_day(&self) -> Date {
        Date {
            year: self.year,
            month: self.month,
            day: 1,
        }
    }

    /// Last day of the month.
    pub fn last_day(&self) -> Date {
        Date {
            year: self.year,
            month: self.month,
            day: days_in_month(self.year, self.month),
        }
    }

    /// The month `n` months later (earlier when negative).
    pub fn add_months(&self, n: i32) -> Result<Month, PeriodError> {
        let idx = self.index() + i64::from(n);
        let year = idx.div_euclid(12);
        let month = (idx.rem_euclid(12) + 1) as u8;
        let year = i32::try_from(year).map_err(|_| PeriodError::Year(i32::MAX))?;
        Month::new(year, month)
    }

    /// Months elapsed since year 0 (for distances between months).
    pub fn index(&self) -> i64 {
        i64::from(self.year) * 12 + i64::from(self.month) - 1
    }

    /// Number of months from `self` to `other` (positive when `other` is later).
    pub fn months_until(&self, other: Month) -> i64 {
        other.index() - self.index()
    }

    /// The month's text (`2025-04`) on the stack; `None` for a year [`Digits`] does not take.
    fn digits(&self) -> Option<Digits> {
        let mut d = Digits::year(self.year)?;
        d.push(b'-').two(self.month);
        Some(d)
    }

    /// Appends the month as [`fmt::Display`] writes it, without the formatter.
    pub(crate) fn push_text(&self, out: &mut String) {
        match self.digits() {
            Some(d) => out.push_str(d.text()),
            None => out.push_str(&self.to_string()),
        }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.digits() {
            Some(d) => f.pad(d.text()),
            None => write!(f, "{:04}-{:02}", self.year, self.month),
        }
    }
}

string_form!(Month);

// ---------------------------------------------------------------------------------------------
// Bimester
// ---------------------------------------------------------------------------------------------

/// Education monitoring period: one of five bimesters a year (B1 Feb–Mar … B5 Oct–Nov, MEC
/// Sistema Presença [S9]). Written `2025-B2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bimester {
    year: i32,
    number: u8,
}

impl Bimester {
    /// Builds bimester `number` (1–5) of `year`.
    pub fn new(year: i32, number: u8) -> Result<Bimester, PeriodError> {
        check_year(year)?;
        if !(1..=5).contains(&number) {
            return Err(PeriodError::Bimester(number));
        }
        Ok(Bimester { year, number })
    }

    /// Parses `YYYY-Bn`.
    pub fn parse(input: &str) -> Result<Bimester, PeriodError> {
        let bad = || PeriodError::Format {
            what: "bimester",
            input: input.to_owned(),
            form: "YYYY-Bn with n in 1..5",
        };
        let (year, n) = split_year(input, "-B").ok_or_else(bad)?;
        Bimester::new(year, small_number(n, 1).ok_or_else(bad)?)
    }

    /// The bimester containing `month`; `None` for January and December, which no bimester
    /// covers (docs/rules.md#periods-and-ages, inferred from docs/sources.md#s9).
    pub fn containing(month: Month) -> Option<Bimester> {
        match month.month {
            2..=11 => Some(Bimester {
                year: month.year,
                number: month.month / 2,
            }),
            _ => None,
        }
    }

    /// Year.
    pub fn year(&self) -> i32 {
        self.year
    }

    /// Bimester number, 1–5.
    pub fn number(&self) -> u8 {
        self.number
    }

    /// The two months of the bimester, in order.
    pub fn months(&self) -> [Month; 2] {
        let first = self.number * 2;
        [
            Month {
                year: self.year,
                month: first,
            },
            Month {
                year: self.year,
                month: first + 1,
            },
        ]
    }

    /// First day of the bimester.
    pub fn first_day(&self) -> Date {
        self.months()[0].first_day()
    }

    /// Last day of the bimester.
    pub fn last_day(&self) -> Date {
        self.months()[1].last_day()
    }

    /// The following bimester (B5 is followed by B1 of the next year).
    pub fn next(&self) -> Result<Bimester, PeriodError> {
        if self.number == 5 {
            Bimester::new(self.year + 1, 1)
        } else {
            Bimester::new(self.year, self.number + 1)
        }
    }
}

impl fmt::Display for Bimester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Digits::year(self.year).filter(|_| self.number < 10) {
            Some(mut d) => f.pad(d.push(b'-').push(b'B').push(b'0' + self.number).text()),
            None => write!(f, "{:04}-B{}", self.year, self.number),
        }
    }
}

string_form!(Bimester);

// ---------------------------------------------------------------------------------------------
// Semester
// ---------------------------------------------------------------------------------------------

/// Health monitoring period (vigência): S1 Jan–Jun, S2 Jul–Dec (Sistema BFA [S11]).
/// Written `2025-S1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Semester {
    year: i32,
    number: u8,
}

impl Semester {
    /// Builds semester `number` (1 or 2) of `year`.
    pub fn new(year: i32, number: u8) -> Result<Semester, PeriodError> {
        check_year(year)?;
        if !(1..=2).contains(&number) {
            return Err(PeriodError::Semester(number));
        }
        Ok(Semester { year, number })
    }

    /// Parses `YYYY-Sn`.
    pub fn parse(input: &str) -> Result<Semester, PeriodError> {
        let bad = || PeriodError::Format {
            what: "semester",
            input: input.to_owned(),
            form: "YYYY-Sn with n in 1..2",
        };
        let (year, n) = split_year(input, "-S").ok_or_else(bad)?;
        Semester::new(year, small_number(n, 1).ok_or_else(bad)?)
    }

    /// The semester containing `month` (every month is in one).
    pub fn containing(month: Month) -> Semester {
        Semester {
            year: month.year,
            number: if month.month <= 6 { 1 } else { 2 },
        }
    }

    /// Year.
    pub fn year(&self) -> i32 {
        self.year
    }

    /// Semester number, 1 or 2.
    pub fn number(&self) -> u8 {
        self.number
    }

    /// The six months of the semester, in order.
    pub fn months(&self) -> [Month; 6] {
        let first = if self.number == 1 { 1 } else { 7 };
        std::array::from_fn(|i| Month {
            year: self.year,
            month: first + i as u8,
        })
    }

    /// First day of the semester.
    pub fn first_day(&self) -> Date {
        self.months()[0].first_day()
    }

    /// Last day of the semester.
    pub fn last_day(&self) -> Date {
        self.months()[5].last_day()
    }
}

impl fmt::Display for Semester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Digits::year(self.year).filter(|_| self.number < 10) {
            Some(mut d) => f.pad(d.push(b'-').push(b'S').push(b'0' + self.number).text()),
            None => write!(f, "{:04}-S{}", self.year, self.number),
        }
    }
}

string_form!(Semester);

// ---------------------------------------------------------------------------------------------
// Period (any calendar)
// ---------------------------------------------------------------------------------------------

/// The calendar a conditionality is monitored on; chosen by the rule set.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PeriodKind {
    /// Calendar months (`2025-04`).
    Month,
    /// Education bimesters Feb–Nov (`2025-B2`).
    Bimester,
    /// Semesters Jan–Jun, Jul–Dec (`2025-S1`).
    Semester,
}

/// A monitoring period on any of the supported calendars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    /// A month.
    Month(Month),
    /// An education bimester.
    Bimester(Bimester),
    /// A semester.
    Semester(Semester),
}

impl Period {
    /// Parses `2025-04`, `2025-B2` or `2025-S1`.
    pub fn parse(input: &str) -> Result<Period, PeriodError> {
        if input.contains("-B") {
            Bimester::parse(input).map(Period::Bimester)
        } else if input.contains("-S") {
            Semester::parse(input).map(Period::Semester)
        } else {
            Month::parse(input)
                .map(Period::Month)
                .map_err(|_| PeriodError::Format {
                    what: "period",
                    input: input.to_owned(),
                    form: "YYYY-MM, YYYY-Bn or YYYY-Sn",
                })
        }
    }

    /// The period of `kind` containing `month`, if any.
    pub fn containing(kind: PeriodKind, month: Month) -> Option<Period> {
        match kind {
            PeriodKind::Month => Some(Period::Month(month)),
            PeriodKind::Bimester => Bimester::containing(month).map(Period::Bimester),
            PeriodKind::Semester => Some(Period::Semester(Semester::containing(month))),
        }
    }

    /// The period of `kind` containing `date`, if any.
    pub fn containing_date(kind: PeriodKind, date: Date) -> Option<Period> {
        Period::containing(kind, date.month_of())
    }

    /// Which calendar this period is on.
    pub fn kind(&self) -> PeriodKind {
        match self {
            Period::Month(_) => PeriodKind::Month,
            Period::Bimester(_) => PeriodKind::Bimester,
            Period::Semester(_) => PeriodKind::Semester,
        }
    }

    /// The months of the period, in order.
    pub fn months(&self) -> Vec<Month> {
        match self {
            Period::Month(m) => vec![*m],
            Period::Bimester(b) => b.months().to_vec(),
            Period::Semester(s) => s.months().to_vec(),
        }
    }

    /// First day.
    pub fn first_day(&self) -> Date {
        match self {
            Period::Month(m) => m.first_day(),
            Period::Bimester(b) => b.first_day(),
            Period::Semester(s) => s.first_day(),
        }
    }

    /// Last day.
    pub fn last_day(&self) -> Date {
        match self {
            Period::Month(m) => m.last_day(),
            Period::Bimester(b) => b.last_day(),
            Period::Semester(s) => s.last_day(),
        }
    }

    /// First month.
    pub fn first_month(&self) -> Month {
        self.first_day().month_of()
    }

    /// Last month.
    pub fn last_month(&self) -> Month {
        self.last_day().month_of()
    }

    /// True when `month` lies in this period.
    pub fn contains(&self, month: Month) -> bool {
        self.first_month() <= month && month <= self.last_month()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Month(m) => m.fmt(f),
            Period::Bimester(b) => b.fmt(f),
            Period::Semester(s) => s.fmt(f),
        }
    }
}

string_form!(Period);

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Month {
        Month::parse(s).unwrap()
    }

    #[test]
    fn dates_and_periods_print_as_padded_formatting_would() {
        for year in [
            0, 1, 9, 10, 99, 100, 999, 1000, 2025, 9999, 10_000, 123_456, -1, -2025,
        ] {
            let (Ok(d), Ok(mo), Ok(b), Ok(s)) = (
                Date::new(year, 2, 7),
                Month::new(year, 11),
                Bimester::new(year, 3),
                Semester::new(year, 2),
            ) else {
                continue;
            };
            assert_eq!(d.to_string(), format!("{year:04}-02-07"));
            assert_eq!(mo.to_string(), format!("{year:04}-11"));
            assert_eq!(b.to_string(), format!("{year:04}-B3"));
            assert_eq!(s.to_string(), format!("{year:04}-S2"));
        }
        for month in 1..=12 {
            assert_eq!(
                Month::new(2025, month).unwrap().to_string(),
                format!("2025-{month:02}")
            );
        }
        for day in 1..=31 {
            assert_eq!(
                Date::new(2025, 1, day).unwrap().to_string(),
                format!("2025-01-{day:02}")
            );
        }
        // Width and alignment are honoured as for any string.
        assert_eq!(format!("{:>9}|", m("2025-04")), "  2025-04|");
        assert_eq!(format!("{:<9}|", m("2025-04")), "2025-04  |");
    }

    #[test]
    fn month_parse_and_display() {
        assert_eq!(m("2025-04").year(), 2025);
        assert_eq!(m("2025-04").month(), 4);
        assert_eq!(m("2025-04").to_string(), "2025-04");
        assert_eq!(Month::new(2025, 4).unwrap(), m("2025-04"));
        assert_eq!(
            Month::parse("2025-13").unwrap_err().to_string(),
            "month must be between 1 and 12, got 13"
        );
        assert!(Month::parse("2025-4").is_err());
        assert!(Month::parse("25-04").is_err());
        assert!(Month::parse("2025-04-01").is_err());
        assert!(Month::new(2025, 0).is_err());
        assert!(m("2024-12") < m("2025-01"));
        assert_eq!(m("2024-11").add_months(3).unwrap(), m("2025-02"));
        assert_eq!(m("2025-02").add_months(-3).unwrap(), m("2024-11"));
        assert_eq!(m("2024-11").months_until(m("2025-02")), 3);
    }

    #[test]
    fn bimester_calendar() {
        // docs/rules.md#periods-and-ages [S9]: B1 Feb–Mar … B5 Oct–Nov; no Dec–Jan.
        let table: &[(&str, Option<&str>)] = &[
            ("2025-01", None),
            ("2025-02", Some("2025-B1")),
            ("2025-03", Some("2025-B1")),
            ("2025-04", Some("2025-B2")),
            ("2025-05", Some("2025-B2")),
            ("2025-06", Some("2025-B3")),
            ("2025-07", Some("2025-B3")),
            ("2025-08", Some("2025-B4")),
            ("2025-09", Some("2025-B4")),
            ("2025-10", Some("2025-B5")),
            ("2025-11", Some("2025-B5")),
            ("2025-12", None),
        ];
        for (month, bim) in table {
            assert_eq!(
                Bimester::containing(m(month))
                    .map(|b| b.to_string())
                    .as_deref(),
                *bim,
                "{month}"
            );
        }
        let b2 = Bimester::parse("2025-B2").unwrap();
        assert_eq!(b2.months(), [m("2025-04"), m("2025-05")]);
        assert_eq!(b2.first_day().to_string(), "2025-04-01");
        assert_eq!(b2.last_day().to_string(), "2025-05-31");
        assert_eq!(
            Bimester::parse("2025-B6").unwrap_err().to_string(),
            "bimester must be between 1 and 5, got 6"
        );
        assert!(Bimester::parse("2025-B").is_err());
        assert!(Bimester::parse("2025B2").is_err());
        assert_eq!(
            Bimester::parse("2024-B5").unwrap().next().unwrap(),
            Bimester::parse("2025-B1").unwrap()
        );
        assert!(Bimester::parse("2024-B5").unwrap() < b2);
    }

    #[test]
    fn semester_calendar() {
        // docs/rules.md#periods-and-ages [S11]: Jan 1–Jun 30, Jul 1–Dec 31.
        let s1 = Semester::parse("2025-S1").unwrap();
        assert_eq!(s1.first_day().to_string(), "2025-01-01");
        assert_eq!(s1.last_day().to_string(), "2025-06-30");
        let s2 = Semester::containing(m("2025-07"));
        assert_eq!(s2.to_string(), "2025-S2");
        assert_eq!(s2.last_day().to_string(), "2025-12-31");
        assert_eq!(Semester::containing(m("2025-06")), s1);
        assert!(Semester::parse("2025-S3").is_err());
        assert!(s1 < s2);
    }

    #[test]
    fn date_range_limits() {
        assert_eq!(Date::MAX.to_days(), 2_932_896);
        assert_eq!(Date::parse("0001-01-01").unwrap().to_days(), -719_162);
        assert!(Date::MAX.add_days(1).is_err());
        assert!(Date::MAX.add_days(i64::MAX).is_err());
        assert!(Date::MAX.add_days(i64::MIN).is_err());
    }

    proptest::proptest! {
        #[test]
        fn day_arithmetic_round_trips(days in -719_162i64..=2_932_896, delta in -100_000i64..100_000) {
            let d = Date::from_days(days).unwrap();
            proptest::prop_assert_eq!(d.to_days(), days);
            if let Ok(e) = d.add_days(delta) {
                proptest::prop_assert_eq!(d.days_until(e), delta);
            }
            proptest::prop_assert_eq!(Date::parse(&d.to_string()).unwrap(), d);
        }
    }

    #[test]
    fn dates() {
        let d = Date::parse("2024-02-29").unwrap();
        assert_eq!(d.add_days(1).unwrap().to_string(), "2024-03-01");
        assert_eq!(d.add_days(-60).unwrap().to_string(), "2023-12-31");
        assert_eq!(Date::parse("1970-01-01").unwrap().to_days(), 0);
        assert_eq!(
            Date::parse("2023-02-29").unwrap_err().to_string(),
            "day must be between 1 and 28 for 2023-02, got 29"
        );
        assert!(Date::parse("2000-02-29").is_ok());
        assert!(Date::parse("1900-02-29").is_err());
        assert_eq!(
            Date::parse("2025-01-01")
                .unwrap()
                .days_until(Date::parse("2026-01-01").unwrap()),
            365
        );
    }

    #[test]
    fn ages() {
        let born = Date::parse("2019-04-15").unwrap();
        let age = |s: &str| born.age_on(Date::parse(s).unwrap());
        assert_eq!(age("2025-04-14"), Some(5));
        assert_eq!(age("2025-04-15"), Some(6));
        assert_eq!(age("2019-04-15"), Some(0));
        assert_eq!(age("2019-04-14"), None);
        let leap = Date::parse("2020-02-29").unwrap();
        assert_eq!(leap.age_on(Date::parse("2021-02-28").unwrap()), Some(0));
        assert_eq!(leap.age_on(Date::parse("2021-03-01").unwrap()), Some(1));
    }

    #[test]
    fn period_parse_and_serde() {
        for s in ["2025-04", "2025-B2", "2025-S1"] {
            let p = Period::parse(s).unwrap();
            assert_eq!(p.to_string(), s);
            let v = toml::Value::try_from(p).unwrap();
            assert_eq!(v.as_str(), Some(s));
        }
        assert!(Period::parse("2025-X1").is_err());
        assert!(Period::parse("2025-B2").unwrap().contains(m("2025-05")));
        assert!(!Period::parse("2025-B2").unwrap().contains(m("2025-06")));
    }
}
