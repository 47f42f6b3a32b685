//! fjord's embedded state store: the functions `fjord serve` runs and their desired replica
//! counts, kept in `<data-dir>/state.db` (SQLite) so they survive restarts.
//!
//! The store is only touched by the control plane (deploy, update, delete, scale) and at
//! startup, never on the invoke path, so a single connection behind a mutex is plenty.

pub mod uid_registry;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fjord_core::openfaas::FunctionDeployment;
use rusqlite::{Connection, OptionalExtension, Row, params};

/// Schema migrations; after applying `MIGRATIONS[i]` the database's `user_version` is `i + 1`.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE functions (
        namespace  TEXT    NOT NULL,
        name       TEXT    NOT NULL,
        deployment TEXT    NOT NULL,
        replicas   INTEGER NOT NULL,
        uid        INTEGER NOT NULL,
        created_at TEXT    NOT NULL,
        updated_at TEXT    NOT NULL,
        PRIMARY KEY (namespace, name)
    ) STRICT;",
    // Bundle tags (`resize-image:latest`) → content digests (`sha256:…`).
    "CREATE TABLE bundle_tags (
        tag        TEXT NOT NULL PRIMARY KEY,
        digest     TEXT NOT NULL,
        updated_at TEXT NOT NULL
    ) STRICT;",
    // Function secrets, sealed by the gateway (XChaCha20-Poly1305): never plaintext here.
    "CREATE TABLE secrets (
        namespace  TEXT NOT NULL,
        name       TEXT NOT NULL,
        nonce      BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (namespace, name)
    ) STRICT;",
    // API tokens: only an argon2 hash of each secret is kept; the token itself is shown once.
    "CREATE TABLE api_tokens (
        id         TEXT NOT NULL PRIMARY KEY,
        name       TEXT NOT NULL,
        scope      TEXT NOT NULL,
        hash       TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at INTEGER
    ) STRICT;",
    // Named counters that only grow. `uid_high`: one above the highest uid ever given to a
    // function, so a deleted function's uid is never handed out again (a new function with
    // it could read what the old one left in /dev/shm, /var/tmp...).
    "CREATE TABLE counters (
        name  TEXT    NOT NULL PRIMARY KEY,
        value INTEGER NOT NULL
    ) STRICT;",
    // 6: the bundle each deployed version runs, pinned when it was deployed, so a restart
    // never resolves a (mutable) tag again. NULL: stored before pinning (see `Pin::Unknown`).
    "ALTER TABLE functions ADD COLUMN digest TEXT;",
    // 7: namespaces created through the API, with their labels and annotations (JSON maps).
    // Namespaces that only hold functions or secrets exist implicitly and have no row.
    "CREATE TABLE namespaces (
        name        TEXT NOT NULL PRIMARY KEY,
        labels      TEXT NOT NULL,
        annotations TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    ) STRICT;",
    // 8: when a function's scheduled trigger (cron) last ran, in ms since the epoch, so a
    // restart can run the latest missed run once (annotation `com.fjord.schedule.missed`).
    "CREATE TABLE trigger_runs (
        namespace TEXT    NOT NULL,
        name      TEXT    NOT NULL,
        trigger   TEXT    NOT NULL,
        last_ms   INTEGER NOT NULL,
        PRIMARY KEY (namespace, name, trigger)
    ) STRICT;",
];

const COLUMNS: &str = "namespace, name, deployment, replicas, uid, created_at, updated_at, digest";

/// Which bundle or image a stored version runs, fixed when it was deployed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Pin {
    /// Stored by a fjord from before pinning: its tag is resolved once more at the next
    /// start, and pinned then.
    #[default]
    Unknown,
    /// No bundle: the image is only a label, the program comes from `envProcess`.
    NoBundle,
    /// The bundle's digest (`sha256:…`).
    Bundle(String),
    /// A container image's manifest digest (`sha256:…`), stored as `image:sha256:…`.
    Image(String),
}

/// How an image pin is told from a bundle pin in the `digest` column.
const IMAGE_PIN: &str = "image:";

impl Pin {
    fn to_sql(&self) -> Option<String> {
        match self {
            Pin::Unknown => None,
            Pin::NoBundle => Some(String::new()),
            Pin::Bundle(d) => Some(d.clone()),
            Pin::Image(d) => Some(format!("{IMAGE_PIN}{d}")),
        }
    }

    fn from_sql(v: Option<String>) -> Pin {
        match v {
            None => Pin::Unknown,
            Some(d) if d.is_empty() => Pin::NoBundle,
            Some(d) => match d.strip_prefix(IMAGE_PIN) {
                Some(image) => Pin::Image(image.to_string()),
                None => Pin::Bundle(d),
            },
        }
    }

