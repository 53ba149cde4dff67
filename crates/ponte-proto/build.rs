//! Compiles `proto/` with protox (a protobuf compiler in Rust, so no `protoc` is needed on the
//! build machine) and generates prost messages and tonic services from the descriptors.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with env!(): a build-script binary can be reused from another
    // checkout of the same package sharing a target directory.
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../proto").canonicalize()?;
    let files = [
        root.join("ponte/events/v1/events.proto"),
        root.join("ponte/compliance/v1/compliance.proto"),
        root.join("ponte/reconciler/v1/reconciler.proto"),
        root.join("ponte/reconciler/v1/peer.proto"),
        root.join("ponte/audit/v1/audit.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&root])?;

    // The encoded descriptor set is embedded for gRPC server reflection: the public contract
    // only, not the reconciler's internal formats nor the audit log's.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut public = fds.clone();
    public.file.retain(|f| f.package() != "ponte.reconciler.v1");
    std::fs::write(
        out.join("ponte_descriptor.bin"),
        prost::Message::encode_to_vec(&public),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
