"""Makes the independent test vector in this directory (run once; the outputs are committed).

An implementation that is not fjord's: Python's `cryptography` (OpenSSL) for the ECDSA P-256
key, PKCS#8/PKIX encodings and the signature; `hashlib.scrypt` and PyNaCl's SecretBox for
cosign's encrypted private key format (go-securesystemslib's `encrypted` envelope).

    pip install cryptography pynacl
    python3 make_vector.py     # in crates/fjord-trust/testdata/

Writes cosign.key (passphrase: fjord-vector), cosign.pub, payload.json (a cosign simple-
signing payload for DIGEST) and payload.sig (base64 ASN.1 DER signature over payload.json).
"""

import base64
import hashlib
import json
import os

import nacl.secret
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

PASSPHRASE = b"fjord-vector"
DIGEST = "sha256:" + "5" * 64
REFERENCE = "127.0.0.1:5000/vector"

key = ec.generate_private_key(ec.SECP256R1())
pkcs8 = key.private_bytes(
    serialization.Encoding.DER,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
)
salt = os.urandom(32)
n, r, p = 32768, 8, 1
secret = hashlib.scrypt(PASSPHRASE, salt=salt, n=n, r=r, p=p, dklen=32, maxmem=64 * 1024 * 1024)
box = nacl.secret.SecretBox(secret)
nonce = os.urandom(24)
# PyNaCl returns nonce || tag || ciphertext; the envelope keeps the nonce apart.
ciphertext = box.encrypt(pkcs8, nonce).ciphertext
envelope = {
    "kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p},
            "salt": base64.b64encode(salt).decode()},
    "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
    "ciphertext": base64.b64encode(ciphertext).decode(),
}
body = base64.b64encode(json.dumps(envelope).encode()).decode()
lines = [body[i:i + 64] for i in range(0, len(body), 64)]
with open("cosign.key", "w") as f:
    f.write("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n" + "\n".join(lines)
            + "\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
with open("cosign.pub", "wb") as f:
    f.write(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
payload = json.dumps({
    "critical": {
        "identity": {"docker-reference": REFERENCE},
        "image": {"docker-manifest-digest": DIGEST},
        "type": "cosign container image signature",
    },
    "optional": None,
}).encode()
with open("payload.json", "wb") as f:
    f.write(payload)
with open("payload.sig", "w") as f:
    f.write(base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode() + "\n")
