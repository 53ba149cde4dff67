//! A person's state value in format 3: the domain's records, their sources and the identifiers
//! health records arrived as, in the protobuf messages of `proto/ponte/reconciler/v1`
//! (`PersonEntry` fields 4–10) instead of JSON. Loading and saving a person is done once or
//! twice per event that reaches the person stage, and JSON was most of its cost; the value is
//! also what the changelog carries (docs/benchmarks.md, issue 15).
//!
//! Everything read back is checked as the event mapping checks it (identifiers, dates,
//! periods), so a damaged value is reported as corrupt rather than applied.
use ponte_domain::ids::{Cns, Cpf, IbgeMunicipality, Inep, Nis};
use ponte_domain::period::{Date, Month, Semester};
use ponte_domain::records::{
    Attendance, FamilyId, HealthRecord, PersonProfile, PersonRecord, Pregnancy,
    ScfvAttendanceMonth, SchoolAttendanceMonth, Sex,
};
use ponte_proto::reconciler::v1::{
    ArrivedAs, PersonEntry, StoredAttendance, StoredHealth, StoredPregnancy, StoredProfile,
    StoredSource,
};

use super::tables::{PersonDoc, Source};

type Fallible<T> = Result<T, String>;

/// Fills the format-3 fields of `entry` from the records, sources and arrival identifiers of
/// `doc` (its digest and identifiers are the caller's). Every record is the same person's, whose
/// NIS is kept once; a doc holding another person's record is refused.
pub(super) fn encode_records(doc: &PersonDoc, entry: &mut PersonEntry) -> Fallible<()> {
    if let Some(first) = doc.records.first() {
        entry.nis = first.nis().as_str().to_owned();
    }
    for r in &doc.records {
        if r.nis().as_str() != entry.nis {
            return Err(format!(
                "record {} is not for the person of the others",
                r.record_id()
            ));
        }
        match r {
            PersonRecord::Profile(p) => entry.profiles.push(profile_to(p)),
            PersonRecord::School(s) => entry.school.push(StoredAttendance {
                record_id: s.record_id.clone(),
                version: s.version,
                retracted: s.retracted,
                inep: s.inep.map(|i| i.as_str().to_owned()),
                month: month_to(s.month),
                reason_code: s.reason_code.clone(),
                ..attendance_to(s.attendance)
            }),
            PersonRecord::Scfv(s) => entry.scfv.push(StoredAttendance {
                record_id: s.record_id.clone(),
                version: s.version,
                retracted: s.retracted,
                inep: None,
                month: month_to(s.month),
                reason_code: s.reason_code.clone(),
                ..attendance_to(s.attendance)
            }),
            PersonRecord::Health(h) => entry.health.push(health_to(h)),
        }
    }
    entry.health_arrived_as = doc
        .health_arrived_as
        .iter()
        .map(|(record_id, alt)| ArrivedAs {
            record_id: record_id.clone(),
            alt: alt.clone(),
        })
        .collect();
    entry.sources = doc
        .sources
        .iter()
        .map(|(record_id, s)| StoredSource {
            record_id: record_id.clone(),
            version: s.version,
            record_type: s.record_type.clone(),
            source_system: s.source_system.clone(),
            sender: s.sender.clone(),
            request_id: s.request_id.clone(),
            received: s
                .received
                .map(|(seconds, nanos)| ponte_proto::Timestamp { seconds, nanos }),
        })
        .collect();
    Ok(())
}

