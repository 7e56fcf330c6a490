//! Generates the gRPC client and server code for `proto/` with a vendored `protoc`, so that a
//! plain `cargo build` needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts run single-threaded, so no other thread reads the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };

    tonic_prost_build::configure()
        .bytes(".scc.handler.v1")
        .compile_protos(&["proto/scc/handler/v1/handler.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
