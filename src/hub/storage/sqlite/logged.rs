//! Log first, tables after: the data dir's commit path.
//!
//! A commit appends its batch to the commit log ([`CommitLog`]) and syncs it:
//! one small write and one `fdatasync`, and the steps are durable. A thread
//! of its own (the tables' writer) then brings the tables up to date from the
//! same steps, many commits in one transaction, with the log's place recorded
//! in that transaction ([`LogMark`]). Updating a dozen B-tree pages per commit
//! was most of a durable hub's cost per order; updating them once per batch of
//! hundreds is not.
//!
//! What this changes for readers, and how each is kept whole:
//! - The API, replays and read-backs read through [`CaughtUp`], which waits
//!   (hurrying the tables' writer) until the tables hold every step committed
//!   before the read began: a read still sees everything acknowledged.
//! - The sequencer never waits: it keeps in memory what the tables do not
//!   hold yet (delivered orders, notices queued and removed) until it hears
//!   [`Progress::InTables`].
//! - A start after a crash applies the log's tail past the mark, then the log
//!   files go, and the start writes a newer generation. A clean stop leaves
//!   no log at all. At most a part or two of the log (files of 8 MiB) is read
//!   back, so a start never grows with history.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use super::{LogMark, SqliteBackend, SyncMode, open_records};
use crate::api::OrderCounts;
use crate::hub::domain::{OrderKey, OrderQuery, Snapshot, StoredNotice, StoredOrder};
use crate::hub::storage::commit_log::{CommitLog, LogFile};
use crate::hub::storage::journal::{Backend, Progress, ProgressSink, Records, Settled, Step};
use crate::protocol::{MessageId, OrderId, StoreId};

/// How long the tables' writer gathers commits before one transaction,
/// unless a reader is waiting.
pub const GATHER: Duration = Duration::from_millis(50);
/// The least time between transactions that readers hurry: a read waits at
/// most this long for the tables (beside the transaction itself).
const HURRIED_SPACING: Duration = Duration::from_millis(2);
/// Most steps brought into the tables in one transaction.
const MOST_STEPS: usize = 8_192;
/// Batches waiting for the tables' writer before a commit waits for it: the
/// bound on memory (and on a start's replay) when the disk falls behind.
const QUEUE: usize = 256;
/// A log file this large is followed by the next part, so that the log the
/// tables already hold is given back to the disk under steady load.
const ROTATE_AT: u64 = 8 << 20;
/// How long a read waits for the tables before it is refused.
const READ_PATIENCE: Duration = Duration::from_secs(30);
/// Steps brought into the tables per transaction at start-up.
const REPLAY_CHUNK: usize = 4_096;

/// What the tables' writer is asked to do, in order.
enum ToTables {
    /// Bring these (committed) steps in.
    Steps(Vec<Step>),
    /// A reader waits: end the gathering now.
    Hurry,
    /// Everything in this file is in the batches before: delete it once
    /// they are in the tables.
    Retire(LogFile),
    /// Compact, as [`Backend::compact`], and answer.
    Compact {
        before: DateTime<Utc>,
        limit: usize,
        answer: SyncSender<anyhow::Result<usize>>,
    },
    /// Bring everything in, mark the stop clean, delete the log, answer.
    Close(SyncSender<anyhow::Result<()>>),
    /// Bring everything in and stop, leaving the log (the hub stops on an
    /// error: the next start checks and replays).
    Stop,
}

/// How far the log and the tables have come in this generation.
#[derive(Default)]
struct Watermark {
    /// The last step synced to the log.
    logged: AtomicU64,
    tables: Mutex<TablesState>,
    moved: Condvar,
}

#[derive(Default)]
struct TablesState {
    /// The last step in the tables.
    up_to: u64,
    /// Why the tables' writer stopped, if it did.
    failed: Option<String>,
}