    /// The digest, when it is a bundle or an image.
    pub fn digest(&self) -> Option<&str> {
        match self {
            Pin::Bundle(d) | Pin::Image(d) => Some(d),
            _ => None,
        }
    }
}

/// One deployed function as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFunction {
    pub namespace: String,
    pub name: String,
    /// The deployment as the client sent it (after validation); stored as JSON text so new
    /// OpenFaaS fields need no schema change.
    pub deployment: FunctionDeployment,
    /// Desired replicas.
    pub replicas: u64,
    /// The unprivileged uid the function runs as; fixed for the function's lifetime so files it
    /// owns stay its own across updates and restarts.
    pub uid: u32,
    /// RFC 3339, kept across updates.
    pub created_at: String,
    /// RFC 3339 time of the last deploy or update (not of scaling).
    pub updated_at: String,
    /// The bundle this version runs, pinned at deploy time.
    pub pin: Pin,
}

/// A secret as persisted: its value sealed with the gateway's key (the store never sees
/// plaintext). `Debug` is fine: nonce and ciphertext reveal nothing without the key.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedSecret {
    pub namespace: String,
    pub name: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// One API token as persisted: never the token, only its argon2 hash (a PHC string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub id: String,
    pub name: String,
    /// `invoke`, `read`, `deploy` or `admin`; interpreted by the gateway.
    pub scope: String,
    pub hash: String,
    /// RFC 3339.
    pub created_at: String,
    /// Unix time in seconds after which the token is refused; `None` never expires.
    pub expires_at: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row that cannot be decoded; named so the operator can find and fix or delete it.
    #[error("state database: function {namespace}/{name} is corrupt: {reason}")]
    Corrupt {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("state database: {0}")]
    Io(#[from] std::io::Error),
    /// The database was written by a newer fjord; refusing to open it avoids silently
    /// misreading (or downgrading) its schema.
    #[error(
        "state database has schema version {found}, newer than the {supported} this fjord supports"
    )]
    UnsupportedSchema { found: i64, supported: i64 },
    /// Every uid above the base is taken; handing out a duplicate would let two functions
    /// share an identity.
    #[error("no unused uid left above the base uid")]
    UidsExhausted,
    /// A namespace record that cannot be decoded (or encoded).
    #[error("state database: namespace {name} is corrupt: {reason}")]
    CorruptNamespace { name: String, reason: String },
}

impl From<fjord_sqlite::Error> for StoreError {
    fn from(e: fjord_sqlite::Error) -> StoreError {
        match e {
            fjord_sqlite::Error::Create { source, .. } => StoreError::Io(source),
            fjord_sqlite::Error::Sqlite(e) => StoreError::Sqlite(e),
            fjord_sqlite::Error::UnsupportedSchema { found, supported } => {
                StoreError::UnsupportedSchema { found, supported }
            }
        }
    }
}

/// A namespace created through the API (`POST /system/namespace/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredNamespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// The state database's page cache, in KiB (SQLite's `cache_size`, negative for KiB).
const STATE_CACHE_KIB: i64 = 256;

