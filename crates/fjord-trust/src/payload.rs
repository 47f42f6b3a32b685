//! What is signed, and the verdict on a set of signatures.
//!
//! Images are signed exactly as cosign signs them: the payload is a "simple signing" JSON
//! document whose `critical.image.docker-manifest-digest` is the image's manifest digest
//! and `critical.type` is [`IMAGE_SIGNATURE_TYPE`]. Bundles use the same document with
//! `critical.type` = [`BUNDLE_SIGNATURE_TYPE`] and the bundle's digest; their signatures
//! travel as a [`BundleSignatures`] document (`PUT /system/bundles/{digest}/signature`).
//!
//! What matters is the digest inside the signed payload, never where the signature was
//! found: a signature copied next to another image (or bundle) names the digest it was made
//! for and is refused there.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::TrustError;
use crate::keys::PublicKey;

/// cosign's `critical.type` for image signatures.
pub const IMAGE_SIGNATURE_TYPE: &str = "cosign container image signature";
/// fjord's `critical.type` for bundle signatures.
pub const BUNDLE_SIGNATURE_TYPE: &str = "fjord bundle signature";
/// The largest payload read (cosign's are ~250 bytes).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// The most signatures looked at for one digest.
pub const MAX_SIGNATURES: usize = 64;

/// The simple-signing document (containers/image's format, as cosign writes it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimpleSigning {
    pub critical: Critical,
    /// cosign's annotations (`-a key=value`); not checked.
    #[serde(default)]
    pub optional: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Critical {
    pub identity: Identity,
    pub image: Image,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Image {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

impl SimpleSigning {
    /// The payload cosign signs for image `digest` in repository `reference`
    /// (`registry/repository`, no tag).
    pub fn image(reference: &str, digest: &str) -> Self {
        Self::new(reference, digest, IMAGE_SIGNATURE_TYPE)
    }

    /// The payload fjord signs for bundle `digest` (`reference`: the tag it is pushed as).
    pub fn bundle(reference: &str, digest: &str) -> Self {
        Self::new(reference, digest, BUNDLE_SIGNATURE_TYPE)
    }

    fn new(reference: &str, digest: &str, kind: &str) -> Self {
        Self {
            critical: Critical {
                identity: Identity {
                    docker_reference: reference.to_string(),
                },
                image: Image {
                    docker_manifest_digest: digest.to_string(),
                },
                kind: kind.to_string(),
            },
            optional: None,
        }
    }

    /// The bytes that get signed (and stored as the signature layer's blob).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain JSON")
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, TrustError> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(TrustError::Signature("payload too large".into()));
        }
        serde_json::from_slice(bytes)
            .map_err(|e| TrustError::Signature(format!("not a simple-signing payload: {e}")))
    }
}

/// One signature: the signed payload and the base64 signature over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub payload: Vec<u8>,
    pub signature: String,
}

/// A bundle's detached signatures, as uploaded and stored beside the bundle:
/// `{"signatures":[{"payload":"<base64 of the payload JSON>","signature":"<base64 DER>"}]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct BundleSignatures {
    pub signatures: Vec<EncodedSignature>,
}

/// One entry of a [`BundleSignatures`] document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct EncodedSignature {
    /// base64 of the simple-signing payload.
    pub payload: String,
    /// base64 of the ECDSA P-256 / SHA-256 signature (ASN.1 DER) over the payload bytes.
    pub signature: String,
}

