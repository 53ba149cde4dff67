//! Reads that span every partition — a municipality's persons (`ListPersons`), its outcome
//! counts (`GetIndicators`) and its household indicators (`GetHouseholdIndicators`) — gathered
//! from each partition's owner: this instance's state for the partitions it owns, the other
//! instances (`PeerService.ListPersons`, `ReadIndicators`, `ReadHouseholdIndicators`) for
//! theirs, each answering from its partitions' index ([`crate::topology`]'s `mi/`, `ic/` and
//! `hx/`). Persons are merged in NIS order, a page at a time from each owner; counts are
//! summed. When a partition has no owner that can answer — none known, resting after a
//! failure, not advertising peers, or one that fails meanwhile — the whole read is
//! `UNAVAILABLE`.
use std::collections::{BTreeMap, VecDeque};

use ponte_domain::indicators::Counts;
use ponte_proto::compliance::v1::{GetHouseholdIndicatorsResponse, Person};
use ponte_proto::reconciler::v1::{
    ListOwnedPersonsRequest, PartitionIndicatorRow, ReadHouseholdIndicatorsRequest,
    ReadIndicatorsRequest,
};
use ponte_store::Store;
use tonic::Status;

use crate::ReconcilerError;
use crate::grpc::ComplianceApi;
use crate::peers::{LIST_PAGE, Owner};
use crate::topology::{
    ListFilter, Topology, add_counts, add_household_indicators, counts_of, indicator_counts,
};

/// Outcome counts by (conditionality, period).
pub type Indicators = BTreeMap<(String, String), Counts>;

/// Where a span of partitions is read.
enum Source {
    /// This instance's state.
    Local(Vec<i32>),
    Peer(Owner),
}

/// One source's persons, a page at a time, for the merge.
struct Run {
    source: Source,
    after: String,
    page: VecDeque<Person>,
    done: bool,
}

impl Run {
    fn partitions(&self) -> usize {
        match &self.source {
            Source::Local(p) => p.len(),
            Source::Peer(owner) => owner.partitions.len(),
        }
    }
}

/// How many persons to ask of a source holding `partitions` of `total` partitions when
/// `remaining` persons are still to list: its share of them (partitions are keyed by a hash of
/// the NIS, so each holds about as many of a municipality's persons), a quarter more and eight
/// besides, never more than `remaining` nor a page. A source whose page runs out before the
/// merge is done is asked for the next, so a short guess costs a round trip, never a person;
/// asking every source for all `remaining` made it compute views the merge then left out
/// (half of them with two instances; docs/benchmarks.md).
fn page_size(remaining: usize, partitions: usize, total: usize) -> usize {
    let share = (remaining * partitions * 5).div_ceil(total * 4);
    (share + 8).min(remaining).clamp(1, LIST_PAGE)
}

/// Where a read spanning every partition was answered from: `state` (this instance owns them
/// all) or `owner` (some from other instances).
pub type Route = &'static str;

fn from_of(sources: &[Source]) -> Route {
    if sources.iter().any(|s| matches!(s, Source::Peer(_))) {
        "owner"
    } else {
        "state"
    }
}

impl ComplianceApi {
    /// This instance's prepared partitions, and the others; `None` when an owner of the others
    /// cannot be asked (no peers, none known, resting).
    fn sources(&self) -> Option<Vec<Source>> {
        let (local, others): (Vec<i32>, Vec<i32>) = {
            let assignment = self.assignment.borrow();
            (0..self.partitions).partition(|&p| assignment.is_prepared(p))
        };
        let mut sources = Vec::new();
        if !others.is_empty() {
            let owners = self.peers.as_deref()?.owners_of(&others)?;
            sources.extend(owners.into_iter().map(Source::Peer));
        }
        if !local.is_empty() {
            sources.push(Source::Local(local));
        }
        Some(sources)
    }

    /// Whether every one of `partitions` is this instance's and prepared.
    fn owns_all(&self, partitions: &[i32]) -> bool {
        let assignment = self.assignment.borrow();
        !partitions.is_empty()
            && partitions
                .iter()
                .all(|&p| (0..self.partitions).contains(&p) && assignment.is_prepared(p))
    }

