//! The gRPC `ComplianceService` over the view held in the store.
use ponte_domain::ids::Nis;
use ponte_proto::compliance::v1::compliance_service_server::ComplianceService;
use ponte_proto::compliance::v1::{GetPersonRequest, GetPersonResponse};
use ponte_store::Store;
use tonic::{Request, Response, Status};

use crate::view;

/// Serves the compliance view from the local store.
#[derive(Debug, Clone)]
pub struct ComplianceApi {
    store: Store,
}

impl ComplianceApi {
    pub fn new(store: Store) -> Self {
        Self { store }
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
        let store = self.store.clone();
        let key = nis.as_str().to_owned();
        let person = tokio::task::spawn_blocking(move || view::read_person(&store, &key))
            .await
            .map_err(|e| Status::internal(format!("reading the view: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, "reading the view failed");
                Status::internal("reading the view failed")
            })?;
        match person {
            Some(person) => Ok(Response::new(GetPersonResponse {
                person: Some(person),
            })),
            None => Err(Status::not_found(format!(
                "nis: no record for {} in the view",
                ponte_runtime::telemetry::mask_id(nis.as_str())
            ))),
        }
    }
}
