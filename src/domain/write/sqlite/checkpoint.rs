//! The checkpoint thread: copies SQLite's WAL back into the database file beside the
//! writer, and starts the WAL over, so that it does not grow with the chats' history.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Mutex;

use super::Load;
use crate::domain::write::tuning::Tuning;

/// The checkpoint thread's pace: how many rounds in a row found the writer busy.
#[derive(Debug, Default)]
pub(super) struct Pace {
    busy_rounds: u32,
}

impl Pace {
    /// How long to wait before the next round, as the writer is now.
    pub(super) fn next(&mut self, load: &Load, tuning: &Tuning) -> Duration {
        self.busy_rounds = if load.per_batch() >= tuning.busy_batch {
            self.busy_rounds.saturating_add(1)
        } else {
            0
        };
        if self.busy_rounds >= tuning.busy_rounds {
            tuning.checkpoint_every_busy
        } else {
            tuning.checkpoint_every
        }
    }
}

/// Copies the WAL back into the database file every [`Tuning::checkpoint_every`] (or
/// [`Tuning::checkpoint_every_busy`]), until the writer stops, and starts the WAL over each
/// time.
///
/// SQLite reuses the WAL from its start only once every frame in it has been copied back
/// and no reader still uses it. Sends keep committing while a checkpoint runs, so under a
/// steady load a checkpoint that never blocks writers (PASSIVE) never catches up, and the
/// WAL grows without bound: at 2,000 sends/s each commit writes several whole pages, tens
/// of MB a second. So each round copies what it can beside the writer (PASSIVE), then
/// holds the writer lock while it copies the few frames committed meanwhile and restarts
/// the WAL (RESTART): sends wait only for that remainder.
///
/// Most of that wait is not the copy but the two syncs RESTART makes (with synchronous
/// NORMAL a checkpoint syncs the WAL before it copies, and the database file after), each
/// writing out whatever the disk does not have yet. So the round first syncs both files
/// itself, beside the writer, until both syncs together take under 2 ms
/// ([`Files::settle`], [`Tuning::settled`]): sends then wait about 2 ms for a RESTART instead of 5 to 19.
pub(super) fn checkpoint(
    conn: Connection,
    file: &Path,
    lock: Arc<Mutex<()>>,
    load: &Load,
    tuning: &Tuning,
    writer_gone: std::sync::mpsc::Receiver<()>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    if let Err(e) = conn.pragma_update(None, "journal_size_limit", tuning.wal_keep_bytes) {
        tracing::warn!(error = %e, "cannot limit the WAL's size");
    }
    let files = Files::of(file);
    let mut pace = Pace::default();
    while let Err(RecvTimeoutError::Timeout) = writer_gone.recv_timeout(pace.next(load, tuning)) {
        // What PASSIVE reports is the WAL as it was when it began, all of it copied back
        // unless a reader held it up; frames committed since then are not counted.
        let copied = wal_checkpoint(&conn, "PASSIVE").and_then(|(frames, _)| {
            if frames > 0 {
                if let Some(files) = &files {
                    files.settle(tuning);
                }
                let _writer = lock.blocking_lock();
                wal_checkpoint(&conn, "RESTART")?;
            }
            Ok(())
        });
        if let Err(e) = copied {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// A database file and its WAL, for syncing ahead of a checkpoint's RESTART.
pub(super) struct Files {
    /// Never closed: closing any descriptor of a file drops every POSIX lock this process
    /// holds on it, and in WAL mode each SQLite connection holds one on the database file
    /// for as long as it is open (without it, another process closing the database would
    /// checkpoint and delete the WAL under this one). So it is opened once per process.
    pub(super) database: Arc<std::fs::File>,
    /// Opened for each sync, since closing it puts nothing at stake: SQLite locks the
    /// database file and the `-shm` file, never the WAL.
    wal: PathBuf,
}

/// The database files opened by [`Files::of`], by device and inode, so that a file
/// created anew at the same path gets a descriptor of its own. Kept for the life of the
/// process.
static DATABASE_FILES: std::sync::Mutex<Vec<(FileId, Arc<std::fs::File>)>> =
    std::sync::Mutex::new(Vec::new());

/// A file's device and inode.
type FileId = (u64, u64);

impl Files {
    /// The files of the database at `path`; None (logged) if it cannot be opened, and then
    /// RESTART makes every sync itself, as it would anyway.
    pub(super) fn of(path: &Path) -> Option<Files> {
        use std::os::unix::fs::MetadataExt;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let mut opened = DATABASE_FILES.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up before it is opened: a second descriptor, once opened, can never be
        // closed.
        let database = std::fs::metadata(path).and_then(|m| {
            let id = (m.dev(), m.ino());
            if let Some((_, file)) = opened.iter().find(|(known, _)| *known == id) {
                return Ok(file.clone());
            }
            let file = Arc::new(std::fs::File::open(path)?);
            opened.push((id, file.clone()));
            Ok(file)
        });
        let database = match database {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the database file to sync it ahead of checkpoints");
                return None;
            }
        };
        Some(Files {
            database,
            wal: wal.into(),
        })
    }

    /// Syncs the WAL and the database file until a round of both is quick, at most
    /// [`Tuning::settle_rounds`] times. It only gives RESTART's own syncs less to do, and SQLite's
    /// syncs alone decide what is durable, so a failure here is only logged.
    fn settle(&self, tuning: &Tuning) {
        for _ in 0..tuning.settle_rounds {
            let started = std::time::Instant::now();
            let synced = std::fs::File::open(&self.wal)
                .and_then(|wal| wal.sync_data())
                .and_then(|()| self.database.sync_data());
            if let Err(e) = synced {
                tracing::debug!(error = %e, "cannot sync the database files ahead of a checkpoint");
                return;
            }
            if started.elapsed() < tuning.settled {
                return;
            }
        }
    }
}

/// Runs a checkpoint; returns the frames in the WAL and how many of them are copied back.
fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closing a descriptor of the database file would drop SQLite's locks on it, so the
    /// checkpointer's is opened once for the process and kept, however often a store is
    /// opened on the file.
    #[test]
    fn a_database_file_is_opened_once_for_the_process() {
        let path = std::env::temp_dir().join(format!(
            "souq-files-{}-{}.db",
            std::process::id(),
            crate::clock::system_ms()
        ));
        std::fs::write(&path, b"").expect("a file");
        let (a, b) = (Files::of(&path), Files::of(&path));
        let (a, b) = (a.expect("opened"), b.expect("opened"));
        assert!(Arc::ptr_eq(&a.database, &b.database), "opened twice");
        drop((a, b));
        let again = Files::of(&path).expect("opened");
        assert_eq!(Arc::strong_count(&again.database), 2, "not kept");
        let _ = std::fs::remove_file(&path);
    }

    /// A database removed and made anew at the same path is another file, with a
    /// descriptor of its own; the old one would sync what is gone.
    #[test]
    fn a_database_made_anew_at_the_same_path_is_opened_again() {
        let path = std::env::temp_dir().join(format!(
            "souq-files-anew-{}-{}.db",
            std::process::id(),
            crate::clock::system_ms()
        ));
        std::fs::write(&path, b"").expect("a file");
        let old = Files::of(&path).expect("opened");
        std::fs::remove_file(&path).expect("removed");
        std::fs::write(&path, b"").expect("made anew");
        let new = Files::of(&path).expect("opened");
        assert!(!Arc::ptr_eq(&old.database, &new.database), "the old file's");
        let _ = std::fs::remove_file(&path);
    }
}
