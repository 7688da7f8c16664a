//! Every number the message path is tuned by, in one place, each with the reason it has
//! its value. The figures come from the benchmarks (docs/benchmarks.md, and the history
//! of BENCHMARKS.md, in git); change a number only with a measurement beside it.

use std::time::Duration;

/// The knobs of the message writer. [`Tuning::DEFAULT`] is what a server runs with; tests
/// may shorten the hold times.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    // --- Every backend ---
    /// Most sends in one batch, and as many marks beside them (256). A batch is one
    /// commit; past a few hundred sends a bigger one no longer lowers the cost per send,
    /// and only lengthens the wait of the first send in it. The queue to the writers holds
    /// four batches' worth ([`Tuning::queue`]) before senders wait for room.
    pub max_batch: usize,

    /// How long a socket's mark (`received`, `read`) that finds the writers idle is held
    /// back to commit with others (20 ms). Nobody waits on a mark but a receipt tick; at
    /// low load each would otherwise be a commit of its own between the messages.
    pub mark_delay: Duration,

    /// A chat's activity time follows its messages to within this much (1 s). Chat lists
    /// are ordered by it, so each change moves the chat in three indexes (and on
    /// PostgreSQL makes the update of the chat a full one, with a new entry in every index
    /// of the table); a busy chat would otherwise do that for every message.
    pub activity_step_ms: i64,

    /// Longest a send or mark waits for its commit (and for room in the queue) before its
    /// caller is answered `Unavailable` (5 s; `--write-timeout`). While the database is
    /// away a commit can wait for it for as long as the outage lasts; a client should hear
    /// within a bound that its send is not known to be stored, and send it again with the
    /// same `local_id` (which never stores it twice).
    pub answer_within: Duration,

    /// Most chats a writer remembers (100,000); past this it forgets them all and reads
    /// them again as they come. A chat row is about 100 bytes here.
    pub cached_chats: usize,

    /// Rounds a batch may take, reading again the chats that changed behind the writer's
    /// back (another node wrote to them, or this node finished one), before its sends
    /// fail (8). From the [`Tuning::locked_from`]th round on, the chats are read under a
    /// lock, so that round cannot find them changed: the last ones are there for a lock
    /// that another transaction holds too long.
    pub max_rounds: usize,

    /// The round from which a batch reads its chats under a lock (3, counted from 0). The
    /// first rounds read without one, as a lock costs PostgreSQL a round trip and a
    /// transaction of its own; chats seldom change twice in a row under a batch.
    pub locked_from: usize,

    // --- SQLite ---
    /// A caller commits its send itself, on its own thread, only while the writer
    /// thread's batches hold fewer jobs than this on average (4). Under load the thread
    /// commits the sends of a moment together, a page or so each; a send committed alone
    /// writes four or five (the newest page of the table and of each index, and its
    /// chat's row), holding the writer all the while. Batches come out small now and then
    /// even under load, so one small batch is not enough.
    pub inline_under: usize,

    /// The SQLite writer's page cache, in KiB (32 MiB). Every batch touches the newest
    /// pages of each of its chats in the messages table and both its indexes; SQLite's
    /// default 2 MB loses them between batches once there are many chats, and reads them
    /// back from the file: a read call for every other message. It grows only as used.
    pub writer_cache_kib: i64,

    /// How long a SQLite write waits for another process that holds the file (10 s), such
    /// as the command line creating an organisation beside a running server.
    pub busy_wait: Duration,

    /// How often the WAL is copied back into the database file (100 ms). Each round
    /// makes the disk write at once all that was committed since the last, and commits
    /// made during that burst are slowed by it: the shorter the round, the smaller the
    /// burst. At 2,000 sends/s on a busy host, rounds of a second put p99 send→deliver at
    /// 20–77 ms, and rounds of 100 ms at 2.9–3.9 ms, with no change in closed loop.
    pub checkpoint_every: Duration,

    /// How often instead while the writer is busy ([`Tuning::busy_batch`], round after
    /// round): 1 s. Each round copies every page committed since the last, and a batch
    /// commits the newest page of both indexes of every chat it holds, so ten rounds a
    /// second copy those pages ten times. In closed loop, rounds of a second took 10%
    /// less CPU per delivery than rounds of 100 ms, with the same latency.
    pub checkpoint_every_busy: Duration,

    /// The average batch, in jobs, from which the writer counts as busy (64).
    pub busy_batch: usize,

    /// Rounds in a row that must find the writer busy before checkpoints space out (3).
    /// At low load a long stall of the disk fills three or four full batches in a row with
    /// the sends that waited, which lifts the average past [`Tuning::busy_batch`]; that
    /// alone must not space out the rounds that keep the tail short.
    pub busy_rounds: u32,

    /// The WAL file is cut back to this size when it restarts after a burst (64 MiB).
    pub wal_keep_bytes: i64,

    /// A round of syncs ahead of a checkpoint's RESTART that took less than this found the
    /// disk nearly caught up (2 ms): the RESTART then holds the writer about 2 ms instead
    /// of the 5 to 19 its own syncs took.
    pub settled: Duration,

    /// Most rounds of those syncs (4): under a heavy write load the disk may never catch
    /// up, and the checkpoint goes on all the same.
    pub settle_rounds: usize,

    // --- PostgreSQL ---
    /// Jobs waiting from which the writers share the chats out (16). Below it (low load)
    /// one batch at a time is in flight, and what comes during its commit waits for the
    /// next one, so that a commit (PostgreSQL's largest cost per send) holds more sends:
    /// −9% CPU per delivery at 10 msg/s per sender.
    pub spill: usize,

    /// How long after the last batch went the batches in flight may hold up fewer than
    /// [`Tuning::spill`] jobs before a free writer takes them (2 ms): at low load most
    /// commits take well under this, and a batch that waits longer on a row another node
    /// holds holds up other chats' sends no longer than this, while a writer is free.
    pub stuck: Duration,

    /// Jobs waiting (taken from the queue, not yet in a batch) from which the PostgreSQL
    /// writers take no more until some go (1,024, four batches): the queue is bounded, and
    /// holds up whoever sends. Jobs of chats in flight count too, so one chat with this
    /// many sends waiting behind its batch holds up the others until that is done.
    pub max_waiting: usize,
}

impl Tuning {
    pub(crate) const DEFAULT: Tuning = Tuning {
        max_batch: 256,
        mark_delay: Duration::from_millis(20),
        activity_step_ms: 1000,
        answer_within: Duration::from_secs(5),
        cached_chats: 100_000,
        max_rounds: 8,
        locked_from: 3,
        inline_under: 4,
        writer_cache_kib: 32 * 1024,
        busy_wait: Duration::from_secs(10),
        checkpoint_every: Duration::from_millis(100),
        checkpoint_every_busy: Duration::from_secs(1),
        busy_batch: 64,
        busy_rounds: 3,
        wal_keep_bytes: 64 * 1024 * 1024,
        settled: Duration::from_millis(2),
        settle_rounds: 4,
        spill: 16,
        stuck: Duration::from_millis(2),
        max_waiting: 4 * 256,
    };

    /// Jobs the queue to the writers holds (four batches) before a sender waits for room.
    pub(crate) fn queue(&self) -> usize {
        4 * self.max_batch
    }
}
