//! cosign's key-pair format. The private key file is PEM with the label `ENCRYPTED SIGSTORE
//! PRIVATE KEY` (older cosign: `ENCRYPTED COSIGN PRIVATE KEY`) around a JSON envelope
//! (go-securesystemslib's `encrypted` package):
//!
//! ```json
//! {"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"<base64>"},
//!  "cipher":{"name":"nacl/secretbox","nonce":"<base64>"},"ciphertext":"<base64>"}
//! ```
//!
//! The secretbox key is scrypt(passphrase, salt, N, r, p, 32 bytes); the plaintext is the
//! PKCS#8 DER of the ECDSA P-256 private key. The public key is a PEM `PUBLIC KEY` (PKIX).
//! Signatures are ECDSA P-256 over SHA-256, ASN.1 DER, base64 (what cosign writes into the
//! `dev.cosignproject.cosign/signature` annotation).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, Signature as EcdsaSignature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::TrustError;

/// The label cosign (2.x) writes on private keys.
pub const PRIVATE_KEY_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The label cosign 1.x wrote; still read.
const LEGACY_PRIVATE_KEY_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";

/// cosign's (go-securesystemslib's) scrypt cost: N = 2^15, r = 8, p = 1.
const SCRYPT_LOG_N: u8 = 15;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
/// Refuse keys that would make us spend more than ~1 GiB of memory deriving their key.
const MAX_SCRYPT_LOG_N: u8 = 20;

#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// An ECDSA P-256 private key, decrypted.
pub struct PrivateKey {
    key: SigningKey,
}

/// An ECDSA P-256 public key and its id.
#[derive(Clone)]
pub struct PublicKey {
    key: VerifyingKey,
    id: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// A new key pair in cosign's files: `cosign.key` (encrypted) and `cosign.pub`.
pub struct KeyPair {
    /// The encrypted private key, PEM.
    pub private_pem: String,
    /// The public key, PEM.
    pub public_pem: String,
    pub public: PublicKey,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b[..]);
    b
}

impl KeyPair {
    /// A fresh key pair whose private half is encrypted with `passphrase`.
    pub fn generate(passphrase: &[u8]) -> Result<Self, TrustError> {
        let key = loop {
            // Almost every 32 random bytes are a valid scalar; the loop is for the others.
            let bytes = Zeroizing::new(random_bytes::<32>());
            if let Ok(k) = SigningKey::from_slice(&bytes[..]) {
                break k;
            }
        };
        let private = PrivateKey { key };
        let private_pem = private.to_encrypted_pem(passphrase)?;
        let public = private.public();
        let public_pem = public.to_pem()?;
        Ok(Self {
            private_pem,
            public_pem,
            public,
        })
    }
}

