//! Reads across instances: a person, a family or a household of a partition another instance
//! owns is read from that instance's state, over mutual TLS (`ponte.reconciler.v1.PeerService`)
//! (lists and counts: `crate::lists`).
//!
//! Who owns which partition comes from the consumer group's description
//! ([`ponte_bus::members`]), read again every `peer.refresh`: each instance joins the group
//! advertising the address of its gRPC listener. The instance a caller asked applies the
//! caller's grant to the view and audits the read; the owner audits the peer's read. Whatever
//! goes wrong — no owner known, the owner no longer owning the partition or still restoring
//! it, a timeout — the read is answered `UNAVAILABLE` (the caller retries), and counted
//! (`ponte_reconciler_peer_reads_total{result}`); a peer whose read failed is not asked again for
//! `peer.refresh`, and its first failure and its recovery are logged.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ponte_audit::log::ReadSubject;
use ponte_bus::KafkaConfig;
use ponte_domain::ids::Nis;
use ponte_proto::compliance::v1::OutcomeStatus;
use ponte_proto::compliance::v1::{Family, GetHouseholdIndicatorsResponse, Household, Person};
use ponte_proto::reconciler::v1::peer_service_client::PeerServiceClient;
use ponte_proto::reconciler::v1::peer_service_server::PeerService;
use ponte_proto::reconciler::v1::{
    ListOwnedPersonsRequest, ListOwnedPersonsResponse, ReadFamilyRequest, ReadFamilyResponse,
    ReadHouseholdIndicatorsRequest, ReadHouseholdRequest, ReadHouseholdResponse,
    ReadIndicatorsRequest, ReadIndicatorsResponse, ReadPersonRequest, ReadPersonResponse,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use crate::config::PeerConfig;
use crate::grpc::ComplianceApi;
use crate::topology::ListFilter;
use crate::{ReconcilerError, startup};

/// Counts a peer read this instance asked for, by its result: `answered`, `not_owner` (the
/// instance asked did not own the partition, or was still restoring it), `failed` (timeout,
/// connection, refusal), `skipped` (the owner failed lately and was not asked).
fn peer_read(result: &'static str) {
    metrics::counter!("ponte_reconciler_peer_reads_total", "result" => result).increment(1);
}

/// Which instance owns which input partition, and where it answers: the group's last stable
/// description, without this instance.
#[derive(Debug, Default)]
pub struct Owners {
    by_partition: RwLock<BTreeMap<i32, Arc<str>>>,
}

impl Owners {
    /// Owners as a stable group of one other member at `address` owning `partitions` of the
    /// `inputs` topic says (for tests).
    #[cfg(test)]
    pub(crate) fn of_one(address: String, partitions: &[i32]) -> Arc<Owners> {
        let owners = Arc::new(Owners::default());
        owners.update(
            &ponte_bus::members::GroupView {
                stable: true,
                members: vec![ponte_bus::members::Member {
                    advertised: Some(address),
                    partitions: partitions
                        .iter()
                        .map(|&p| ("inputs".to_owned(), p))
                        .collect(),
                }],
            },
            &["inputs".to_owned()].into(),
            "127.0.0.1:1",
        );
        owners
    }

    /// The address of the instance that owns input partition `partition`, if another
    /// instance that advertises one does.
    pub fn owner(&self, partition: i32) -> Option<Arc<str>> {
        self.by_partition
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .cloned()
    }

    /// Takes the owners from a description of the group: each partition of `inputs` assigned
    /// to a member advertising an address other than `own`. A description taken while the
    /// group rebalances is left alone (its assignments are stale or empty); until the next
    /// stable one, the owners before the rebalance are asked, and a partition that moved is
    /// answered `not_owner`.
    pub fn update(
        &self,
        view: &ponte_bus::members::GroupView,
        inputs: &BTreeSet<String>,
        own: &str,
    ) {
        if !view.stable {
            return;
        }
        let mut owners = BTreeMap::new();
        for m in &view.members {
            let Some(address) = m.advertised.as_deref().filter(|a| *a != own) else {
                continue;
            };
            let address: Arc<str> = Arc::from(address);
            for (topic, p) in &m.partitions {
                if inputs.contains(topic) {
                    owners.insert(*p, Arc::clone(&address));
                }
            }
        }
        *self
            .by_partition
            .write()
            .unwrap_or_else(PoisonError::into_inner) = owners;
    }
}

/// Reads the group's description every `refresh` into `owners` until `shutdown`, on a thread of
/// its own (the description is a blocking call to the group coordinator).
pub fn follow_owners(
    kafka: &KafkaConfig,
    group: &str,
    inputs: BTreeSet<String>,
    own: String,
    owners: Arc<Owners>,
    refresh: Duration,
    shutdown: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, ReconcilerError> {
    let client: rdkafka::consumer::BaseConsumer = kafka
        .client_config("ponte-reconciler-owners")
        .create()
        .map_err(startup)?;
    let group = group.to_owned();
    std::thread::Builder::new()
        .name("peer-owners".to_owned())
        .spawn(move || {
            let mut failing = false;
            while !shutdown.is_cancelled() {
                match ponte_bus::members::describe(&client, &group, Duration::from_secs(5)) {
                    Ok(view) => {
                        if failing {
                            tracing::info!("the group's description is read again");
                            failing = false;
                        }
                        owners.update(&view, &inputs, &own);
                    }
                    Err(e) if !failing => {
                        tracing::warn!(error = %e, "the group's description could not be read; peer reads keep the owners known before");
                        failing = true;
                    }
                    Err(_) => {}
                }
                let until = Instant::now() + refresh;
                while !shutdown.is_cancelled() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50).min(refresh));
                }
            }
        })
        .map_err(|e| startup(format!("starting the peer owners thread: {e}")))
}

