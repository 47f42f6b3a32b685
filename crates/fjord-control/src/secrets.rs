//! Function secrets (`/system/secrets`, as in OpenFaaS). Values are sealed with
//! XChaCha20-Poly1305 under the key in `<data-dir>/secrets/secrets.key` (32 random bytes,
//! mode 0600, made on first start) and only the nonce and ciphertext are stored in
//! `state.db`. The associated data binds each ciphertext to its namespace and name, so rows
//! cannot be swapped. Values are never returned by the API nor logged; functions get them as
//! files (see `fjord_runtime::secrets`).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use fjord_store::SealedSecret;
use rand::{RngCore, TryRngCore};
use zeroize::Zeroizing;

use crate::ControlError;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// Longest secret name (a DNS-1123 subdomain, as Kubernetes secret names).
const MAX_NAME: usize = 253;

/// Where the secrets key lives in a data dir.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets").join("secrets.key")
}

/// The key that seals secret values.
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
    path: PathBuf,
}

impl SecretKey {
    /// Reads `<data-dir>/secrets/secrets.key`, creating it (32 random bytes, 0600) on first
    /// start. A key file of the wrong size is refused: starting with another key would make
    /// every stored secret unreadable. Returns the key and whether it was just created.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<(Self, bool)> {
        let dir = data_dir.join("secrets");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let path = key_path(data_dir);
        let mut created = false;
        if !path.exists() {
            let mut key = Zeroizing::new([0u8; KEY_LEN]);
            rand::rngs::OsRng
                .try_fill_bytes(&mut *key)
                .map_err(std::io::Error::other)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(&*key)?;
            f.sync_all()?;
            std::fs::File::open(&dir)?.sync_all()?;
            created = true;
        }
        let meta = std::fs::symlink_metadata(&path)?;
        if !meta.is_file() || meta.len() != KEY_LEN as u64 {
            return Err(std::io::Error::other(format!(
                "{} is {} bytes, not a {KEY_LEN}-byte fjord secrets key: restore the right file \
                 (without it stored secrets cannot be decrypted), or move it away to start with \
                 a new key and create every secret again",
                path.display(),
                meta.len()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(path = %path.display(), "the secrets key was readable by others: its mode is now 0600");
        }
        let bytes = Zeroizing::new(std::fs::read(&path)?);
        if bytes.len() != KEY_LEN {
            return Err(std::io::Error::other(format!(
                "{} changed while being read",
                path.display()
            )));
        }
        Ok((
            Self {
                cipher: XChaCha20Poly1305::new(Key::from_slice(&bytes)),
                path,
            },
            created,
        ))
    }

    fn aad(namespace: &str, name: &str) -> Vec<u8> {
        format!("fjord-secret\0{namespace}\0{name}").into_bytes()
    }

    pub fn seal(
        &self,
        namespace: &str,
        name: &str,
        value: &[u8],
    ) -> Result<SealedSecret, ControlError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = Self::aad(namespace, name);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .map_err(|_| ControlError::Internal(format!("cannot encrypt secret {name}")))?;
        Ok(SealedSecret {
            namespace: namespace.to_string(),
            name: name.to_string(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    pub fn open(&self, s: &SealedSecret) -> Result<Zeroizing<Vec<u8>>, ControlError> {
        let fail = || {
            ControlError::Internal(format!(
                "secret {} in namespace {} cannot be decrypted with {}: was the key file replaced? \
                 Restore the original key, or create the secret again",
                s.name,
                s.namespace,
                self.path.display()
            ))
        };
        if s.nonce.len() != NONCE_LEN {
            return Err(fail());
        }
        let aad = Self::aad(&s.namespace, &s.name);
        self.cipher
            .decrypt(
                XNonce::from_slice(&s.nonce),
                Payload {
                    msg: &s.ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| fail())
    }
}

/// Secret names become file names in `/var/openfaas/secrets/`: a DNS-1123 subdomain
/// (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at
/// most 253 characters), so no '/', "..", control characters or hidden files.
pub fn validate_name(field: &str, name: &str) -> Result<(), ControlError> {
    let shown: String = name.chars().take(80).collect();
    let bad = |why: &str| {
        ControlError::BadRequest(format!(
            "{field}: secret name {shown:?} {why}: use lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit (at most {MAX_NAME} characters)"
        ))
    };
    if name.is_empty() {
        return Err(ControlError::BadRequest(format!(
            "{field}: the secret name is empty"
        )));
    }
    if name.len() > MAX_NAME {
        return Err(bad(&format!("is {} characters long", name.len())));
    }
    let b = name.as_bytes();
    let end_ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !b.iter().all(|c| end_ok(*c) || *c == b'-' || *c == b'.')
        || !end_ok(b[0])
        || !end_ok(b[b.len() - 1])
    {
        return Err(bad("is not allowed"));
    }
    if name.contains("..") {
        return Err(bad("contains \"..\""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["api-key", "a", "db.password", "x1-2.y"] {
            assert!(validate_name("name", ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "../etc", "a/b", "a..b", ".hidden", "UPPER", "a\nb", "tab\t", "-x", "x-", "a b",
        ] {
            let e = validate_name("name", bad).unwrap_err().to_string();
            assert!(e.starts_with("name:"), "{bad:?}: {e}");
        }
        assert!(validate_name("name", &"a".repeat(254)).is_err());
        assert!(validate_name("name", &"a".repeat(253)).is_ok());
    }

    #[test]
    fn key_is_made_once_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (k, created) = SecretKey::load_or_create(dir.path()).unwrap();
        assert!(created);
        let meta = std::fs::metadata(key_path(dir.path())).unwrap();
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.mode() & 0o777, 0o600);
        let sealed = k.seal("ns", "db", b"hunter2").unwrap();
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        let (k2, created2) = SecretKey::load_or_create(dir.path()).unwrap();
        assert!(!created2);
        assert_eq!(&**k2.open(&sealed).unwrap(), b"hunter2");
        // Bound to its name: a row copied under another name does not open.
        let moved = SealedSecret {
            name: "other".into(),
            ..sealed.clone()
        };
        assert!(k2.open(&moved).is_err());
        let mut tampered = sealed;
        tampered.ciphertext[0] ^= 1;
        assert!(k2.open(&tampered).is_err());
        // A key of the wrong size is refused, naming the file.
        std::fs::write(key_path(dir.path()), b"short").unwrap();
        let e = SecretKey::load_or_create(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("secrets.key") && e.contains("5 bytes"), "{e}");
    }
}
