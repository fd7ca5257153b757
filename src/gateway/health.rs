//! The standard gRPC health service (`grpc.health.v1.Health`), as etcd registers it on
//! its client port: the server as a whole (the empty service name) is `SERVING` for as
//! long as it answers; any other name is unknown. Load balancers and Kubernetes' gRPC
//! probes ask it.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::pb::health::health_check_response::ServingStatus;
use crate::pb::health::health_server::Health;
use crate::pb::health::{HealthCheckRequest, HealthCheckResponse};

/// The health service.
#[derive(Debug, Clone, Copy, Default)]
pub struct HealthService;

/// The status of `service`: the server itself serves; it knows no other service name.
fn status_of(service: &str) -> Option<ServingStatus> {
    service.is_empty().then_some(ServingStatus::Serving)
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        match status_of(&request.get_ref().service) {
            Some(status) => Ok(Response::new(answer(status))),
            // grpc-go's health server's answer to a name it was never given.
            None => Err(Status::not_found("unknown service")),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    /// Sends the current status, then holds the stream open: the status of a running
    /// member never changes (it goes away with the connection when the member stops).
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let status = status_of(&request.get_ref().service).unwrap_or(ServingStatus::ServiceUnknown);
        let first = tokio_stream::once(Ok(answer(status)));
        Ok(Response::new(Box::pin(
            first.chain(tokio_stream::pending()),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_server_itself_is_known() {
        assert_eq!(status_of(""), Some(ServingStatus::Serving));
        assert_eq!(status_of("etcdserverpb.KV"), None);
    }
}
