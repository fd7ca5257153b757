//! Compiles etcd's vendored `.proto` files (and detcd's own) with `protox`, a pure-Rust
//! protobuf compiler, so that a fresh machine needs nothing but cargo to build.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/etcd/api/mvccpb/kv.proto",
        "proto/etcd/api/authpb/auth.proto",
        "proto/etcd/api/etcdserverpb/rpc.proto",
        "proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "proto/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
        "proto/detcd/internal.proto",
        "proto/detcd/raftpb.proto",
        "proto/grpc/health/v1/health.proto",
    ];
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("detcd_descriptor.bin");
    let fds = protox::compile(protos, ["proto"])?;
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
