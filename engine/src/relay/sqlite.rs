//! The registry on disk: one SQLite file (SQLite is compiled in), with a `schema_version`
//! table so a later release can migrate it. Tokens are stored only as SHA-256 hashes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::secret::TokenHash;
use super::store::{ListPosition, StoreError, TunnelStore};
use super::tunnel::{Pairing, Peer, Timestamp, TokenUse, Tunnel, TunnelStatus};

/// The schema this code reads and writes.
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// Version 1 to 2: the lifetime in seconds rather than minutes.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE tunnels RENAME COLUMN lifetime_minutes TO lifetime_seconds;
UPDATE tunnels SET lifetime_seconds = lifetime_seconds * 60;
UPDATE schema_version SET version = 2;
";

/// Version 2 to 3: how each tunnel was paired (every tunnel so far was by tokens).
const MIGRATE_2_TO_3: &str = "
ALTER TABLE tunnels ADD COLUMN pairing_kind TEXT NOT NULL DEFAULT 'token';
ALTER TABLE tunnels ADD COLUMN pairing_identity TEXT;
CREATE INDEX tunnels_pairing ON tunnels (pairing_kind, pairing_identity);
UPDATE schema_version SET version = 3;
";

/// The version 2 tables; [`MIGRATE_2_TO_3`] makes them the current ones (also on a new file,
/// so that a new file and a migrated one are the same).
const SCHEMA: &str = "
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE tunnels (
    id TEXT PRIMARY KEY NOT NULL,
    description TEXT,
    thing_name TEXT,
    services TEXT NOT NULL,              -- a JSON array of names, in order
    lifetime_seconds INTEGER NOT NULL,
    status TEXT NOT NULL,                -- OPEN | CLOSED
    created_at INTEGER NOT NULL,         -- ms since the epoch
    last_updated_at INTEGER NOT NULL,
    source_token BLOB NOT NULL UNIQUE,   -- SHA-256 of the access token
    source_used INTEGER NOT NULL,
    source_client BLOB,                  -- SHA-256 of the client token it is bound to
    source_connected INTEGER NOT NULL,
    source_updated_at INTEGER NOT NULL,
    destination_token BLOB NOT NULL UNIQUE,
    destination_used INTEGER NOT NULL,
    destination_client BLOB,
    destination_connected INTEGER NOT NULL,
    destination_updated_at INTEGER NOT NULL
);
CREATE INDEX tunnels_source_client ON tunnels (source_client);
CREATE INDEX tunnels_destination_client ON tunnels (destination_client);
";

const COLUMNS: &str = "id, description, thing_name, services, lifetime_seconds, status, \
    created_at, last_updated_at, \
    source_token, source_used, source_client, source_connected, source_updated_at, \
    destination_token, destination_used, destination_client, destination_connected, \
    destination_updated_at, pairing_kind, pairing_identity";