impl BundleSignatures {
    /// A document with one signature of bundle `digest` by `key`.
    pub fn sign(key: &crate::PrivateKey, reference: &str, digest: &str) -> Self {
        let payload = SimpleSigning::bundle(reference, digest).to_bytes();
        let signature = key.sign(&payload);
        Self {
            signatures: vec![EncodedSignature {
                payload: B64.encode(&payload),
                signature,
            }],
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, TrustError> {
        let doc: Self = serde_json::from_slice(bytes).map_err(|e| {
            TrustError::Signature(format!(
                "not a signature document ({{\"signatures\":[{{\"payload\":…,\"signature\":…}}]}}): {e}"
            ))
        })?;
        doc.validate()?;
        Ok(doc)
    }

    /// Checks the document's shape (not its signatures: the trust policy does that).
    pub fn validate(&self) -> Result<(), TrustError> {
        let doc = self;
        if doc.signatures.is_empty() {
            return Err(TrustError::Signature("no signatures".into()));
        }
        if doc.signatures.len() > MAX_SIGNATURES {
            return Err(TrustError::Signature(format!(
                "more than {MAX_SIGNATURES} signatures"
            )));
        }
        for s in &doc.signatures {
            let p = B64
                .decode(&s.payload)
                .map_err(|e| TrustError::Signature(format!("payload is not base64: {e}")))?;
            SimpleSigning::parse(&p)?;
            B64.decode(&s.signature)
                .map_err(|e| TrustError::Signature(format!("signature is not base64: {e}")))?;
        }
        Ok(())
    }

    /// Whether some signature's payload names `digest` (its signature is not checked here).
    pub fn names(&self, digest: &str) -> bool {
        self.signatures.iter().any(|s| {
            B64.decode(&s.payload)
                .ok()
                .and_then(|p| SimpleSigning::parse(&p).ok())
                .is_some_and(|p| p.critical.image.docker_manifest_digest == digest)
        })
    }

    /// Adds `other`'s signatures not already here (signing again with a second key, e.g.
    /// during a key rotation, keeps the first signature).
    pub fn merge(&mut self, other: BundleSignatures) {
        for s in other.signatures {
            if !self.signatures.contains(&s) && self.signatures.len() < MAX_SIGNATURES {
                self.signatures.push(s);
            }
        }
    }

    /// The signatures, decoded (entries that are not base64 are skipped: [`Self::parse`]
    /// refused them on upload).
    pub fn decoded(&self) -> Vec<Signature> {
        self.signatures
            .iter()
            .filter_map(|s| {
                Some(Signature {
                    payload: B64.decode(&s.payload).ok()?,
                    signature: s.signature.clone(),
                })
            })
            .collect()
    }
}

/// A digest some trusted key vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The id of the key whose signature matched ([`PublicKey::id`]).
    pub key_id: String,
}

/// Why signatures do not vouch for a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unsigned: no signature found for {digest}")]
    Unsigned { digest: String },
    #[error(
        "signed by an untrusted key: none of the {signatures} signature(s) of {digest} was made by a key the trust policy lists"
    )]
    UntrustedKey { digest: String, signatures: usize },
    #[error(
        "signature over another digest: the signature was made for {signed}, not for {digest} (copied from another image or bundle?)"
    )]
    OtherDigest { digest: String, signed: String },
}