/// What a peer read gave.
#[derive(Debug)]
pub enum Asked<T> {
    /// The owner's view (`None`: not in the view).
    Answered(Option<T>),
    /// No owner to ask: none known, or it failed lately.
    NoOwner,
    /// The owner was asked and did not answer with the view (counted, logged at debug).
    Failed,
}

/// Most persons one page of a peer's `ListPersons` holds.
pub const LIST_PAGE: usize = 256;

/// The instance that owns some of the partitions a read spans.
#[derive(Debug, Clone)]
pub struct Owner {
    pub address: Arc<str>,
    pub client: PeerServiceClient<Channel>,
    /// The partitions it owns, of those asked about.
    pub partitions: Vec<i32>,
}

/// One peer: its channel, and until when it is not asked after a failure.
#[derive(Debug, Clone)]
struct Peer {
    client: PeerServiceClient<Channel>,
    resting_until: Option<Instant>,
    /// Whether its last read failed (logged once, when it starts failing).
    failing: bool,
}

/// The client side of peer reads.
#[derive(Debug)]
pub struct Peers {
    owners: Arc<Owners>,
    tls: Option<ClientTlsConfig>,
    timeout: Duration,
    rest: Duration,
    peers: Mutex<HashMap<Arc<str>, Peer>>,
}

