//! The gRPC `ComplianceService`. A person's, family's or household's view is computed from the
//! local state when this instance owns (and has restored) the input partition the key is keyed
//! to — as current as the last epoch stored —, asked of the instance that owns it otherwise
//! ([`crate::peers`]), and answered `UNAVAILABLE` when there is no owner to ask or it does not
//! answer (the caller retries: the partition is being moved or restored). A municipality's
//! persons and counts are gathered from every partition's owner the same way
//! ([`crate::lists`]); parked records come from the local state.
use ponte_domain::ids::Nis;
use ponte_proto::compliance::v1::compliance_service_server::ComplianceService;
use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use ponte_audit::log::{Auditor, ReadSubject};
use ponte_bus::KafkaConfig;
use ponte_bus::consume::Assignment;
use ponte_domain::ids::IbgeMunicipality;
use ponte_domain::period::Period;
use ponte_edge::grpc::{Admitted, admit, out_of_scope};
use ponte_edge::{Gate, Grant, Rpc};
use ponte_proto::compliance::v1::compliance_change::View;
use ponte_proto::compliance::v1::{
    ComplianceChange, GetFamilyRequest, GetFamilyResponse, GetHouseholdIndicatorsRequest,
    GetHouseholdIndicatorsResponse, GetHouseholdRequest, GetHouseholdResponse,
    GetIndicatorsRequest, GetIndicatorsResponse, GetPersonRequest, GetPersonResponse, IndicatorRow,
    ListParkedRequest, ListParkedResponse, ListPersonsItem, ListPersonsRequest, NamedRate,
    OutcomeStatus, ParkedRecord, WatchChangesRequest, WatchedChange,
};
use ponte_store::Store;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::Arc;
use tonic::{Request, Response, Status};

use crate::ReconcilerError;
use crate::topology;
use crate::topology::ListFilter;

/// Whether the read path can be trusted: once a read of the state failed, it stays failed
/// until the process restarts (a store that refused a read is not trusted again in place):
/// readiness turns to 503 and every read is answered `UNAVAILABLE`.
#[derive(Debug, Clone, Default)]
pub struct ReadPath {
    failure: Arc<std::sync::Mutex<Option<String>>>,
    /// A test-only fault: the read of this number fails as a store that errs would
    /// (`PONTE_TEST_READ_PATH_FAULT`, [`ReadPath::from_env`]).
    fault: Option<u64>,
    reads: Arc<std::sync::atomic::AtomicU64>,
}

impl ReadPath {
    /// A read path whose `n`-th read of the state fails when `PONTE_TEST_READ_PATH_FAULT=<n>`
    /// is set (for the readiness tests; never set it in a deployment).
    pub fn from_env() -> Result<ReadPath, ReconcilerError> {
        let fault = match std::env::var("PONTE_TEST_READ_PATH_FAULT") {
            Err(_) => None,
            Ok(n) => Some(n.parse().map_err(|_| {
                ReconcilerError::Startup(format!(
                    "PONTE_TEST_READ_PATH_FAULT: {n:?} is not a count"
                ))
            })?),
        };
        metrics::gauge!("ponte_reconciler_read_path_failed").set(0.0);
        Ok(ReadPath {
            fault,
            ..ReadPath::default()
        })
    }

    /// Counts a read; the injected fault's error when it is the one to fail.
    fn injected(&self) -> Result<(), ReconcilerError> {
        let Some(n) = self.fault else {
            return Ok(());
        };
        let read = self
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if read == n {
            return Err(ReconcilerError::Corrupt {
                key: "(injected)".into(),
                reason: format!("PONTE_TEST_READ_PATH_FAULT: read {n} fails"),
            });
        }
        Ok(())
    }

    /// Marks the read path failed (the first reason is kept), counted and logged once.
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let mut failure = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failure.is_none() {
            tracing::error!(
                reason = %ponte_runtime::telemetry::mask_ids_in(&reason),
                "read path failed: readiness is 503 and reads are refused until a restart"
            );
            metrics::gauge!("ponte_reconciler_read_path_failed").set(1.0);
            *failure = Some(reason);
        }
    }

    /// Why the read path failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Serves the compliance view: persons, families, households, lists and counts of the
/// partitions this instance owns, and parked records, from the local partitioned state
/// (`state`, of which `assignment` tells the partitions currently owned); those of other
/// partitions from their owners (`peers`), or `UNAVAILABLE` when no owner can answer.
#[derive(Debug, Clone)]
pub struct ComplianceApi {
    /// The local partitioned state.
    pub state: Store,
    /// The input partitions this instance owns (whose persons and families it answers from
    /// `state`, and whose parked records ListParked reports): the current consumer's, replaced
    /// with the consumer ([`crate::service`]).
    pub assignment: tokio::sync::watch::Receiver<Assignment>,
    /// What computes a view from the state (the rules, the monitoring window).
    pub topology: Arc<topology::Topology>,
    /// The input topics' partition count: a NIS or a family id is keyed to partition
    /// `crc32(key) % partitions` ([`ponte_bus::partition::of_key`]).
    pub partitions: i32,
    pub kafka: KafkaConfig,
    pub changes_topic: String,
    /// Who may call what, and see where (docs/security.md).
    pub gate: Arc<Gate>,
    /// Whether the read path can be trusted: reads are refused once it failed.
    pub path: ReadPath,
    /// The audit log every read is recorded in before it is answered (none when
    /// `audit.key_dir` is not set).
    pub audit: Option<Arc<Auditor>>,
    /// Reads of the partitions other instances own, asked of them (none when
    /// `reconciler.peer.advertise` is not set: such reads are `UNAVAILABLE`).
    pub peers: Option<Arc<crate::peers::Peers>>,
}

/// Counts a view read for `GetPerson`, `GetFamily`, `GetHousehold` or a family's scope check
/// (`view`: `person`, `family`, `household`), or a `ListPersons`, `GetIndicators` or
/// `GetHouseholdIndicators` (`list`, `indicators`, `household_indicators`), by where it was
/// read (`state`, `owner`: another instance's state — for a list, at least one partition's —,
/// `unavailable`: no owner could answer): `ponte_reconciler_view_reads_total{view, from}`.
fn view_read(view: &'static str, from: &'static str) {
    metrics::counter!("ponte_reconciler_view_reads_total", "view" => view, "from" => from)
        .increment(1);
}

/// What a read spanning every partition waits for when one partition has no owner to answer.
const SOME_PARTITIONS: &str = "the municipality's partitions";

/// `UNAVAILABLE` for a read of `what` no owner can answer now, counted.
fn unanswerable(view: &'static str, what: &str) -> Status {
    view_read(view, "unavailable");
    Status::unavailable(format!(
        "{what}: no instance can answer for it now (its partition is being moved or restored, or its owner does not answer); retry"
    ))
}

type ItemStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub(crate) fn municipality(s: &str) -> Result<IbgeMunicipality, Status> {
    IbgeMunicipality::parse(s).map_err(|e| Status::invalid_argument(format!("municipality: {e}")))
}

/// `p:o,p:o` → next offset per partition.
fn parse_position(s: &str) -> Result<BTreeMap<i32, i64>, Status> {
    s.split(',')
        .map(|part| {
            let (p, o) = part.split_once(':').ok_or_else(|| {
                Status::invalid_argument("from: not a position from a previous change")
            })?;
            match (p.parse::<i32>(), o.parse::<i64>()) {
                (Ok(p), Ok(o)) if o >= 0 => Ok((p, o)),
                _ => Err(Status::invalid_argument(
                    "from: not a position from a previous change",
                )),
            }
        })
        .collect()
}

