//! Compiles `proto/forward.proto` with protox (pure Rust), so a fresh machine
//! builds with `cargo` alone: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../../proto";
    let file = "../../proto/forward.proto";
    // protox prints no rerun-if-changed lines of its own.
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], [proto_dir])?;
    tonic_prost_build::configure()
        // `bytes` fields as bytes::Bytes: frames carry socket data without copies.
        .bytes(".")
        // Small starting buffers: see src/codec.rs.
        .codec_path("crate::codec::SmallBufferCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