impl Peers {
    /// Peer reads as `cfg` says, of the owners `owners` follows; plaintext when the listeners
    /// are (`insecure`), else with `cfg`'s client certificate, trusting `cfg.ca_file`.
    pub fn new(
        cfg: &PeerConfig,
        insecure: bool,
        owners: Arc<Owners>,
    ) -> Result<Peers, ReconcilerError> {
        let tls = if insecure {
            None
        } else {
            let read = |key: &str, path: &std::path::Path| {
                if path.as_os_str().is_empty() {
                    return Err(startup(format!(
                        "reconciler.peer.{key} is not set: peer reads need the instance's client certificate, its key and the CA of the other instances' server certificates (or advertise = \"\" for an instance that owns every partition alone)"
                    )));
                }
                std::fs::read(path)
                    .map_err(|e| startup(format!("reconciler.peer.{key} {}: {e}", path.display())))
            };
            let (ca, cert, key) = (
                read("ca_file", &cfg.ca_file)?,
                read("cert_file", &cfg.cert_file)?,
                read("key_file", &cfg.key_file)?,
            );
            Some(
                ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
        };
        Ok(Peers {
            owners,
            tls,
            timeout: cfg.timeout,
            rest: cfg.refresh,
            peers: Mutex::new(HashMap::new()),
        })
    }

    /// The client of the owner of `partition`, unless none is known or it is resting.
    fn client(&self, partition: i32) -> Option<(Arc<str>, PeerServiceClient<Channel>)> {
        let address = self.owners.owner(partition)?;
        self.client_of(address)
    }

    /// The owners of `partitions` with their clients and the partitions each owns, unless one
    /// of `partitions` has no owner known or its owner is resting.
    pub fn owners_of(&self, partitions: &[i32]) -> Option<Vec<Owner>> {
        let mut by_address: BTreeMap<Arc<str>, Vec<i32>> = BTreeMap::new();
        for &p in partitions {
            by_address.entry(self.owners.owner(p)?).or_default().push(p);
        }
        by_address
            .into_iter()
            .map(|(address, partitions)| {
                let (address, client) = self.client_of(address)?;
                Some(Owner {
                    address,
                    client,
                    partitions,
                })
            })
            .collect()
    }

    /// The client of the instance at `address`, unless it is resting.
    fn client_of(&self, address: Arc<str>) -> Option<(Arc<str>, PeerServiceClient<Channel>)> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(peer) = peers.get_mut(&address) {
            if peer.resting_until.is_some_and(|t| Instant::now() < t) {
                peer_read("skipped");
                return None;
            }
            peer.resting_until = None;
            return Some((address, peer.client.clone()));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .ok()?
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .tcp_nodelay(true);
        let endpoint = match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()).ok()?,
            None => endpoint,
        };
        // A page of persons is at most [`LIST_PAGE`] views of a few KiB each.
        let client =
            PeerServiceClient::new(endpoint.connect_lazy()).max_decoding_message_size(64 << 20);
        peers.insert(
            Arc::clone(&address),
            Peer {
                client: client.clone(),
                resting_until: None,
                failing: false,
            },
        );
        Some((address, client))
    }

    /// Notes a failed read of `address`: but for `not_owner` (the partition moved), the peer
    /// rests for `refresh`, and the first failure after an answer is logged.
    fn failed(&self, address: &Arc<str>, status: &Status) {
        let not_owner = status.code() == tonic::Code::FailedPrecondition;
        peer_read(if not_owner { "not_owner" } else { "failed" });
        if not_owner {
            tracing::debug!(peer = %address, "the peer does not own the partition (any more)");
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(peer) = peers.get_mut(address) {
            if !peer.failing {
                tracing::warn!(peer = %address, code = ?status.code(), error = %status.message(), rest = ?self.rest, "a peer read failed; reads of that peer's partitions are UNAVAILABLE until it answers again");
                peer.failing = true;
            }
            peer.resting_until = Some(Instant::now() + self.rest);
        }
    }

    /// Notes an answer of `address`.
    fn answered(&self, address: &Arc<str>) {
        peer_read("answered");
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(peer) = peers.get_mut(address).filter(|p| p.failing) {
            tracing::info!(peer = %address, "the peer answers again");
            peer.failing = false;
        }
    }

    /// `call`, given up after `peer.timeout` whatever it waits for. The channel's own request
    /// timeout does not cover the wait for a connection to be ready, and a peer that accepts
    /// connections but does not run (SIGSTOP, a frozen VM) holds a new one in its TLS
    /// handshake for ever: a read asked of it never returned, nor did its caller's.
    async fn within_deadline<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "no answer within reconciler.peer.timeout_ms ({} ms)",
                    self.timeout.as_millis()
                )))
            })
    }

    /// What `call` gets from the owner of `partition`.
    async fn ask<T, Fut>(
        &self,
        partition: i32,
        call: impl FnOnce(PeerServiceClient<Channel>) -> Fut,
    ) -> Asked<T>
    where
        Fut: std::future::Future<Output = Result<Option<T>, Status>>,
    {
        let Some((address, client)) = self.client(partition) else {
            return Asked::NoOwner;
        };
        match self.within_deadline(call(client)).await {
            Ok(view) => {
                self.answered(&address);
                Asked::Answered(view)
            }
            Err(status) => {
                self.failed(&address, &status);
                Asked::Failed
            }
        }
    }

    /// What `call` gets from `owner`, its answer or failure noted as [`Peers::ask`]'s; `None`
    /// when it failed.
    pub async fn ask_owner<T, Fut>(
        &self,
        owner: &Owner,
        call: impl FnOnce(PeerServiceClient<Channel>) -> Fut,
    ) -> Option<T>
    where
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        match self.within_deadline(call(owner.client.clone())).await {
            Ok(answer) => {
                self.answered(&owner.address);
                Some(answer)
            }
            Err(status) => {
                self.failed(&owner.address, &status);
                None
            }
        }
    }

    /// Person `nis`'s view from the owner of its partition `partition`.
    pub async fn person(&self, partition: i32, nis: &Nis) -> Asked<Person> {
        let nis = nis.as_str().to_owned();
        self.ask(partition, |mut c| async move {
            let r = c.read_person(ReadPersonRequest { nis }).await?;
            Ok(r.into_inner().person)
        })
        .await
    }

    /// Family `id`'s view from the owner of its partition `partition`.
    pub async fn family(&self, partition: i32, id: &str) -> Asked<Family> {
        let family_id = id.to_owned();
        self.ask(partition, |mut c| async move {
            let r = c.read_family(ReadFamilyRequest { family_id }).await?;
            Ok(r.into_inner().family)
        })
        .await
    }

    /// Household `id`'s view from the owner of its partition `partition`.
    pub async fn household(&self, partition: i32, id: &str) -> Asked<Household> {
        let household_id = id.to_owned();
        self.ask(partition, |mut c| async move {
            let r = c
                .read_household(ReadHouseholdRequest { household_id })
                .await?;
            Ok(r.into_inner().household)
        })
        .await
    }
}