fn format_position(pos: &BTreeMap<i32, i64>) -> String {
    pos.iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The conditionality a person's school attendance records are evidence of.
const EDUCATION: &str = "education";
/// The conditionality a person's health records are evidence of.
const HEALTH: &str = "health";

/// What of `person` the grant may show: nothing outside its places, and only the outcomes and
/// records of its conditionalities.
fn visible_person(
    grant: &Grant,
    mut person: ponte_proto::compliance::v1::Person,
) -> Option<ponte_proto::compliance::v1::Person> {
    if !grant.covers_municipality_code(&person.municipality) {
        return None;
    }
    person
        .outcomes
        .retain(|o| grant.covers_conditionality(&o.conditionality));
    if !grant.covers_conditionality(EDUCATION) {
        person.school_attendance.clear();
    }
    if !grant.covers_conditionality(HEALTH) {
        person.health_records.clear();
    }
    // Where a record came from, only for the records the caller sees.
    let all = matches!(
        grant.conditionalities(),
        ponte_access::policy::Conditionalities::All
    );
    person.sources.retain(|s| match s.record_type.as_str() {
        "person_profile" => true,
        "school_attendance" => grant.covers_conditionality(EDUCATION),
        "health_follow_up" => grant.covers_conditionality(HEALTH),
        _ => all,
    });
    Some(person)
}

/// Whether an effect's causes (`<nis>/<conditionality>/<period>`) are all of conditionalities
/// the grant covers.
fn effect_visible(grant: &Grant, causes: &[String]) -> bool {
    causes.iter().all(|c| {
        c.split('/')
            .nth(1)
            .is_none_or(|cond| grant.covers_conditionality(cond))
    })
}

/// What of `family` the grant may show: a family is in the place of its members (`place`: the
/// municipality of the first member with a view, [`ComplianceApi::family_place`]; a family
/// none of whose members is in the view only to a federal scope), and only effects caused by
/// its conditionalities.
fn visible_family(
    grant: &Grant,
    place: Option<&str>,
    mut family: ponte_proto::compliance::v1::Family,
) -> Option<ponte_proto::compliance::v1::Family> {
    if !grant.is_federal() && !place.is_some_and(|m| grant.covers_municipality_code(m)) {
        return None;
    }
    if !matches!(
        grant.conditionalities(),
        ponte_access::policy::Conditionalities::All
    ) {
        family.effects.retain(|e| effect_visible(grant, &e.causes));
        for m in &mut family.member_effects {
            m.effects.retain(|e| effect_visible(grant, &e.causes));
        }
        // The evaluation as a whole names every conditionality: only for callers of all; so
        // do appeals (each concerns one conditionality), and where they came from.
        family.effects_json.clear();
        family.sources.retain(|s| s.record_type != "appeal");
    }
    Some(family)
}

/// What of a followed household the grant may show: the whole view, to a federal scope only.
/// Read scopes name Brazilian places (IBGE codes, UFs); until they name Colombian ones
/// (DIVIPOLA), a household is out of every narrower scope.
fn visible_household(
    grant: &Grant,
    household: ponte_proto::compliance::v1::Household,
) -> Option<ponte_proto::compliance::v1::Household> {
    grant.is_federal().then_some(household)
}

/// A family id as the adapters accept it, or `INVALID_ARGUMENT` naming the field.
pub(crate) fn family_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() || id.len() > 64 || id.contains('/') {
        return Err(Status::invalid_argument(
            "family_id: required, at most 64 characters, no '/'",
        ));
    }
    Ok(id)
}

/// A household id as the adapters accept it, or `INVALID_ARGUMENT` naming the field.
pub(crate) fn household_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() || id.len() > 32 || id.contains('/') {
        return Err(Status::invalid_argument(
            "household_id: required, at most 32 characters, no '/'",
        ));
    }
    Ok(id)
}

/// A DIVIPOLA municipality code (Colombia), or `INVALID_ARGUMENT` naming the field.
pub(crate) fn divipola(code: &str) -> Result<String, Status> {
    ponte_domain::colombia::Divipola::parse(code)
        .map(|d| d.to_string())
        .map_err(|e| Status::invalid_argument(format!("municipality: {e}")))
}

impl ComplianceApi {
    /// Records the read in the audit log, before anything is answered: a read that cannot be
    /// recorded is not answered (`UNAVAILABLE`).
    async fn audited(
        &self,
        admitted: &Admitted,
        rpc: &str,
        subject: ReadSubject<'_>,
        returned: usize,
    ) -> Result<(), Status> {
        self.audited_as(&admitted.caller.principal, rpc, subject, returned)
            .await
    }

