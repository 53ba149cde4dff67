//! An outcome's evidence as JSON, written field by field: the text `serde_json` writes for
//! [`Evidence`]'s `Serialize`, byte for byte (the tests compare the two), at a fraction of its
//! cost. Every person's view carries it once per outcome (`evidence_json` of the gRPC and
//! topic contract), and through `serde_json` it was about 4 % of the reconciler's CPU: a field
//! name is escaped like any string on every write, and every date goes through the formatter.
//!
//! The structs are taken apart without `..`, so a field added to one of them does not compile
//! until it is written here too.

use crate::outcome::{Evidence, HealthEvidence, MonthEvidence};
use crate::period::{Date, Month};
use crate::records::Attendance;
use crate::rules::HealthItem;

impl Evidence {
    /// The evidence as `serde_json::to_string` writes it.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(256 + 160 * self.months.len());
        write_evidence(&mut out, self);
        out
    }
}

fn write_evidence(out: &mut String, e: &Evidence) {
    let Evidence {
        reference_date,
        age,
        bands,
        threshold_percent,
        months,
        months_below,
        months_missing,
        health,
        note,
    } = e;
    out.push_str("{\"reference_date\":");
    date_text(out, reference_date);
    out.push_str(",\"age\":");
    option(out, age.as_ref(), |out, a| number(out, u64::from(*a)));
    out.push_str(",\"bands\":");
    array(out, bands, |out, b| string(out, b));
    out.push_str(",\"threshold_percent\":");
    option(out, threshold_percent.as_ref(), |out, t| {
        number(out, u64::from(*t));
    });
    out.push_str(",\"months\":");
    array(out, months, write_month);
    out.push_str(",\"months_below\":");
    array(out, months_below, month_text);
    out.push_str(",\"months_missing\":");
    array(out, months_missing, month_text);
    out.push_str(",\"health\":");
    option(out, health.as_ref(), write_health);
    out.push_str(",\"note\":");
    string(out, note);
    out.push('}');
}

fn write_month(out: &mut String, m: &MonthEvidence) {
    let MonthEvidence {
        month,
        record_id,
        version,
        attendance,
        reason_code,
        met,
        exempted,
        signals_assistance,
    } = m;
    out.push_str("{\"month\":");
    month_text(out, month);
    out.push_str(",\"record_id\":");
    string(out, record_id);
    out.push_str(",\"version\":");
    number(out, *version);
    out.push_str(",\"attendance\":");
    match attendance {
        Attendance::Percent(p) => {
            out.push_str("{\"percent\":");
            number(out, u64::from(*p));
            out.push('}');
        }
        Attendance::Counts { given, attended } => {
            out.push_str("{\"counts\":{\"given\":");
            number(out, u64::from(*given));
            out.push_str(",\"attended\":");
            number(out, u64::from(*attended));
            out.push_str("}}");
        }
    }
    out.push_str(",\"reason_code\":");
    option(out, reason_code.as_ref(), |out, r| string(out, r));
    out.push_str(",\"met\":");
    boolean(out, *met);
    out.push_str(",\"exempted\":");
    boolean(out, *exempted);
    out.push_str(",\"signals_assistance\":");
    boolean(out, *signals_assistance);
    out.push('}');
}

fn write_health(out: &mut String, h: &HealthEvidence) {
    let HealthEvidence {
        records,
        required,
        missing,
        pregnant_per_registry,
        pregnant_per_health,
        weight_grams,
        height_mm,
        immunization_refs,
    } = h;
    out.push_str("{\"records\":");
    array(out, records, |out, (id, version, date)| {
        out.push('[');
        string(out, id);
        out.push(',');
        number(out, *version);
        out.push(',');
        option(out, date.as_ref(), date_text);
        out.push(']');
    });
    out.push_str(",\"required\":");
    array(out, required, health_item);
    out.push_str(",\"missing\":");
    array(out, missing, health_item);
    out.push_str(",\"pregnant_per_registry\":");
    boolean(out, *pregnant_per_registry);
    out.push_str(",\"pregnant_per_health\":");
    boolean(out, *pregnant_per_health);
    out.push_str(",\"weight_grams\":");
    option(out, weight_grams.as_ref(), |out, w| {
        number(out, u64::from(*w))
    });
    out.push_str(",\"height_mm\":");
    option(out, height_mm.as_ref(), |out, h| number(out, u64::from(*h)));
    out.push_str(",\"immunization_refs\":");
    array(out, immunization_refs, |out, r| string(out, r));
    out.push('}');
}

/// A month as a JSON string (its text needs no escaping).
fn month_text(out: &mut String, m: &Month) {
    out.push('"');
    m.push_text(out);
    out.push('"');
}

/// A date as a JSON string (its text needs no escaping).
fn date_text(out: &mut String, d: &Date) {
    out.push('"');
    d.push_text(out);
    out.push('"');
}

/// `HealthItem`'s serde name (`rename_all = "snake_case"`).
fn health_item(out: &mut String, item: &HealthItem) {
    out.push_str(match item {
        HealthItem::VaccinationUpToDate => "\"vaccination_up_to_date\"",
        HealthItem::Weight => "\"weight\"",
        HealthItem::Height => "\"height\"",
        HealthItem::Prenatal => "\"prenatal\"",
        HealthItem::LastMenstruation => "\"last_menstruation\"",
    });
}

