//! Drover's gRPC protocol, package `drover.v1`.
//!
//! `pb` is the generated wire code; `model` holds the validated domain types the rest of the
//! workspace works with. Wire types stop here: conversions from `pb` validate, so a value of
//! a `model` type is always well formed. `limits` holds the sizes both ends agree on. `process` sets up logging and signal handling for every binary. `tls` loads the certificates, keys and CA bundles
//! that both planes and the CLI use to speak gRPC (and HTTP) over TLS.

pub mod limits;
pub mod model;
pub mod process;
pub mod tls;

/// Generated protobuf and tonic code for `drover.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("drover.v1");

    /// Encoded `FileDescriptorSet` of every `drover.v1` file, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/drover_descriptor.bin"));
}