/// The default `--state`: `$XDG_STATE_HOME/splice-engine/relay.db`, or
/// `~/.local/state/splice-engine/relay.db`; `None` when neither variable gives an absolute
/// path.
pub(crate) fn default_state_path() -> Option<PathBuf> {
    state_path_from(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

fn state_path_from(xdg_state_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    // The XDG spec says a relative value is invalid and to be ignored.
    let base = match xdg_state_home.map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => {
            let home = PathBuf::from(home?);
            if !home.is_absolute() {
                return None;
            }
            home.join(".local").join("state")
        }
    };
    Some(base.join("splice-engine").join("relay.db"))
}

/// Tunnels in a SQLite file.
#[derive(Debug)]
pub(crate) struct SqliteStore {
    db: Connection,
}

/// The file's schema version: `None` when it has no schema yet (a new file), else the version
/// its `schema_version` table holds (`None` inside when the table is empty).
fn schema_version(db: &Connection) -> rusqlite::Result<Option<Option<i64>>> {
    let has_schema = db.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0;
    if !has_schema {
        return Ok(None);
    }
    db.query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()
        .map(Some)
}

impl SqliteStore {
    /// Opens (creating it, and its directory, if missing) the store at `path`; `:memory:`
    /// is a store that lives as long as this value. A file with another schema version, or
    /// that is not SQLite, is an error that names it.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let name = path.display().to_string();
        let err = |e: rusqlite::Error| StoreError(format!("{name}: {e}"));
        let db = if path == Path::new(":memory:") {
            Connection::open_in_memory().map_err(err)?
        } else {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
            }
            let db = Connection::open(path).map_err(err)?;
            // Only hashes in it, but the tunnels' names and states are the operator's.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError(format!("{name}: {e}")))?;
            db
        };
        // One fsync per change (of the log) instead of several, and readers that do not
        // wait for a writer; on a clean close SQLite folds the log back into the file.
        // `:memory:` answers "memory" and keeps its journal in memory.
        let _mode: String = db
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        if let Some(version) = schema_version(&db).map_err(err)? {
            if version == Some(1) {
                db.execute_batch(&format!("BEGIN; {MIGRATE_1_TO_2} COMMIT;"))
                    .map_err(err)?;
            }
            if matches!(version, Some(1 | 2)) {
                db.execute_batch(&format!("BEGIN; {MIGRATE_2_TO_3} COMMIT;"))
                    .map_err(err)?;
            } else if version != Some(SCHEMA_VERSION) {
                return Err(StoreError(format!(
                    "{name}: schema version {version:?}; this splice-engine reads version \
                     {SCHEMA_VERSION}"
                )));
            }
        } else {
            db.execute_batch(&format!(
                "BEGIN; {SCHEMA} INSERT INTO schema_version (version) VALUES (2); {MIGRATE_2_TO_3} COMMIT;"
            ))
            .map_err(err)?;
        }
        Ok(Self { db })
    }

    /// Whether `open` would take the file at `path`, without changing it (`check`): a file
    /// that is there must be a SQLite database with no schema yet or one `open` reads (or
    /// migrates). A missing file is fine: `open` creates it.
    pub(crate) fn check(path: &Path) -> Result<(), StoreError> {
        if path == Path::new(":memory:") || !path.exists() {
            return Ok(());
        }
        let name = path.display().to_string();
        let err = |e: rusqlite::Error| StoreError(format!("{name}: {e}"));
        let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(err)?;
        let Some(version) = schema_version(&db).map_err(err)? else {
            return Ok(());
        };
        match version {
            Some(1..=SCHEMA_VERSION) => Ok(()),
            _ => Err(StoreError(format!(
                "{name}: schema version {version:?}; this splice-engine reads version \
                 {SCHEMA_VERSION}"
            ))),
        }
    }

    fn query(
        &self,
        sql_where: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Tunnel>, StoreError> {
        let err = |e: rusqlite::Error| StoreError(e.to_string());
        let mut stmt = self
            .db
            .prepare(&format!("SELECT {COLUMNS} FROM tunnels {sql_where}"))
            .map_err(err)?;
        let rows = stmt.query_map(params, row_to_tunnel).map_err(err)?;
        rows.map(|r| r.map_err(err)).collect()
    }
}

impl TunnelStore for SqliteStore {
    fn put(&mut self, t: &Tunnel) -> Result<(), StoreError> {
        let services = serde_json::to_string(&t.services).map_err(|e| StoreError(e.to_string()))?;
        let opt_hash = |h: Option<TokenHash>| h.map(|h| h.0.to_vec());
        self.db
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO tunnels ({COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
                     ?19, ?20)"
                ),
                params![
                    t.id,
                    t.description,
                    t.thing_name,
                    services,
                    t.lifetime_seconds,
                    t.status.as_str(),
                    ms(t.created_at),
                    ms(t.last_updated_at),
                    t.source.token.0.to_vec(),
                    t.source.token_use.used,
                    opt_hash(t.source.token_use.client),
                    t.source.connected,
                    ms(t.source.updated_at),
                    t.destination.token.0.to_vec(),
                    t.destination.token_use.used,
                    opt_hash(t.destination.token_use.client),
                    t.destination.connected,
                    ms(t.destination.updated_at),
                    t.pairing.kind(),
                    t.pairing.identity(),
                ],
            )
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<Tunnel>, StoreError> {
        Ok(self.query("WHERE id = ?1", &[&id])?.pop())
    }

