//! Compiles `proto/drover/v1/*.proto` with protox (no system `protoc`) into tonic code,
//! and writes the file descriptor set that gRPC reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/drover/v1/policy.proto",
        "proto/drover/v1/admin.proto",
        "proto/drover/v1/usage.proto",
        "proto/drover/v1/lease.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("drover_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Serialize (to JSON, for the audit log's copy of each admin request): every message, with
    // each secret written as "[redacted]", so no serialization of a request can carry one.
    let mut builder = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .type_attribute(".drover.v1", "#[derive(serde::Serialize)]");
    for secret in [
        "drover.v1.AddProviderRequest.credential.api_key",
        "drover.v1.Provider.credential.api_key",
        "drover.v1.KeyWithSecretResponse.secret",
        "drover.v1.AdminWithTokenResponse.token",
    ] {
        builder = builder.field_attribute(secret, "#[serde(serialize_with = \"crate::redacted\")]");
    }
    builder.compile_fds(fds)?;
    Ok(())
}
