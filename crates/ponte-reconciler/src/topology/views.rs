//! The published views (`ponte.compliance.v1`) and the digests the stages keep of them.
use super::*;

pub(super) fn status_view(s: Status) -> api::OutcomeStatus {
    match s {
        Status::Compliant => api::OutcomeStatus::Compliant,
        Status::NonCompliant => api::OutcomeStatus::NonCompliant,
        Status::NotFollowed => api::OutcomeStatus::NotFollowed,
        Status::NotRequired => api::OutcomeStatus::NotRequired,
    }
}

pub(super) fn scope(s: EffectScope) -> &'static str {
    match s {
        EffectScope::Family => "family",
        EffectScope::Member => "member",
        EffectScope::None => "none",
    }
}

/// What the family evaluation reads of a member's outcomes, as the view shows them: the
/// non-compliant ones, with their effect scope.
/// What the family stage and the alerts read of a person's view: the non-compliant outcomes'
/// conditionality, period and scope of effects, in the view's order.
pub(super) fn non_compliant(outcomes: &[api::ConditionalityOutcome]) -> Vec<NonCompliant> {
    outcomes
        .iter()
        .filter(|o| o.status == api::OutcomeStatus::NonCompliant as i32)
        .map(|o| NonCompliant {
            conditionality: o.conditionality.clone(),
            period: o.period.clone(),
            effects: o.effects.clone(),
        })
        .collect()
}

/// How a digest's hash was computed (`hash_kind` of the digests in
/// `proto/ponte/reconciler/v1`): FNV-1a, what digests written before the field hold …
pub(super) const HASH_FNV1A: u32 = 0;
/// … or XXH3-64, what is written now (FNV-1a goes a byte at a time: on a person's view of a few
/// KiB it was about 14 % of the topology's time in-process).
pub(super) const HASH_XXH3: u32 = 1;

/// XXH3-64 of a view's encoding: equal views, equal hashes, across processes and builds
/// (prost encodes fields in tag order; XXH3 is a specified algorithm). The view's counters
/// (`view_version`, `updated_time`) must be clear: they say how the view got there, not what it
/// is.
pub(super) fn view_hash(view: &impl prost::Message) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&view.encode_to_vec())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A view encoded once, with its counters clear: hashed ([`view_hash`]) and, if it changed,
/// sent as it is ([`EncodedView::change`]).
pub(super) struct EncodedView {
    bytes: Vec<u8>,
    /// Computed as [`HASH_XXH3`].
    pub(super) hash: u64,
}

/// The `ComplianceChange` field that carries each kind of view.
pub(super) const PERSON_FIELD: u32 = 1;
pub(super) const FAMILY_FIELD: u32 = 2;
pub(super) const HOUSEHOLD_FIELD: u32 = 3;

impl EncodedView {
    /// `view` must have its counters clear.
    pub(super) fn new(view: &impl prost::Message) -> Self {
        let bytes = view.encode_to_vec();
        let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
        Self { bytes, hash }
    }

    /// True when this is the view whose hash, computed as `kind`, is `hash`: a digest written
    /// before XXH3 is compared by FNV-1a (until the view next changes; its digest is XXH3 from
    /// then on), one of an unknown kind never matches (the view is published again, not
    /// silently held back).
    pub(super) fn is(&self, kind: u32, hash: u64) -> bool {
        match kind {
            HASH_XXH3 => self.hash == hash,
            HASH_FNV1A => fnv1a(&self.bytes) == hash,
            _ => false,
        }
    }

    /// The `ComplianceChange` carrying the view in its `field` with the counters that
    /// `counters` (a view of the same type with only `view_version` and `updated_time` set)
    /// holds. Protobuf merges concatenated encodings of one message (a later scalar field
    /// wins), so the counters' encoding appended to the view's is the whole view: it is not
    /// encoded a second time.
    pub(super) fn change(self, field: u32, counters: &impl prost::Message) -> Vec<u8> {
        use prost::encoding::{WireType, encode_key, encode_varint};
        let len = self.bytes.len() + counters.encoded_len();
        let mut out = Vec::with_capacity(len + 16);
        encode_key(field, WireType::LengthDelimited, &mut out);
        encode_varint(len as u64, &mut out);
        out.extend_from_slice(&self.bytes);
        counters.encode_raw(&mut out);
        out
    }
}

