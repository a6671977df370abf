//! The journal: what the hub writes down, and the writer that commits it.
//!
//! The dispatch desk and the mailboxes describe every change of state as a
//! [`Change`]. The sequencer appends each event's changes to the journal and holds
//! back that event's replies and messages until they are committed, so the
//! hub never confirms what it has not recorded. One writer thread commits
//! whatever has queued up in one transaction (a batched commit), so a slow disk
//! costs latency, not throughput.
//!
//! [`Backend`] is the seam for where changes go: SQLite today
//! ([`super::sqlite::SqliteBackend`]) for one hub, PostgreSQL
//! ([`super::postgres::PgBackend`]) for a group of hubs.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::api::OrderCounts;
use crate::hub::domain::{Change, OrderKey, OrderQuery, Snapshot, StoredNotice, StoredOrder};
use crate::protocol::{MessageId, OrderId, StoreId};

/// Most events' changes committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Where changes are kept: the storage seam.
pub trait Backend: Send + 'static {
    /// Reads back what the hub works on: open orders, queued notices, counts.
    fn load(&mut self) -> anyhow::Result<Snapshot>;
    /// A reader of committed orders, for use on any thread: it sees every
    /// step committed before the read began.
    fn records(&self) -> anyhow::Result<Box<dyn Records>>;
    /// A reader for the sequencer itself, which holds in memory what is
    /// committed but not yet in the tables (see [`Progress::InTables`]), and
    /// must never wait for them.
    fn sequencer_records(&self) -> anyhow::Result<Box<dyn Records>> {
        self.records()
    }
    /// Commits `steps` in one transaction. Each step is all or nothing: one
    /// whose conditions fail (see [`Change`]) is left out, and its number
    /// returned among the refused; the others commit. An error means
    /// nothing was committed.
    fn commit(&mut self, steps: &[Step]) -> anyhow::Result<Settled>;
    /// [`Backend::commit`] of steps it may keep. Returns what it settled,
    /// and the steps it did not keep (to be freed by the thread that made
    /// them). A backend that brings its tables up to date after the commit
    /// keeps them, and hands them back with its [`Progress::InTables`].
    fn commit_owned(&mut self, steps: Vec<Step>) -> anyhow::Result<(Settled, Vec<Step>)> {
        let settled = self.commit(&steps)?;
        Ok((settled, steps))
    }
    /// Whether what [`Backend::commit`] recorded is in what its readers read
    /// at once. If not, the backend reports [`Progress::InTables`] through
    /// the sink it is given here.
    fn tables_follow(&mut self, _sink: ProgressSink) -> bool {
        false
    }
    /// Records that everything was committed and the hub stops cleanly (the
    /// writer calls it last, once its queue is closed and empty).
    fn close(&mut self) -> anyhow::Result<()>;
    /// Compacts up to `limit` orders delivered before `delivered_before`:
    /// their history and personal data go, a digest of their payload stays
    /// (so a re-sent order is still recognised). Returns how many it did.
    fn compact(&mut self, delivered_before: DateTime<Utc>, limit: usize) -> anyhow::Result<usize>;
}