/// The server side of peer reads: views of the partitions this instance owns, computed from
/// its state, to principals with the `peer` right.
#[derive(Debug, Clone)]
pub struct PeerApi(pub ComplianceApi);

/// `FAILED_PRECONDITION`: the partition is not (or not yet) this instance's.
fn not_owner() -> Status {
    Status::failed_precondition("this instance does not own that partition (or is restoring it)")
}

#[tonic::async_trait]
impl PeerService for PeerApi {
    async fn read_person(
        &self,
        request: Request<ReadPersonRequest>,
    ) -> Result<Response<ReadPersonResponse>, Status> {
        let api = &self.0;
        let (caller, _permit) = ponte_edge::grpc::admit_peer(&api.gate, &request, "ReadPerson")?;
        let nis = Nis::parse(&request.get_ref().nis)
            .map_err(|e| Status::invalid_argument(format!("nis: {e}")))?;
        let person = api.local_person(&nis)?.ok_or_else(not_owner)?;
        api.audited_as(
            &caller.principal,
            "PeerService/ReadPerson",
            ReadSubject::Person(nis.as_str()),
            usize::from(person.is_some()),
        )
        .await?;
        Ok(Response::new(ReadPersonResponse { person }))
    }

    async fn list_persons(
        &self,
        request: Request<ListOwnedPersonsRequest>,
    ) -> Result<Response<ListOwnedPersonsResponse>, Status> {
        let api = &self.0;
        let (caller, _permit) = ponte_edge::grpc::admit_peer(&api.gate, &request, "ListPersons")?;
        let req = request.into_inner();
        let municipality = crate::grpc::municipality(&req.municipality)?.to_string();
        let filter = ListFilter {
            status: OutcomeStatus::try_from(req.status)
                .map_err(|_| Status::invalid_argument("status: unknown value"))?,
            period: req.period,
            conditionality: req.conditionality,
        };
        let limit = match req.limit {
            n @ 1..=1000 => n as usize,
            _ => return Err(Status::invalid_argument("limit: 1 to 1000")),
        };
        let persons = api
            .list_owned(
                req.partitions,
                municipality.clone(),
                filter,
                req.after,
                limit,
            )
            .await?
            .ok_or_else(not_owner)?;
        api.audited_as(
            &caller.principal,
            "PeerService/ListPersons",
            ReadSubject::Municipality(&municipality),
            persons.len(),
        )
        .await?;
        Ok(Response::new(ListOwnedPersonsResponse { persons }))
    }

