//! The queue key: an HMAC-SHA256 key the fjord servers sharing one NATS queue hold, so a call's
//! stored request carries proof that a fjord server accepted it. Anyone else who can write to
//! the queue (a leaked NATS credential, a function that reaches the NATS port) cannot forge or
//! alter a call that fjord would run.
//!
//! The embedded SQLite queue needs no key: its file lives in the data dir (0700, owned by
//! root), so whoever can write it can also read the key.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac as _};
use rand::TryRngCore as _;
use sha2::Sha256;

/// Bytes of a key file fjord creates; shorter files are refused.
pub const KEY_LEN: usize = 32;
/// Length of a MAC.
pub const MAC_LEN: usize = 32;

/// Where fjord keeps the queue key in a data dir unless `--queue-key` says otherwise.
pub fn default_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets").join("queue.key")
}

/// The key, ready to compute MACs (keyed once; each MAC clones the keyed state).
#[derive(Clone)]
pub struct QueueKey {
    mac: Hmac<Sha256>,
    id: String,
}

impl std::fmt::Debug for QueueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueKey").field("id", &self.id).finish()
    }
}

impl QueueKey {
    /// A key from its bytes (at least [`KEY_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<QueueKey, String> {
        if bytes.len() < KEY_LEN {
            return Err(format!(
                "a queue key needs at least {KEY_LEN} bytes, this one has {}",
                bytes.len()
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(bytes).map_err(|e| e.to_string())?;
        // A short fingerprint that names the key in messages without revealing it.
        let mut idmac = mac.clone();
        idmac.update(b"fjord queue key id");
        let digest = idmac.finalize().into_bytes();
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Ok(QueueKey { mac, id })
    }

    /// Reads a key file (its bytes are the key). Refuses a missing, short or non-regular file.
    pub fn load(path: &Path) -> std::io::Result<QueueKey> {
        let meta = std::fs::metadata(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("queue key {}: {e}", path.display()))
        })?;
        if !meta.is_file() {
            return Err(std::io::Error::other(format!(
                "queue key {} is not a regular file",
                path.display()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(path = %path.display(), "the queue key was readable by others: its mode is now 0600");
        }
        let bytes = zeroize::Zeroizing::new(std::fs::read(path)?);
        QueueKey::from_bytes(&bytes).map_err(|e| {
            std::io::Error::other(format!(
                "queue key {}: {e} (make one with: head -c 32 /dev/urandom > {0}; chmod 600 {0})",
                path.display()
            ))
        })
    }

    /// [`load`](Self::load), first creating the file (32 random bytes, 0600, in a 0700
    /// directory) if it does not exist. Returns the key and whether it was just created.
    pub fn load_or_create(path: &Path) -> std::io::Result<(QueueKey, bool)> {
        let mut created = false;
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
            let mut key = zeroize::Zeroizing::new([0u8; KEY_LEN]);
            rand::rngs::OsRng
                .try_fill_bytes(&mut *key)
                .map_err(std::io::Error::other)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(&*key)?;
            f.sync_all()?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            created = true;
        }
        Ok((QueueKey::load(path)?, created))
    }

    /// A short public fingerprint of the key (8 hex digits), to tell keys apart in messages.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A MAC over `parts`, each length-prefixed so no two different part lists hash alike.
    pub fn mac<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> [u8; MAC_LEN] {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of `parts` (constant-time comparison).
    pub fn verify<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>, tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_depend_on_key_and_every_part() {
        let a = QueueKey::from_bytes(&[1; 32]).unwrap();
        let b = QueueKey::from_bytes(&[2; 32]).unwrap();
        let parts: [&[u8]; 2] = [b"ab", b"c"];
        let tag = a.mac(parts);
        assert!(a.verify(parts, &tag));
        assert!(!b.verify(parts, &tag));
        // Moving a byte between parts changes the MAC (length prefixes).
        assert!(!a.verify([b"a".as_slice(), b"bc"], &tag));
        assert!(!a.verify(parts, &tag[..31]));
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().len(), 8);
        assert!(QueueKey::from_bytes(&[0; 31]).is_err());
    }

    #[test]
    fn key_files_are_created_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets").join("queue.key");
        let (k1, created) = QueueKey::load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(
            std::fs::metadata(&path).unwrap().mode() & 0o777,
            0o600,
            "key file mode"
        );
        let (k2, created) = QueueKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.id(), k2.id());
        std::fs::write(&path, b"short").unwrap();
        let e = QueueKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("at least 32 bytes"), "{e}");
        let e = QueueKey::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