    /// [`Self::audited`] for `principal`.
    pub(crate) async fn audited_as(
        &self,
        principal: &str,
        rpc: &str,
        subject: ReadSubject<'_>,
        returned: usize,
    ) -> Result<(), Status> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        audit
            .read(principal, rpc, subject, returned)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, rpc, "a read could not be written to the audit log; refused");
                Status::unavailable("the read could not be audited; nothing is answered unaudited")
            })
    }

    /// `UNAVAILABLE` once the read path failed: a store that erred on a read is not trusted.
    pub(crate) fn check_read_path(&self) -> Result<(), Status> {
        match self.path.failure() {
            None => Ok(()),
            Some(_) => Err(Status::unavailable(
                "a read of this instance's state failed and its answers could be wrong; \
                 retry (another instance will own its partitions once it is restarted)",
            )),
        }
    }

    /// Runs a point read (a view by its key: a few lookups in a store's cached index and
    /// filters, then one value, whose records are then evaluated again) on the calling worker. Handing it
    /// to the blocking pool cost more than the read itself — two thread wake-ups per call, 21–27 µs
    /// of CPU of the 61–111 a `GetPerson` took (docs/benchmarks.md, "Point reads on the
    /// worker"); a read that goes to the disk holds this worker for that read, while the
    /// other workers go on. Scans ([`Self::read`]) stay on the blocking pool.
    fn read_point<T>(&self, f: impl FnOnce() -> Result<T, ReconcilerError>) -> Result<T, Status> {
        self.check_read_path()?;
        self.path
            .injected()
            .and_then(|()| f())
            .map_err(|e| self.store_failed(&e))
    }

    /// The input partition `key` (a NIS, a family id) is keyed to.
    fn partition_of(&self, key: &str) -> i32 {
        ponte_bus::partition::of_key(key.as_bytes(), self.partitions)
    }

    /// A view of key `key` computed from the state by `state` (given the key's partition), if
    /// this instance owns (and has restored) that partition; `None` otherwise.
    fn local_view<V>(
        &self,
        key: &str,
        state: impl FnOnce(i32) -> Result<Option<V>, ReconcilerError>,
    ) -> Result<Option<Option<V>>, Status> {
        let p = self.partition_of(key);
        if !self.assignment.borrow().is_prepared(p) {
            return Ok(None);
        }
        self.read_point(|| state(p).map(Some))
    }

    /// Person `nis`'s view computed from the state ([`Self::local_view`]).
    pub(crate) fn local_person(
        &self,
        nis: &Nis,
    ) -> Result<Option<Option<ponte_proto::compliance::v1::Person>>, Status> {
        self.local_view(nis.as_str(), |p| {
            self.topology.read_person(&self.state, p, *nis)
        })
    }

    /// Family `id`'s view computed from the state ([`Self::local_view`]).
    pub(crate) fn local_family(
        &self,
        id: &str,
    ) -> Result<Option<Option<ponte_proto::compliance::v1::Family>>, Status> {
        self.local_view(id, |p| self.topology.read_family(&self.state, p, id))
    }

    /// Household `id`'s view computed from the state ([`Self::local_view`]).
    pub(crate) fn local_household(
        &self,
        id: &str,
    ) -> Result<Option<Option<ponte_proto::compliance::v1::Household>>, Status> {
        self.local_view(id, |p| self.topology.read_household(&self.state, p, id))
    }

    /// A view (`what`: `person`, `family`, `household`; of input partition `p`): from the
    /// state if this instance owns the key's partition (`local`), else from the
    /// instance that owns it (`ask`, a peer read not begun until awaited; none without peers),
    /// else — no owner known, or it did not answer — `UNAVAILABLE`; counted by where it was
    /// read.
    async fn view<V, F>(
        &self,
        what: &'static str,
        p: i32,
        local: Result<Option<Option<V>>, Status>,
        ask: Option<F>,
    ) -> Result<Option<V>, Status>
    where
        F: std::future::Future<Output = crate::peers::Asked<V>>,
    {
        if let Some(v) = local? {
            view_read(what, "state");
            return Ok(v);
        }
        if let Some(ask) = ask
            && let crate::peers::Asked::Answered(v) = ask.await
        {
            view_read(what, "owner");
            return Ok(v);
        }
        Err(unanswerable(what, &format!("{what} (input partition {p})")))
    }

    /// Person `nis`'s view ([`Self::view`]).
    async fn person_view(
        &self,
        nis: &Nis,
    ) -> Result<Option<ponte_proto::compliance::v1::Person>, Status> {
        let p = self.partition_of(nis.as_str());
        self.view(
            "person",
            p,
            self.local_person(nis),
            self.peers.as_deref().map(|peers| peers.person(p, nis)),
        )
        .await
    }

    /// Family `id`'s view ([`Self::view`]).
    async fn family_view(
        &self,
        id: &str,
    ) -> Result<Option<ponte_proto::compliance::v1::Family>, Status> {
        let p = self.partition_of(id);
        self.view(
            "family",
            p,
            self.local_family(id),
            self.peers.as_deref().map(|peers| peers.family(p, id)),
        )
        .await
    }

    /// Household `id`'s view ([`Self::view`]).
    async fn household_view(
        &self,
        id: &str,
    ) -> Result<Option<ponte_proto::compliance::v1::Household>, Status> {
        let p = self.partition_of(id);
        self.view(
            "household",
            p,
            self.local_household(id),
            self.peers.as_deref().map(|peers| peers.household(p, id)),
        )
        .await
    }

    /// The municipality a family is in for a caller of some places: that of its first member
    /// with a view (each member's view read as [`Self::person_view`]).
    async fn family_place(
        &self,
        family: &ponte_proto::compliance::v1::Family,
    ) -> Result<Option<String>, Status> {
        for member in &family.members {
            if let Ok(nis) = Nis::parse(member)
                && let Some(p) = self.person_view(&nis).await?
            {
                return Ok(Some(p.municipality));
            }
        }
        Ok(None)
    }

    /// What of `family` `grant` may show ([`visible_family`]); a federal caller's family needs
    /// no member read.
    async fn visible_family(
        &self,
        grant: &Grant,
        family: ponte_proto::compliance::v1::Family,
    ) -> Result<Option<ponte_proto::compliance::v1::Family>, Status> {
        let place = if grant.is_federal() {
            None
        } else {
            self.family_place(&family).await?
        };
        Ok(visible_family(grant, place.as_deref(), family))
    }

    /// What of a changed `view` `grant` may see on `WatchChanges`; `UNAVAILABLE` when a
    /// family's place cannot be told now (no owner answers for its members' partitions).
    async fn watched(&self, grant: &Grant, view: Option<View>) -> Result<Option<View>, Status> {
        Ok(match view {
            Some(View::Person(p)) => visible_person(grant, p).map(View::Person),
            Some(View::Family(f)) => self.visible_family(grant, f).await?.map(View::Family),
            Some(View::Household(h)) => visible_household(grant, h).map(View::Household),
            None => None,
        })
    }

    /// Runs a read of the local state off the async runtime.
    pub(crate) async fn read_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ReconcilerError> + Send + 'static,
    ) -> Result<T, Status> {
        self.blocking(self.state.clone(), f).await
    }

    /// A store that errs on a read is not trusted again: the read path is marked failed.
    async fn blocking<T: Send + 'static>(
        &self,
        store: Store,
        f: impl FnOnce(&Store) -> Result<T, ReconcilerError> + Send + 'static,
    ) -> Result<T, Status> {
        self.path.injected().map_err(|e| self.store_failed(&e))?;
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("reading the view: {e}")))?
            .map_err(|e| self.store_failed(&e))
    }

    fn store_failed(&self, e: &ReconcilerError) -> Status {
        self.path.fail(format!("a read of the store failed: {e}"));
        Status::unavailable("reading the view failed; retry")
    }
}

#[tonic::async_trait]
impl ComplianceService for ComplianceApi {
    type ListPersonsStream = ItemStream<ListPersonsItem>;
    type WatchChangesStream = ItemStream<WatchedChange>;

