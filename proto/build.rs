//! Compiles the protobuf files with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "flotilla/agent/v1/agent.proto",
        "flotilla/discovery/v1/discovery.proto",
        "flotilla/ca/v1/ca.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