/// The digest a store in format 1 kept under `digests`, or one derived from the whole view that
/// a store written before digests holds in `views`.
fn read_digest<D: Stored, V: Stored>(
    tx: &Tx<'_>,
    digests: &Table<D>,
    views: &Table<V>,
    id: &str,
    from_view: impl FnOnce(V) -> D,
) -> Result<Option<D>, ReconcilerError> {
    if let Some(d) = digests.get(tx, &[id])? {
        return Ok(Some(d));
    }
    Ok(views.get(tx, &[id])?.map(from_view))
}

/// The digest of a person whose `p/` value is in format 1 (`d/p/` or `v/p/`).
pub(super) fn person_digest(
    tx: &Tx<'_>,
    nis: &str,
) -> Result<Option<PersonDigest>, ReconcilerError> {
    read_digest(
        tx,
        &PERSON_DIGESTS,
        &PERSON_VIEWS_BEFORE_DIGESTS,
        nis,
        |mut v: api::Person| {
            let view_version = std::mem::take(&mut v.view_version);
            let updated_time = v.updated_time.take();
            let mut digest = PersonDigest {
                view_version,
                hash: view_hash(&v),
                hash_kind: HASH_XXH3,
                non_compliant: non_compliant(&v.outcomes),
                updated_time,
                ..PersonDigest::default()
            };
            Indexed::of_view(&v).keep_in(&mut digest);
            digest.family_id = v.family_id;
            digest
        },
    )
}

/// The digest of a family whose `fm/` value is in format 1, or absent (`d/f/` or `v/f/`).
pub(super) fn family_digest(
    tx: &Tx<'_>,
    fid: &str,
) -> Result<Option<FamilyDigest>, ReconcilerError> {
    read_digest(
        tx,
        &FAMILY_DIGESTS,
        &FAMILY_VIEWS_BEFORE_DIGESTS,
        fid,
        |mut v: api::Family| {
            let view_version = std::mem::take(&mut v.view_version);
            let updated_time = v.updated_time.take();
            FamilyDigest {
                view_version,
                hash: view_hash(&v),
                hash_kind: HASH_XXH3,
                updated_time,
            }
        },
    )
}

/// A member's outcomes as the family stage needs them: only the non-compliant ones (the only
/// ones the effects ladder and the family view read), without the evidence, which stays in the
/// person's view.
pub(super) fn for_family(outcomes: &[Outcome]) -> Vec<Outcome> {
    outcomes
        .iter()
        .filter(|o| o.status == Status::NonCompliant)
        .map(|o| Outcome {
            evidence: ponte_domain::outcome::Evidence::bare(
                o.evidence.reference_date,
                o.evidence.age,
            ),
            ..o.clone()
        })
        .collect()
}

pub(super) fn outcome_view(o: &Outcome) -> api::ConditionalityOutcome {
    let mut record_ids: Vec<String> = o
        .evidence
        .months
        .iter()
        .map(|m| m.record_id.clone())
        .collect();
    if let Some(h) = &o.evidence.health {
        record_ids.extend(h.records.iter().map(|(id, _, _)| id.clone()));
    }
    record_ids.sort();
    record_ids.dedup();
    api::ConditionalityOutcome {
        conditionality: o.conditionality.clone(),
        period: o.period.to_string(),
        status: status_view(o.status) as i32,
        effects: scope(o.effects).to_owned(),
        rule_set: [o.rule_set.id.as_str(), "@", o.rule_set.version.as_str()].concat(),
        threshold_percent: o.evidence.threshold_percent.map(u32::from).unwrap_or(0),
        months_below: o
            .evidence
            .months_below
            .iter()
            .map(ToString::to_string)
            .collect(),
        months_missing: o
            .evidence
            .months_missing
            .iter()
            .map(ToString::to_string)
            .collect(),
        record_ids,
        note: o.evidence.note.clone(),
        evidence_json: o.evidence.to_json(),
    }
}

