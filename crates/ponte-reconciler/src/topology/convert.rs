//! Mapping between the wire (`ponte.events.v1`) and the domain records, with the field that
//! breaks a rule named.
use super::*;

// ---- mapping between the wire and the domain -------------------------------------------

pub(super) fn alt_ids(p: &dr::PersonProfile) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for c in &p.cns {
        out.insert(format!("cns:{c}"));
    }
    if let Some(c) = &p.cpf {
        out.insert(format!("cpf:{c}"));
    }
    out
}

pub(super) fn date(field: &str, s: &str) -> Result<Date, Applied> {
    Date::parse(s).map_err(|e| invalid(field, e))
}

pub(super) fn opt_date(field: &str, s: &str) -> Result<Option<Date>, Applied> {
    if s.is_empty() {
        Ok(None)
    } else {
        date(field, s).map(Some)
    }
}

pub(super) fn profile(e: &Event, p: &ev::PersonProfile) -> Result<dr::PersonProfile, Applied> {
    let nis = Nis::parse(&p.nis).map_err(|x| invalid("nis", x))?;
    if e.retraction {
        return Ok(dr::PersonProfile::tombstone(
            e.record_id.clone(),
            e.version,
            nis,
        ));
    }
    let municipality =
        IbgeMunicipality::parse(&p.municipality).map_err(|x| invalid("municipality", x))?;
    let school = if p.inep_school_code.is_empty() {
        None
    } else {
        Some(Inep::parse(&p.inep_school_code).map_err(|x| invalid("inep_school_code", x))?)
    };
    let cns = p
        .cns
        .iter()
        .map(|c| Cns::parse(c).map_err(|x| invalid("cns", x)))
        .collect::<Result<Vec<_>, _>>()?;
    let cpf = if p.cpf.is_empty() {
        None
    } else {
        Some(Cpf::parse(&p.cpf).map_err(|x| invalid("cpf", x))?)
    };
    let sex = match p.sex.as_str() {
        "F" | "f" => Sex::Female,
        "M" | "m" => Sex::Male,
        other => return Err(invalid("sex", format!("{other:?} is not F or M"))),
    };
    Ok(dr::PersonProfile {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
        nis,
        family_id: FamilyId(p.family_id.clone()),
        birth_date: date("birth_date", &p.birth_date)?,
        sex,
        municipality,
        school,
        cns,
        cpf,
        pregnancy: p.pregnant.then(|| Pregnancy {
            expected_delivery: Date::parse(&p.expected_delivery_date).ok(),
        }),
        basic_education_completed: p.basic_education_completed,
        programmes: p.memberships.iter().cloned().collect(),
    })
}

pub(super) fn school(
    e: &Event,
    a: &ev::SchoolAttendance,
) -> Result<dr::SchoolAttendanceMonth, Applied> {
    let nis = Nis::parse(&a.nis).map_err(|x| invalid("nis", x))?;
    if e.retraction {
        return Ok(dr::SchoolAttendanceMonth::tombstone(
            e.record_id.clone(),
            e.version,
            nis,
        ));
    }
    let attendance = if a.given > 0 {
        Attendance::Counts {
            given: a.given,
            attended: a.attended,
        }
    } else {
        // Basis points to a whole percentage, rounded down: a threshold is met only when the
        // reported figure is at or above it.
        Attendance::Percent(u8::try_from(a.attendance_bp / 100).unwrap_or(100))
    };
    Ok(dr::SchoolAttendanceMonth {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
        nis,
        inep: Inep::parse(&a.inep_school_code).ok(),
        month: Month::parse(&a.month).map_err(|x| invalid("month", x))?,
        attendance,
        reason_code: (!a.low_attendance_reason.is_empty()).then(|| a.low_attendance_reason.clone()),
    })
}

pub(super) fn scfv(e: &Event, a: &ev::ScfvAttendance) -> Result<dr::ScfvAttendanceMonth, Applied> {
    let nis = Nis::parse(&a.nis).map_err(|x| invalid("nis", x))?;
    if e.retraction {
        return Ok(dr::ScfvAttendanceMonth::tombstone(
            e.record_id.clone(),
            e.version,
            nis,
        ));
    }
    Ok(dr::ScfvAttendanceMonth {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
        nis,
        month: Month::parse(&a.month).map_err(|x| invalid("month", x))?,
        attendance: Attendance::Counts {
            given: a.hours_offered,
            attended: a.hours_attended,
        },
        reason_code: (!a.low_attendance_reason.is_empty()).then(|| a.low_attendance_reason.clone()),
    })
}

