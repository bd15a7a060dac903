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
        // Messages only: the Bridge call is framed by hand (src/bridge.rs),
        // so that data frames are not copied through tonic's codec.
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