/// Reads of committed orders: the authority for every order ever recorded,
/// however old. Each call sees only what was committed.
pub trait Records: Send + Sync + 'static {
    /// Whether a read crosses the network (a shared database): the
    /// sequencer then does not wait on one to learn that an order is new,
    /// and leaves it to the order's conditional insert (a repeat is refused,
    /// read back, and the sender, told to try again, finds it).
    fn is_remote(&self) -> bool {
        false
    }
    /// One order with its whole history.
    fn order(&self, key: &OrderKey) -> anyhow::Result<Option<StoredOrder>>;
    /// The order as this hub may hold it: like [`Records::order`], but
    /// `None` for an open order another hub of its group owns.
    fn held(&self, key: &OrderKey) -> anyhow::Result<Option<StoredOrder>> {
        self.order(key)
    }
    /// [`Records::held`] of several orders at once: those found, in one
    /// query where the records are remote.
    fn held_all(&self, keys: &[OrderKey]) -> anyhow::Result<Vec<StoredOrder>> {
        keys.iter()
            .filter_map(|key| self.held(key).transpose())
            .collect()
    }
    /// The stores that have an order with this id.
    fn stores_of(&self, order_id: &OrderId) -> anyhow::Result<Vec<StoreId>>;
    /// A page of orders by arrival (without their histories).
    fn page(&self, query: &OrderQuery) -> anyhow::Result<Vec<StoredOrder>>;
    /// The delivery notices queued for `store`, oldest first.
    fn notices(
        &self,
        store: &StoreId,
        after: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Vec<StoredNotice>>;
    /// The notice in `store`'s queue whose message id, or whose order's id
    /// (as older course code acknowledges), is `id`.
    fn notice_id(&self, store: &StoreId, id: &str) -> anyhow::Result<Option<MessageId>>;
    /// Like [`Records::notice_id`], every such notice (an order has one of
    /// each kind), the one by message id or the oldest first.
    fn notice_ids(&self, store: &StoreId, id: &str) -> anyhow::Result<Vec<MessageId>> {
        Ok(self.notice_id(store, id)?.into_iter().collect())
    }
    /// Orders not yet delivered, oldest first, at most `limit`.
    fn open_orders(&self, limit: usize) -> anyhow::Result<Vec<StoredOrder>>;
    /// How many orders are in each state.
    fn counts(&self) -> anyhow::Result<OrderCounts>;
    /// The stores with queued notices, and how many each.
    fn queues(&self) -> anyhow::Result<Vec<(StoreId, u64)>>;
}

/// The changes of one step of the sequencer (one event, or one tick).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    /// Its journal number.
    pub seq: u64,
    /// Its changes, recorded together or not at all.
    pub changes: Vec<Change>,
}

/// What a backend's commit did not record as asked, by step number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settled {
    /// Steps left out whole: one of their conditions failed.
    pub refused: Vec<u64>,
    /// Steps recorded whose acknowledgement ([`Change::NoticeAcknowledged`],
    /// made without a look-up) found no such notice queued.
    pub not_queued: Vec<u64>,
}

/// What the journal reports to the sequencer.
#[derive(Debug)]
pub enum Progress {
    /// Steps are durable: their answers may go.
    Committed(Commit),
    /// The tables, which readers read, hold every step up to `up_to`: what
    /// the sequencer kept in memory for them until now may go.
    InTables {
        /// The last step in them.
        up_to: u64,
        /// The steps brought in, to be freed on the sequencer's thread.
        spent: Vec<Step>,
    },
}

/// Where a backend whose tables follow its commits reports them.
pub type ProgressSink = mpsc::UnboundedSender<Result<Progress, String>>;

/// What one commit of the writer did.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// Every step up to this number is settled.
    pub up_to: u64,
    /// The steps among them the data dir refused.
    pub refused: Vec<u64>,
    /// The steps among them that acknowledged a notice not queued.
    pub not_queued: Vec<u64>,
    /// The steps committed, handed back to be freed by the thread that made
    /// them: freed on the writer's thread, glibc's allocator made the two
    /// threads wait on each other's arena lock.
    pub spent: Vec<Step>,
    /// Whether the tables hold the steps already (else a
    /// [`Progress::InTables`] follows).
    pub in_tables: bool,
}

/// What the writer is asked to do.
enum Request {
    /// Commit a step (with whatever else is queued).
    Step(Step),
    /// Commit the steps of one turn of the sequencer (see [`Pace::TurnEnd`]),
    /// with whatever else is queued.
    Turn(Vec<Step>),
    /// Compact orders delivered before this, while nothing else waits.
    Compact(DateTime<Utc>),
}

/// Orders compacted in one transaction, so compaction never holds a commit
/// up for long.
const COMPACT_CHUNK: usize = 1_000;