    fn find_by_token(&self, hash: &TokenHash) -> Result<Option<Tunnel>, StoreError> {
        let h = hash.0.to_vec();
        Ok(self
            .query("WHERE source_token = ?1 OR destination_token = ?1", &[&h])?
            .pop())
    }

    fn find_by_client_token(&self, hash: &TokenHash) -> Result<Vec<Tunnel>, StoreError> {
        let h = hash.0.to_vec();
        self.query("WHERE source_client = ?1 OR destination_client = ?1", &[&h])
    }

    fn list(&self) -> Result<Vec<Tunnel>, StoreError> {
        self.query("ORDER BY created_at, id", &[])
    }

    fn find_by_pairing(&self, pairing: &Pairing) -> Result<Vec<Tunnel>, StoreError> {
        self.query(
            "WHERE pairing_kind = ?1 AND pairing_identity IS ?2 ORDER BY created_at, id",
            &[&pairing.kind(), &pairing.identity()],
        )
    }

    fn find_by_thing(&self, thing: &str) -> Result<Vec<Tunnel>, StoreError> {
        self.query("WHERE thing_name = ?1 ORDER BY created_at, id", &[&thing])
    }

    fn page(
        &self,
        thing: Option<&str>,
        after: Option<&ListPosition>,
        limit: usize,
    ) -> Result<Vec<Tunnel>, StoreError> {
        let before_ms = after.map(|p| ms(p.created_at));
        let before_id = after.map(|p| p.id.as_str());
        self.query(
            "WHERE (?1 IS NULL OR thing_name = ?1) \
             AND (?2 IS NULL OR created_at < ?2 OR (created_at = ?2 AND id < ?3)) \
             ORDER BY created_at DESC, id DESC LIMIT ?4",
            &[&thing, &before_ms, &before_id, &sql_limit(limit)],
        )
    }

    fn lifetime_over(&self, now: Timestamp, limit: usize) -> Result<Vec<Tunnel>, StoreError> {
        self.query(
            "WHERE status = 'OPEN' AND created_at + lifetime_seconds * 1000 <= ?1 \
             ORDER BY created_at + lifetime_seconds * 1000, id LIMIT ?2",
            &[&ms(now), &sql_limit(limit)],
        )
    }

    fn closed_before(&self, before: Timestamp, limit: usize) -> Result<Vec<String>, StoreError> {
        let ids = self.query(
            "WHERE status = 'CLOSED' AND last_updated_at < ?1 \
             ORDER BY last_updated_at, id LIMIT ?2",
            &[&ms(before), &sql_limit(limit)],
        )?;
        Ok(ids.into_iter().map(|t| t.id).collect())
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.db
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| StoreError(e.to_string()))
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.db.is_autocommit() {
            // `begin` failed: each change was its own transaction.
            return Ok(());
        }
        self.db.execute_batch("COMMIT").map_err(|e| {
            // Leave no transaction open for the next batch.
            let _ = self.db.execute_batch("ROLLBACK");
            StoreError(e.to_string())
        })
    }

    fn remove(&mut self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .db
            .execute("DELETE FROM tunnels WHERE id = ?1", [id])
            .map_err(|e| StoreError(e.to_string()))?;
        Ok(n > 0)
    }
}

