//! TLS material for Drover's listeners and clients, loaded from PEM files.
//!
//! Servers: [`server_config`] turns a certificate chain and its private key into a
//! `rustls::ServerConfig` offering the ALPN protocols the listener speaks ([`ALPN_H2`] for
//! gRPC; [`ALPN_H2`] and [`ALPN_HTTP1`] for an HTTP listener). Clients: [`Trust`] says which
//! server certificates a gRPC client accepts (the webpki roots, a CA bundle loaded with
//! [`CaBundle::load`], or one pinned certificate), and [`client_endpoint`] applies it to a
//! tonic `Endpoint` whose URL is `https://`.
//!
//! Every error names the file it is about and never carries key material. This module owns
//! no socket: accepting connections, handshake deadlines and keepalive belong to the
//! listeners that use it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tonic::transport::{ClientTlsConfig, Endpoint};

/// ALPN protocol id of HTTP/2; gRPC needs it.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// How long a client waits for the TLS handshake with a server.
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS material could not be loaded. Messages name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the {what} {} is not valid PEM: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("the {what} {} holds no {expected}", path.display())]
    Missing {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error(
        "the TLS private key {} cannot serve the certificate {}: {reason}",
        key.display(),
        cert.display()
    )]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("the CA bundle {}: certificate {index} cannot be a trust anchor: {reason}", path.display())]
    Anchor {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

const CERT: &str = "TLS certificate";
const KEY: &str = "TLS private key";
const CA: &str = "CA bundle";

/// The cryptography every Drover TLS config uses: rustls with `ring`, chosen explicitly so
/// that no process-wide default has to be installed.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every `CERTIFICATE` section of a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    load_certs_as(CERT, path)
}

fn load_certs_as(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, &e))?;
    if certs.is_empty() {
        return Err(TlsError::Missing {
            what,
            path: path.to_owned(),
            expected: "certificate (a `-----BEGIN CERTIFICATE-----` section)",
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of a PEM file. The bytes read
/// are wiped once parsed.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut bytes = read(KEY, path)?;
    let key = PrivateKeyDer::from_pem_slice(&bytes);
    bytes.fill(0);
    key.map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Missing {
            what: KEY,
            path: path.to_owned(),
            expected: "private key (a PKCS#8, RSA or EC `PRIVATE KEY` section)",
        },
        e => pem_error(KEY, path, &e),
    })
}

/// A server config for one certificate chain (`cert`, leaf first) and its private key
/// (`key`), offering the `alpn` protocols in order of preference: `&[ALPN_H2]` for a gRPC
/// listener, `&[ALPN_H2, ALPN_HTTP1]` for an HTTP listener that speaks both. TLS 1.2 and 1.3,
/// no client certificates. Fails if a file cannot be read or parsed, or if the key does not
/// belong to the leaf certificate.
pub fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    server_identity(cert, key, alpn).map(|(config, _)| config)
}

/// [`server_config`], and the leaf certificate it serves, from one reading of the files (a
/// client in the same process can then trust exactly what the listener presents).
pub fn server_identity(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<(Arc<ServerConfig>, CertificateDer<'static>), TlsError> {
    let chain = load_certs(cert)?;
    // `load_certs` refuses a file without a certificate, so the chain has a leaf.
    let leaf = chain
        .first()
        .cloned()
        .ok_or_else(|| TlsError::Setup("the certificate chain is empty".to_owned()))?;
    let private_key = load_private_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| TlsError::Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), leaf))
}