/// The sequencer's end of the journal.
pub struct Journal {
    requests: std::sync::mpsc::Sender<Request>,
    next_seq: u64,
    /// With [`Pace::TurnEnd`]: the steps of the sequencer's turn so far,
    /// the longest one may wait, and since when the first has.
    turn: Option<Turn>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// The steps of one turn of the sequencer, handed over together.
struct Turn {
    steps: Vec<Step>,
    most: Duration,
    since: Option<Instant>,
}

/// When the writer commits the steps it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// At once, but under load (commits moments apart) a small batch waits
    /// this long for more (see [`worth_waiting`]): for a commit that costs
    /// much more than its sync.
    Delay(Duration),
    /// When the sequencer's turn ends (it has applied everything queued for
    /// it), so a burst of events is one commit, as an event loop that
    /// flushes once per turn does: the journal hands the writer a turn's
    /// steps together (one wake-up, not one per step), and the writer
    /// commits whatever it has. A turn is cut short at [`COMMIT_FILL`] steps,
    /// or `most` after its first.
    TurnEnd {
        /// The longest a step waits for its turn to end.
        most: Duration,
    },
}

impl Drop for Journal {
    /// Closes the queue and waits for the writer to commit what is in it
    /// and close the backend: a hub that stops returns only after that.
    fn drop(&mut self) {
        self.hand_over_turn();
        let (closed, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.requests, closed));
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            log::error!("the journal writer failed while closing");
        }
    }
}

/// What the writer reports after each commit, or the error that stopped it.
pub type Committed = Result<Progress, String>;

impl Journal {
    /// Starts the writer thread on `backend`. The receiver yields the highest
    /// journal sequence number committed after each transaction, or the
    /// error that stopped the writer. Under load, a commit waits up to
    /// `commit_delay` for more steps to carry.
    pub fn start(
        backend: Box<dyn Backend>,
        pace: Pace,
    ) -> (Journal, mpsc::UnboundedReceiver<Committed>) {
        let (requests, incoming) = std::sync::mpsc::channel();
        let (committed, reports) = mpsc::unbounded_channel();
        let writer = std::thread::Builder::new()
            .name("caps-journal".into())
            .spawn(move || write_batches(backend, pace, incoming, committed))
            .expect("spawning the journal writer");
        (
            Journal {
                requests,
                next_seq: 1,
                turn: match pace {
                    Pace::TurnEnd { most } => Some(Turn {
                        steps: Vec::new(),
                        most,
                        since: None,
                    }),
                    Pace::Delay(_) => None,
                },
                writer: Some(writer),
            },
            reports,
        )
    }

    /// Called between the sequencer's commands: if its inbox is `empty`,
    /// the turn ended and its steps go to the writer; else they go only if
    /// the first has waited long enough.
    pub fn between_commands(&mut self, empty: bool) {
        let waited_enough = self
            .turn
            .as_ref()
            .is_some_and(|turn| turn.since.is_some_and(|since| since.elapsed() >= turn.most));
        if empty || waited_enough {
            self.hand_over_turn();
        }
    }

    /// Hands the turn's steps to the writer.
    fn hand_over_turn(&mut self) {
        let Some(turn) = self.turn.as_mut().filter(|turn| !turn.steps.is_empty()) else {
            return;
        };
        turn.since = None;
        let steps = std::mem::take(&mut turn.steps);
        if self.requests.send(Request::Turn(steps)).is_err() {
            log::error!("the journal writer has stopped");
        }
    }

    /// Queues `changes` for commit; returns the sequence number to wait for.
    pub fn append(&mut self, changes: Vec<Change>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let step = Step { seq, changes };
        match self.turn.as_mut() {
            Some(turn) => {
                turn.since.get_or_insert_with(Instant::now);
                turn.steps.push(step);
                if turn.steps.len() >= COMMIT_FILL {
                    self.hand_over_turn();
                }
            }
            None => {
                if self.requests.send(Request::Step(step)).is_err() {
                    log::error!("the journal writer has stopped");
                }
            }
        }
        seq
    }