impl Watermark {
    /// Waits until the tables hold every step logged before now; `hurry` is
    /// called first if they do not yet.
    fn catch_up(&self, hurry: impl FnOnce()) -> anyhow::Result<()> {
        let target = self.logged.load(Ordering::Acquire);
        let mut state = self.tables.lock().expect("watermark lock");
        if state.up_to >= target {
            return Ok(());
        }
        hurry();
        let deadline = Instant::now() + READ_PATIENCE;
        while state.up_to < target {
            if let Some(failed) = &state.failed {
                bail!("the data dir's tables cannot be written: {failed}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the data dir's tables are more than {READ_PATIENCE:?} behind its log");
            }
            state = self
                .moved
                .wait_timeout(state, left)
                .expect("watermark lock")
                .0;
        }
        Ok(())
    }

    fn in_tables(&self, up_to: u64) {
        self.tables.lock().expect("watermark lock").up_to = up_to;
        self.moved.notify_all();
    }

    fn failed(&self, why: String) {
        self.tables.lock().expect("watermark lock").failed = Some(why);
        self.moved.notify_all();
    }
}

/// The data dir with its commit log in front of its tables.
pub struct LoggedSqlite {
    dir: PathBuf,
    /// The database file, for readers.
    path: PathBuf,
    generation: u64,
    /// See [`GATHER`].
    gather: Duration,
    file: LogFile,
    log: CommitLog,
    sync: bool,
    watermark: Arc<Watermark>,
    to_tables: SyncSender<ToTables>,
    /// The tables and the queue to them, until the tables' writer starts.
    not_started: Option<(SqliteBackend, Receiver<ToTables>)>,
    /// Where the tables' progress is reported, once the journal says.
    sink: Option<ProgressSink>,
    tables_writer: Option<std::thread::JoinHandle<()>>,
}

impl LoggedSqlite {
    /// Puts a commit log in front of `tables`, the database of `dir`. What a
    /// crash left in an earlier log and the tables lack is brought in first.
    pub fn open(
        dir: &Path,
        mut tables: SqliteBackend,
        sync: SyncMode,
        gather: Duration,
    ) -> anyhow::Result<Self> {
        let generation = replay(dir, &mut tables)? + 1;
        let file = LogFile::new(dir, generation, 0);
        let sync = sync == SyncMode::Full;
        let log = CommitLog::create(&file, sync)?;
        let (to_tables, incoming) = sync_channel(QUEUE);
        Ok(LoggedSqlite {
            dir: dir.to_owned(),
            path: tables.path.clone(),
            generation,
            gather,
            file,
            log,
            sync,
            watermark: Arc::default(),
            to_tables,
            not_started: Some((tables, incoming)),
            sink: None,
            tables_writer: None,
        })
    }

    /// The tables, while their writer has not started (reading back at
    /// start-up).
    fn idle_tables(&mut self) -> anyhow::Result<&mut SqliteBackend> {
        match &mut self.not_started {
            Some((tables, _)) => Ok(tables),
            None => bail!("the tables are their writer's now"),
        }
    }

    /// Starts the tables' writer if it has not started.
    fn start_tables_writer(&mut self) -> anyhow::Result<()> {
        let Some((tables, incoming)) = self.not_started.take() else {
            return Ok(());
        };
        let writer = TablesWriter {
            tables,
            dir: self.dir.clone(),
            generation: self.generation,
            gather: self.gather,
            watermark: Arc::clone(&self.watermark),
            sink: self.sink.take(),
        };
        self.tables_writer = Some(
            std::thread::Builder::new()
                .name("caps-tables".into())
                .spawn(move || writer.run(incoming))
                .context("starting the tables' writer")?,
        );
        Ok(())
    }

    fn send(&mut self, request: ToTables) -> anyhow::Result<()> {
        self.start_tables_writer()?;
        self.to_tables
            .send(request)
            .map_err(|_| anyhow::anyhow!("the tables' writer has stopped"))
    }

