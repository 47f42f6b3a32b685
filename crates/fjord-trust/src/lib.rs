//! Content trust: what fjord needs to sign and verify the code it runs, offline, with keys the
//! operator holds.
//!
//! - [`keys`]: cosign's key-pair format (an ECDSA P-256 key, the private half encrypted with a
//!   passphrase as `ENCRYPTED SIGSTORE PRIVATE KEY`, the public half as a PKIX `PUBLIC KEY`),
//!   so keys made by `fjord key generate` work with `cosign` and the other way round.
//! - [`payload`]: the "simple signing" payload cosign signs for an image (it names the
//!   manifest digest), the same payload idea for bundles, and [`payload::verify`], which
//!   decides whether a set of signatures vouches for a digest under a set of keys.
//! - [`policy`]: the server's `--trust-policy` file: per namespace, the keys that must have
//!   signed a function's image or bundle, or `allow-unsigned`.

pub mod keys;
pub mod payload;
pub mod policy;

pub use keys::{KeyPair, PrivateKey, PublicKey};
pub use payload::{
    BUNDLE_SIGNATURE_TYPE, BundleSignatures, IMAGE_SIGNATURE_TYPE, Refusal, Signature,
    SimpleSigning, Verified, verify,
};
pub use policy::{KeySource, Policy, Rule};

/// Why a key, a signature document or a policy cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A key that is not what it should be (not PEM, not P-256, not cosign's format).
    #[error("malformed key: {0}")]
    Key(String),
    /// The passphrase does not open the private key (or the key file was altered).
    #[error("the passphrase does not decrypt this private key (or the key file is damaged)")]
    Passphrase,
    /// A signature document or payload that cannot be read.
    #[error("malformed signature: {0}")]
    Signature(String),
    /// The trust policy file is wrong: the message names the entry.
    #[error("trust policy: {0}")]
    Policy(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[cfg(test)]
mod vector_tests;