    /// Asks the writer to compact orders delivered before `delivered_before`,
    /// in chunks between commits.
    pub fn compact(&self, delivered_before: DateTime<Utc>) {
        if self
            .requests
            .send(Request::Compact(delivered_before))
            .is_err()
        {
            log::error!("the journal writer has stopped");
        }
    }
}

/// A batch of this many steps is committed without waiting for more.
const COMMIT_FILL: usize = 64;

/// Whether a batch of `steps` should wait `commit_delay` for more before
/// its commit, the last commit having ended `since_commit` ago. Under
/// moderate load (the last commit was moments ago, and the batch is small)
/// it should, so that one fsync carries many steps (as PostgreSQL's
/// `commit_delay` does). A step that comes alone is not held, nor a batch
/// already full enough.
pub fn worth_waiting(steps: usize, since_commit: Option<Duration>, commit_delay: Duration) -> bool {
    (1..COMMIT_FILL).contains(&steps)
        && !commit_delay.is_zero()
        && since_commit.is_some_and(|since| since < commit_delay * 2)
}

fn write_batches(
    mut backend: Box<dyn Backend>,
    pace: Pace,
    incoming: std::sync::mpsc::Receiver<Request>,
    committed: mpsc::UnboundedSender<Committed>,
) {
    let in_tables = !backend.tables_follow(committed.clone());
    let mut batch: Vec<Step> = Vec::new();
    let mut compact_before: Option<DateTime<Utc>> = None;
    // Far enough in the past that the first step is not held.
    let mut last_commit = Instant::now().checked_sub(Duration::from_secs(1));
    loop {
        // Wait for work, unless compaction is left to do.
        let first = match compact_before {
            Some(_) => incoming.try_recv().ok(),
            None => match incoming.recv() {
                Ok(request) => Some(request),
                Err(_) => {
                    // Every step is committed and nothing more can come.
                    if let Err(error) = backend.close() {
                        log::warn!("cannot mark the data dir closed: {error:#}");
                    }
                    return;
                }
            },
        };
        batch.clear();
        let mut next = first;
        let mut waited = false;
        loop {
            while let Some(request) = next {
                match request {
                    Request::Step(step) => batch.push(step),
                    Request::Turn(mut steps) => batch.append(&mut steps),
                    Request::Compact(before) => compact_before = Some(before),
                }
                next = (batch.len() < MAX_BATCH)
                    .then(|| incoming.try_recv().ok())
                    .flatten();
            }
            // A turn's steps come together: commit them at once.
            let Pace::Delay(commit_delay) = pace else {
                break;
            };
            let since_commit = last_commit.map(|at| at.elapsed());
            if waited || !worth_waiting(batch.len(), since_commit, commit_delay) {
                break;
            }
            waited = true;
            // Steps come one by one under load: each would end a wait on the
            // queue.
            std::thread::sleep(commit_delay);
            next = incoming.try_recv().ok();
        }
        if batch.is_empty() {
            if let Some(before) = compact_before {
                compact_before = compact_chunk(backend.as_mut(), before).then_some(before);
            }
            continue;
        }
        let up_to = batch.last().map_or(0, |step| step.seq);
        let report = match backend.commit_owned(std::mem::take(&mut batch)) {
            Ok((
                Settled {
                    refused,
                    not_queued,
                },
                spent,
            )) => Ok(Progress::Committed(Commit {
                up_to,
                refused,
                not_queued,
                spent,
                in_tables,
            })),
            Err(error) => Err(format!("{error:#}")),
        };
        last_commit = Some(Instant::now());
        let failed = report.is_err();
        if committed.send(report).is_err() || failed {
            return;
        }
    }
}