/// The records, sources and arrival identifiers of a format-3 `entry`, in a doc without digest
/// and identifiers (the caller's).
pub(super) fn decode_records(entry: PersonEntry) -> Fallible<PersonDoc> {
    let count = entry.profiles.len() + entry.school.len() + entry.scfv.len() + entry.health.len();
    let mut records = Vec::with_capacity(count);
    if count > 0 {
        let nis = Nis::parse(&entry.nis).map_err(|e| e.to_string())?;
        for p in entry.profiles {
            records.push(PersonRecord::Profile(profile_from(p, nis)?));
        }
        for s in entry.school {
            let attendance = attendance_from(&s)?;
            records.push(PersonRecord::School(SchoolAttendanceMonth {
                nis,
                inep: s.inep.as_deref().map(inep).transpose()?,
                month: month_from(s.month)?,
                attendance,
                record_id: s.record_id,
                version: s.version,
                retracted: s.retracted,
                reason_code: s.reason_code,
            }));
        }
        for s in entry.scfv {
            let attendance = attendance_from(&s)?;
            if s.inep.is_some() {
                return Err(format!("SCFV record {} names a school", s.record_id));
            }
            records.push(PersonRecord::Scfv(ScfvAttendanceMonth {
                nis,
                month: month_from(s.month)?,
                attendance,
                record_id: s.record_id,
                version: s.version,
                retracted: s.retracted,
                reason_code: s.reason_code,
            }));
        }
        for h in entry.health {
            records.push(PersonRecord::Health(health_from(h, nis)?));
        }
    }
    Ok(PersonDoc {
        records,
        health_arrived_as: entry
            .health_arrived_as
            .into_iter()
            .map(|a| (a.record_id, a.alt))
            .collect(),
        sources: entry
            .sources
            .into_iter()
            .map(|s| {
                (
                    s.record_id,
                    Source {
                        version: s.version,
                        record_type: s.record_type,
                        source_system: s.source_system,
                        sender: s.sender,
                        request_id: s.request_id,
                        received: s.received.map(|t| (t.seconds, t.nanos)),
                    },
                )
            })
            .collect(),
        ..PersonDoc::default()
    })
}

fn profile_to(p: &PersonProfile) -> StoredProfile {
    StoredProfile {
        record_id: p.record_id.clone(),
        version: p.version,
        retracted: p.retracted,
        family_id: p.family_id.0.clone(),
        birth_date: date_to(p.birth_date),
        female: p.sex == Sex::Female,
        municipality: p.municipality.as_str().to_owned(),
        school: p.school.map(|i| i.as_str().to_owned()),
        cns: p.cns.iter().map(|c| c.as_str().to_owned()).collect(),
        cpf: p.cpf.map(|c| c.as_str().to_owned()),
        pregnancy: p.pregnancy.as_ref().map(|x| StoredPregnancy {
            expected_delivery: x.expected_delivery.map_or(0, date_to),
        }),
        basic_education_completed: p.basic_education_completed,
        programmes: p.programmes.iter().cloned().collect(),
    }
}

fn profile_from(p: StoredProfile, nis: Nis) -> Fallible<PersonProfile> {
    Ok(PersonProfile {
        nis,
        family_id: FamilyId(p.family_id),
        birth_date: date_from(p.birth_date)?,
        sex: if p.female { Sex::Female } else { Sex::Male },
        municipality: municipality(&p.municipality)?,
        school: p.school.as_deref().map(inep).transpose()?,
        cns: p
            .cns
            .iter()
            .map(|c| Cns::parse(c).map_err(|e| e.to_string()))
            .collect::<Fallible<_>>()?,
        cpf: p
            .cpf
            .as_deref()
            .map(|c| Cpf::parse(c).map_err(|e| e.to_string()))
            .transpose()?,
        pregnancy: p
            .pregnancy
            .map(|x| -> Fallible<Pregnancy> {
                Ok(Pregnancy {
                    expected_delivery: match x.expected_delivery {
                        0 => None,
                        d => Some(date_from(d)?),
                    },
                })
            })
            .transpose()?,
        basic_education_completed: p.basic_education_completed,
        programmes: p.programmes.into_iter().collect(),
        record_id: p.record_id,
        version: p.version,
        retracted: p.retracted,
    })
}

fn health_to(h: &HealthRecord) -> StoredHealth {
    StoredHealth {
        record_id: h.record_id.clone(),
        version: h.version,
        retracted: h.retracted,
        recorded_on: h.recorded_on.map(date_to),
        semester: h.semester.map(|s| s.year() * 10 + i32::from(s.number())),
        vaccination_up_to_date: h.vaccination_up_to_date,
        weight_grams: h.weight_grams,
        height_mm: h.height_mm,
        pregnant: h.pregnant,
        last_menstruation: h.last_menstruation.map(date_to),
        prenatal: h.prenatal,
        immunization_refs: h.immunization_refs.clone(),
    }
}

