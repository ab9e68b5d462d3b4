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

/// How the JSON form of a `pb` message writes a secret field: never its value.
fn redacted<T, S: serde::Serializer>(_: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[redacted]")
}

#[cfg(test)]
mod tests {
    use super::pb;

    #[test]
    fn the_json_of_a_message_never_carries_a_secret() {
        let request = pb::AddProviderRequest {
            name: "openai".into(),
            credential: Some(pb::add_provider_request::Credential::ApiKey("sk-live-123".into())),
            ..Default::default()
        };
        let json = serde_json::to_string(&request).unwrap();
        assert!(!json.contains("sk-live-123"), "{json}");
        assert!(
            json.contains("\"name\":\"openai\"") && json.contains("[redacted]"),
            "{json}"
        );
        let answer = pb::AdminWithTokenResponse {
            token: "drv_admin_abc".into(),
            ..Default::default()
        };
        assert!(!serde_json::to_string(&answer).unwrap().contains("drv_admin_abc"));
        let answer = pb::KeyWithSecretResponse {
            secret: "drv_abc".into(),
            ..Default::default()
        };
        assert!(!serde_json::to_string(&answer).unwrap().contains("drv_abc"));
        let provider = pb::Provider {
            credential: Some(pb::provider::Credential::ApiKey("sk-live-456".into())),
            ..Default::default()
        };
        assert!(!serde_json::to_string(&provider).unwrap().contains("sk-live-456"));
    }
}