/// The certificates of a PEM CA bundle as trust anchors for a client. Every certificate in
/// the file must be usable; at least one is required.
pub fn root_store(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for (index, cert) in load_certs_as(CA, ca)?.into_iter().enumerate() {
        store.add(cert).map_err(|e| TlsError::Anchor {
            path: ca.to_owned(),
            index: index + 1,
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

/// A CA bundle loaded from a file: the roots a client trusts instead of the webpki ones.
#[derive(Clone)]
pub struct CaBundle {
    path: PathBuf,
    roots: Arc<RootCertStore>,
}

impl CaBundle {
    /// Loads `path` with [`root_store`].
    pub fn load(path: &Path) -> Result<CaBundle, TlsError> {
        Ok(CaBundle {
            path: path.to_owned(),
            roots: Arc::new(root_store(path)?),
        })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The trust anchors.
    pub fn roots(&self) -> &RootCertStore {
        &self.roots
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("roots", &self.roots.len())
            .finish()
    }
}

/// Which server certificates a client accepts on an `https://` URL. Plain `http://` URLs
/// ignore it.
#[derive(Clone, Default)]
pub enum Trust {
    /// Certificates chaining to the Mozilla roots bundled with `webpki-roots`, for the name
    /// in the URL.
    #[default]
    WebPki,
    /// Certificates chaining to one of these CAs, for the name in the URL.
    Ca(CaBundle),
    /// Exactly this end-entity certificate, whatever name or validity it carries, presented
    /// by a server that proves it holds its private key. For a client in the same process as
    /// the server it connects to (`drover serve`), which knows the certificate it serves.
    Pinned(CertificateDer<'static>),
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::WebPki => f.write_str("WebPki"),
            Trust::Ca(ca) => f.debug_tuple("Ca").field(ca).finish(),
            Trust::Pinned(_) => f.write_str("Pinned(..)"),
        }
    }
}

/// Applies `trust` to `endpoint` when its URL is `https://` (HTTP/2 negotiated with ALPN,
/// a [`CLIENT_HANDSHAKE_TIMEOUT`] on the handshake); returns any other endpoint unchanged.
pub fn client_endpoint(endpoint: Endpoint, trust: &Trust) -> Result<Endpoint, tonic::transport::Error> {
    if endpoint.uri().scheme_str() != Some("https") {
        return Ok(endpoint);
    }
    let tls = ClientTlsConfig::new().timeout(CLIENT_HANDSHAKE_TIMEOUT);
    match trust {
        Trust::WebPki => endpoint.tls_config(tls.with_webpki_roots()),
        Trust::Ca(ca) => endpoint.tls_config(tls.trust_anchors(ca.roots.roots.iter().cloned())),
        Trust::Pinned(cert) => endpoint.tls_config_with_verifier(tls, Arc::new(Pinned::new(cert.clone()))),
    }
}

/// Accepts one end-entity certificate and nothing else; handshake signatures are checked
/// against it as usual, so only the holder of its key gets through.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn new(cert: CertificateDer<'static>) -> Pinned {
        Pinned {
            cert,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A PEM parse error without the bytes some variants carry (they could be key material).
fn pem_error(what: &'static str, path: &Path, e: &pem::Error) -> TlsError {
    let reason = match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::SectionTooLarge => "a section is too large",
        pem::Error::NoItemsFound => "no section found",
        _ => "unreadable",
    };
    TlsError::Pem {
        what,
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    /// A CA and a leaf for `localhost` it signed, as PEM: (ca, leaf, leaf key).
    fn issued() -> (String, String, String) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (ca.pem(), leaf.pem(), key.serialize_pem())
    }

    #[test]
    fn a_chain_and_its_key_make_a_server_config_with_the_alpn_given() {
        let files = Files::new();
        let (ca, leaf, key) = issued();
        let cert = files.write("cert.pem", &format!("{leaf}{ca}"));
        let key = files.write("key.pem", &key);
        let config = server_config(&cert, &key, &[ALPN_H2, ALPN_HTTP1]).unwrap();
        assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(load_certs(&cert).unwrap().len(), 2);
        let grpc = server_config(&cert, &key, &[ALPN_H2]).unwrap();
        assert_eq!(grpc.alpn_protocols, [b"h2".to_vec()]);
    }

    #[test]
    fn errors_name_the_file_and_never_the_key() {
        let files = Files::new();
        let (ca, leaf, key_pem) = issued();
        let (_, _, other_key) = issued();
        let cert = files.write("cert.pem", &leaf);
        let key = files.write("key.pem", &key_pem);
        let wrong_key = files.write("other.pem", &other_key);
        let missing = files.dir.path().join("missing.pem");
        let body_of = |pem: &str| pem.lines().nth(1).unwrap().to_owned();

        let e = server_config(&missing, &key, &[ALPN_H2]).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read the TLS certificate ") && e.contains("missing.pem"),
            "{e}"
        );
        let e = server_config(&cert, &missing, &[ALPN_H2])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read the TLS private key "), "{e}");

        let e = server_config(&cert, &wrong_key, &[ALPN_H2])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("other.pem") && e.contains("cert.pem") && e.contains("cannot serve"),
            "{e}"
        );
        assert!(!e.contains(&body_of(&other_key)), "{e}");

        // A key where the certificate belongs, and the other way round.
        let e = server_config(&key, &key, &[ALPN_H2]).unwrap_err().to_string();
        assert!(e.contains("key.pem holds no certificate"), "{e}");
        let e = server_config(&cert, &cert, &[ALPN_H2]).unwrap_err().to_string();
        assert!(e.contains("cert.pem holds no private key"), "{e}");

        // A damaged key: the message says what is wrong, not what the file holds.
        let damaged = key_pem.replacen(&body_of(&key_pem), &format!("{}!!", body_of(&key_pem)), 1);
        let damaged = files.write("damaged.pem", &damaged);
        let e = load_private_key(&damaged).unwrap_err().to_string();
        assert!(e.contains("damaged.pem is not valid PEM"), "{e}");
        assert!(!e.contains(&body_of(&key_pem)[..16]), "{e}");
        let truncated = files.write(
            "truncated.pem",
            key_pem.lines().take(2).collect::<Vec<_>>().join("\n").as_str(),
        );
        let e = load_private_key(&truncated).unwrap_err().to_string();
        assert!(e.contains("has no END line"), "{e}");
        assert!(!e.contains(&body_of(&key_pem)[..16]), "{e}");

        let e = root_store(&files.write("empty.pem", "")).unwrap_err().to_string();
        assert!(
            e.starts_with("the CA bundle ") && e.contains("empty.pem holds no certificate"),
            "{e}"
        );
        let bundle = files.write("ca.pem", &format!("{ca}{leaf}"));
        assert_eq!(root_store(&bundle).unwrap().len(), 2);
        let loaded = CaBundle::load(&bundle).unwrap();
        assert_eq!(loaded.path(), bundle);
        assert!(format!("{loaded:?}").contains("roots: 2"));
    }

    #[test]
    fn https_endpoints_get_tls_and_http_ones_are_left_alone() {
        let files = Files::new();
        let (ca, leaf, _) = issued();
        let bundle = CaBundle::load(&files.write("ca.pem", &ca)).unwrap();
        let pinned = load_certs(&files.write("leaf.pem", &leaf)).unwrap().remove(0);
        for trust in [Trust::WebPki, Trust::Ca(bundle), Trust::Pinned(pinned)] {
            for url in ["https://localhost:1", "https://127.0.0.1:1", "http://127.0.0.1:1"] {
                let endpoint = Endpoint::from_shared(url.to_owned()).unwrap();
                assert!(client_endpoint(endpoint, &trust).is_ok(), "{url} {trust:?}");
            }
        }
    }

    #[test]
    fn a_pinned_certificate_is_the_only_one_accepted() {
        let files = Files::new();
        let (_, leaf, _) = issued();
        let (_, other, _) = issued();
        let leaf = load_certs(&files.write("leaf.pem", &leaf)).unwrap().remove(0);
        let other = load_certs(&files.write("other.pem", &other)).unwrap().remove(0);
        let pinned = Pinned::new(leaf.clone());
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let now = UnixTime::now();
        assert!(pinned.verify_server_cert(&leaf, &[], &name, &[], now).is_ok());
        let refused = pinned.verify_server_cert(&other, &[leaf], &name, &[], now);
        assert!(refused.is_err());
        assert!(!pinned.supported_verify_schemes().is_empty());
        assert_eq!(format!("{:?}", Trust::Pinned(other)), "Pinned(..)");
    }
}
