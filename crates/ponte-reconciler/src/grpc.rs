//! The gRPC `ComplianceService`: views, lists and indicators from the read model (every
//! person and family, whichever instance owns them); parked records from the local state.
use ponte_domain::ids::Nis;
use ponte_proto::compliance::v1::compliance_service_server::ComplianceService;
use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use ponte_bus::KafkaConfig;
use ponte_bus::consume::Assignment;
use ponte_domain::ids::IbgeMunicipality;
use ponte_domain::period::Period;
use ponte_domain::rules::RuleSet;
use ponte_proto::compliance::v1::{
    ComplianceChange, GetFamilyRequest, GetFamilyResponse, GetIndicatorsRequest,
    GetIndicatorsResponse, GetPersonRequest, GetPersonResponse, IndicatorRow, ListParkedRequest,
    ListParkedResponse, ListPersonsItem, ListPersonsRequest, NamedRate, OutcomeStatus,
    ParkedRecord, WatchChangesRequest, WatchedChange,
};
use ponte_store::Store;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tonic::{Request, Response, Status};

use crate::ReconcilerError;
use crate::{readmodel, topology};

/// Serves the compliance view: persons, families, lists and indicators from the read model,
/// parked records from the local partitioned state.
#[derive(Debug, Clone)]
pub struct ComplianceApi {
    /// The read model (see [`crate::readmodel`]).
    read: Store,
    /// The local partitioned state (only for ListParked).
    state: Store,
    /// The input partitions this instance owns (whose parked records ListParked reports).
    assignment: Assignment,
    rules: RuleSet,
    kafka: KafkaConfig,
    changes_topic: String,
}

type ItemStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn municipality(s: &str) -> Result<IbgeMunicipality, Status> {
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

impl ComplianceApi {
    /// `read`: the read model's store; `state`: the store of this instance's partitions, of
    /// which `assignment` tells the ones currently owned.
    pub fn new(
        read: Store,
        state: Store,
        assignment: Assignment,
        rules: RuleSet,
        kafka: KafkaConfig,
        changes_topic: String,
    ) -> Self {
        Self {
            read,
            state,
            assignment,
            rules,
            kafka,
            changes_topic,
        }
    }

    /// Runs a read of the read model off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ReconcilerError> + Send + 'static,
    ) -> Result<T, Status> {
        Self::blocking(self.read.clone(), f).await
    }

    /// Runs a read of the local state off the async runtime.
    async fn read_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ReconcilerError> + Send + 'static,
    ) -> Result<T, Status> {
        Self::blocking(self.state.clone(), f).await
    }

    async fn blocking<T: Send + 'static>(
        store: Store,
        f: impl FnOnce(&Store) -> Result<T, ReconcilerError> + Send + 'static,
    ) -> Result<T, Status> {
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("reading the view: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, "reading the view failed");
                Status::internal("reading the view failed")
            })
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
        let req = request.into_inner();
        let mun = municipality(&req.municipality)?.to_string();
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
        let (period, cond, after) = (req.period, req.conditionality, req.page_token);
        let persons = self
            .read(move |s| {
                let keep = |p: &ponte_proto::compliance::v1::Person| {
                    (period.is_empty() && cond.is_empty() && status == OutcomeStatus::Unspecified)
                        || p.outcomes.iter().any(|o| {
                            (period.is_empty() || o.period == period)
                                && (cond.is_empty() || o.conditionality == cond)
                                && (status == OutcomeStatus::Unspecified
                                    || o.status == status as i32)
                        })
                };
                readmodel::list_persons(s, &mun, &after, limit, &keep)
            })
            .await?;
        let items = persons.into_iter().map(|p| {
            Ok(ListPersonsItem {
                page_token: p.nis.clone(),
                person: Some(p),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn get_indicators(
        &self,
        request: Request<GetIndicatorsRequest>,
    ) -> Result<Response<GetIndicatorsResponse>, Status> {
        let req = request.into_inner();
        let mun = municipality(&req.municipality)?;
        let key = mun.to_string();
        let rows = self
            .read(move |s| readmodel::read_indicators(s, &key))
            .await?;
        let mut out = GetIndicatorsResponse::default();
        let mut latest: BTreeMap<String, (Period, f64)> = BTreeMap::new();
        for (cond, period, c) in rows {
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
        for r in &self.rules.indicators.follow_up_rates {
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
            loop {
                let msg = tokio::select! {
                    _ = tx.closed() => break,
                    m = consumer.recv() => m,
                };
                let item = match msg {
                    Ok(m) => {
                        position.insert(m.partition(), m.offset() + 1);
                        match m.payload().map(ComplianceChange::decode) {
                            Some(Ok(change)) => Ok(WatchedChange {
                                change: Some(change),
                                position: format_position(&position),
                            }),
                            _ => continue,
                        }
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
        let nis = Nis::parse(&request.get_ref().nis)
            .map_err(|e| Status::invalid_argument(format!("nis: {e}")))?;
        let person = self.read(move |s| readmodel::read_person(s, &nis)).await?;
        match person {
            Some(person) => Ok(Response::new(GetPersonResponse {
                person: Some(person),
            })),
            None => Err(Status::not_found(format!(
                "nis: no record for {} in the view",
                nis.masked()
            ))),
        }
    }

    async fn get_family(
        &self,
        request: Request<GetFamilyRequest>,
    ) -> Result<Response<GetFamilyResponse>, Status> {
        let id = request.into_inner().family_id;
        if id.is_empty() || id.len() > 64 || id.contains('/') {
            return Err(Status::invalid_argument(
                "family_id: required, at most 64 characters, no '/'",
            ));
        }
        let lookup = id.clone();
        let family = self
            .read(move |s| readmodel::read_family(s, &lookup))
            .await?;
        match family {
            Some(family) => Ok(Response::new(GetFamilyResponse {
                family: Some(family),
            })),
            None => Err(Status::not_found(format!(
                "family_id: no family {id} in the view"
            ))),
        }
    }

    async fn list_parked(
        &self,
        request: Request<ListParkedRequest>,
    ) -> Result<Response<ListParkedResponse>, Status> {
        let limit = match request.get_ref().limit {
            0 => 100,
            n if n > 10_000 => {
                return Err(Status::invalid_argument("limit: at most 10000"));
            }
            n => n as usize,
        };
        let owned: Vec<i32> = self.assignment.partition_numbers().into_iter().collect();
        let parked = self
            .read_state(move |s| topology::read_parked(s, &owned))
            .await?;
        let total = parked.len() as u64;
        let parked = parked
            .into_iter()
            .take(limit)
            .map(|(identifier, e)| ParkedRecord {
                identifier,
                record_id: e.record_id,
                version: e.version,
                ingest_time: e.ingest_time,
            })
            .collect();
        Ok(Response::new(ListParkedResponse { parked, total }))
    }
}
