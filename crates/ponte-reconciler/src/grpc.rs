//! The gRPC `ComplianceService` over the view held in the store.
use ponte_domain::ids::Nis;
use ponte_proto::compliance::v1::compliance_service_server::ComplianceService;
use ponte_proto::compliance::v1::{
    GetFamilyRequest, GetFamilyResponse, GetPersonRequest, GetPersonResponse, ListParkedRequest,
    ListParkedResponse, ParkedRecord,
};
use ponte_store::Store;
use tonic::{Request, Response, Status};

use crate::ReconcilerError;
use crate::topology;

/// Serves the compliance view from the local store.
#[derive(Debug, Clone)]
pub struct ComplianceApi {
    store: Store,
}

impl ComplianceApi {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Runs a store read off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ReconcilerError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
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
    async fn get_person(
        &self,
        request: Request<GetPersonRequest>,
    ) -> Result<Response<GetPersonResponse>, Status> {
        let nis = Nis::parse(&request.get_ref().nis)
            .map_err(|e| Status::invalid_argument(format!("nis: {e}")))?;
        let person = self.read(move |s| topology::read_person(s, &nis)).await?;
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
            .read(move |s| topology::read_family(s, &lookup))
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
        let parked = self.read(|s| topology::read_parked(s)).await?;
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
