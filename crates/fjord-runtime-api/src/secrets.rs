//! Decrypted secret values handed to a runtime (it decides how the function sees them).

use std::sync::Arc;

use zeroize::Zeroizing;

/// Decrypted secret values for a function's replicas. `Debug` shows names only.
#[derive(Clone, Default, PartialEq)]
pub struct SecretFiles(Vec<(String, Arc<Zeroizing<Vec<u8>>>)>);

impl std::fmt::Debug for SecretFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

impl SecretFiles {
    /// `name` must already be a valid file name (the control plane validates secret names).
    pub fn push(&mut self, name: String, value: Zeroizing<Vec<u8>>) {
        self.0.push((name, Arc::new(value)));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// Each secret's name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Zeroizing<Vec<u8>>>)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v))
    }
}