pub(super) fn health(
    e: &Event,
    h: &ev::HealthFollowUp,
    nis: Nis,
) -> Result<dr::HealthRecord, Applied> {
    if e.retraction {
        return Ok(dr::HealthRecord::tombstone(
            e.record_id.clone(),
            e.version,
            nis,
        ));
    }
    // A record is placed by its date, or by the semester it was filed for when the source
    // gave no date (the simple JSON form allows either).
    let recorded_on = opt_date("encounter_date", &h.encounter_date)?;
    let semester = if h.semester.is_empty() {
        None
    } else {
        Some(Semester::parse(&h.semester).map_err(|x| invalid("semester", x))?)
    };
    match (recorded_on, semester) {
        (None, None) => {
            return Err(invalid(
                "semester",
                "neither semester nor encounter_date is given",
            ));
        }
        (Some(d), Some(s)) if Semester::containing(d.month_of()) != s => {
            return Err(invalid(
                "semester",
                format!("encounter_date {d} is not in {s}"),
            ));
        }
        _ => {}
    }
    Ok(dr::HealthRecord {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
        nis,
        recorded_on,
        semester,
        vaccination_up_to_date: h.vaccination_up_to_date,
        weight_grams: h.weight_grams,
        height_mm: h.height_mm,
        pregnant: h.pregnant.then_some(true),
        last_menstruation: opt_date("last_menstruation_date", &h.last_menstruation_date)?,
        prenatal: h.prenatal_care.then_some(true),
        // FHIR Immunization references are kept as evidence; the vaccines (RNDS codes) too
        // when a system sent no FHIR.
        immunization_refs: if h.fhir_refs.is_empty() {
            h.vaccines.clone()
        } else {
            h.fhir_refs.clone()
        },
    })
}

pub(super) fn follow_up(e: &Event, f: &ev::FamilyFollowUp) -> Result<FamilyFollowUp, Applied> {
    if e.retraction {
        return Ok(FamilyFollowUp::tombstone(
            e.record_id.clone(),
            e.version,
            FamilyId(f.family_id.clone()),
        ));
    }
    let started_on = date("opened_on", &f.opened_on)?;
    Ok(FamilyFollowUp {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
        family_id: FamilyId(f.family_id.clone()),
        started_on,
        ended_on: opt_date("closed_on", &f.closed_on)?,
        // Without a request date, the interruption counts from the opening of the follow-up.
        interruption_requested_on: if f.interrupt_effects {
            Some(
                opt_date("interruption_requested_on", &f.interruption_requested_on)?
                    .unwrap_or(started_on),
            )
        } else {
            None
        },
    })
}

pub(super) fn appeal(e: &Event, a: &ev::Appeal) -> Result<Appeal, Applied> {
    if e.retraction {
        return Ok(Appeal::tombstone(
            e.record_id.clone(),
            e.version,
            FamilyId(a.family_id.clone()),
        ));
    }
    let status = match a.decision.as_str() {
        "" => AppealStatus::Pending,
        "ACCEPTED" => AppealStatus::Accepted,
        "REJECTED" => AppealStatus::Rejected,
        other => {
            return Err(invalid(
                "decision",
                format!("{other:?} is not ACCEPTED or REJECTED"),
            ));
        }
    };
    Ok(Appeal {
        record_id: e.record_id.clone(),
        version: e.version,
        retracted: false,
        family_id: FamilyId(a.family_id.clone()),
        nis: if a.nis.is_empty() {
            None
        } else {
            Some(Nis::parse(&a.nis).map_err(|x| invalid("nis", x))?)
        },
        conditionality: (!a.conditionality.is_empty()).then(|| a.conditionality.clone()),
        period: Period::parse(&a.period).map_err(|x| invalid("period", x))?,
        status,
    })
}

/// The provenance `e` carries, kept with the record it brings ([`Source`]).
pub(super) fn source_of(e: &Event) -> Source {
    Source {
        version: e.version,
        record_type: ponte_bus::publish::event_type(e).to_owned(),
        source_system: e.source_system.clone(),
        sender: e.sender.clone(),
        request_id: e.request_id.clone(),
        received: e.ingest_time.map(|t| (t.seconds, t.nanos)),
    }
}
