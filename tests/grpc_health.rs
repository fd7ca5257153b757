//! The standard gRPC health service (`grpc.health.v1.Health`) on the client port, side by
//! side with the real etcd 3.4.23, which registers it with the empty service name
//! `SERVING`: `Check` for the server and for an unknown name, and the first answer of
//! `Watch`. With `DETCD_TEST_SERVER=etcd` both sides are etcd.

mod common;

use common::{Kind, Server};
use detcd::pb::health::health_client::HealthClient;
use detcd::pb::health::HealthCheckRequest;
use tonic::transport::Channel;

async fn health(s: &Server) -> HealthClient<Channel> {
    let channel = Channel::from_shared(s.client_url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

/// What the health service answers: the status of `Check("")`, the code and message of
/// `Check` for an unknown name, and the first status `Watch` sends for each.
async fn answers(s: &Server) -> (i32, (tonic::Code, String), i32, i32) {
    let mut h = health(s).await;
    let serving = h
        .check(request(""))
        .await
        .expect("check")
        .into_inner()
        .status;
    let unknown = h
        .check(request("no.such.Service"))
        .await
        .expect_err("an unknown service");
    let mut watch = h.watch(request("")).await.expect("watch").into_inner();
    let watched = watch
        .message()
        .await
        .expect("watch")
        .expect("a status")
        .status;
    let mut watch = h
        .watch(request("no.such.Service"))
        .await
        .expect("watch")
        .into_inner();
    let watched_unknown = watch
        .message()
        .await
        .expect("watch")
        .expect("a status")
        .status;
    (
        serving,
        (unknown.code(), unknown.message().to_string()),
        watched,
        watched_unknown,
    )
}

#[tokio::test]
async fn health_service_answers_as_etcd_does() {
    let ours = Server::start();
    let reference = Server::start_kind(Kind::Etcd);
    let got = common::within(30, "our health answers", answers(&ours)).await;
    let want = common::within(30, "etcd's health answers", answers(&reference)).await;
    assert_eq!(got, want, "{} (left) and etcd (right)", ours.kind().name());
    // SERVING is 1, SERVICE_UNKNOWN 3 in the protocol.
    assert_eq!(got.0, 1);
    assert_eq!(got.1 .0, tonic::Code::NotFound);
    assert_eq!(got.2, 1);
    assert_eq!(got.3, 3);
}