    async fn list_persons(
        &self,
        request: Request<ListPersonsRequest>,
    ) -> Result<Response<Self::ListPersonsStream>, Status> {
        let admitted = admit(&self.gate, &request, Rpc::ListPersons)?;
        let req = request.into_inner();
        let place = municipality(&req.municipality)?;
        if !admitted.grant.covers_municipality(&place) {
            return Err(out_of_scope("municipality"));
        }
        if !req.conditionality.is_empty()
            && !admitted.grant.covers_conditionality(&req.conditionality)
        {
            return Err(Status::permission_denied(
                "conditionality: not among the caller's conditionalities",
            ));
        }
        let mun = place.to_string();
        if !req.period.is_empty() {
            Period::parse(&req.period)
                .map_err(|e| Status::invalid_argument(format!("period: {e}")))?;
        }
        let status = OutcomeStatus::try_from(req.status)
            .map_err(|_| Status::invalid_argument("status: unknown value"))?;
        let limit = match req.page_size {
            0 => 1000,
            n if n > 100_000 => return Err(Status::invalid_argument("page_size: at most 100000")),
            n => n as usize,
        };
        let filter = ListFilter {
            period: req.period,
            conditionality: req.conditionality,
            status,
        };
        let after = req.page_token;
        let persons = match self.list_from_owners(&mun, &filter, &after, limit).await? {
            Some((persons, from)) => {
                view_read("list", from);
                persons
            }
            None => return Err(unanswerable("list", SOME_PARTITIONS)),
        };
        let place_code = place.to_string();
        let items: Vec<_> = persons
            .into_iter()
            .filter_map(|p| {
                let page_token = p.nis.clone();
                visible_person(&admitted.grant, p).map(|person| {
                    Ok(ListPersonsItem {
                        page_token,
                        person: Some(person),
                    })
                })
            })
            .collect::<Vec<_>>();
        self.audited(
            &admitted,
            "ListPersons",
            ReadSubject::Municipality(&place_code),
            items.len(),
        )
        .await?;
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn get_indicators(
        &self,
        request: Request<GetIndicatorsRequest>,
    ) -> Result<Response<GetIndicatorsResponse>, Status> {
        let admitted = admit(&self.gate, &request, Rpc::GetIndicators)?;
        let req = request.into_inner();
        let mun = municipality(&req.municipality)?;
        if !admitted.grant.covers_municipality(&mun) {
            return Err(out_of_scope("municipality"));
        }
        let key = mun.to_string();
        let rows = match self.indicators_from_owners(&key).await? {
            Some((rows, from)) => {
                view_read("indicators", from);
                rows
            }
            None => return Err(unanswerable("indicators", SOME_PARTITIONS)),
        };
        let mut out = GetIndicatorsResponse::default();
        let mut latest: BTreeMap<String, (Period, f64)> = BTreeMap::new();
        for ((cond, period), c) in rows {
            if !admitted.grant.covers_conditionality(&cond) {
                continue;
            }
            let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            if let Ok(p) = Period::parse(&period)
                && c.public > 0
                && latest
                    .get(&cond)
                    .is_none_or(|(q, _)| p.last_month() > q.last_month())
            {
                latest.insert(cond.clone(), (p, ratio(c.followed, c.public)));
            }
            if req.period.is_empty() || req.period == period {
                out.rows.push(IndicatorRow {
                    conditionality: cond,
                    period,
                    public: c.public,
                    followed: c.followed,
                    compliant: c.compliant,
                    non_compliant: c.non_compliant,
                    follow_up_rate: ratio(c.followed, c.public),
                    compliance_rate: ratio(c.compliant, c.followed),
                });
            }
        }
        self.audited(
            &admitted,
            "GetIndicators",
            ReadSubject::Municipality(&mun.to_string()),
            out.rows.len(),
        )
        .await?;
        for r in &self.topology.rules().indicators.follow_up_rates {
            if let Some((p, rate)) = latest.get(&r.conditionality) {
                out.follow_up_rates.push(NamedRate {
                    name: r.name.clone(),
                    period: p.to_string(),
                    rate: *rate,
                });
            }
        }
        Ok(Response::new(out))
    }

    async fn watch_changes(
        &self,
        request: Request<WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let admitted = admit(&self.gate, &request, Rpc::WatchChanges)?;
        self.check_read_path()?;
        // One stream slot of the principal for the stream's whole life.
        let stream_slot = self
            .gate
            .admit_watch(&admitted.caller.principal)
            .map_err(|b| {
                self.gate
                    .refused(&admitted.caller.principal, "watch_streams", "WatchChanges");
                Status::resource_exhausted(b.to_string())
            })?;
        self.audited(&admitted, "WatchChanges", ReadSubject::None, 0)
            .await?;
        let grant = admitted.grant;
        let api = self.clone();
        let from = request.into_inner().from;
        let explicit = match from.as_str() {
            "" | "end" => None,
            other => Some(parse_position(other)?),
        };
        let consumer: StreamConsumer = self
            .kafka
            .client_config("ponte-reconciler-watch")
            .set("group.id", format!("ponte-watch-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| Status::internal(format!("watch consumer: {e}")))?;
        let md = consumer
            .fetch_metadata(
                Some(&self.changes_topic),
                std::time::Duration::from_secs(10),
            )
            .map_err(|e| Status::unavailable(format!("bus: {e}")))?;
        let mut tpl = TopicPartitionList::new();
        let mut position: BTreeMap<i32, i64> = BTreeMap::new();
        for t in md.topics() {
            for p in t.partitions() {
                let offset = match (&explicit, from.as_str()) {
                    (Some(pos), _) => pos
                        .get(&p.id())
                        .map_or(Offset::Beginning, |o| Offset::Offset(*o)),
                    (None, "end") => Offset::End,
                    (None, _) => Offset::Beginning,
                };
                if let Offset::Offset(o) = offset {
                    position.insert(p.id(), o);
                }
                tpl.add_partition_offset(&self.changes_topic, p.id(), offset)
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        consumer
            .assign(&tpl)
            .map_err(|e| Status::internal(format!("watch assign: {e}")))?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            let _stream_slot = stream_slot;
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => break,
                    m = consumer.recv() => m,
                };
                let item = match msg {
                    Ok(m) => {
                        position.insert(m.partition(), m.offset() + 1);
                        let change = match m.payload().map(ComplianceChange::decode) {
                            Some(Ok(change)) => change,
                            _ => continue,
                        };
                        // Only what the caller's scope covers; the position still moves on.
                        let visible = match api.watched(&grant, change.view).await {
                            Ok(visible) => visible,
                            Err(status) => {
                                // Not skipped: the stream ends before this change, and the
                                // caller resumes from the last position it received once the
                                // members' owners answer again.
                                let _ = tx.send(Err(status)).await;
                                break;
                            }
                        };
                        let Some(view) = visible else { continue };
                        Ok(WatchedChange {
                            change: Some(ComplianceChange { view: Some(view) }),
                            position: format_position(&position),
                        })
                    }
                    Err(e) => Err(Status::unavailable(format!("bus: {e}"))),
                };
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_person(
        &self,
        request: Request<GetPersonRequest>,
    ) -> Result<Response<GetPersonResponse>, Status> {
        let admitted = admit(&self.gate, &request, Rpc::GetPerson)?;
        let nis = Nis::parse(&request.get_ref().nis)
            .map_err(|e| Status::invalid_argument(format!("nis: {e}")))?;
        let masked = nis.masked();
        let person = self.person_view(&nis).await?;
        let federal = admitted.grant.is_federal();
        let visible = person.map(|p| visible_person(&admitted.grant, p));
        let shown = usize::from(matches!(visible, Some(Some(_))));
        self.audited(
            &admitted,
            "GetPerson",
            ReadSubject::Person(nis.as_str()),
            shown,
        )
        .await?;
        match visible {
            Some(Some(person)) => Ok(Response::new(GetPersonResponse {
                person: Some(person),
            })),
            // Only a federal caller may learn that a NIS is not in the view; anyone else gets
            // the same answer for "not there" and "not yours".
            None if federal => Err(Status::not_found(format!(
                "nis: no record for {masked} in the view"
            ))),
            _ => Err(out_of_scope("nis")),
        }
    }

    async fn get_family(
        &self,
        request: Request<GetFamilyRequest>,
    ) -> Result<Response<GetFamilyResponse>, Status> {
        let admitted = admit(&self.gate, &request, Rpc::GetFamily)?;
        let id = family_id(&request.get_ref().family_id)?.to_owned();
        // The family's view, and for a caller of some municipalities one member's: point reads.
        let family = match self.family_view(&id).await? {
            Some(f) => Some(self.visible_family(&admitted.grant, f).await?.ok_or(())),
            None => None,
        };
        let shown = usize::from(matches!(family, Some(Ok(_))));
        self.audited(&admitted, "GetFamily", ReadSubject::Family(&id), shown)
            .await?;
        match family {
            Some(Ok(family)) => Ok(Response::new(GetFamilyResponse {
                family: Some(family),
            })),
            None if admitted.grant.is_federal() => Err(Status::not_found(format!(
                "family_id: no family {id} in the view"
            ))),
            _ => Err(out_of_scope("family_id")),
        }
    }

    async fn get_household(
        &self,
        request: Request<GetHouseholdRequest>,
    ) -> Result<Response<GetHouseholdResponse>, Status> {
        let admitted = admit(&self.gate, &request, Rpc::GetHousehold)?;
        let id = household_id(&request.get_ref().household_id)?.to_owned();
        let household = self.household_view(&id).await?;
        let shown = household.and_then(|h| visible_household(&admitted.grant, h));
        self.audited(
            &admitted,
            "GetHousehold",
            ReadSubject::Household(&id),
            usize::from(shown.is_some()),
        )
        .await?;
        match shown {
            Some(household) => Ok(Response::new(GetHouseholdResponse {
                household: Some(household),
            })),
            None if admitted.grant.is_federal() => Err(Status::not_found(format!(
                "household_id: no household {id} in the view"
            ))),
            None => Err(out_of_scope("household_id")),
        }
    }

    async fn get_household_indicators(
        &self,
        request: Request<GetHouseholdIndicatorsRequest>,
    ) -> Result<Response<GetHouseholdIndicatorsResponse>, Status> {
        let admitted = admit(&self.gate, &request, Rpc::GetHouseholdIndicators)?;
        let mun = divipola(&request.into_inner().municipality)?;
        if !admitted.grant.is_federal() {
            return Err(out_of_scope("municipality"));
        }
        let out = match self.household_indicators_from_owners(&mun).await? {
            Some((out, from)) => {
                view_read("household_indicators", from);
                out
            }
            None => return Err(unanswerable("household_indicators", SOME_PARTITIONS)),
        };
        self.audited(
            &admitted,
            "GetHouseholdIndicators",
            ReadSubject::Municipality(&mun),
            out.dimensions.len(),
        )
        .await?;
        Ok(Response::new(out))
    }

    async fn list_parked(
        &self,
        request: Request<ListParkedRequest>,
    ) -> Result<Response<ListParkedResponse>, Status> {
        let admitted = admit(&self.gate, &request, Rpc::ListParked)?;
        let limit = match request.get_ref().limit {
            0 => 100,
            n if n > 10_000 => {
                return Err(Status::invalid_argument("limit: at most 10000"));
            }
            n => n as usize,
        };
        let owned: Vec<i32> = self
            .assignment
            .borrow()
            .prepared_partition_numbers()
            .into_iter()
            .collect();
        let found = self
            .read_state(move |s| topology::read_parked(s, &owned, limit))
            .await?;
        let total = found.total;
        let parked = found
            .records
            .into_iter()
            .map(|(identifier, e)| ParkedRecord {
                identifier,
                record_id: e.record_id,
                version: e.version,
                ingest_time: e.ingest_time,
            })
            .collect::<Vec<_>>();
        self.audited(&admitted, "ListParked", ReadSubject::None, parked.len())
            .await?;
        Ok(Response::new(ListParkedResponse { parked, total }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ponte_access::policy::Policy;
    use ponte_proto::compliance::v1::{
        AttendanceRecord, ConditionalityOutcome, Effect, Family, HealthRecordView, MemberEffects,
        Person, RecordSource,
    };

    const POLICY: &str = r#"
[principals."state-sp-education"]
read = { scopes = ["state:SP"], rpcs = ["GetPerson", "GetFamily"], conditionalities = ["education"] }
[principals."federal"]
read = { scopes = ["federal"], rpcs = ["GetPerson", "GetFamily", "ListPersons", "GetIndicators", "GetHousehold", "GetHouseholdIndicators"], conditionalities = ["all"] }
[principals."peer-instance"]
peer = true
"#;

    fn grant(principal: &str) -> Grant {
        Policy::from_toml_str("policy.toml", POLICY)
            .unwrap()
            .may_call(principal, Rpc::GetPerson)
            .unwrap()
    }

    /// The service over `state`, its consumer owning (prepared) `owned` of four input
    /// partitions; callers without credentials act as `federal`.
    fn api(dir: &std::path::Path, state: &Store, owned: &[i32]) -> ComplianceApi {
        api_as(dir, state, owned, "federal")
    }

    /// [`api`] whose callers without credentials act as `principal`.
    fn api_as(
        dir: &std::path::Path,
        state: &Store,
        owned: &[i32],
        principal: &str,
    ) -> ComplianceApi {
        let policy_file = dir.join("policy.toml");
        std::fs::write(&policy_file, POLICY).unwrap();
        let access = ponte_edge::AccessConfig {
            policy_file,
            tokens: None,
            anonymous_principal: principal.into(),
            handshake_timeout_ms: 1_000,
            header_read_timeout_ms: 1_000,
            body_idle_timeout_ms: 1_000,
            max_concurrent_requests: 10,
            retry_after_secs: 1,
            reload_check_secs: 60,
        };
        let assignment = Assignment::prepared(owned.iter().map(|&p| ("inputs".to_owned(), p)));
        ComplianceApi {
            state: state.clone(),
            assignment: tokio::sync::watch::channel(assignment).1,
            topology: Arc::new(
                topology::Topology::new(
                    ponte_domain::rules::RuleSet::from_toml_str(
                        "bolsa-familia-2023.toml",
                        include_str!("../../../rules/bolsa-familia-2023.toml"),
                    )
                    .unwrap(),
                    ponte_domain::period::Month::parse("2025-01").unwrap(),
                    ponte_domain::period::Month::parse("2025-12").unwrap(),
                )
                .with_achievements(
                    ponte_domain::achievements::AchievementRuleSet::from_toml_str(
                        "unidos-2021.toml",
                        include_str!("../../../rules/unidos-2021.toml"),
                    )
                    .unwrap(),
                ),
            ),
            partitions: 4,
            kafka: KafkaConfig {
                bootstrap_servers: "127.0.0.1:9".into(),
                message_timeout_ms: 1_000,
                properties: BTreeMap::new(),
            },
            changes_topic: "changes".into(),
            gate: Arc::new(Gate::new("grpc", &access, true, &[]).unwrap()),
            path: ReadPath::default(),
            audit: None,
            peers: None,
        }
    }

    /// Applies `event` (keyed `key`, arriving on `input`) to its partition's state as an epoch
    /// stores it; the changes it published.
    fn stored(
        api: &ComplianceApi,
        state: &Store,
        key: &str,
        input: topology::Input,
        event: &ponte_proto::events::v1::Event,
    ) -> Vec<Vec<u8>> {
        let partition = ponte_bus::partition::of_key(key.as_bytes(), api.partitions);
        let mut tx = topology::Tx::new(state);
        tx.set_partition(partition);
        api.topology.apply(&mut tx, input, event).unwrap();
        api.topology.finish(&mut tx).unwrap();
        let (writes, outputs) = tx.take();
        let mut batch = state.batch();
        for (k, v) in writes {
            match v {
                Some(v) => batch.put(&k, &v),
                None => batch.delete(&k),
            }
        }
        batch.commit().unwrap();
        outputs
            .into_iter()
            .filter(|o| o.kind == topology::OutputKind::Change)
            .filter_map(|o| o.payload)
            .collect()
    }

    /// Applies a registry profile of `nis` (municipality São Paulo) to its partition's state as
    /// an epoch stores it; the change it published, and the change's view.
    fn stored_profile(api: &ComplianceApi, state: &Store, nis: &str) -> (Vec<u8>, Person) {
        let profile = ponte_proto::events::v1::Event {
            record_id: format!("registry:{nis}"),
            version: 1,
            source_system: "test".into(),
            ingest_time: Some(ponte_proto::Timestamp {
                seconds: 1_750_000_000,
                nanos: 0,
            }),
            record: Some(ponte_proto::events::v1::event::Record::PersonProfile(
                ponte_proto::events::v1::PersonProfile {
                    nis: nis.into(),
                    family_id: "F-0001".into(),
                    birth_date: "2017-03-10".into(),
                    sex: "M".into(),
                    municipality: "3550308".into(),
                    memberships: vec!["PBF".into()],
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let change = stored(api, state, nis, topology::Input::Registry, &profile)
            .pop()
            .unwrap();
        let published = ComplianceChange::decode(change.as_slice())
            .ok()
            .and_then(|c| match c.view {
                Some(View::Person(p)) => Some(p),
                _ => None,
            })
            .unwrap();
        (change, published)
    }

    #[tokio::test]
    async fn the_persons_of_an_owned_partition_are_read_from_the_state_the_others_are_unavailable()
    {
        let dir = tempfile::tempdir().unwrap();
        let state =
            Store::open(dir.path().join("state"), ponte_store::Durability::Process).unwrap();
        // A profile applied to the state of its partition, as an epoch stores it.
        let nis = "26827649960";
        let partition = ponte_bus::partition::of_key(nis.as_bytes(), 4);
        let api_owning_it = api(dir.path(), &state, &[partition]);
        let (_, published) = stored_profile(&api_owning_it, &state, nis);
        assert!(published.updated_time.is_some());
        let ask = || {
            Request::new(GetPersonRequest {
                nis: nis.to_owned(),
            })
        };
        // The owner answers from its state: the view as published, counters included.
        let got = api_owning_it.get_person(ask()).await.unwrap().into_inner();
        assert_eq!(got.person, Some(published.clone()));
        // An instance owning another partition (or still restoring this one), with no owner to
        // ask, cannot answer: UNAVAILABLE, never a NOT_FOUND it does not know.
        let others = api(dir.path(), &state, &[(partition + 1) % 4]);
        let status = others.get_person(ask()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(
            status
                .message()
                .contains(&format!("input partition {partition}")),
            "{status}"
        );

        // A digest written before digests kept the view's time: the view has none, until the
        // person's next change.
        let key = [
            topology::partition_prefix(partition),
            format!("p/{nis}").into_bytes(),
        ]
        .concat();
        let value = state.get(&key).unwrap().unwrap();
        let mut entry = topology::PersonEntry::decode(&value[1..]).unwrap();
        entry.digest.as_mut().unwrap().updated_time = None;
        let mut batch = state.batch();
        batch.put(&key, &[&value[..1], &entry.encode_to_vec()].concat());
        batch.commit().unwrap();
        let got = api_owning_it.get_person(ask()).await.unwrap().into_inner();
        let person = got.person.unwrap();
        assert_eq!(person.updated_time, None);
        assert_eq!(person.view_version, published.view_version);
    }

    /// A running peer service of `owner` (which owns `partitions`), and the peer reads of an
    /// instance the group says it owns them; cancel the token to stop the server.
    #[allow(clippy::type_complexity)]
    fn serve_peer(
        owner: &ComplianceApi,
        partitions: &[i32],
    ) -> (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
        Arc<crate::peers::Peers>,
    ) {
        use crate::peers::{Owners, PeerApi, Peers};
        use ponte_proto::reconciler::v1::peer_service_server::PeerServiceServer;
        let incoming =
            tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into()).unwrap();
        let address = incoming.local_addr().unwrap().to_string();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn({
            let (service, stop) = (PeerServiceServer::new(PeerApi(owner.clone())), stop.clone());
            async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, stop.cancelled())
                    .await
            }
        });
        let owners = Owners::of_one(address, partitions);
        let peer_config = crate::config::PeerConfig {
            advertise: Some("127.0.0.1:1".into()),
            ca_file: Default::default(),
            cert_file: Default::default(),
            key_file: Default::default(),
            timeout: std::time::Duration::from_secs(5),
            refresh: std::time::Duration::from_secs(60),
        };
        let peers = Arc::new(Peers::new(&peer_config, true, owners).unwrap());
        (stop, server, peers)
    }

    /// Another instance's partition is read from that instance's state through its peer
    /// service; when it cannot answer, the read is UNAVAILABLE.
    #[tokio::test]
    async fn an_instance_asks_the_owner_of_a_partition_and_is_unavailable_when_the_owner_cannot_answer()
     {
        use crate::peers::PeerApi;
        use ponte_proto::reconciler::v1::ReadPersonRequest;
        use ponte_proto::reconciler::v1::peer_service_server::PeerService;
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            Store::open(dir.path().join(name), ponte_store::Durability::Process).unwrap()
        };
        let (owner_state, state) = (open("os"), open("s"));
        let nis = "26827649960";
        let partition = ponte_bus::partition::of_key(nis.as_bytes(), 4);
        // The owner, whose callers without credentials act as a peer, serving its peer service.
        let owner = api_as(dir.path(), &owner_state, &[partition], "peer-instance");
        let (_, published) = stored_profile(&owner, &owner_state, nis);
        let (stop, server, peers) = serve_peer(&owner, &[partition]);
        // An instance owning another partition, which the group says the owner owns.
        let mut asker = api(dir.path(), &state, &[(partition + 1) % 4]);
        asker.peers = Some(peers);
        let ask = || {
            Request::new(GetPersonRequest {
                nis: nis.to_owned(),
            })
        };
        // The view comes from the owner's state.
        let got = asker.get_person(ask()).await.unwrap().into_inner();
        assert_eq!(got.person, Some(published.clone()));

        // The peer service answers only for partitions its instance owns, and only to peers.
        let peer_ask = || {
            Request::new(ReadPersonRequest {
                nis: nis.to_owned(),
            })
        };
        let other = api_as(dir.path(), &state, &[(partition + 1) % 4], "peer-instance");
        let status = PeerApi(other).read_person(peer_ask()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
        let not_a_peer = api(dir.path(), &owner_state, &[partition]);
        let status = PeerApi(not_a_peer)
            .read_person(peer_ask())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");

        // The owner gone, the asker cannot answer.
        stop.cancel();
        server.await.unwrap().unwrap();
        let status = asker.get_person(ask()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    }

    /// Two instances over stores in one directory.
    struct Pair {
        /// Owns partitions 0 and 2 of four (`theirs`); its callers without credentials act as
        /// a peer.
        owner: ComplianceApi,
        owner_state: Store,
        /// Owns partitions 1 and 3; its callers act as `federal`.
        asker: ComplianceApi,
        state: Store,
        theirs: Vec<i32>,
    }

    fn pair(dir: &std::path::Path) -> Pair {
        let open =
            |name: &str| Store::open(dir.join(name), ponte_store::Durability::Process).unwrap();
        let (owner_state, state) = (open("os"), open("s"));
        let theirs = vec![0, 2];
        Pair {
            owner: api_as(dir, &owner_state, &theirs, "peer-instance"),
            asker: api(dir, &state, &[1, 3]),
            owner_state,
            state,
            theirs,
        }
    }

    /// A municipality's persons and counts come from every partition's owner — this instance's
    /// state for its own, the other instance's peer service for the rest — merged in NIS order
    /// and summed; from the read model when an owner cannot answer.
    #[tokio::test]
    async fn a_municipality_s_list_and_counts_are_gathered_from_every_partition_s_owner() {
        use crate::peers::PeerApi;
        use ponte_proto::reconciler::v1::ListOwnedPersonsRequest;
        use ponte_proto::reconciler::v1::peer_service_server::PeerService;
        let dir = tempfile::tempdir().unwrap();
        let Pair {
            owner,
            owner_state,
            mut asker,
            state,
            theirs,
        } = pair(dir.path());
        // Twenty children of São Paulo, each applied to the state of the instance owning
        // their partition.
        let mut everyone: Vec<String> = (0..20)
            .map(|i| {
                Nis::with_check_digit(&format!("{:010}", 1_234_567_000 + i * 7919))
                    .unwrap()
                    .as_str()
                    .to_owned()
            })
            .collect();
        everyone.sort();
        let mut by_instance = [0, 0];
        for nis in &everyone {
            let p = ponte_bus::partition::of_key(nis.as_bytes(), 4);
            if theirs.contains(&p) {
                stored_profile(&owner, &owner_state, nis);
                by_instance[0] += 1;
            } else {
                stored_profile(&asker, &state, nis);
                by_instance[1] += 1;
            }
        }
        assert!(by_instance[0] > 0 && by_instance[1] > 0, "{by_instance:?}");
        let (stop, server, peers) = serve_peer(&owner, &theirs);
        asker.peers = Some(peers);
        let list = |page_size: u32, page_token: &str, status: OutcomeStatus| {
            let asker = asker.clone();
            let request = Request::new(ListPersonsRequest {
                municipality: "3550308".into(),
                conditionality: if status == OutcomeStatus::Unspecified {
                    String::new()
                } else {
                    "education".into()
                },
                period: String::new(),
                status: status as i32,
                page_token: page_token.to_owned(),
                page_size,
            });
            async move {
                use futures::StreamExt as _;
                let stream = asker.list_persons(request).await.unwrap().into_inner();
                stream
                    .map(|item| item.unwrap().person.unwrap().nis)
                    .collect::<Vec<_>>()
                    .await
            }
        };
        // The read model is empty: every person comes from the two states, in NIS order.
        assert_eq!(list(0, "", OutcomeStatus::Unspecified).await, everyone);
        // Page by page, three at a time, each page resuming after the last NIS.
        let mut paged: Vec<String> = Vec::new();
        loop {
            let after = paged.last().cloned().unwrap_or_default();
            let page = list(3, &after, OutcomeStatus::Unspecified).await;
            assert!(page.len() <= 3);
            if page.is_empty() {
                break;
            }
            paged.extend(page);
        }
        assert_eq!(paged, everyone);
        // Filtered: no school record yet, so not followed in education; nobody compliant.
        assert_eq!(list(0, "", OutcomeStatus::NotFollowed).await, everyone);
        assert!(list(0, "", OutcomeStatus::Compliant).await.is_empty());
        // The counts summed over both instances: every child in the 2025-B2 public.
        let indicators = || {
            asker.get_indicators(Request::new(GetIndicatorsRequest {
                municipality: "3550308".into(),
                period: "2025-B2".into(),
            }))
        };
        let rows = indicators().await.unwrap().into_inner().rows;
        let b2 = rows
            .iter()
            .find(|r| r.conditionality == "education")
            .unwrap();
        assert_eq!((b2.public, b2.followed), (everyone.len() as u64, 0));

        // The peer service answers only for partitions its instance owns.
        let status = PeerApi(owner.clone())
            .list_persons(Request::new(ListOwnedPersonsRequest {
                partitions: vec![0, 1],
                municipality: "3550308".into(),
                limit: 10,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
        // And only to peers.
        let not_a_peer = api(dir.path(), &owner_state, &theirs);
        let status = PeerApi(not_a_peer)
            .list_persons(Request::new(ListOwnedPersonsRequest {
                partitions: theirs.clone(),
                municipality: "3550308".into(),
                limit: 10,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");

        // The owner gone, the whole read is UNAVAILABLE: half the persons have no owner.
        stop.cancel();
        server.await.unwrap().unwrap();
        let status = asker
            .list_persons(Request::new(ListPersonsRequest {
                municipality: "3550308".into(),
                ..Default::default()
            }))
            .await
            .err()
            .unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        let status = indicators().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    }

    /// Applies a registry profile of household `id` of DIVIPOLA municipality `municipality` to
    /// its partition's state; the household's view published.
    fn stored_household(
        api: &ComplianceApi,
        state: &Store,
        id: &str,
        municipality: &str,
    ) -> ponte_proto::compliance::v1::Household {
        use ponte_proto::events::v1::{HouseholdMember, HouseholdProfile, event::Record};
        let profile = ponte_proto::events::v1::Event {
            record_id: format!("unidos-registry:household-profile:{id}"),
            version: 1,
            source_system: "unidos".into(),
            ingest_time: Some(ponte_proto::Timestamp {
                seconds: 1_750_000_000,
                nanos: 0,
            }),
            record: Some(Record::HouseholdProfile(HouseholdProfile {
                household_id: id.into(),
                municipality: municipality.into(),
                programmes: vec!["UNIDOS".into()],
                members: vec![HouseholdMember {
                    person_key: "registry:m1".into(),
                    registry_member_id: "m1".into(),
                    birth_date: "1985-01-01".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let change = stored(api, state, id, topology::Input::AssistanceFamily, &profile)
            .pop()
            .expect("a household view");
        match ComplianceChange::decode(change.as_slice()).unwrap().view {
            Some(View::Household(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    /// A household is read from the state of its partition's owner, and a municipality's
    /// household indicators are summed over every partition's owner, the other instance's
    /// through its peer service; from the read model when an owner cannot answer.
    #[tokio::test]
    async fn households_and_their_indicators_are_read_from_every_partition_s_owner() {
        use crate::peers::PeerApi;
        use ponte_proto::reconciler::v1::ReadHouseholdIndicatorsRequest;
        use ponte_proto::reconciler::v1::peer_service_server::PeerService;
        let dir = tempfile::tempdir().unwrap();
        let Pair {
            owner,
            owner_state,
            mut asker,
            state,
            theirs,
        } = pair(dir.path());
        // Twelve households of Pasto, each in the state of the instance owning its partition.
        let mut views = BTreeMap::new();
        let mut by_instance = [0, 0];
        for i in 0..12 {
            let id = format!("HH-52001-{i:04}");
            let p = ponte_bus::partition::of_key(id.as_bytes(), 4);
            let (api, state, n) = if theirs.contains(&p) {
                (&owner, &owner_state, 0)
            } else {
                (&asker, &state, 1)
            };
            views.insert(id.clone(), stored_household(api, state, &id, "52001"));
            by_instance[n] += 1;
        }
        assert!(by_instance[0] > 0 && by_instance[1] > 0, "{by_instance:?}");
        let (stop, server, peers) = serve_peer(&owner, &theirs);
        asker.peers = Some(peers);
        let get = |id: &str| {
            asker.get_household(Request::new(GetHouseholdRequest {
                household_id: id.to_owned(),
            }))
        };
        // Every household as published, wherever its partition is; none unknown.
        for (id, view) in &views {
            let got = get(id).await.unwrap().into_inner().household;
            assert_eq!(got.as_ref(), Some(view), "{id}");
        }
        let status = get("HH-NONE").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status}");
        // The indicators summed over both instances: twelve households, each achievement
        // counted once per household.
        let indicators = || {
            asker.get_household_indicators(Request::new(GetHouseholdIndicatorsRequest {
                municipality: "52001".into(),
            }))
        };
        let got = indicators().await.unwrap().into_inner();
        assert_eq!(got.households, 12);
        let achievements = views.values().next().unwrap().achievements.len() as u64;
        let counted: u64 = got
            .dimensions
            .iter()
            .map(|d| d.reached + d.not_reached + d.not_applicable + d.unknown)
            .sum();
        assert_eq!(counted, 12 * achievements);
        assert_eq!(
            indicators_of(&asker, "05001").await.households,
            0,
            "another municipality"
        );

        // The peer service answers only for partitions its instance owns, and only to peers.
        let ask_owned = |partitions: Vec<i32>| {
            Request::new(ReadHouseholdIndicatorsRequest {
                partitions,
                municipality: "52001".into(),
            })
        };
        let status = PeerApi(owner.clone())
            .read_household_indicators(ask_owned(vec![0, 1]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
        let not_a_peer = api(dir.path(), &owner_state, &theirs);
        let status = PeerApi(not_a_peer)
            .read_household_indicators(ask_owned(theirs.clone()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");

        // The owner gone, the asker cannot answer for its partitions: UNAVAILABLE, for the
        // indicators (they need every partition) and its households; its own still answer.
        stop.cancel();
        server.await.unwrap().unwrap();
        let status = indicators().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        for (id, view) in &views {
            let p = ponte_bus::partition::of_key(id.as_bytes(), 4);
            match get(id).await {
                Ok(got) if !theirs.contains(&p) => {
                    assert_eq!(got.into_inner().household.as_ref(), Some(view));
                }
                Err(status) if theirs.contains(&p) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                }
                other => panic!("{id} of partition {p}: {other:?}"),
            }
        }
    }

    async fn indicators_of(
        api: &ComplianceApi,
        municipality: &str,
    ) -> ponte_proto::compliance::v1::GetHouseholdIndicatorsResponse {
        api.get_household_indicators(Request::new(GetHouseholdIndicatorsRequest {
            municipality: municipality.into(),
        }))
        .await
        .unwrap()
        .into_inner()
    }

    /// A family change on `WatchChanges` for a caller of some places needs its members'
    /// municipality: when no owner can answer for them it is an error ending the stream (the
    /// caller resumes before it), never a change skipped.
    #[tokio::test]
    async fn a_family_change_a_scoped_watcher_cannot_place_now_is_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let state =
            Store::open(dir.path().join("state"), ponte_store::Durability::Process).unwrap();
        let nis = "26827649960";
        let partition = ponte_bus::partition::of_key(nis.as_bytes(), 4);
        let owner = api(dir.path(), &state, &[partition]);
        stored_profile(&owner, &state, nis);
        let family = || {
            Some(View::Family(Family {
                family_id: "F-0001".into(),
                members: vec![nis.into()],
                ..Default::default()
            }))
        };
        let sp = grant("state-sp-education");
        // The member's partition is this instance's: placed in São Paulo, shown.
        let shown = owner.watched(&sp, family()).await.unwrap();
        assert!(matches!(shown, Some(View::Family(_))), "{shown:?}");
        // No owner to ask: UNAVAILABLE, not None.
        let elsewhere = api(dir.path(), &state, &[(partition + 1) % 4]);
        let status = elsewhere.watched(&sp, family()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        // A federal watcher needs no place.
        let federal = elsewhere.watched(&grant("federal"), family()).await;
        assert!(matches!(federal, Ok(Some(View::Family(_)))), "{federal:?}");
    }

    #[test]
    fn a_household_shows_to_a_federal_scope_only() {
        let h = ponte_proto::compliance::v1::Household {
            household_id: "HH-1".into(),
            municipality: "52001".into(),
            ..Default::default()
        };
        assert_eq!(
            visible_household(&grant("federal"), h.clone()),
            Some(h.clone())
        );
        assert_eq!(visible_household(&grant("state-sp-education"), h), None);
        assert!(household_id("HH-1").is_ok());
        for bad in ["", "a/b", &"x".repeat(33)] {
            let e = household_id(bad).unwrap_err();
            assert!(e.message().starts_with("household_id:"), "{bad:?}");
        }
    }

    fn person(municipality: &str) -> Person {
        let outcome = |c: &str| ConditionalityOutcome {
            conditionality: c.to_owned(),
            ..Default::default()
        };
        Person {
            nis: "26827649960".into(),
            municipality: municipality.into(),
            outcomes: vec![outcome("education"), outcome("health")],
            school_attendance: vec![AttendanceRecord::default()],
            health_records: vec![HealthRecordView::default()],
            sources: [
                "person_profile",
                "school_attendance",
                "health_follow_up",
                "scfv_attendance",
            ]
            .into_iter()
            .map(|t| RecordSource {
                record_id: format!("{t}:1"),
                record_type: t.to_owned(),
                sender: "urn:ponte:principal:x".to_owned(),
                ..Default::default()
            })
            .collect(),
            ..Default::default()
        }
    }

    fn source_types(p: &Person) -> Vec<&str> {
        p.sources.iter().map(|s| s.record_type.as_str()).collect()
    }

    #[test]
    fn a_person_shows_only_within_the_scope_and_only_its_conditionalities() {
        let state = grant("state-sp-education");
        // Campinas (SP): in scope; health outcomes and records hidden, education kept.
        let seen = visible_person(&state, person("3509502")).unwrap();
        let conds: Vec<&str> = seen
            .outcomes
            .iter()
            .map(|o| o.conditionality.as_str())
            .collect();
        assert_eq!(conds, ["education"]);
        assert_eq!(seen.school_attendance.len(), 1);
        assert!(seen.health_records.is_empty());
        // Where records came from: only of the records it sees.
        assert_eq!(source_types(&seen), ["person_profile", "school_attendance"]);
        // Rio (RJ), and a person the registry has not placed: out of scope.
        assert!(visible_person(&state, person("3304557")).is_none());
        assert!(visible_person(&state, person("")).is_none());
        // The federal reader sees everything, unplaced persons included.
        let all = visible_person(&grant("federal"), person("")).unwrap();
        assert_eq!(all.outcomes.len(), 2);
        assert_eq!(all.health_records.len(), 1);
        assert_eq!(source_types(&all).len(), 4);
    }

    #[test]
    fn effects_caused_by_another_conditionality_are_hidden() {
        let state = grant("state-sp-education");
        let effect = |cause: &str| Effect {
            causes: vec![cause.to_owned()],
            ..Default::default()
        };
        assert!(effect_visible(
            &state,
            &["26827649960/education/2025-B2".into()]
        ));
        assert!(!effect_visible(
            &state,
            &["26827649960/health/2025-S1".into()]
        ));
        assert!(!effect_visible(
            &state,
            &[
                "26827649960/education/2025-B2".into(),
                "26827649960/health/2025-S1".into()
            ]
        ));
        // A federal caller's family shows wherever its members are.
        let family = Family {
            family_id: "F-1".into(),
            effects: vec![effect("x/health/2025-S1"), effect("x/education/2025-B2")],
            member_effects: vec![MemberEffects {
                effects: vec![effect("x/health/2025-S1")],
                ..Default::default()
            }],
            effects_json: "{}".into(),
            ..Default::default()
        };
        let seen = visible_family(&grant("federal"), None, family.clone()).unwrap();
        assert_eq!(seen, family);
        // A state reader: none of the family's members is in the view, so it is not in scope;
        // it is once a member is in one of the state's municipalities.
        assert!(visible_family(&state, None, family.clone()).is_none());
        assert!(visible_family(&state, Some("3304557"), family.clone()).is_none());
        assert!(visible_family(&state, Some("3550308"), family).is_some());
    }
}