fn health_from(h: StoredHealth, nis: Nis) -> Fallible<HealthRecord> {
    Ok(HealthRecord {
        nis,
        recorded_on: h.recorded_on.map(date_from).transpose()?,
        semester: h
            .semester
            .map(|s| {
                Semester::new(s.div_euclid(10), small(s.rem_euclid(10))?).map_err(|e| e.to_string())
            })
            .transpose()?,
        vaccination_up_to_date: h.vaccination_up_to_date,
        weight_grams: h.weight_grams,
        height_mm: h.height_mm,
        pregnant: h.pregnant,
        last_menstruation: h.last_menstruation.map(date_from).transpose()?,
        prenatal: h.prenatal,
        immunization_refs: h.immunization_refs,
        record_id: h.record_id,
        version: h.version,
        retracted: h.retracted,
    })
}

/// The attendance fields of a stored month (the rest default).
fn attendance_to(a: Attendance) -> StoredAttendance {
    match a {
        Attendance::Percent(p) => StoredAttendance {
            percent: u32::from(p),
            ..StoredAttendance::default()
        },
        Attendance::Counts { given, attended } => StoredAttendance {
            counts: true,
            given,
            attended,
            ..StoredAttendance::default()
        },
    }
}

fn attendance_from(s: &StoredAttendance) -> Fallible<Attendance> {
    if s.counts {
        return Ok(Attendance::Counts {
            given: s.given,
            attended: s.attended,
        });
    }
    u8::try_from(s.percent)
        .map(Attendance::Percent)
        .map_err(|_| format!("record {}: attendance {}%", s.record_id, s.percent))
}

/// A municipality code, or the placeholder a profile's tombstone carries (as the JSON form
/// reads it back).
fn municipality(s: &str) -> Fallible<IbgeMunicipality> {
    if s == IbgeMunicipality::NONE.as_str() {
        return Ok(IbgeMunicipality::NONE);
    }
    IbgeMunicipality::parse(s).map_err(|e| e.to_string())
}

fn inep(s: &str) -> Fallible<Inep> {
    Inep::parse(s).map_err(|e| e.to_string())
}

fn small(n: i32) -> Fallible<u8> {
    u8::try_from(n).map_err(|_| format!("{n} is not a day, month or period number"))
}

fn date_to(d: Date) -> i32 {
    d.year() * 10_000 + i32::from(d.month()) * 100 + i32::from(d.day())
}

fn date_from(n: i32) -> Fallible<Date> {
    Date::new(
        n.div_euclid(10_000),
        small(n.div_euclid(100).rem_euclid(100))?,
        small(n.rem_euclid(100))?,
    )
    .map_err(|e| e.to_string())
}

fn month_to(m: Month) -> i32 {
    m.year() * 100 + i32::from(m.month())
}