/// The state database. `Send + Sync`: share it behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens or creates the database (parent dir must exist), WAL mode, synchronous=NORMAL,
    /// busy_timeout 5s, schema via PRAGMA user_version migrations.
    ///
    /// The file is created with mode 0600 (and tightened to it if it exists with looser
    /// permissions) because the data dir holds secrets; SQLite gives its `-wal`/`-shm` files
    /// the database file's mode.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // NORMAL, not FULL: with WAL a crash of fjord loses nothing committed; only a power
        // loss may drop the last commits. FULL would put an fsync into every scale call.
        let mut conn = fjord_sqlite::open(
            path,
            fjord_sqlite::Synchronous::Normal,
            Duration::from_secs(5),
        )?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Read when the server starts and written on deploys and scale calls, never on the
        // invoke path: SQLite's default 2 MiB page cache would only hold, for good, the pages
        // of every function ever written (~2 KiB each). The OS page cache has them anyway.
        conn.pragma_update(None, "cache_size", -STATE_CACHE_KIB)?;
        fjord_sqlite::migrate(&mut conn, MIGRATIONS)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// All functions, ordered by namespace, name.
    pub fn list(&self) -> Result<Vec<StoredFunction>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM functions ORDER BY namespace, name"
        ))?;
        let raws = stmt
            .query_map([], RawRow::read)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(RawRow::decode).collect()
    }

    /// One function, or `None` if it is not stored.
    pub fn get(&self, namespace: &str, name: &str) -> Result<Option<StoredFunction>, StoreError> {
        let conn = self.lock();
        let raw = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM functions WHERE namespace = ?1 AND name = ?2"),
                params![namespace, name],
                RawRow::read,
            )
            .optional()?;
        raw.map(RawRow::decode).transpose()
    }

    /// Insert or replace; on replace keeps the existing created_at and uid (ignores the ones
    /// passed), so an update neither resets the function's age nor changes its identity.
    /// Empty `created_at`/`updated_at` are filled with [`now_rfc3339`].
    /// Returns the row as stored.
    pub fn upsert(&self, f: &StoredFunction) -> Result<StoredFunction, StoreError> {
        let json = serde_json::to_string(&f.deployment).map_err(|e| StoreError::Corrupt {
            namespace: f.namespace.clone(),
            name: f.name.clone(),
            reason: format!("cannot encode deployment: {e}"),
        })?;
        let now = now_rfc3339();
        let or_now = |s: &str| {
            if s.is_empty() {
                now.clone()
            } else {
                s.to_owned()
            }
        };
        let mut conn = self.lock();
        // With the uid watermark, in one transaction.
        let tx = conn.transaction()?;
        let raw = tx.query_row(
            &format!(
                "INSERT INTO functions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (namespace, name) DO UPDATE SET
                     deployment = excluded.deployment,
                     replicas   = excluded.replicas,
                     updated_at = excluded.updated_at,
                     digest     = excluded.digest
                 RETURNING {COLUMNS}"
            ),
            params![
                f.namespace,
                f.name,
                json,
                replicas_to_sql(f.replicas)?,
                f.uid,
                or_now(&f.created_at),
                or_now(&f.updated_at),
                f.pin.to_sql(),
            ],
            RawRow::read,
        )?;
        let stored = raw.decode()?;
        bump_uid_high(&tx, stored.uid)?;
        tx.commit()?;
        Ok(stored)
    }

    /// Sets the desired replicas; `false` if the function is not stored. Leaves `updated_at`
    /// alone: scaling is not a deploy or update.
    pub fn set_replicas(
        &self,
        namespace: &str,
        name: &str,
        replicas: u64,
    ) -> Result<bool, StoreError> {
        let n = self.lock().execute(
            "UPDATE functions SET replicas = ?3 WHERE namespace = ?1 AND name = ?2",
            params![namespace, name, replicas_to_sql(replicas)?],
        )?;
        Ok(n > 0)
    }

    /// Removes a function; `false` if it was not stored.
    pub fn delete(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn.execute(
            "DELETE FROM functions WHERE namespace = ?1 AND name = ?2",
            params![namespace, name],
        )?;
        // A function deployed again under this name starts without a schedule history.
        conn.execute(
            "DELETE FROM trigger_runs WHERE namespace = ?1 AND name = ?2",
            params![namespace, name],
        )?;
        Ok(n > 0)
    }

    /// When `trigger` (e.g. `cron`) last ran `namespace/name` (ms since the epoch).
    pub fn trigger_run(
        &self,
        namespace: &str,
        name: &str,
        trigger: &str,
    ) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = self
            .lock()
            .query_row(
                "SELECT last_ms FROM trigger_runs WHERE namespace = ?1 AND name = ?2 AND trigger = ?3",
                params![namespace, name, trigger],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.map(|v| v.max(0) as u64))
    }

    /// Records that `trigger` ran `namespace/name` for the time `at_ms` (kept if later).
    pub fn set_trigger_run(
        &self,
        namespace: &str,
        name: &str,
        trigger: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO trigger_runs (namespace, name, trigger, last_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (namespace, name, trigger) DO UPDATE SET last_ms = max(last_ms, excluded.last_ms)",
            params![namespace, name, trigger, at_ms as i64],
        )?;
        Ok(())
    }

    /// The uid a new function gets, within `first ..= last` (this instance's block): one
    /// above the highest uid ever stored in the block, whether or not that function still
    /// exists, so uids are never reused. Nothing is reserved until a row with it is stored
    /// ([`upsert`](Self::upsert), [`set_uid`](Self::set_uid)), so a failing deploy burns none.
    pub fn next_uid(&self, first: u32, last: u32) -> Result<u32, StoreError> {
        let conn = self.lock();
        let high: Option<i64> = conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'uid_high'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let max_row: Option<i64> = conn.query_row(
            "SELECT MAX(uid) FROM functions WHERE uid BETWEEN ?1 AND ?2",
            params![first, last],
            |r| r.get(0),
        )?;
        let mut next = i64::from(first);
        // A watermark outside the block belongs to a block this data dir had before.
        if let Some(h) = high.filter(|h| (i64::from(first)..=i64::from(last) + 1).contains(h)) {
            next = next.max(h);
        }
        if let Some(m) = max_row {
            next = next.max(m + 1);
        }
        if next > i64::from(last) {
            return Err(StoreError::UidsExhausted);
        }
        Ok(next as u32)
    }

    /// Pins a stored function's bundle (a row stored before pinning, at its first start);
    /// `false` if the function is not stored.
    pub fn set_pin(&self, namespace: &str, name: &str, pin: &Pin) -> Result<bool, StoreError> {
        let n = self.lock().execute(
            "UPDATE functions SET digest = ?3 WHERE namespace = ?1 AND name = ?2",
            params![namespace, name, pin.to_sql()],
        )?;
        Ok(n > 0)
    }

    /// Gives a stored function another uid (it was outside this instance's uid block).
    pub fn set_uid(&self, namespace: &str, name: &str, uid: u32) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE functions SET uid = ?3 WHERE namespace = ?1 AND name = ?2",
            params![namespace, name, uid],
        )?;
        bump_uid_high(&tx, uid)?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// Points a bundle tag at a digest (replacing what it pointed at).
    pub fn set_tag(&self, tag: &str, digest: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO bundle_tags (tag, digest, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (tag) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
            params![tag, digest, now_rfc3339()],
        )?;
        Ok(())
    }

    /// The digest a bundle tag points at.
    pub fn tag(&self, tag: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT digest FROM bundle_tags WHERE tag = ?1",
                [tag],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Adds an API token.
    pub fn insert_token(&self, t: &StoredToken) -> Result<(), StoreError> {
        let expires = t.expires_at.map(|e| i64::try_from(e).unwrap_or(i64::MAX));
        self.lock().execute(
            "INSERT INTO api_tokens (id, name, scope, hash, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.id, t.name, t.scope, t.hash, t.created_at, expires],
        )?;
        Ok(())
    }

    /// Every API token, oldest first.
    pub fn list_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, name, scope, hash, created_at, expires_at FROM api_tokens
             ORDER BY created_at, id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                let expires: Option<i64> = r.get(5)?;
                Ok(StoredToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    scope: r.get(2)?,
                    hash: r.get(3)?,
                    created_at: r.get(4)?,
                    expires_at: expires.map(|e| u64::try_from(e).unwrap_or(0)),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Removes an API token; `false` if there was none with that id.
    pub fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM api_tokens WHERE id = ?1", [id])?;
        Ok(n > 0)
    }

    /// Every namespace that exists, sorted: created ones and those holding functions or
    /// secrets (a namespace with only secrets is one too, as in OpenFaaS).
    pub fn namespaces(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT namespace FROM functions UNION SELECT namespace FROM secrets
             UNION SELECT name FROM namespaces ORDER BY 1",
        )?;
        let names = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    }

    /// A created namespace's record; `None` if it was never created (it may still exist
    /// implicitly: see [`namespaces`](Self::namespaces)).
    pub fn namespace(&self, name: &str) -> Result<Option<StoredNamespace>, StoreError> {
        let raw: Option<(String, String)> = self
            .lock()
            .query_row(
                "SELECT labels, annotations FROM namespaces WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((labels, annotations)) = raw else {
            return Ok(None);
        };
        let decode = |what: &str, json: &str| {
            serde_json::from_str(json).map_err(|e| StoreError::CorruptNamespace {
                name: name.to_string(),
                reason: format!("{what}: {e}"),
            })
        };
        Ok(Some(StoredNamespace {
            name: name.to_string(),
            labels: decode("labels", &labels)?,
            annotations: decode("annotations", &annotations)?,
        }))
    }

    /// Creates or replaces a namespace's record (labels and annotations), keeping its
    /// created_at.
    pub fn upsert_namespace(&self, ns: &StoredNamespace) -> Result<(), StoreError> {
        let encode = |m: &BTreeMap<String, String>| {
            serde_json::to_string(m).map_err(|e| StoreError::CorruptNamespace {
                name: ns.name.clone(),
                reason: e.to_string(),
            })
        };
        self.lock().execute(
            "INSERT INTO namespaces (name, labels, annotations, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (name) DO UPDATE SET labels = excluded.labels,
                 annotations = excluded.annotations, updated_at = excluded.updated_at",
            params![
                ns.name,
                encode(&ns.labels)?,
                encode(&ns.annotations)?,
                now_rfc3339()
            ],
        )?;
        Ok(())
    }

    /// Removes a namespace's record; `false` if it had none.
    pub fn delete_namespace(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM namespaces WHERE name = ?1", [name])?;
        Ok(n > 0)
    }

    /// Names of the functions of one namespace, sorted.
    pub fn function_names(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT name FROM functions WHERE namespace = ?1 ORDER BY name")?;
        let names = stmt
            .query_map([namespace], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    }

    /// Stores a new sealed secret; false (nothing written) if one of that name exists.
    pub fn insert_secret(&self, s: &SealedSecret) -> Result<bool, StoreError> {
        let now = now_rfc3339();
        let n = self.lock().execute(
            "INSERT INTO secrets (namespace, name, nonce, ciphertext, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT DO NOTHING",
            params![s.namespace, s.name, s.nonce, s.ciphertext, now],
        )?;
        Ok(n == 1)
    }

    /// Replaces a sealed secret's value; false if it does not exist.
    pub fn update_secret(&self, s: &SealedSecret) -> Result<bool, StoreError> {
        let n = self.lock().execute(
            "UPDATE secrets SET nonce = ?3, ciphertext = ?4, updated_at = ?5
             WHERE namespace = ?1 AND name = ?2",
            params![s.namespace, s.name, s.nonce, s.ciphertext, now_rfc3339()],
        )?;
        Ok(n == 1)
    }

    /// One sealed secret.
    pub fn secret(&self, namespace: &str, name: &str) -> Result<Option<SealedSecret>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT namespace, name, nonce, ciphertext FROM secrets
                 WHERE namespace = ?1 AND name = ?2",
                params![namespace, name],
                |r| {
                    Ok(SealedSecret {
                        namespace: r.get(0)?,
                        name: r.get(1)?,
                        nonce: r.get(2)?,
                        ciphertext: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Names of the secrets of one namespace, sorted.
    pub fn secret_names(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT name FROM secrets WHERE namespace = ?1 ORDER BY name")?;
        let names = stmt
            .query_map([namespace], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(names)
    }

    /// Deletes a secret; false if it did not exist.
    pub fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        let n = self.lock().execute(
            "DELETE FROM secrets WHERE namespace = ?1 AND name = ?2",
            params![namespace, name],
        )?;
        Ok(n == 1)
    }

    /// A panic while holding the lock cannot leave the connection half-written (SQLite rolls
    /// back an unfinished statement), so a poisoned mutex is safe to keep using.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// RFC 3339 UTC now with seconds precision, e.g. 2026-11-24T08:00:00Z.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Raises the `uid_high` watermark above `uid` (never lowers it).
fn bump_uid_high(tx: &rusqlite::Transaction<'_>, uid: u32) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO counters (name, value) VALUES ('uid_high', ?1)
         ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
        [i64::from(uid) + 1],
    )?;
    Ok(())
}

/// SQLite integers are i64; a replica count beyond that is a caller bug, not something to wrap.
fn replicas_to_sql(replicas: u64) -> Result<i64, StoreError> {
    i64::try_from(replicas)
        .map_err(|e| StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
}

/// A row read without interpretation, so decoding errors can name the function.
struct RawRow {
    namespace: String,
    name: String,
    deployment: String,
    replicas: i64,
    uid: i64,
    created_at: String,
    updated_at: String,
    digest: Option<String>,
}

impl RawRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            namespace: r.get(0)?,
            name: r.get(1)?,
            deployment: r.get(2)?,
            replicas: r.get(3)?,
            uid: r.get(4)?,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
            digest: r.get(7)?,
        })
    }

    fn decode(self) -> Result<StoredFunction, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason,
        };
        let deployment = serde_json::from_str(&self.deployment)
            .map_err(|e| corrupt(format!("deployment JSON: {e}")))?;
        let replicas = u64::try_from(self.replicas)
            .map_err(|_| corrupt(format!("negative replicas {}", self.replicas)))?;
        let uid = u32::try_from(self.uid)
            .map_err(|_| corrupt(format!("uid {} out of range", self.uid)))?;
        Ok(StoredFunction {
            namespace: self.namespace,
            name: self.name,
            deployment,
            replicas,
            uid,
            created_at: self.created_at,
            updated_at: self.updated_at,
            pin: Pin::from_sql(self.digest),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fjord_core::openfaas::FunctionResources;
    use tempfile::TempDir;

    use super::*;

    fn open() -> (TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn trigger_runs_keep_the_latest_and_go_with_the_function() {
        let (_d, store) = open();
        store.upsert(&func("ns", "f", 1)).unwrap();
        assert_eq!(store.trigger_run("ns", "f", "cron").unwrap(), None);
        store.set_trigger_run("ns", "f", "cron", 2000).unwrap();
        store.set_trigger_run("ns", "f", "cron", 1000).unwrap();
        assert_eq!(store.trigger_run("ns", "f", "cron").unwrap(), Some(2000));
        store.delete("ns", "f").unwrap();
        assert_eq!(store.trigger_run("ns", "f", "cron").unwrap(), None);
    }

    fn func(namespace: &str, name: &str, uid: u32) -> StoredFunction {
        StoredFunction {
            namespace: namespace.into(),
            name: name.into(),
            deployment: FunctionDeployment {
                service: name.into(),
                image: format!("example/{name}:latest"),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            replicas: 1,
            uid,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            pin: Pin::NoBundle,
        }
    }

    #[test]
    fn tokens_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let t = StoredToken {
            id: "a1".into(),
            name: "ci".into(),
            scope: "deploy".into(),
            hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: Some(1_900_000_000),
        };
        {
            let store = Store::open(&path).unwrap();
            store.insert_token(&t).unwrap();
            assert!(store.insert_token(&t).is_err(), "ids are unique");
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list_tokens().unwrap(), vec![t]);
        assert!(store.delete_token("a1").unwrap());
        assert!(!store.delete_token("a1").unwrap());
        assert!(store.list_tokens().unwrap().is_empty());
    }

    #[test]
    fn store_is_send_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<Store>();
    }

    #[test]
    fn round_trips_every_field() {
        let (_dir, store) = open();
        let map = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let big = "x\"y\n\u{e9}".repeat(100_000);
        let f = StoredFunction {
            namespace: "team-a".into(),
            name: "resize".into(),
            deployment: FunctionDeployment {
                service: "resize".into(),
                image: "ghcr.io/example/resize:1.2".into(),
                namespace: Some("team-a".into()),
                env_process: Some("python index.py".into()),
                env_vars: map(&[("MODE", "fast"), ("EMPTY", "")]),
                constraints: Some(vec!["node.role==worker".into()]),
                secrets: Some(vec!["api-key".into(), "db-pass".into()]),
                labels: map(&[
                    ("com.openfaas.scale.min", "2"),
                    ("com.openfaas.scale.max", "5"),
                ]),
                annotations: map(&[("topic", "images"), ("big", &big)]),
                limits: Some(FunctionResources {
                    memory: Some("128Mi".into()),
                    cpu: Some("500m".into()),
                    nvidia_gpu: Some("1".into()),
                    amd_gpu: Some("2".into()),
                    intel_gpu: Some("3".into()),
                }),
                requests: Some(FunctionResources {
                    memory: Some("64Mi".into()),
                    cpu: Some("100m".into()),
                    ..Default::default()
                }),
                read_only_root_filesystem: true,
                // Deprecated and never serialized, so they cannot round-trip.
                registry_auth: None,
                network: None,
            },
            replicas: 3,
            uid: 100_007,
            created_at: "2026-11-24T08:00:00Z".into(),
            updated_at: "2026-11-24T09:00:00Z".into(),
            pin: Pin::Bundle(format!("sha256:{}", "ab".repeat(32))),
        };
        assert_eq!(store.upsert(&f).unwrap(), f);
        assert_eq!(store.get("team-a", "resize").unwrap(), Some(f.clone()));
        assert_eq!(store.list().unwrap(), vec![f]);
        assert_eq!(store.get("team-a", "other").unwrap(), None);
        assert_eq!(store.get("team-b", "resize").unwrap(), None);
    }

    #[test]
    fn every_pin_round_trips() {
        let (_dir, store) = open();
        let digest = format!("sha256:{}", "cd".repeat(32));
        for pin in [
            Pin::NoBundle,
            Pin::Bundle(digest.clone()),
            Pin::Image(digest.clone()),
        ] {
            let mut f = func("ns", "p", 100_000);
            f.pin = pin.clone();
            store.upsert(&f).unwrap();
            assert_eq!(store.get("ns", "p").unwrap().unwrap().pin, pin);
        }
        store
            .set_pin("ns", "p", &Pin::Image(digest.clone()))
            .unwrap();
        let got = store.get("ns", "p").unwrap().unwrap().pin;
        assert_eq!(got, Pin::Image(digest.clone()));
        assert_eq!(got.digest(), Some(digest.as_str()));
    }

    #[test]
    fn upsert_keeps_created_at_and_uid() {
        let (_dir, store) = open();
        let first = store.upsert(&func("ns", "f", 100_000)).unwrap();

        let mut update = func("ns", "f", 999);
        update.created_at = "2030-01-01T00:00:00Z".into();
        update.updated_at = "2030-01-02T00:00:00Z".into();
        update.replicas = 4;
        update.deployment.image = "example/f:2".into();
        let stored = store.upsert(&update).unwrap();

        assert_eq!(stored.uid, 100_000);
        assert_eq!(stored.created_at, first.created_at);
        assert_eq!(stored.updated_at, "2030-01-02T00:00:00Z");
        assert_eq!(stored.replicas, 4);
        assert_eq!(stored.deployment.image, "example/f:2");
        assert_eq!(store.get("ns", "f").unwrap(), Some(stored));
    }

    #[test]
    fn upsert_fills_empty_timestamps() {
        let (_dir, store) = open();
        let mut f = func("ns", "f", 1);
        f.created_at.clear();
        f.updated_at.clear();
        let stored = store.upsert(&f).unwrap();
        assert!(stored.created_at.ends_with('Z'), "{}", stored.created_at);
        assert!(!stored.updated_at.is_empty());
    }

    #[test]
    fn set_replicas_and_delete() {
        let (_dir, store) = open();
        assert!(!store.set_replicas("ns", "f", 2).unwrap());
        assert!(!store.delete("ns", "f").unwrap());

        let f = store.upsert(&func("ns", "f", 1)).unwrap();
        assert!(store.set_replicas("ns", "f", 0).unwrap());
        let scaled = store.get("ns", "f").unwrap().unwrap();
        assert_eq!(scaled.replicas, 0);
        assert_eq!(scaled.updated_at, f.updated_at);
        assert!(!store.set_replicas("other", "f", 2).unwrap());

        assert!(store.delete("ns", "f").unwrap());
        assert!(!store.delete("ns", "f").unwrap());
        assert_eq!(store.get("ns", "f").unwrap(), None);
    }

    #[test]
    fn rejects_replicas_beyond_i64() {
        let (_dir, store) = open();
        let mut f = func("ns", "f", 1);
        f.replicas = u64::MAX;
        assert!(matches!(store.upsert(&f), Err(StoreError::Sqlite(_))));
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        store.upsert(&func("ns", "b", 2)).unwrap();
        store.upsert(&func("ns", "a", 1)).unwrap();
        store.set_replicas("ns", "a", 7).unwrap();
        drop(store);

        let store = Store::open(&path).unwrap();
        let all = store.list().unwrap();
        assert_eq!(
            all.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(all[0].replicas, 7);
        assert_eq!(store.next_uid(1, 100).unwrap(), 3);
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(Store::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::UnsupportedSchema { found: 99, .. })
        ));
    }

    #[test]
    fn pins_round_trip_and_old_rows_are_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // A database as a fjord before pinning left it (schema 5).
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..5] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            conn.execute(
                "INSERT INTO functions (namespace, name, deployment, replicas, uid, created_at, updated_at)
                 VALUES ('ns', 'old', '{\"service\":\"old\",\"image\":\"old:latest\"}', 1, 2, 'x', 'x')",
                [],
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get("ns", "old").unwrap().unwrap().pin, Pin::Unknown);
        let pin = Pin::Bundle("sha256:aa".into());
        assert!(store.set_pin("ns", "old", &pin).unwrap());
        assert_eq!(store.get("ns", "old").unwrap().unwrap().pin, pin);
        let mut f = func("ns", "f", 3);
        store.upsert(&f).unwrap();
        assert_eq!(store.get("ns", "f").unwrap().unwrap().pin, Pin::NoBundle);
        // An update replaces the pin; scaling keeps it.
        f.pin = Pin::Bundle("sha256:bb".into());
        store.upsert(&f).unwrap();
        store.set_replicas("ns", "f", 4).unwrap();
        assert_eq!(store.get("ns", "f").unwrap().unwrap().pin, f.pin);
    }

    #[test]
    fn bundle_tags() {
        let (_dir, store) = open();
        assert_eq!(store.tag("resize:latest").unwrap(), None);
        store.set_tag("resize:latest", "sha256:aa").unwrap();
        store.set_tag("resize:latest", "sha256:bb").unwrap();
        assert_eq!(
            store.tag("resize:latest").unwrap().as_deref(),
            Some("sha256:bb")
        );
    }

    #[test]
    fn secrets_insert_update_list_delete() {
        let (_d, s) = open();
        let sealed = |name: &str, c: &[u8]| SealedSecret {
            namespace: "openfaas-fn".into(),
            name: name.into(),
            nonce: vec![1; 24],
            ciphertext: c.to_vec(),
        };
        assert!(s.insert_secret(&sealed("b", b"x")).unwrap());
        assert!(s.insert_secret(&sealed("a", b"y")).unwrap());
        assert!(!s.insert_secret(&sealed("a", b"z")).unwrap(), "exists");
        assert_eq!(s.secret_names("openfaas-fn").unwrap(), ["a", "b"]);
        assert!(s.secret_names("other").unwrap().is_empty());
        assert_eq!(
            s.secret("openfaas-fn", "a").unwrap().unwrap().ciphertext,
            b"y"
        );
        assert!(s.update_secret(&sealed("a", b"w")).unwrap());
        assert!(!s.update_secret(&sealed("c", b"w")).unwrap(), "absent");
        assert_eq!(
            s.secret("openfaas-fn", "a").unwrap().unwrap().ciphertext,
            b"w"
        );
        assert!(s.delete_secret("openfaas-fn", "a").unwrap());
        assert!(!s.delete_secret("openfaas-fn", "a").unwrap());
        assert!(s.secret("openfaas-fn", "a").unwrap().is_none());
    }

    #[test]
    fn next_uid_never_reuses() {
        let (_dir, store) = open();
        let (first, last) = (100_000, 100_009);
        assert_eq!(store.next_uid(first, last).unwrap(), 100_000);
        assert_eq!(store.next_uid(first, last).unwrap(), 100_000, "a peek");
        store.upsert(&func("ns", "low", 500)).unwrap();
        assert_eq!(store.next_uid(first, last).unwrap(), 100_000);
        store.upsert(&func("ns", "a", 100_000)).unwrap();
        store.upsert(&func("ns", "b", 100_005)).unwrap();
        assert_eq!(store.next_uid(first, last).unwrap(), 100_006);
        // Deleting the highest does not lower it: b's uid is never handed out again.
        store.delete("ns", "b").unwrap();
        store.delete("ns", "a").unwrap();
        assert_eq!(store.next_uid(first, last).unwrap(), 100_006);
        store.upsert(&func("ns", "c", 100_009)).unwrap();
        assert!(matches!(
            store.next_uid(first, last),
            Err(StoreError::UidsExhausted)
        ));
        // Another block (a copy of the data dir got a new one): starts at its first uid.
        assert_eq!(store.next_uid(300_000, 300_009).unwrap(), 300_000);
        assert!(store.set_uid("ns", "low", 300_000).unwrap());
        assert_eq!(store.get("ns", "low").unwrap().unwrap().uid, 300_000);
        store.delete("ns", "low").unwrap();
        assert_eq!(store.next_uid(300_000, 300_009).unwrap(), 300_001);
    }

    #[test]
    fn uid_watermark_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        store.upsert(&func("ns", "a", 7)).unwrap();
        store.delete("ns", "a").unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.next_uid(1, 100).unwrap(), 8);
    }

    #[test]
    fn namespaces() {
        let (_dir, store) = open();
        assert!(store.namespaces().unwrap().is_empty());
        store.upsert(&func("prod", "a", 1)).unwrap();
        store.upsert(&func("dev", "a", 2)).unwrap();
        store.upsert(&func("prod", "b", 3)).unwrap();
        assert_eq!(store.namespaces().unwrap(), ["dev", "prod"]);
    }

    #[test]
    fn namespace_records_and_secret_only_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.namespace("team").unwrap(), None);
        let ns = StoredNamespace {
            name: "team".into(),
            labels: [("env".to_string(), "dev".to_string())].into(),
            annotations: [("owner".to_string(), "ada".to_string())].into(),
        };
        store.upsert_namespace(&ns).unwrap();
        store
            .insert_secret(&SealedSecret {
                namespace: "vault".into(),
                name: "k".into(),
                nonce: vec![0; 24],
                ciphertext: vec![1],
            })
            .unwrap();
        store.upsert(&func("apps", "f", 1)).unwrap();
        assert_eq!(store.namespaces().unwrap(), ["apps", "team", "vault"]);
        assert_eq!(store.function_names("apps").unwrap(), ["f"]);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.namespace("team").unwrap(), Some(ns));
        assert!(store.delete_namespace("team").unwrap());
        assert!(!store.delete_namespace("team").unwrap());
        assert_eq!(store.namespaces().unwrap(), ["apps", "vault"]);
    }

    #[cfg(unix)]
    #[test]
    fn file_mode_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        store.upsert(&func("ns", "f", 1)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        let wal = dir.path().join("state.db-wal");
        if wal.exists() {
            assert_eq!(mode(&wal), 0o600);
        }
        drop(store);

        // An existing file with loose permissions is tightened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn corrupt_row_names_the_function() {
        let (dir, store) = open();
        store.upsert(&func("ns", "good", 1)).unwrap();
        Connection::open(dir.path().join("state.db"))
            .unwrap()
            .execute(
                "INSERT INTO functions (namespace, name, deployment, replicas, uid, created_at, updated_at)
                 VALUES ('ns', 'broken', '{not json', 1, 2, 'x', 'x')",
                [],
            )
            .unwrap();
        for err in [
            store.get("ns", "broken").unwrap_err(),
            store.list().unwrap_err(),
        ] {
            match err {
                StoreError::Corrupt {
                    namespace, name, ..
                } => assert_eq!((namespace.as_str(), name.as_str()), ("ns", "broken")),
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        assert!(store.get("ns", "good").unwrap().is_some());
        assert!(store.delete("ns", "broken").unwrap());
        assert_eq!(store.list().unwrap().len(), 1);
    }
}
