//! Persistence: the connection to SQLite or PostgreSQL, migrations, entities, and the
//! write-transaction discipline that keeps SQLite free of lock errors under concurrency.

pub mod entity;
mod migrate;

pub(crate) use migrate::statements;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database url {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// Message writers of a node on PostgreSQL, unless told otherwise. Each keeps one
/// connection of the pool for itself, so the pool holds this many more than it is asked for.
pub const POSTGRES_WRITERS: u32 = 2;

/// Whether a database error is the database being away (no connection could be had, or
/// it broke, or the server is shutting down or refusing connections) rather than a fault
/// of the statement: what the APIs answer 503 `unavailable`, to try again.
pub fn is_away(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            sqlx_away(e)
        }
        _ => false,
    }
}

/// [`is_away`] for a driver's error: the connection's own failures, and PostgreSQL's
/// classes 08 (connection exception), 53 (insufficient resources) and 57 (operator
/// intervention: shutting down, terminated, cannot connect now), and 55000 (a database
/// that accepts no connections).
pub fn sqlx_away(e: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as E;
    match e {
        E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::Tls(_) | E::Protocol(_) => true,
        E::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "55000"
        }),
        _ => false,
    }
}

/// How long a request waits for a connection by default (10 s).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The database handle shared by every request. Clones share the pool and the writer lock.
#[derive(Debug, Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// SQLite allows one writer at a time. Writers queue here, in process, instead of
    /// spinning in SQLite's busy handler; PostgreSQL needs no such lock (`None`).
    sqlite_writer: Option<Arc<Mutex<()>>>,
    /// The SQLite database file (not for an in-memory database).
    sqlite_file: Option<PathBuf>,
    /// PostgreSQL message writers, each holding a connection of the pool (0 on SQLite).
    postgres_writers: u32,
}

/// A transaction that may write. On SQLite it holds the writer lock until it ends.
#[derive(Debug)]
pub struct WriteTx {
    tx: DatabaseTransaction,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl Store {
    /// Connects to `url` (`sqlite://file.db?mode=rwc`, `postgres://...`) and applies
    /// pending migrations. `max_connections` are for requests; on PostgreSQL the pool
    /// holds [`POSTGRES_WRITERS`] more, which the message writers keep.
    ///
    /// Fails when the url names another database kind, the database cannot be reached,
    /// or a migration fails (nothing of that migration is kept).
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Store::open_with_writers(url, max_connections, POSTGRES_WRITERS, ACQUIRE_TIMEOUT).await
    }

    /// [`Store::open`] with `writers` message writers (at least one) on PostgreSQL, and
    /// requests that wait at most `acquire_timeout` for a connection (then fail with
    /// `ConnectionAcquire`, which the APIs answer 503).
    pub async fn open_with_writers(
        url: &str,
        max_connections: u32,
        writers: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let is_sqlite = url.starts_with("sqlite:");
        if !is_sqlite && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        let held = if is_sqlite { 0 } else { writers.max(1) };
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(max_connections + held)
            .min_connections(1)
            .acquire_timeout(acquire_timeout)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                // WAL lets readers run beside the writer; NORMAL sync in WAL mode loses
                // nothing on a process crash (only on power loss, the last commits).
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
        let db = Database::connect(options).await?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let sqlite_file = if is_sqlite && !in_memory {
            SqliteConnectOptions::from_str(url)
                .ok()
                .map(|o| o.get_filename().to_path_buf())
        } else {
            None
        };
        let store = Store {
            db,
            sqlite_writer: is_sqlite.then(|| Arc::new(Mutex::new(()))),
            sqlite_file,
            postgres_writers: held,
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    /// How many message writers this store has connections for on PostgreSQL.
    pub(crate) fn postgres_writers(&self) -> usize {
        self.postgres_writers as usize
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// The SQLite file and the writer lock, for a writer with its own connection (see
    /// `domain::append`); `None` on PostgreSQL or an in-memory SQLite database.
    pub fn sqlite_writer(&self) -> Option<(PathBuf, Arc<Mutex<()>>)> {
        Some((self.sqlite_file.clone()?, self.sqlite_writer.clone()?))
    }

    /// The connection, for reads.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Begins a transaction that may write.
    pub async fn write(&self) -> Result<WriteTx, DbErr> {
        let writer = match &self.sqlite_writer {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        // IMMEDIATE takes SQLite's write lock at BEGIN, so a second process (the CLI
        // beside a running server) waits in the busy handler rather than failing on
        // a lock upgrade halfway through.
        let tx = self
            .db
            .begin_with_options(TransactionOptions {
                isolation_level: None,
                access_mode: None,
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            })
            .await?;
        Ok(WriteTx {
            tx,
            _writer: writer,
        })
    }

    /// Runs a read written with `?` placeholders (see [`stmt`]).
    pub async fn query(
        &self,
        sql: &str,
        values: impl IntoIterator<Item = sea_orm::Value>,
    ) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        self.db
            .query_all_raw(stmt(self.backend(), sql, values))
            .await
    }

    pub async fn close(self) -> Result<(), DbErr> {
        self.db.close().await
    }
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        &self.tx
    }
}

/// Builds a statement from SQL written with `?` placeholders, numbering them `$1, $2...`
/// on PostgreSQL. The SQL must not contain a literal `?`.
pub fn stmt(
    backend: DbBackend,
    sql: &str,
    values: impl IntoIterator<Item = sea_orm::Value>,
) -> Statement {
    let sql = if backend == DbBackend::Postgres {
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    } else {
        sql.to_owned()
    };
    Statement::from_sql_and_values(backend, sql, values)
}

/// Whether `err` is a unique-constraint violation (a lost race on insert).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        err.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}