fn array<T>(out: &mut String, items: &[T], mut each: impl FnMut(&mut String, &T)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(out, item);
    }
    out.push(']');
}

fn option<T>(out: &mut String, value: Option<&T>, some: impl FnOnce(&mut String, &T)) {
    match value {
        Some(v) => some(out, v),
        None => out.push_str("null"),
    }
}

fn boolean(out: &mut String, b: bool) {
    out.push_str(if b { "true" } else { "false" });
}

fn number(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// A JSON string as `serde_json` escapes it: `"` and `\`, and control characters (the short
/// forms where JSON has them, `\u00XX` with lower-case hex otherwise); everything else as it is.
fn string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x0c => "\\f",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Every byte escaped is ASCII, so `i` is a character boundary.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // Plain text, quotes, backslashes, every control character, DEL, accents and emoji.
        proptest::collection::vec(
            prop_oneof![
                4 => proptest::char::range('a', 'z'),
                1 => proptest::char::range('\u{0}', '\u{20}'),
                1 => prop_oneof![Just('"'), Just('\\'), Just('/'), Just('\u{7f}'), Just('é'), Just('😀')],
            ],
            0..12,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    fn month() -> impl Strategy<Value = Month> {
        (1i32..=9999, 1u8..=12).prop_map(|(y, m)| Month::new(y, m).unwrap())
    }

    fn date() -> impl Strategy<Value = Date> {
        (month(), 1u8..=28).prop_map(|(m, d)| Date::new(m.year(), m.month(), d).unwrap())
    }

    fn item() -> impl Strategy<Value = HealthItem> {
        prop_oneof![
            Just(HealthItem::VaccinationUpToDate),
            Just(HealthItem::Weight),
            Just(HealthItem::Height),
            Just(HealthItem::Prenatal),
            Just(HealthItem::LastMenstruation),
        ]
    }

    fn month_evidence() -> impl Strategy<Value = MonthEvidence> {
        (
            month(),
            text(),
            any::<u64>(),
            prop_oneof![
                any::<u8>().prop_map(Attendance::Percent),
                (any::<u32>(), any::<u32>())
                    .prop_map(|(given, attended)| Attendance::Counts { given, attended }),
            ],
            proptest::option::of(text()),
            any::<(bool, bool, bool)>(),
        )
            .prop_map(
                |(month, record_id, version, attendance, reason_code, (met, exempted, signals))| {
                    MonthEvidence {
                        month,
                        record_id,
                        version,
                        attendance,
                        reason_code,
                        met,
                        exempted,
                        signals_assistance: signals,
                    }
                },
            )
    }

    fn health() -> impl Strategy<Value = HealthEvidence> {
        (
            proptest::collection::vec((text(), any::<u64>(), proptest::option::of(date())), 0..4),
            proptest::collection::vec(item(), 0..5),
            proptest::collection::vec(item(), 0..5),
            any::<(bool, bool)>(),
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::collection::vec(text(), 0..3),
        )
            .prop_map(
                |(records, required, missing, (reg, hlth), weight, height, refs)| HealthEvidence {
                    records,
                    required,
                    missing,
                    pregnant_per_registry: reg,
                    pregnant_per_health: hlth,
                    weight_grams: weight,
                    height_mm: height,
                    immunization_refs: refs,
                },
            )
    }

    fn evidence() -> impl Strategy<Value = Evidence> {
        (
            date(),
            proptest::option::of(any::<u32>()),
            proptest::collection::vec(text(), 0..3),
            proptest::option::of(any::<u8>()),
            proptest::collection::vec(month_evidence(), 0..4),
            proptest::collection::vec(month(), 0..3),
            proptest::collection::vec(month(), 0..3),
            proptest::option::of(health()),
            text(),
        )
            .prop_map(
                |(reference_date, age, bands, threshold, months, below, missing, health, note)| {
                    Evidence {
                        reference_date,
                        age,
                        bands,
                        threshold_percent: threshold,
                        months,
                        months_below: below,
                        months_missing: missing,
                        health,
                        note,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn writes_what_serde_json_writes(e in evidence()) {
            prop_assert_eq!(e.to_json(), serde_json::to_string(&e).unwrap());
        }
    }

    #[test]
    fn the_extremes_of_numbers_and_an_empty_evidence() {
        let mut e = Evidence::bare(Date::new(2025, 1, 31).unwrap(), None);
        assert_eq!(e.to_json(), serde_json::to_string(&e).unwrap());
        e.age = Some(u32::MAX);
        e.threshold_percent = Some(0);
        e.months.push(MonthEvidence {
            month: Month::new(1, 1).unwrap(),
            record_id: String::new(),
            version: u64::MAX,
            attendance: Attendance::Percent(0),
            reason_code: Some(String::new()),
            met: false,
            exempted: true,
            signals_assistance: false,
        });
        assert_eq!(e.to_json(), serde_json::to_string(&e).unwrap());
    }
}
