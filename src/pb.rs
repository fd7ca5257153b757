//! Generated protobuf types and gRPC stubs: etcd's public API and detcd's internal messages.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// etcd's key-value types (`mvccpb`).
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
/// etcd's auth types (`authpb`).
pub mod authpb {
    tonic::include_proto!("authpb");
}
/// etcd's gRPC API (`etcdserverpb`).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
/// etcd's lock service (`v3lockpb`).
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
/// etcd's election service (`v3electionpb`).
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
/// detcd's internal raft payloads (`detcdpb`).
pub mod detcdpb {
    tonic::include_proto!("detcdpb");
}
/// detcd's peer protocol (`detcdraftpb`): raft messages between members.
pub mod detcdraftpb {
    tonic::include_proto!("detcdraftpb");
}
/// The standard gRPC health checking protocol (`grpc.health.v1`).
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}