fn derive_key(
    passphrase: &[u8],
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, TrustError> {
    let params = scrypt::Params::new(log_n, r, p, 32)
        .map_err(|e| TrustError::Key(format!("scrypt parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(passphrase, salt, &params, &mut out[..])
        .map_err(|e| TrustError::Key(format!("scrypt: {e}")))?;
    Ok(out)
}

impl PrivateKey {
    /// Opens a cosign private key file's text with its passphrase.
    pub fn from_encrypted_pem(pem: &str, passphrase: &[u8]) -> Result<Self, TrustError> {
        let (label, der) = pem_rfc7468::decode_vec(pem.trim().as_bytes())
            .map_err(|e| TrustError::Key(format!("not a PEM file: {e}")))?;
        if label != PRIVATE_KEY_LABEL && label != LEGACY_PRIVATE_KEY_LABEL {
            return Err(TrustError::Key(format!(
                "a {label:?} PEM block, not an {PRIVATE_KEY_LABEL:?} (a cosign private key)"
            )));
        }
        let env: Envelope = serde_json::from_slice(&der)
            .map_err(|e| TrustError::Key(format!("not cosign's encrypted key envelope: {e}")))?;
        if env.kdf.name != "scrypt" || env.cipher.name != "nacl/secretbox" {
            return Err(TrustError::Key(format!(
                "unsupported encryption {}/{} (cosign uses scrypt/nacl/secretbox)",
                env.kdf.name, env.cipher.name
            )));
        }
        let n = env.kdf.params.n;
        if !n.is_power_of_two() || n < 2 {
            return Err(TrustError::Key(format!(
                "scrypt N = {n} is not a power of two"
            )));
        }
        let log_n = n.trailing_zeros() as u8;
        if log_n > MAX_SCRYPT_LOG_N || env.kdf.params.r > 32 || env.kdf.params.p > 16 {
            return Err(TrustError::Key("scrypt parameters too large".into()));
        }
        let b64 = |what: &str, s: &str| {
            B64.decode(s)
                .map_err(|e| TrustError::Key(format!("{what} is not base64: {e}")))
        };
        let salt = b64("kdf.salt", &env.kdf.salt)?;
        let nonce = b64("cipher.nonce", &env.cipher.nonce)?;
        let ciphertext = b64("ciphertext", &env.ciphertext)?;
        if nonce.len() != 24 {
            return Err(TrustError::Key(
                "the secretbox nonce is not 24 bytes".into(),
            ));
        }
        let key = derive_key(passphrase, &salt, log_n, env.kdf.params.r, env.kdf.params.p)?;
        let cipher = XSalsa20Poly1305::new_from_slice(&key[..])
            .map_err(|e| TrustError::Key(e.to_string()))?;
        let plain = Zeroizing::new(
            cipher
                .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
                .map_err(|_| TrustError::Passphrase)?,
        );
        let key = SigningKey::from_pkcs8_der(&plain).map_err(|e| {
            TrustError::Key(format!(
                "the decrypted key is not a PKCS#8 ECDSA P-256 key: {e}"
            ))
        })?;
        Ok(Self { key })
    }

    /// This key encrypted with `passphrase`, as cosign writes `cosign.key`.
    pub fn to_encrypted_pem(&self, passphrase: &[u8]) -> Result<String, TrustError> {
        let der = self
            .key
            .to_pkcs8_der()
            .map_err(|e| TrustError::Key(e.to_string()))?;
        let salt = random_bytes::<32>();
        let nonce = random_bytes::<24>();
        let key = derive_key(passphrase, &salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)?;
        let cipher = XSalsa20Poly1305::new_from_slice(&key[..])
            .map_err(|e| TrustError::Key(e.to_string()))?;
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), der.as_bytes())
            .map_err(|e| TrustError::Key(e.to_string()))?;
        let env = Envelope {
            kdf: Kdf {
                name: "scrypt".into(),
                params: ScryptParams {
                    n: 1 << SCRYPT_LOG_N,
                    r: SCRYPT_R,
                    p: SCRYPT_P,
                },
                salt: B64.encode(salt),
            },
            cipher: Cipher {
                name: "nacl/secretbox".into(),
                nonce: B64.encode(nonce),
            },
            ciphertext: B64.encode(ciphertext),
        };
        let json = serde_json::to_vec(&env).map_err(|e| TrustError::Key(e.to_string()))?;
        pem_rfc7468::encode_string(PRIVATE_KEY_LABEL, pem_rfc7468::LineEnding::LF, &json)
            .map_err(|e| TrustError::Key(e.to_string()))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey::new(*self.key.verifying_key())
    }

    /// An ECDSA P-256 / SHA-256 signature over `payload`: ASN.1 DER, base64.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: DerSignature = self.key.sign(payload);
        B64.encode(sig.as_bytes())
    }
}

impl PublicKey {
    fn new(key: VerifyingKey) -> Self {
        let der = key
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let hash = Sha256::digest(&der);
        let id = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self { key, id }
    }

    /// A PEM `PUBLIC KEY` (PKIX) holding an ECDSA P-256 key, as `cosign.pub`.
    pub fn from_pem(pem: &str) -> Result<Self, TrustError> {
        let text = pem.trim();
        if !text.starts_with("-----BEGIN PUBLIC KEY-----") {
            return Err(TrustError::Key(
                "not a PEM \"PUBLIC KEY\" (cosign.pub: -----BEGIN PUBLIC KEY-----)".into(),
            ));
        }
        VerifyingKey::from_public_key_pem(text)
            .map(Self::new)
            .map_err(|e| TrustError::Key(format!("not an ECDSA P-256 public key: {e}")))
    }

    pub fn to_pem(&self) -> Result<String, TrustError> {
        self.key
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .map_err(|e| TrustError::Key(e.to_string()))
    }

    /// The first 8 bytes of the SHA-256 of the key's PKIX DER, in hex: how statuses and
    /// errors name a key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `signature` (base64 of an ASN.1 DER signature, or of the 64-byte r‖s form)
    /// is this key's over `payload`.
    pub fn verifies(&self, payload: &[u8], signature: &str) -> bool {
        let Ok(raw) = B64.decode(signature.trim()) else {
            return false;
        };
        let sig = match EcdsaSignature::from_der(&raw) {
            Ok(s) => s,
            Err(_) => match EcdsaSignature::from_slice(&raw) {
                Ok(s) => s,
                Err(_) => return false,
            },
        };
        self.key.verify(payload, &sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_pair_round_trips_and_signs() {
        let pair = KeyPair::generate(b"pass").expect("generate");
        assert!(
            pair.private_pem
                .starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
        );
        assert!(pair.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        let private = PrivateKey::from_encrypted_pem(&pair.private_pem, b"pass").expect("open");
        let public = PublicKey::from_pem(&pair.public_pem).expect("public");
        assert_eq!(public, private.public());
        assert_eq!(public.id().len(), 16);
        let sig = private.sign(b"payload");
        assert!(public.verifies(b"payload", &sig));
        assert!(!public.verifies(b"payload!", &sig), "another payload");
        let other = KeyPair::generate(b"pass").expect("generate");
        assert!(!other.public.verifies(b"payload", &sig), "another key");
        assert!(!public.verifies(b"payload", "not base64!"));
    }

    #[test]
    fn a_wrong_passphrase_or_a_damaged_key_is_refused() {
        let pair = KeyPair::generate(b"right").expect("generate");
        assert!(matches!(
            PrivateKey::from_encrypted_pem(&pair.private_pem, b"wrong"),
            Err(TrustError::Passphrase)
        ));
        assert!(matches!(
            PrivateKey::from_encrypted_pem(&pair.public_pem, b"right"),
            Err(TrustError::Key(_))
        ));
        assert!(matches!(
            PublicKey::from_pem(&pair.private_pem),
            Err(TrustError::Key(_))
        ));
        assert!(matches!(
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            Err(TrustError::Key(_))
        ));
    }
}