    /// Follows the full log file with the next part, and has the tables'
    /// writer delete the full one once the tables hold it.
    fn rotate(&mut self) -> anyhow::Result<()> {
        let next = LogFile::new(&self.dir, self.generation, self.file.part + 1);
        self.log = CommitLog::create(&next, self.sync)?;
        let full = std::mem::replace(&mut self.file, next);
        self.send(ToTables::Retire(full))
    }
}

impl Drop for LoggedSqlite {
    /// A backend dropped without [`Backend::close`] (its hub stopped on an
    /// error) still lets its tables' writer finish and free the data dir.
    fn drop(&mut self) {
        if let Some(writer) = self.tables_writer.take() {
            let _ = self.to_tables.send(ToTables::Stop);
            if writer.join().is_err() {
                log::error!("the tables' writer failed while stopping");
            }
        }
    }
}

/// Brings into `tables` whatever the commit log in `dir` holds past their
/// mark, then deletes the log (also when the hub now runs without it: what
/// it acknowledged is in there). Returns the newest generation seen.
pub fn replay(dir: &Path, tables: &mut SqliteBackend) -> anyhow::Result<u64> {
    let mark = tables.log_mark()?;
    let files = LogFile::all_in(dir)?;
    let began = Instant::now();
    let mut replayed = 0;
    let mut quarantined = Vec::new();
    for (index, file) in files.iter().enumerate() {
        if file.generation < mark.generation {
            continue;
        }
        let newest = index + 1 == files.len();
        let tail: Vec<Step> = file
            .read(newest)?
            .into_iter()
            .filter(|step| file.generation > mark.generation || step.seq > mark.applied)
            .collect();
        for chunk in tail.chunks(REPLAY_CHUNK) {
            let last = chunk.last().map_or(0, |step| step.seq);
            let settled = tables.commit_marked(
                chunk,
                Some(LogMark {
                    generation: file.generation,
                    applied: last,
                }),
            )?;
            if !settled.refused.is_empty() {
                log::error!(
                    "{}: the tables refused logged steps {:?}; the file is kept as {}.refused",
                    file.path.display(),
                    settled.refused,
                    file.path.display()
                );
                quarantined.push(file.clone());
            }
            replayed += chunk.len();
        }
    }
    if replayed > 0 {
        log::info!(
            "the data dir was not closed cleanly: {replayed} logged steps brought into its tables in {:?}",
            began.elapsed()
        );
    }
    for file in &files {
        if quarantined.contains(file) {
            let kept = file.path.with_extension("log.refused");
            std::fs::rename(&file.path, &kept)
                .with_context(|| format!("cannot keep {}", kept.display()))?;
        } else {
            file.remove()?;
        }
    }
    Ok(files
        .iter()
        .map(|file| file.generation)
        .chain([mark.generation])
        .max()
        .unwrap_or(0))
}

impl Backend for LoggedSqlite {
    fn load(&mut self) -> anyhow::Result<Snapshot> {
        self.idle_tables()?.load()
    }

    fn records(&self) -> anyhow::Result<Box<dyn Records>> {
        Ok(Box::new(CaughtUp {
            tables: Box::new(open_records(&self.path)?),
            watermark: Arc::clone(&self.watermark),
            hurry: self.to_tables.clone(),
        }))
    }

    fn sequencer_records(&self) -> anyhow::Result<Box<dyn Records>> {
        Ok(Box::new(open_records(&self.path)?))
    }

    fn commit(&mut self, steps: &[Step]) -> anyhow::Result<Settled> {
        self.commit_owned(steps.to_vec())
            .map(|(settled, _)| settled)
    }

    /// Logs the steps; the tables' writer brings them in after. A step is
    /// never refused here: on one hub's data dir every condition was decided
    /// by the one sequencer (the tables' writer logs one that fails).
    fn commit_owned(&mut self, steps: Vec<Step>) -> anyhow::Result<(Settled, Vec<Step>)> {
        let Some(last) = steps.last().map(|step| step.seq) else {
            return Ok((Settled::default(), steps));
        };
        self.log.append(&steps)?;
        self.send(ToTables::Steps(steps))?;
        // After the send: a reader hurrying the writer for these steps
        // finds them queued ahead of its request.
        self.watermark.logged.store(last, Ordering::Release);
        if self.log.written() >= ROTATE_AT {
            self.rotate()?;
        }
        Ok((Settled::default(), Vec::new()))
    }

