//! Compiles `proto/ficus.proto` (with the pure-Rust `protox`, no `protoc` needed) into the
//! wire types and gRPC stubs of the `wire` feature.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ficus.proto");
    if std::env::var_os("CARGO_FEATURE_WIRE").is_none() {
        return Ok(());
    }
    let descriptors = protox::compile(["proto/ficus.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
