//! Compiles the protobuf files with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "flotilla/agent/v1/agent.proto",
        "flotilla/discovery/v1/discovery.proto",
        "flotilla/ca/v1/ca.proto",
        "flotilla/demo/v1/echo.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // Discovery resources are also read from JSON: `flotilla proxy --bootstrap` takes the same
    // `Resource`s the server streams. Field names are the proto's; absent fields take their
    // proto3 defaults (`serde(default)`, messages only: a oneof enum has no default); unknown
    // fields are an error, so a typo in a hand-written file is not silently ignored. Oneof
    // variants are spelled like the proto fields (`"kind": {"cluster": {...}}`).
    const DISCOVERY: &str = ".flotilla.discovery.v1";
    tonic_prost_build::configure()
        .type_attribute(DISCOVERY, "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(DISCOVERY, "#[serde(default, deny_unknown_fields)]")
        .enum_attribute(DISCOVERY, "#[serde(rename_all = \"snake_case\")]")
        .compile_fds(fds)?;
    Ok(())
}