/// Compacts one chunk; `true` if more may be left.
fn compact_chunk(backend: &mut dyn Backend, before: DateTime<Utc>) -> bool {
    match backend.compact(before, COMPACT_CHUNK) {
        Ok(done) => {
            if done > 0 {
                log::info!("compacted {done} orders delivered before {before}");
            }
            done == COMPACT_CHUNK
        }
        Err(error) => {
            log::error!("cannot compact the data dir: {error:#}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A backend that records the size of every commit.
    struct Counting(Arc<Mutex<Vec<usize>>>);

    impl Backend for Counting {
        fn load(&mut self) -> anyhow::Result<Snapshot> {
            Ok(Snapshot::default())
        }
        fn records(&self) -> anyhow::Result<Box<dyn Records>> {
            anyhow::bail!("not needed here")
        }
        fn commit(&mut self, steps: &[Step]) -> anyhow::Result<Settled> {
            self.0.lock().unwrap().push(steps.len());
            Ok(Settled::default())
        }
        fn close(&mut self) -> anyhow::Result<()> {
            Ok(())
        }
        fn compact(&mut self, _: DateTime<Utc>, _: usize) -> anyhow::Result<usize> {
            Ok(0)
        }
    }

    #[test]
    fn only_a_small_batch_moments_after_a_commit_waits() {
        let delay = Duration::from_micros(500);
        let moments = Some(Duration::from_micros(100));
        assert!(worth_waiting(1, moments, delay));
        assert!(worth_waiting(COMMIT_FILL - 1, moments, delay));
        assert!(!worth_waiting(COMMIT_FILL, moments, delay), "full enough");
        assert!(!worth_waiting(0, moments, delay), "nothing to commit");
        assert!(!worth_waiting(1, Some(delay * 2), delay), "a lone step");
        assert!(!worth_waiting(1, None, delay), "the first commit");
        assert!(
            !worth_waiting(1, moments, Duration::ZERO),
            "--commit-delay 0s"
        );
    }

    #[tokio::test]
    async fn a_lone_step_is_not_held_and_steps_under_load_share_a_commit() {
        let commits = Arc::new(Mutex::new(Vec::new()));
        let delay = Duration::from_millis(300);
        let (mut journal, mut committed) =
            Journal::start(Box::new(Counting(Arc::clone(&commits))), Pace::Delay(delay));

        // Idle: a step is committed at once, not after the delay.
        let began = Instant::now();
        journal.append(Vec::new());
        committed.recv().await.unwrap().unwrap();
        assert!(
            began.elapsed() < delay,
            "a lone step waited {:?}",
            began.elapsed()
        );

        // Moments after a commit, a step waits for the ones behind it.
        for _ in 0..5 {
            journal.append(Vec::new());
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut settled = 1;
        while settled < 6 {
            if let Progress::Committed(commit) = committed.recv().await.unwrap().unwrap() {
                settled = commit.up_to;
            }
        }
        let sizes = commits.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 6);
        assert!(
            sizes.len() <= 3,
            "five steps 20 ms apart took {} commits",
            sizes.len() - 1
        );
    }

    #[tokio::test]
    async fn a_turns_steps_are_one_commit_handed_over_when_the_turn_ends() {
        let commits = Arc::new(Mutex::new(Vec::new()));
        let most = Duration::from_millis(200);
        let (mut journal, mut committed) = Journal::start(
            Box::new(Counting(Arc::clone(&commits))),
            Pace::TurnEnd { most },
        );
        for _ in 0..5 {
            journal.append(Vec::new());
        }
        // More commands are queued: the turn goes on.
        journal.between_commands(false);
        std::thread::sleep(Duration::from_millis(20));
        assert!(commits.lock().unwrap().is_empty(), "held for the turn");
        journal.between_commands(true);
        let mut settled = 0;
        while settled < 5 {
            if let Progress::Committed(commit) = committed.recv().await.unwrap().unwrap() {
                settled = commit.up_to;
            }
        }
        assert_eq!(*commits.lock().unwrap(), [5], "one commit for the turn");

        // A turn that never ends is cut at `most`.
        journal.append(Vec::new());
        std::thread::sleep(most);
        journal.between_commands(false);
        while settled < 6 {
            if let Progress::Committed(commit) = committed.recv().await.unwrap().unwrap() {
                settled = commit.up_to;
            }
        }
    }
}