/// A `LIMIT` for SQLite, whose integers are signed: "no limit" (`usize::MAX`) is the largest.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn ms(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn row_to_tunnel(r: &Row<'_>) -> rusqlite::Result<Tunnel> {
    let bad = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
    };
    let services: String = r.get(3)?;
    let services: Vec<String> =
        serde_json::from_str(&services).map_err(|e| bad(3, format!("services: {e}")))?;
    let status: String = r.get(5)?;
    let status =
        TunnelStatus::parse(&status).ok_or_else(|| bad(5, format!("status {status:?}")))?;
    let hash = |i: usize| -> rusqlite::Result<TokenHash> {
        let v: Vec<u8> = r.get(i)?;
        v.try_into()
            .map(TokenHash)
            .map_err(|_| bad(i, "a token hash is not 32 bytes".into()))
    };
    let opt_hash = |i: usize| -> rusqlite::Result<Option<TokenHash>> {
        match r.get::<_, Option<Vec<u8>>>(i)? {
            None => Ok(None),
            Some(_) => hash(i).map(Some),
        }
    };
    let time = |i: usize| -> rusqlite::Result<Timestamp> {
        Ok(Timestamp(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0)))
    };
    let peer = |base: usize| -> rusqlite::Result<Peer> {
        Ok(Peer {
            token: hash(base)?,
            token_use: TokenUse {
                used: r.get(base + 1)?,
                client: opt_hash(base + 2)?,
            },
            connected: r.get(base + 3)?,
            updated_at: time(base + 4)?,
        })
    };
    Ok(Tunnel {
        id: r.get(0)?,
        description: r.get(1)?,
        thing_name: r.get(2)?,
        services,
        lifetime_seconds: r.get(4)?,
        status,
        created_at: time(6)?,
        last_updated_at: time(7)?,
        source: peer(8)?,
        destination: peer(13)?,
        pairing: {
            let kind: String = r.get(18)?;
            Pairing::parse(&kind, r.get(19)?)
                .ok_or_else(|| bad(18, format!("pairing kind {kind:?} without its identity")))?
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn state_path() {
        let p = |x: Option<&str>, h: Option<&str>| {
            state_path_from(x.map(OsString::from), h.map(OsString::from))
        };
        assert_eq!(
            p(Some("/var/state"), Some("/home/u")),
            Some(PathBuf::from("/var/state/splice-engine/relay.db"))
        );
        assert_eq!(
            p(None, Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/splice-engine/relay.db"))
        );
        // A relative XDG_STATE_HOME is ignored, as the XDG spec says.
        assert_eq!(
            p(Some("rel"), Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/splice-engine/relay.db"))
        );
        assert_eq!(p(None, None), None);
        assert_eq!(p(None, Some("rel")), None);
        assert!(default_state_path().is_none_or(|p| p.ends_with("splice-engine/relay.db")));
    }

    #[test]
    fn a_newer_schema_or_a_non_database_is_refused_by_name() {
        let dir = tempdir();
        let path = dir.join("relay.db");
        drop(SqliteStore::open(&path).expect("create"));
        {
            let db = Connection::open(&path).expect("open");
            db.execute("UPDATE schema_version SET version = 99", [])
                .expect("update");
        }
        let e = SqliteStore::open(&path).expect_err("version 99");
        assert!(e.to_string().contains("schema version Some(99)"), "{e}");
        assert!(e.to_string().contains("relay.db"), "{e}");

        let junk = dir.join("junk.db");
        std::fs::write(&junk, vec![b'x'; 4096]).expect("write");
        let e = SqliteStore::open(&junk).expect_err("not a database");
        assert!(e.to_string().contains("junk.db"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A version 1 file (lifetimes in minutes) is migrated: its tunnels keep their lifetime.
    #[test]
    fn a_version_1_file_is_migrated_to_seconds() {
        let dir = tempdir();
        let path = dir.join("relay.db");
        {
            let db = Connection::open(&path).expect("open");
            let v1 = SCHEMA.replace("lifetime_seconds", "lifetime_minutes");
            db.execute_batch(&format!(
                "{v1} INSERT INTO schema_version (version) VALUES (1);"
            ))
            .expect("a version 1 file");
            db.execute(
                "INSERT INTO tunnels VALUES ('t1', NULL, NULL, '[]', 30, 'OPEN', 0, 0, \
                 zeroblob(32), 0, NULL, 0, 0, randomblob(32), 0, NULL, 0, 0)",
                [],
            )
            .expect("a tunnel");
        }
        let store = SqliteStore::open(&path).expect("migrated");
        let t = store.get("t1").expect("read").expect("the tunnel");
        assert_eq!(t.lifetime_seconds, 30 * 60);
        drop(store);
        let db = Connection::open(&path).expect("open");
        let v: i64 = db
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, SCHEMA_VERSION);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fresh directory under the system's temporary directory.
    pub(crate) fn tempdir() -> PathBuf {
        let id = super::super::secret::new_tunnel_id().expect("random");
        let dir = std::env::temp_dir().join(format!("splice-relay-test-{id}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }
}
