//! Verification against a vector fjord did not make: testdata/make_vector.py (Python's
//! `cryptography` and PyNaCl) wrote a cosign-format encrypted key, its public key and a
//! signature over a cosign simple-signing payload.

use crate::{IMAGE_SIGNATURE_TYPE, PrivateKey, PublicKey, Refusal, Signature, verify};

const KEY: &str = include_str!("../testdata/cosign.key");
const PUB: &str = include_str!("../testdata/cosign.pub");
const PAYLOAD: &[u8] = include_bytes!("../testdata/payload.json");
const SIG: &str = include_str!("../testdata/payload.sig");
const DIGEST: &str = "sha256:5555555555555555555555555555555555555555555555555555555555555555";

#[test]
fn an_independently_made_signature_verifies_and_its_key_opens() {
    let public = PublicKey::from_pem(PUB).expect("public key");
    let sig = Signature {
        payload: PAYLOAD.to_vec(),
        signature: SIG.trim().to_string(),
    };
    let ok = verify(
        std::slice::from_ref(&public),
        DIGEST,
        IMAGE_SIGNATURE_TYPE,
        std::slice::from_ref(&sig),
    )
    .expect("the vector verifies");
    assert_eq!(ok.key_id, public.id());
    let other = "sha256:6666666666666666666666666666666666666666666666666666666666666666";
    assert!(matches!(
        verify(
            std::slice::from_ref(&public),
            other,
            IMAGE_SIGNATURE_TYPE,
            &[sig]
        ),
        Err(Refusal::OtherDigest { .. })
    ));
    // The encrypted private key (scrypt + NaCl secretbox by PyNaCl) opens with its
    // passphrase, is the public key's pair, and its signatures verify.
    let private = PrivateKey::from_encrypted_pem(KEY, b"fjord-vector").expect("opens");
    assert_eq!(private.public(), public);
    assert!(public.verifies(b"x", &private.sign(b"x")));
    assert!(PrivateKey::from_encrypted_pem(KEY, b"wrong").is_err());
}
