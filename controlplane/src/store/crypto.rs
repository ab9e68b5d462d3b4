//! Encryption at rest of stored credentials: AES-256-GCM under the master key.
//!
//! Each value gets a fresh random 96-bit nonce and is stored as `nonce || ciphertext`. The
//! associated data names what the value is (e.g. the provider it belongs to), so a ciphertext
//! copied to another row does not decrypt. The key itself never appears in a message or a log.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng as _;

use crate::error::StoreError;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// The 32-byte key that encrypts stored credentials. Never printed.
#[derive(Clone)]
pub struct MasterKey([u8; KEY_LEN]);

impl MasterKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_LEN];
        rand::rng().fill(&mut key);
        MasterKey(key)
    }

    /// Decodes base64 (standard alphabet, padding optional) of exactly 32 bytes. The error
    /// message never repeats the input.
    pub fn from_base64(encoded: &str) -> Result<Self, String> {
        let encoded = encoded.trim();
        let bytes = STANDARD
            .decode(encoded)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
            .map_err(|_| "the master key is not valid base64".to_owned())?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "the master key must be {KEY_LEN} bytes (base64 of 32 random bytes), not {}",
                b.len()
            )
        })?;
        Ok(MasterKey(key))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

/// Encrypts and decrypts stored values under one master key.
pub struct Cipher {
    aead: Aes256Gcm,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(***)")
    }
}

impl Cipher {
    pub fn new(key: &MasterKey) -> Self {
        Cipher {
            aead: Aes256Gcm::new(&key.0.into()),
        }
    }

    /// `nonce || ciphertext` of `plaintext`, bound to `context`.
    pub fn encrypt(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce);
        let ciphertext = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Crypto(format!("cannot encrypt {context}")))?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(blob)
    }

    /// The plaintext of a blob made by `encrypt` with the same `context`.
    pub fn decrypt(&self, context: &str, blob: &[u8]) -> Result<Vec<u8>, StoreError> {
        if blob.len() < NONCE_LEN {
            return Err(StoreError::Crypto(format!("stored {context} is truncated")));
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| {
                StoreError::Crypto(format!(
                    "cannot decrypt {context}: the master key (DROVER_MASTER_KEY or the .master-key \
                     file beside the database) is not the one it was stored with"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_fresh_nonces() {
        let cipher = Cipher::new(&MasterKey::generate());
        let a = cipher.encrypt("provider \"x\"", b"sk-live").unwrap();
        let b = cipher.encrypt("provider \"x\"", b"sk-live").unwrap();
        assert_ne!(a, b, "every value gets its own nonce");
        assert_eq!(cipher.decrypt("provider \"x\"", &a).unwrap(), b"sk-live");
    }

    #[test]
    fn wrong_key_or_context_fails_clearly() {
        let blob = Cipher::new(&MasterKey::generate()).encrypt("ctx", b"v").unwrap();
        let err = Cipher::new(&MasterKey::generate())
            .decrypt("ctx", &blob)
            .unwrap_err();
        assert!(err.to_string().contains("master key"), "{err}");
        let cipher = Cipher::new(&MasterKey::generate());
        let blob = cipher.encrypt("a", b"v").unwrap();
        assert!(cipher.decrypt("b", &blob).is_err());
        assert!(cipher.decrypt("a", &blob[..5]).is_err());
    }

    #[test]
    fn keys_parse_from_base64_of_32_bytes_only() {
        let key = MasterKey::generate();
        let parsed = MasterKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(parsed.0, key.0);
        let short = STANDARD.encode([1u8; 16]);
        assert!(MasterKey::from_base64(&short).unwrap_err().contains("32 bytes"));
        let err = MasterKey::from_base64("not base64!!").unwrap_err();
        assert!(!err.contains("not base64!!"));
        assert_eq!(format!("{key:?}"), "MasterKey(***)");
    }
}