    /// `read` of `partitions` of the state (off the async runtime), if every one of them is
    /// this instance's and prepared; `None` otherwise. As every read but ListParked: none once
    /// the read path failed.
    async fn read_owned<T: Send + 'static>(
        &self,
        partitions: Vec<i32>,
        read: impl FnOnce(&Topology, &Store, &[i32]) -> Result<T, ReconcilerError> + Send + 'static,
    ) -> Result<Option<T>, Status> {
        if !self.owns_all(&partitions) {
            return Ok(None);
        }
        self.check_read_path()?;
        let topology = self.topology.clone();
        self.read_state(move |s| read(&topology, s, &partitions))
            .await
            .map(Some)
    }

    /// Up to `limit` persons of `municipality` in `partitions` after `after` that `filter`
    /// keeps, from the state ([`Self::read_owned`]).
    pub(crate) async fn list_owned(
        &self,
        partitions: Vec<i32>,
        municipality: String,
        filter: ListFilter,
        after: String,
        limit: usize,
    ) -> Result<Option<Vec<Person>>, Status> {
        self.read_owned(partitions, move |t, s, parts| {
            t.list_persons(s, parts, &municipality, &after, limit, &filter)
        })
        .await
    }

    /// The outcome counts of `municipality` summed over `partitions` ([`Self::read_owned`]).
    pub(crate) async fn indicators_owned(
        &self,
        partitions: Vec<i32>,
        municipality: String,
    ) -> Result<Option<Indicators>, Status> {
        self.read_owned(partitions, move |t, s, parts| {
            t.read_indicators(s, parts, &municipality)
        })
        .await
    }

    /// The household indicators of DIVIPOLA municipality `municipality` counted over
    /// `partitions` ([`Self::read_owned`]).
    pub(crate) async fn household_indicators_owned(
        &self,
        partitions: Vec<i32>,
        municipality: String,
    ) -> Result<Option<GetHouseholdIndicatorsResponse>, Status> {
        self.read_owned(partitions, move |t, s, parts| {
            t.household_indicators(s, parts, &municipality)
        })
        .await
    }

    /// Each source's answer to a read spanning every partition: `local`'s for this instance's
    /// partitions, `peer`'s (`None`: it failed) for each other owner's, asked at once; `None`
    /// when a partition's owner cannot answer.
    async fn gather<T, L, P>(
        &self,
        local: impl Fn(Vec<i32>) -> L,
        peer: impl Fn(Owner) -> P,
    ) -> Result<Option<(Vec<T>, Route)>, Status>
    where
        L: Future<Output = Result<Option<T>, Status>>,
        P: Future<Output = Option<T>>,
    {
        let Some(sources) = self.sources() else {
            return Ok(None);
        };
        let from = from_of(&sources);
        let answers = futures::future::join_all(sources.into_iter().map(|source| {
            let (mut l, mut p) = (None, None);
            match source {
                Source::Local(partitions) => l = Some(local(partitions)),
                Source::Peer(owner) => p = Some(peer(owner)),
            }
            async move {
                match (l, p) {
                    (Some(l), _) => l.await,
                    (_, Some(p)) => Ok(p.await),
                    (None, None) => Ok(None),
                }
            }
        }))
        .await;
        let mut out = Vec::new();
        for answer in answers {
            match answer? {
                Some(a) => out.push(a),
                None => return Ok(None),
            }
        }
        Ok(Some((out, from)))
    }

    /// The household indicators of DIVIPOLA municipality `municipality` summed over every
    /// partition, from each partition's owner; `None` when one cannot answer.
    pub(crate) async fn household_indicators_from_owners(
        &self,
        municipality: &str,
    ) -> Result<Option<(GetHouseholdIndicatorsResponse, Route)>, Status> {
        let gathered = self
            .gather(
                |partitions| self.household_indicators_owned(partitions, municipality.to_owned()),
                |owner| async move {
                    let request = ReadHouseholdIndicatorsRequest {
                        partitions: owner.partitions.clone(),
                        municipality: municipality.to_owned(),
                    };
                    self.peers
                        .as_deref()?
                        .ask_owner(&owner, |mut c| async move {
                            Ok(c.read_household_indicators(request).await?.into_inner())
                        })
                        .await
                },
            )
            .await?;
        Ok(gathered.map(|(answers, from)| {
            let mut sum = GetHouseholdIndicatorsResponse {
                municipality: municipality.to_owned(),
                ..Default::default()
            };
            for a in answers {
                add_household_indicators(&mut sum, a);
            }
            (sum, from)
        }))
    }

    /// The next page of `run`'s persons: up to `n` after its last one. `None`: a peer failed.
    async fn page(
        &self,
        run: &Run,
        municipality: &str,
        filter: &ListFilter,
        n: usize,
    ) -> Result<Option<Vec<Person>>, Status> {
        match &run.source {
            Source::Local(partitions) => {
                self.list_owned(
                    partitions.clone(),
                    municipality.to_owned(),
                    filter.clone(),
                    run.after.clone(),
                    n,
                )
                .await
            }
            Source::Peer(owner) => {
                let Some(peers) = self.peers.as_deref() else {
                    return Ok(None);
                };
                let request = ListOwnedPersonsRequest {
                    partitions: owner.partitions.clone(),
                    municipality: municipality.to_owned(),
                    period: filter.period.clone(),
                    conditionality: filter.conditionality.clone(),
                    status: filter.status as i32,
                    after: run.after.clone(),
                    limit: n as u32,
                };
                Ok(peers
                    .ask_owner(owner, |mut c| async move {
                        Ok(c.list_persons(request).await?.into_inner().persons)
                    })
                    .await)
            }
        }
    }

    /// Up to `limit` persons of `municipality` after `after` that `filter` keeps, from every
    /// partition's owner, merged in NIS order; `None` when a partition's owner cannot answer.
    pub(crate) async fn list_from_owners(
        &self,
        municipality: &str,
        filter: &ListFilter,
        after: &str,
        limit: usize,
    ) -> Result<Option<(Vec<Person>, Route)>, Status> {
        let Some(sources) = self.sources() else {
            return Ok(None);
        };
        let from = from_of(&sources);
        let total = self.partitions.max(1) as usize;
        let mut runs: Vec<Run> = sources
            .into_iter()
            .map(|source| Run {
                source,
                after: after.to_owned(),
                page: VecDeque::new(),
                done: false,
            })
            .collect();
        let mut out: Vec<Person> = Vec::new();
        while out.len() < limit {
            let wanted: Vec<(usize, usize)> = (0..runs.len())
                .filter(|&i| runs[i].page.is_empty() && !runs[i].done)
                .map(|i| (i, page_size(limit - out.len(), runs[i].partitions(), total)))
                .collect();
            let pages = futures::future::join_all(
                wanted
                    .iter()
                    .map(|&(i, n)| self.page(&runs[i], municipality, filter, n)),
            )
            .await;
            for ((i, n), page) in wanted.into_iter().zip(pages) {
                let Some(page) = page? else {
                    return Ok(None);
                };
                let run = &mut runs[i];
                run.done = page.len() < n;
                if let Some(last) = page.last() {
                    run.after = last.nis.clone();
                }
                run.page.extend(page);
            }
            let Some(next) = runs
                .iter_mut()
                .filter(|r| !r.page.is_empty())
                .min_by(|a, b| a.page[0].nis.cmp(&b.page[0].nis))
            else {
                break;
            };
            out.extend(next.page.pop_front());
        }
        Ok(Some((out, from)))
    }

    /// The outcome counts of `municipality` summed over every partition, from each partition's
    /// owner; `None` when one cannot answer.
    pub(crate) async fn indicators_from_owners(
        &self,
        municipality: &str,
    ) -> Result<Option<(Indicators, Route)>, Status> {
        let gathered = self
            .gather(
                |partitions| self.indicators_owned(partitions, municipality.to_owned()),
                |owner| async move {
                    let request = ReadIndicatorsRequest {
                        partitions: owner.partitions.clone(),
                        municipality: municipality.to_owned(),
                    };
                    let rows = self
                        .peers
                        .as_deref()?
                        .ask_owner(&owner, |mut c| async move {
                            Ok(c.read_indicators(request).await?.into_inner().rows)
                        })
                        .await?;
                    Some(
                        rows.into_iter()
                            .map(|r| {
                                let c = counts_of(&r.counts.unwrap_or_default());
                                ((r.conditionality, r.period), c)
                            })
                            .collect::<Indicators>(),
                    )
                },
            )
            .await?;
        Ok(gathered.map(|(answers, from)| {
            let mut sum = Indicators::new();
            for rows in answers {
                for (k, c) in rows {
                    add_counts(sum.entry(k).or_default(), &c);
                }
            }
            (sum, from)
        }))
    }
}

/// Indicators as a peer answers them.
pub fn indicator_rows(indicators: Indicators) -> Vec<PartitionIndicatorRow> {
    indicators
        .into_iter()
        .map(|((conditionality, period), c)| PartitionIndicatorRow {
            conditionality,
            period,
            counts: Some(indicator_counts(&c)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_asked_for_its_share_and_a_margin_never_more_than_remains() {
        // Alone: everything remaining, up to a page.
        assert_eq!(page_size(100, 6, 6), 100);
        assert_eq!(page_size(1000, 6, 6), LIST_PAGE);
        // Half the partitions: half of 100, a quarter more, and eight.
        assert_eq!(page_size(100, 3, 6), 63 + 8);
        // Near the end of a page: never more than remains, and at least one.
        assert_eq!(page_size(3, 1, 6), 3);
        assert_eq!(page_size(1, 1, 6), 1);
    }
}
