//! Generates the gRPC client and server code for `proto/` with a vendored `protoc`, so that a
//! plain `cargo build` needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts run single-threaded, so no other thread reads the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };

    // Default stubs give every RPC of the generated server trait a body that returns
    // UNIMPLEMENTED. So a Rust handler that implements only Handle keeps compiling when an
    // optional RPC such as HandleBatch is added, and kafka-scc reads that status as "not
    // supported". The cost: a server that does not implement Handle also compiles, and
    // answers UNIMPLEMENTED for it.
    tonic_prost_build::configure()
        .bytes(".scc.handler.v1")
        .generate_default_stubs(true)
        .compile_protos(&["proto/scc/handler/v1/handler.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