    fn tables_follow(&mut self, sink: ProgressSink) -> bool {
        self.sink = Some(sink);
        if let Err(error) = self.start_tables_writer() {
            // Then the first commit fails, and stops the hub.
            log::error!("{error:#}");
        }
        true
    }

    fn close(&mut self) -> anyhow::Result<()> {
        let (answer, answered) = sync_channel(1);
        self.send(ToTables::Close(answer))?;
        let result = answered
            .recv()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the tables' writer stopped")));
        if let Some(writer) = self.tables_writer.take()
            && writer.join().is_err()
        {
            log::error!("the tables' writer failed while closing");
        }
        result
    }

    fn compact(&mut self, delivered_before: DateTime<Utc>, limit: usize) -> anyhow::Result<usize> {
        let (answer, answered) = sync_channel(1);
        self.send(ToTables::Compact {
            before: delivered_before,
            limit,
            answer,
        })?;
        answered
            .recv()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the tables' writer stopped")))
    }
}

/// The thread that brings committed steps into the tables.
struct TablesWriter {
    tables: SqliteBackend,
    dir: PathBuf,
    generation: u64,
    gather: Duration,
    watermark: Arc<Watermark>,
    sink: Option<ProgressSink>,
}

impl TablesWriter {
    fn run(mut self, incoming: Receiver<ToTables>) {
        // A panic tells readers and the sequencer as an error does.
        let mut alarm = Alarm {
            watermark: Arc::clone(&self.watermark),
            sink: self.sink.clone(),
            armed: true,
        };
        if let Err(error) = self.serve(&incoming) {
            alarm.raise(format!("{error:#}"));
        }
        alarm.armed = false;
    }