pub(super) fn effect_view(e: &DomainEffect) -> api::Effect {
    api::Effect {
        repercussion_month: e.repercussion_month.to_string(),
        sequence: e.sequence,
        name: e.name.clone(),
        money: serde_json::to_value(e.money)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        months: e.months,
        status: serde_json::to_value(e.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        causes: e
            .causes
            .iter()
            .map(|c| format!("{}/{}/{}", c.nis, c.conditionality, c.period))
            .collect(),
        appeal_record_ids: e.appeals.clone(),
    }
}

pub(super) fn family_view(
    fid: &FamilyId,
    members: &BTreeSet<String>,
    effects: &FamilyEffects,
    outcomes: &[Outcome],
) -> api::Family {
    let mut periods: BTreeSet<String> = BTreeSet::new();
    for o in outcomes {
        if o.status == Status::NonCompliant && o.effects == EffectScope::Family {
            periods.insert(o.period.to_string());
        }
    }
    api::Family {
        family_id: fid.to_string(),
        members: members.iter().cloned().collect(),
        rule_set: format!("{}@{}", effects.rule_set.id, effects.rule_set.version),
        effects: effects.family.iter().map(effect_view).collect(),
        member_effects: effects
            .members
            .iter()
            .map(|(nis, list)| api::MemberEffects {
                nis: nis.to_string(),
                effects: list.iter().map(effect_view).collect(),
            })
            .collect(),
        non_compliant_periods: periods.into_iter().collect(),
        view_version: 0,
        updated_time: None,
        effects_json: serde_json::to_string(effects).unwrap_or_default(),
        sources: Vec::new(),
    }
}

/// The sources of the records `ids` that `sources` knows, in record id order.
pub(super) fn sources_view<'a>(
    sources: &BTreeMap<String, Source>,
    ids: impl Iterator<Item = &'a str>,
) -> Vec<api::RecordSource> {
    let mut out: Vec<api::RecordSource> = ids
        .filter_map(|id| {
            sources.get(id).map(|s| api::RecordSource {
                record_id: id.to_owned(),
                version: s.version,
                record_type: s.record_type.clone(),
                source_system: s.source_system.clone(),
                sender: s.sender.clone(),
                request_id: s.request_id.clone(),
                received_time: s
                    .received
                    .map(|(seconds, nanos)| Timestamp { seconds, nanos }),
            })
        })
        .collect();
    out.sort_by(|a, b| a.record_id.cmp(&b.record_id));
    out.dedup_by(|a, b| a.record_id == b.record_id);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn person() -> api::Person {
        api::Person {
            nis: "12345678901".into(),
            family_id: "F-1".into(),
            municipality: "3550308".into(),
            registered: true,
            outcomes: vec![api::ConditionalityOutcome {
                conditionality: "education".into(),
                period: "2025-B2".into(),
                status: api::OutcomeStatus::NonCompliant as i32,
                months_below: vec!["2025-03".into()],
                evidence_json: "{\"a\":1}".into(),
                ..Default::default()
            }],
            sources: vec![api::RecordSource {
                record_id: "edu:1".into(),
                version: 3,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_view_is_recognised_by_a_digest_of_either_kind_and_never_by_an_unknown_one() {
        let view = person();
        let encoded = EncodedView::new(&view);
        let bytes = view.encode_to_vec();
        assert_eq!(encoded.hash, xxhash_rust::xxh3::xxh3_64(&bytes));
        assert!(encoded.is(HASH_XXH3, encoded.hash));
        assert!(encoded.is(HASH_FNV1A, fnv1a(&bytes)));
        assert!(!encoded.is(HASH_FNV1A, encoded.hash));
        assert!(!encoded.is(HASH_XXH3, fnv1a(&bytes)));
        assert!(!encoded.is(7, encoded.hash));
        let mut other = view.clone();
        other.municipality = "3304557".into();
        assert!(!encoded.is(HASH_XXH3, EncodedView::new(&other).hash));
    }

    #[test]
    fn a_change_built_from_the_encoded_view_decodes_to_the_view_with_its_counters() {
        let at = Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        });
        let view = person();
        let encoded = EncodedView::new(&view);
        assert_eq!(encoded.hash, view_hash(&view));
        let counters = api::Person {
            view_version: 7,
            updated_time: at,
            ..Default::default()
        };
        let bytes = encoded.change(PERSON_FIELD, &counters);
        let mut expected = view.clone();
        expected.view_version = 7;
        expected.updated_time = at;
        let decoded = api::ComplianceChange::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            decoded.view,
            Some(api::compliance_change::View::Person(expected))
        );

        let family = api::Family {
            family_id: "F-1".into(),
            members: vec!["1".into(), "2".into()],
            non_compliant_periods: vec!["2025-B2".into()],
            ..Default::default()
        };
        let counters = api::Family {
            view_version: 2,
            updated_time: None,
            ..Default::default()
        };
        let bytes = EncodedView::new(&family).change(FAMILY_FIELD, &counters);
        let mut expected = family;
        expected.view_version = 2;
        let decoded = api::ComplianceChange::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            decoded.view,
            Some(api::compliance_change::View::Family(expected))
        );
    }
}
