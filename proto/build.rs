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
    let boxed = boxed_fields(&descriptors);

    let client = env::var_os("CARGO_FEATURE_CLIENT").is_some();
    let server = env::var_os("CARGO_FEATURE_SERVER").is_some();

    let mut config = prost_build::Config::new();
    // `bytes` fields become `bytes::Bytes`: keys and values move between requests,
    // responses and caches without copying.
    config.bytes(["."]);
    for path in &boxed {
        config.boxed(path);
    }
    // Every arm of the `BatchCommands` oneofs is boxed: the oneof enums (the core's `TikvCmd`
    // / `TikvCmdResponse`) are then two words instead of their largest arm, and a request or
    // reply crosses the client's queues and machines by pointer. One allocation per arm, made
    // where the message is built or decoded anyway.
    config.boxed(".tikvpb.BatchCommandsRequest.Request.cmd");
    // Replies likewise, except the two the raw client's point operations receive most
    // (`RawGet`, `RawPut`): small enough inline (the enum grows to their size, ~80 bytes),
    // and a box for each would be an allocation per reply, made by the stream task and freed
    // by the caller, a pattern the allocator's per-thread cache cannot serve.
    let arms = oneof_arms(
        &descriptors,
        ".tikvpb.BatchCommandsResponse.Response",
        "cmd",
    );
    if !UNBOXED_REPLY_ARMS
        .iter()
        .all(|a| arms.iter().any(|b| b == a))
    {
        return Err("tikvpb.BatchCommandsResponse.Response.cmd: arms not found".into());
    }
    for arm in arms {
        if !UNBOXED_REPLY_ARMS.contains(&arm.as_str()) {
            config.boxed(format!(".tikvpb.BatchCommandsResponse.Response.cmd.{arm}"));
        }
    }

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

/// Message types that are large in Rust and absent from almost every message carrying them.
///
/// prost keeps a singular message field inline (`Option<M>`), so one rarely-set error or
/// statistics field makes every message around it as large as the field's whole type tree:
/// without boxing, a `RawGetResponse` is over 2 KB because of its `region_error` and
/// `exec_details_v2`, and the `BatchCommands` oneofs (as large as their largest arm) are
/// kilobytes each, copied at every hop of a request. Boxing these fields keeps the messages
/// small; a box is only allocated when the field is actually present. The wire format is
/// unaffected.
const BOXED_TYPES: &[&str] = &[
    ".errorpb.Error",
    // Every request's `context` (~350 bytes in Rust). The client's hot point requests leave
    // it empty and carry a shared context beside the command instead, so inline it was
    // memory each request in flight held and the caches had to carry: a `RawGetRequest`
    // is 408 bytes with it inline and 64 boxed.
    ".kvrpcpb.Context",
    ".kvrpcpb.KeyError",
    ".kvrpcpb.ExecDetails",
    ".kvrpcpb.ExecDetailsV2",
    ".kvrpcpb.ResourceControlContext",
    ".kvrpcpb.SourceStmt",
    ".tracepb.TraceContext",
];

/// The `BatchCommandsResponse.Response.cmd` arms generated inline (see `main`).
const UNBOXED_REPLY_ARMS: &[&str] = &["RawGet", "RawPut"];

/// Every message of `set`, nested ones included, with its full name (`.package.Message`).
fn all_messages(
    set: &prost_types::FileDescriptorSet,
) -> Vec<(String, &prost_types::DescriptorProto)> {
    fn walk<'a>(
        scope: &str,
        messages: &'a [prost_types::DescriptorProto],
        out: &mut Vec<(String, &'a prost_types::DescriptorProto)>,
    ) {
        for message in messages {
            let name = format!("{scope}.{}", message.name());
            walk(&name, &message.nested_type, out);
            out.push((name, message));
        }
    }
    let mut out = Vec::new();
    for file in &set.file {
        let scope = match file.package() {
            "" => String::new(),
            package => format!(".{package}"),
        };
        walk(&scope, &file.message_type, &mut out);
    }
    out
}

/// The names of the fields of oneof `oneof` in message `message` (`.package.Message`).
fn oneof_arms(set: &prost_types::FileDescriptorSet, message: &str, oneof: &str) -> Vec<String> {
    let messages = all_messages(set);
    let Some((_, m)) = messages.iter().find(|(name, _)| name == message) else {
        return Vec::new();
    };
    let Some(index) = m.oneof_decl.iter().position(|o| o.name() == oneof) else {
        return Vec::new();
    };
    m.field
        .iter()
        .filter(|f| f.oneof_index == Some(index as i32))
        .map(|f| f.name().to_owned())
        .collect()
}

/// The prost-build paths (`.package.Message.field`, `.package.Message.oneof.field`) of every
/// singular field whose type is one of [`BOXED_TYPES`].
fn boxed_fields(set: &prost_types::FileDescriptorSet) -> Vec<String> {
    let mut out = Vec::new();
    for (name, message) in all_messages(set) {
        for field in &message.field {
            let repeated = field.label() == prost_types::field_descriptor_proto::Label::Repeated;
            if repeated || !BOXED_TYPES.contains(&field.type_name()) {
                continue;
            }
            let path = match field.oneof_index {
                // Proto3 `optional` fields are synthetic oneofs but generated as plain fields.
                Some(i) if !field.proto3_optional() => {
                    let oneof = message.oneof_decl[i as usize].name();
                    format!("{name}.{oneof}.{}", field.name())
                }
                _ => format!("{name}.{}", field.name()),
            };
            out.push(path);
        }
    }
    out
}
