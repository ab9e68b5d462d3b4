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
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