fn month_from(n: i32) -> Fallible<Month> {
    Month::new(n.div_euclid(100), small(n.rem_euclid(100))?).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::super::tables::Stored as _;
    use super::*;

    const NIS: &str = "26827649960";
    const CNS: [&str; 2] = ["700000000000005", "898001634957018"];

    fn date() -> impl Strategy<Value = Date> {
        (1950i32..2030, 1u8..=12, 1u8..=28).prop_map(|(y, m, d)| Date::new(y, m, d).unwrap())
    }

    fn month() -> impl Strategy<Value = Month> {
        (2020i32..2030, 1u8..=12).prop_map(|(y, m)| Month::new(y, m).unwrap())
    }

    fn attendance() -> impl Strategy<Value = Attendance> {
        prop_oneof![
            (0u8..=100).prop_map(Attendance::Percent),
            (0u32..40, 0u32..40)
                .prop_map(|(given, attended)| Attendance::Counts { given, attended }),
        ]
    }

    fn head() -> impl Strategy<Value = (String, u64, bool, Nis)> {
        ("[a-z]{1,6}:[0-9]{1,4}", 0u64..5, any::<bool>())
            .prop_map(|(id, v, r)| (id, v, r, Nis::parse(NIS).unwrap()))
    }

    fn profile() -> impl Strategy<Value = PersonRecord> {
        (
            head(),
            date(),
            any::<bool>(),
            proptest::option::of("[0-9]{8}"),
            proptest::sample::subsequence(CNS.to_vec(), 0..=2),
            any::<bool>(),
            proptest::option::of(proptest::option::of(date())),
            any::<bool>(),
            proptest::collection::btree_set("[A-Z]{2,4}", 0..3),
        )
            .prop_map(
                |(
                    (record_id, version, retracted, nis),
                    birth,
                    female,
                    school,
                    cns,
                    cpf,
                    preg,
                    basic,
                    programmes,
                )| {
                    PersonRecord::Profile(PersonProfile {
                        record_id,
                        version,
                        retracted,
                        nis,
                        family_id: FamilyId("F-0001".into()),
                        birth_date: birth,
                        sex: if female { Sex::Female } else { Sex::Male },
                        municipality: IbgeMunicipality::parse("3550308").unwrap(),
                        school: school.map(|s| Inep::parse(&s).unwrap()),
                        cns: cns.iter().map(|c| Cns::parse(c).unwrap()).collect(),
                        cpf: cpf.then(|| Cpf::parse("52998224725").unwrap()),
                        pregnancy: preg.map(|expected_delivery| Pregnancy { expected_delivery }),
                        basic_education_completed: basic,
                        programmes,
                    })
                },
            )
    }

    fn school_or_scfv() -> impl Strategy<Value = PersonRecord> {
        (
            head(),
            any::<bool>(),
            proptest::option::of("[0-9]{8}"),
            month(),
            attendance(),
            proptest::option::of("[0-9a-z]{1,3}"),
        )
            .prop_map(
                |(
                    (record_id, version, retracted, nis),
                    school,
                    inep,
                    month,
                    attendance,
                    reason_code,
                )| {
                    if school {
                        PersonRecord::School(SchoolAttendanceMonth {
                            record_id,
                            version,
                            retracted,
                            nis,
                            inep: inep.map(|s| Inep::parse(&s).unwrap()),
                            month,
                            attendance,
                            reason_code,
                        })
                    } else {
                        PersonRecord::Scfv(ScfvAttendanceMonth {
                            record_id,
                            version,
                            retracted,
                            nis,
                            month,
                            attendance,
                            reason_code,
                        })
                    }
                },
            )
    }

    fn health() -> impl Strategy<Value = PersonRecord> {
        (
            head(),
            proptest::option::of(date()),
            proptest::option::of((2020i32..2030, 1u8..=2)),
            proptest::option::of(any::<bool>()),
            proptest::option::of(0u32..200_000),
            proptest::option::of(0u32..2_500),
            (
                proptest::option::of(any::<bool>()),
                proptest::option::of(date()),
                proptest::option::of(any::<bool>()),
                proptest::collection::vec("Immunization/[0-9]{1,3}", 0..3),
            ),
        )
            .prop_map(
                |(
                    (record_id, version, retracted, nis),
                    recorded_on,
                    semester,
                    vaccination,
                    weight,
                    height,
                    (pregnant, dum, prenatal, refs),
                )| {
                    PersonRecord::Health(HealthRecord {
                        record_id,
                        version,
                        retracted,
                        nis,
                        recorded_on,
                        semester: semester.map(|(y, n)| Semester::new(y, n).unwrap()),
                        vaccination_up_to_date: vaccination,
                        weight_grams: weight,
                        height_mm: height,
                        pregnant,
                        last_menstruation: dum,
                        prenatal,
                        immunization_refs: refs,
                    })
                },
            )
    }

    /// A retraction as the event mapping records it: placeholders in every field.
    fn tombstone() -> impl Strategy<Value = PersonRecord> {
        (head(), 0..4).prop_map(|((id, version, _, nis), kind)| match kind {
            0 => PersonRecord::Profile(PersonProfile::tombstone(id, version, nis)),
            1 => PersonRecord::School(SchoolAttendanceMonth::tombstone(id, version, nis)),
            2 => PersonRecord::Scfv(ScfvAttendanceMonth::tombstone(id, version, nis)),
            _ => PersonRecord::Health(HealthRecord::tombstone(id, version, nis)),
        })
    }

    fn source() -> impl Strategy<Value = Source> {
        (
            0u64..5,
            "[a-z_]{1,8}",
            "[a-z]{0,8}",
            "[a-z]{0,8}",
            "[0-9a-f]{0,8}",
            proptest::option::of((0i64..2_000_000_000, 0i32..1_000_000_000)),
        )
            .prop_map(
                |(version, record_type, source_system, sender, request_id, received)| Source {
                    version,
                    record_type,
                    source_system,
                    sender,
                    request_id,
                    received,
                },
            )
    }

    fn doc() -> impl Strategy<Value = PersonDoc> {
        (
            proptest::collection::vec(
                prop_oneof![profile(), school_or_scfv(), health(), tombstone()],
                0..8,
            ),
            proptest::collection::btree_map("[a-z]{1,4}", "(cns|cpf|nis):[0-9]{3}", 0..3),
            proptest::collection::btree_map("[a-z]{1,4}", source(), 0..4),
        )
            .prop_map(|(mut records, health_arrived_as, sources)| {
                // As the person stage saves them: profiles, school, SCFV, then health.
                records.sort_by_key(|r| match r {
                    PersonRecord::Profile(_) => 0,
                    PersonRecord::School(_) => 1,
                    PersonRecord::Scfv(_) => 2,
                    PersonRecord::Health(_) => 3,
                });
                PersonDoc {
                    records,
                    health_arrived_as,
                    sources,
                    ..PersonDoc::default()
                }
            })
    }

    fn parts(
        d: &PersonDoc,
    ) -> (
        &[PersonRecord],
        &BTreeMap<String, String>,
        &BTreeMap<String, Source>,
    ) {
        (&d.records, &d.health_arrived_as, &d.sources)
    }

    proptest! {
        /// Every field of every kind of record, set or not, comes back from format 3 as it was
        /// stored, and as format 2 (JSON) gives it back.
        #[test]
        fn a_person_comes_back_from_format_3_as_from_format_2(doc in doc()) {
            let three = doc.to_stored().unwrap();
            prop_assert_eq!(three[0], 3);
            let from_three = PersonDoc::from_stored(&three).unwrap();
            let from_two = PersonDoc::from_stored(&doc.to_format_2().unwrap()).unwrap();
            prop_assert_eq!(parts(&from_three), parts(&doc));
            prop_assert_eq!(parts(&from_two), parts(&doc));
        }
    }

    #[test]
    fn a_damaged_value_is_refused_with_the_field_at_fault() {
        let mut entry = PersonEntry {
            nis: NIS.into(),
            ..PersonEntry::default()
        };
        let school = StoredAttendance {
            record_id: "education:1".into(),
            month: 202513,
            ..StoredAttendance::default()
        };
        entry.school.push(school.clone());
        assert!(decode_records(entry.clone()).is_err(), "month 13");
        entry.school[0] = StoredAttendance {
            month: 202504,
            percent: 300,
            ..school.clone()
        };
        let e = decode_records(entry.clone()).err().unwrap();
        assert!(e.contains("education:1"), "{e}");
        entry.school[0] = StoredAttendance {
            month: 202504,
            ..school
        };
        entry.nis = "12345678901".into();
        assert!(
            decode_records(entry).is_err(),
            "a NIS with a wrong check digit"
        );
    }

    /// The NIS is kept once for all the records: a doc holding another person's record (which
    /// the person stage never builds) is refused rather than stored under the wrong person.
    #[test]
    fn records_of_two_persons_are_not_stored_as_one() {
        let mine = Nis::parse(NIS).unwrap();
        let other = Nis::parse("46952280637").unwrap();
        let doc = PersonDoc {
            records: vec![
                PersonRecord::School(SchoolAttendanceMonth::tombstone("a".into(), 1, mine)),
                PersonRecord::Health(HealthRecord::tombstone("b".into(), 1, other)),
            ],
            ..PersonDoc::default()
        };
        let e = doc.to_stored().err().unwrap();
        assert!(e.contains("record b"), "{e}");
    }
}