    fn serve(&mut self, incoming: &Receiver<ToTables>) -> anyhow::Result<()> {
        let mut pending: Vec<Step> = Vec::new();
        let mut brought_in = Instant::now();
        while let Ok(first) = incoming.recv() {
            let mut gather_until = Instant::now() + self.gather;
            let mut next = Some(first);
            let mut then = None;
            while let Some(request) = next.take() {
                match request {
                    ToTables::Steps(steps) => pending.extend(steps),
                    // Readers polling in a tight loop would make every read
                    // a transaction (and a sync): they share one per spacing.
                    ToTables::Hurry => {
                        gather_until = gather_until.min(brought_in + HURRIED_SPACING);
                    }
                    other => {
                        then = Some(other);
                        break;
                    }
                }
                if pending.len() >= MOST_STEPS {
                    break;
                }
                let left = gather_until.saturating_duration_since(Instant::now());
                // A timeout ends the gathering; so does a closed queue.
                next = incoming.recv_timeout(left).ok();
            }
            self.bring_in(&mut pending)?;
            brought_in = Instant::now();
            match then {
                None | Some(ToTables::Steps(_) | ToTables::Hurry) => {}
                Some(ToTables::Retire(file)) => file.remove()?,
                Some(ToTables::Compact {
                    before,
                    limit,
                    answer,
                }) => {
                    let _ = answer.send(self.tables.compact(before, limit));
                }
                Some(ToTables::Close(answer)) => {
                    let _ = answer.send(self.close());
                    return Ok(());
                }
                Some(ToTables::Stop) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Brings `pending` into the tables in one transaction, with the log's
    /// place, and says so.
    fn bring_in(&mut self, pending: &mut Vec<Step>) -> anyhow::Result<()> {
        let Some(up_to) = pending.last().map(|step| step.seq) else {
            return Ok(());
        };
        let mark = LogMark {
            generation: self.generation,
            applied: up_to,
        };
        let settled = self.tables.commit_marked(pending, Some(mark))?;
        if !settled.refused.is_empty() {
            // Never on one hub's data dir: the sequencer decided each step on
            // what it alone had written. Its memory and the tables now differ:
            // stop, and let the next start find the steps in the log (and
            // keep it, refused there too, for a look).
            bail!(
                "the tables refused steps {:?} of generation {} that the commit log holds",
                settled.refused,
                self.generation
            );
        }
        self.watermark.in_tables(up_to);
        let spent = std::mem::take(pending);
        if let Some(sink) = &self.sink {
            let _ = sink.send(Ok(Progress::InTables { up_to, spent }));
        }
        Ok(())
    }

    /// Everything is in the tables: the stop is clean and the log can go.
    fn close(&mut self) -> anyhow::Result<()> {
        self.tables.close()?;
        for file in LogFile::all_in(&self.dir)? {
            file.remove()?;
        }
        Ok(())
    }
}

/// Tells the readers and the sequencer that the tables' writer stopped.
struct Alarm {
    watermark: Arc<Watermark>,
    sink: Option<ProgressSink>,
    /// Raised on drop (a panic) unless disarmed.
    armed: bool,
}

impl Alarm {
    fn raise(&self, why: String) {
        log::error!("the data dir's tables cannot be written: {why}");
        self.watermark.failed(why.clone());
        if let Some(sink) = &self.sink {
            let _ = sink.send(Err(why));
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if self.armed {
            self.raise("the tables' writer panicked".into());
        }
    }
}

/// Records read once the tables hold every step committed before the read
/// began (see [`Watermark::catch_up`]).
struct CaughtUp {
    tables: Box<dyn Records>,
    watermark: Arc<Watermark>,
    hurry: SyncSender<ToTables>,
}

impl CaughtUp {
    fn tables(&self) -> anyhow::Result<&dyn Records> {
        self.watermark.catch_up(|| {
            // A full queue means the writer has work to do at once anyway.
            if let Err(TrySendError::Disconnected(_)) = self.hurry.try_send(ToTables::Hurry) {
                log::warn!("the tables' writer has stopped");
            }
        })?;
        Ok(self.tables.as_ref())
    }
}

impl Records for CaughtUp {
    fn order(&self, key: &OrderKey) -> anyhow::Result<Option<StoredOrder>> {
        self.tables()?.order(key)
    }
    fn held(&self, key: &OrderKey) -> anyhow::Result<Option<StoredOrder>> {
        self.tables()?.held(key)
    }
    fn held_all(&self, keys: &[OrderKey]) -> anyhow::Result<Vec<StoredOrder>> {
        self.tables()?.held_all(keys)
    }
    fn stores_of(&self, order_id: &OrderId) -> anyhow::Result<Vec<StoreId>> {
        self.tables()?.stores_of(order_id)
    }
    fn page(&self, query: &OrderQuery) -> anyhow::Result<Vec<StoredOrder>> {
        self.tables()?.page(query)
    }
    fn notices(
        &self,
        store: &StoreId,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredNotice>> {
        self.tables()?.notices(store, after, limit)
    }
    fn notice_id(&self, store: &StoreId, id: &str) -> anyhow::Result<Option<MessageId>> {
        self.tables()?.notice_id(store, id)
    }
    fn notice_ids(&self, store: &StoreId, id: &str) -> anyhow::Result<Vec<MessageId>> {
        self.tables()?.notice_ids(store, id)
    }
    fn open_orders(&self, limit: usize) -> anyhow::Result<Vec<StoredOrder>> {
        self.tables()?.open_orders(limit)
    }
    fn counts(&self) -> anyhow::Result<OrderCounts> {
        self.tables()?.counts()
    }
    fn queues(&self) -> anyhow::Result<Vec<(StoreId, u64)>> {
        self.tables()?.queues()
    }
}
