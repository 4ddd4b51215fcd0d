//! Generates the Rust code for every `.proto` file in `proto/` at build time.
//!
//! The files are parsed by `protox` (pure Rust, so no `protoc` binary is needed) into a
//! `FileDescriptorSet`, which `prost-build` turns into messages and, depending on the crate
//! features, `tonic-prost-build` extends with gRPC client stubs (`client`) and server stubs
//! (`server`). The output lands in `OUT_DIR`, one `<package>.rs` file per protobuf package.

use std::env;
use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_dir = manifest_dir.join("proto");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", proto_dir.display());

    // Every top-level `.proto` file is a root; sorting keeps the output deterministic.
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&proto_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            if let Some(name) = path.file_name() {
                files.push(PathBuf::from(name));
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("no .proto files found in {}", proto_dir.display()).into());
    }

    let descriptors = protox::compile(&files, [&proto_dir])?;

    let client = env::var_os("CARGO_FEATURE_CLIENT").is_some();
    let server = env::var_os("CARGO_FEATURE_SERVER").is_some();

    let mut config = prost_build::Config::new();
    // `bytes` fields become `bytes::Bytes`: keys and values move between requests,
    // responses and caches without copying.
    config.bytes(["."]);

    tonic_prost_build::configure()
        .build_client(client)
        .build_server(server)
        // The client brings its own runtime-agnostic channel (see `src/channel.rs`), so the
        // stubs must not reference tonic's tokio-bound transport.
        .build_transport(false)
        // Server traits get default bodies answering `Unimplemented`, so a mock server only
        // writes the rpcs it serves.
        .generate_default_stubs(true)
        .emit_rerun_if_changed(false)
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