/// Whether `signatures` vouch for `digest` under `keys`, for payloads of type `kind`
/// ([`IMAGE_SIGNATURE_TYPE`] or [`BUNDLE_SIGNATURE_TYPE`]). A signature counts when one of
/// the keys made it and its payload names `digest` with that type.
pub fn verify(
    keys: &[PublicKey],
    digest: &str,
    kind: &str,
    signatures: &[Signature],
) -> Result<Verified, Refusal> {
    if signatures.is_empty() {
        return Err(Refusal::Unsigned {
            digest: digest.to_string(),
        });
    }
    let mut other = None;
    for s in signatures.iter().take(MAX_SIGNATURES) {
        for k in keys {
            if !k.verifies(&s.payload, &s.signature) {
                continue;
            }
            match SimpleSigning::parse(&s.payload) {
                Ok(p)
                    if p.critical.image.docker_manifest_digest == digest
                        && p.critical.kind == kind =>
                {
                    return Ok(Verified {
                        key_id: k.id().to_string(),
                    });
                }
                Ok(p) => {
                    other = Some(if p.critical.kind == kind {
                        p.critical.image.docker_manifest_digest
                    } else {
                        format!("a {:?}", p.critical.kind)
                    })
                }
                Err(_) => other = Some("an unreadable payload".to_string()),
            }
        }
    }
    Err(match other {
        Some(signed) => Refusal::OtherDigest {
            digest: digest.to_string(),
            signed,
        },
        None => Refusal::UntrustedKey {
            digest: digest.to_string(),
            signatures: signatures.len(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyPair;
    use crate::PrivateKey;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn key() -> (PrivateKey, PublicKey) {
        let pair = KeyPair::generate(b"").expect("generate");
        let private = PrivateKey::from_encrypted_pem(&pair.private_pem, b"").expect("open");
        (private, pair.public)
    }

    fn image_sig(k: &PrivateKey, digest: &str) -> Signature {
        let payload = SimpleSigning::image("127.0.0.1:5000/web", digest).to_bytes();
        Signature {
            signature: k.sign(&payload),
            payload,
        }
    }

    #[test]
    fn the_payload_is_cosigns_simple_signing_document() {
        let p = SimpleSigning::image("127.0.0.1:5000/web", A);
        let v: serde_json::Value = serde_json::from_slice(&p.to_bytes()).expect("json");
        assert_eq!(v["critical"]["image"]["docker-manifest-digest"], A);
        assert_eq!(v["critical"]["type"], "cosign container image signature");
        assert_eq!(
            v["critical"]["identity"]["docker-reference"],
            "127.0.0.1:5000/web"
        );
    }

    #[test]
    fn verdicts_unsigned_untrusted_other_digest_and_verified() {
        let (k1, p1) = key();
        let (k2, p2) = key();
        assert_eq!(
            verify(std::slice::from_ref(&p1), A, IMAGE_SIGNATURE_TYPE, &[]),
            Err(Refusal::Unsigned { digest: A.into() })
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&p1),
                A,
                IMAGE_SIGNATURE_TYPE,
                &[image_sig(&k2, A)]
            ),
            Err(Refusal::UntrustedKey {
                digest: A.into(),
                signatures: 1
            })
        );
        // A's signature found next to B (copied to B's signature tag).
        assert_eq!(
            verify(
                std::slice::from_ref(&p1),
                B,
                IMAGE_SIGNATURE_TYPE,
                &[image_sig(&k1, A)]
            ),
            Err(Refusal::OtherDigest {
                digest: B.into(),
                signed: A.into()
            })
        );
        // One good signature among others is enough; the key that made it is named.
        let ok = verify(
            &[p1.clone(), p2.clone()],
            A,
            IMAGE_SIGNATURE_TYPE,
            &[image_sig(&k1, B), image_sig(&k2, A)],
        )
        .expect("verified");
        assert_eq!(ok.key_id, p2.id());
        // An image signature does not vouch for a bundle with the same digest.
        assert!(matches!(
            verify(
                std::slice::from_ref(&p1),
                A,
                BUNDLE_SIGNATURE_TYPE,
                &[image_sig(&k1, A)]
            ),
            Err(Refusal::OtherDigest { .. })
        ));
        // A tampered payload no longer matches its signature.
        let mut s = image_sig(&k1, A);
        s.payload = SimpleSigning::image("127.0.0.1:5000/web", B).to_bytes();
        assert!(matches!(
            verify(&[p1], B, IMAGE_SIGNATURE_TYPE, &[s]),
            Err(Refusal::UntrustedKey { .. })
        ));
    }

    #[test]
    fn bundle_signature_documents_round_trip_and_merge() {
        let (k1, p1) = key();
        let (k2, p2) = key();
        let mut doc = BundleSignatures::sign(&k1, "hello:latest", A);
        let text = serde_json::to_vec(&doc).expect("json");
        let back = BundleSignatures::parse(&text).expect("parse");
        assert_eq!(back, doc);
        doc.merge(BundleSignatures::sign(&k2, "hello:latest", A));
        doc.merge(back);
        assert_eq!(doc.signatures.len(), 2, "no duplicate");
        for p in [p1, p2] {
            verify(&[p], A, BUNDLE_SIGNATURE_TYPE, &doc.decoded()).expect("each key");
        }
        assert!(BundleSignatures::parse(b"{}").is_err());
        assert!(
            BundleSignatures::parse(br#"{"signatures":[{"payload":"e30=","signature":"AA=="}]}"#)
                .is_err(),
            "a payload that is not simple signing"
        );
    }
}
