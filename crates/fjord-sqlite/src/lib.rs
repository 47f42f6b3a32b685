//! How fjord opens its embedded SQLite databases (`state.db`, `queue.db`), in one place so
//! they cannot drift apart: the file is created private (0600) before SQLite touches it, the
//! journal is WAL, and the schema is brought up to date by `PRAGMA user_version` migrations.
//! Each database keeps its own list of migrations; only the mechanism is shared.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer fjord; refusing to open it avoids silently
    /// misreading (or downgrading) its schema.
    #[error("schema version {found}, newer than the {supported} this fjord supports")]
    UnsupportedSchema { found: i64, supported: i64 },
}

/// `PRAGMA synchronous` for a WAL database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// A crash of fjord loses nothing committed; a power loss may drop the last commits.
    Normal,
    /// Every commit is on disk before it returns (an fsync per commit).
    Full,
}

impl Synchronous {
    fn as_str(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Opens or creates the database at `path` (the parent dir must exist) for writing: the file
/// private ([`create_private`]), `busy_timeout` for other processes holding the lock (a
/// backup, say), WAL journal, `synchronous` as given. Migrations are the caller's next step
/// ([`migrate`]), after any pragmas of its own.
pub fn open(
    path: &Path,
    synchronous: Synchronous,
    busy_timeout: Duration,
) -> Result<Connection, Error> {
    create_private(path).map_err(|source| Error::Create {
        path: path.to_owned(),
        source,
    })?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    // journal_mode answers with the mode in effect; where WAL is impossible (some
    // filesystems) SQLite keeps its rollback journal, which is durable too, only slower.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", synchronous.as_str())?;
    Ok(conn)
}

/// Creates the database file with mode 0600 before SQLite opens it (SQLite would use 0644,
/// and gives `-wal`/`-shm` the database's mode), and tightens an existing file that is group-
/// or world-accessible: the databases hold secrets and request bodies.
pub fn create_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let mut perms = file.metadata()?.permissions();
        if perms.mode() & 0o077 != 0 {
            perms.set_mode(perms.mode() & 0o700);
            file.set_permissions(perms)?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Applies the migrations the database lacks, in one immediate transaction: after
/// `migrations[i]` its `user_version` is `i + 1`. A version above `migrations.len()` (a newer
/// fjord's schema) is refused. Lists are append only: never edit a migration that shipped.
pub fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), Error> {
    let supported = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > supported {
        return Err(Error::UnsupportedSchema {
            found: version,
            supported,
        });
    }
    let applied = usize::try_from(version.max(0)).unwrap_or(0);
    for sql in &migrations[applied..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", supported)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const STEPS: &[&str] = &[
        "CREATE TABLE a (x INTEGER) STRICT",
        "ALTER TABLE a ADD COLUMN y TEXT",
    ];

    fn version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn opens_private_in_wal_with_the_asked_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let conn = open(&path, Synchronous::Full, Duration::from_secs(5)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        // 2 = FULL, 1 = NORMAL.
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
        drop(conn);

        // A looser existing file is tightened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let conn = open(&path, Synchronous::Normal, Duration::from_secs(5)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1);
    }

    #[test]
    fn a_missing_dir_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/x.db");
        let err = open(&path, Synchronous::Normal, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, Error::Create { .. }), "{err:?}");
        assert!(err.to_string().contains("no/such/x.db"), "{err}");
    }

    #[test]
    fn migrations_apply_once_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let mut conn = open(&path, Synchronous::Normal, Duration::from_secs(5)).unwrap();
        migrate(&mut conn, &STEPS[..1]).unwrap();
        assert_eq!(version(&conn), 1);
        conn.execute("INSERT INTO a (x) VALUES (7)", []).unwrap();
        // A later fjord adds a step: only that one runs, the data stays.
        migrate(&mut conn, STEPS).unwrap();
        assert_eq!(version(&conn), 2);
        migrate(&mut conn, STEPS).unwrap();
        let row: (i64, Option<String>) = conn
            .query_row("SELECT x, y FROM a", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(row, (7, None));
    }

    #[test]
    fn newer_schema_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let mut conn = open(&path, Synchronous::Normal, Duration::from_secs(5)).unwrap();
        conn.pragma_update(None, "user_version", 9).unwrap();
        let err = migrate(&mut conn, STEPS).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedSchema {
                    found: 9,
                    supported: 2
                }
            ),
            "{err:?}"
        );
        assert_eq!(version(&conn), 9);
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .unwrap();
        assert_eq!(tables, 0);
    }
}