    async fn read_indicators(
        &self,
        request: Request<ReadIndicatorsRequest>,
    ) -> Result<Response<ReadIndicatorsResponse>, Status> {
        let api = &self.0;
        let (caller, _permit) =
            ponte_edge::grpc::admit_peer(&api.gate, &request, "ReadIndicators")?;
        let req = request.into_inner();
        let municipality = crate::grpc::municipality(&req.municipality)?.to_string();
        let rows = api
            .indicators_owned(req.partitions, municipality.clone())
            .await?
            .ok_or_else(not_owner)?;
        let rows = crate::lists::indicator_rows(rows);
        api.audited_as(
            &caller.principal,
            "PeerService/ReadIndicators",
            ReadSubject::Municipality(&municipality),
            rows.len(),
        )
        .await?;
        Ok(Response::new(ReadIndicatorsResponse { rows }))
    }

    async fn read_household(
        &self,
        request: Request<ReadHouseholdRequest>,
    ) -> Result<Response<ReadHouseholdResponse>, Status> {
        let api = &self.0;
        let (caller, _permit) = ponte_edge::grpc::admit_peer(&api.gate, &request, "ReadHousehold")?;
        let id = crate::grpc::household_id(&request.get_ref().household_id)?.to_owned();
        let household = api.local_household(&id)?.ok_or_else(not_owner)?;
        api.audited_as(
            &caller.principal,
            "PeerService/ReadHousehold",
            ReadSubject::Household(&id),
            usize::from(household.is_some()),
        )
        .await?;
        Ok(Response::new(ReadHouseholdResponse { household }))
    }

    async fn read_household_indicators(
        &self,
        request: Request<ReadHouseholdIndicatorsRequest>,
    ) -> Result<Response<GetHouseholdIndicatorsResponse>, Status> {
        let api = &self.0;
        let (caller, _permit) =
            ponte_edge::grpc::admit_peer(&api.gate, &request, "ReadHouseholdIndicators")?;
        let req = request.into_inner();
        let municipality = crate::grpc::divipola(&req.municipality)?;
        let out = api
            .household_indicators_owned(req.partitions, municipality.clone())
            .await?
            .ok_or_else(not_owner)?;
        api.audited_as(
            &caller.principal,
            "PeerService/ReadHouseholdIndicators",
            ReadSubject::Municipality(&municipality),
            out.dimensions.len(),
        )
        .await?;
        Ok(Response::new(out))
    }

    async fn read_family(
        &self,
        request: Request<ReadFamilyRequest>,
    ) -> Result<Response<ReadFamilyResponse>, Status> {
        let api = &self.0;
        let (caller, _permit) = ponte_edge::grpc::admit_peer(&api.gate, &request, "ReadFamily")?;
        let id = crate::grpc::family_id(&request.get_ref().family_id)?.to_owned();
        let family = api.local_family(&id)?.ok_or_else(not_owner)?;
        api.audited_as(
            &caller.principal,
            "PeerService/ReadFamily",
            ReadSubject::Family(&id),
            usize::from(family.is_some()),
        )
        .await?;
        Ok(Response::new(ReadFamilyResponse { family }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A peer that accepts connections and never answers (a process stopped with SIGSTOP: the
    /// kernel still completes the TCP handshake) fails a read within `peer.timeout`, over TLS
    /// as in a deployment, where the read once waited for the TLS handshake for ever.
    #[tokio::test]
    async fn a_peer_that_accepts_and_never_answers_fails_the_read_within_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ponte_access::pki::generate_dev(&dir.path().join("pki"), true).unwrap();
        let client = &pki
            .clients
            .iter()
            .find(|c| c.spec.name == "reconciler")
            .unwrap()
            .files;
        // Accepted by the kernel's backlog, never read.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("localhost:{}", silent.local_addr().unwrap().port());
        let owners = Owners::of_one(address, &[0]);
        let cfg = PeerConfig {
            advertise: Some("127.0.0.1:1".into()),
            ca_file: pki.ca.cert.clone(),
            cert_file: client.cert.clone(),
            key_file: client.key.clone(),
            timeout: Duration::from_millis(300),
            refresh: Duration::from_secs(60),
        };
        let peers = Peers::new(&cfg, false, owners).unwrap();
        let nis = Nis::parse("26827649960").unwrap();
        let started = Instant::now();
        let asked = tokio::time::timeout(Duration::from_secs(10), peers.person(0, &nis))
            .await
            .expect("the read returned");
        assert!(matches!(asked, Asked::Failed), "{asked:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        drop(silent);
    }
}
