//! The journal: what the hub writes down, and the writer that commits it.
//!
//! The dispatch desk and the mailboxes describe every change of state as a
//! [`Change`]. The sequencer appends each event's changes to the journal and holds
//! back that event's replies and messages until they are committed, so the
//! hub never confirms what it has not recorded. One writer thread commits
//! whatever has queued up in one transaction (group commit), so a slow disk
//! costs latency, not throughput.
//!
//! [`Backend`] is the seam for where changes go: SQLite today
//! ([`super::sqlite::SqliteBackend`]).

use tokio::sync::mpsc;

use super::domain::{Change, OrderKey, OrderQuery, Snapshot, StoredOrder};
use crate::api::OrderCounts;
use crate::protocol::{OrderId, StoreId};

/// Most events' changes committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Where changes are kept: the storage seam.
pub trait Backend: Send + 'static {
    /// Reads back what the hub works on: open orders, queued notices, counts.
    fn load(&mut self) -> anyhow::Result<Snapshot>;
    /// A reader of committed orders, for use on any thread.
    fn records(&self) -> anyhow::Result<Box<dyn Records>>;
    /// Commits `steps` in one transaction. Each step is all or nothing: one
    /// whose conditions fail (see [`Change`]) is left out, and its number
    /// returned; the others commit. An error means nothing was committed.
    fn commit(&mut self, steps: &[Step]) -> anyhow::Result<Vec<u64>>;
}

/// Reads of committed orders: the authority for every order ever recorded,
/// however old. Each call sees only what was committed.
pub trait Records: Send + Sync + 'static {
    /// One order with its whole history.
    fn order(&self, key: &OrderKey) -> anyhow::Result<Option<StoredOrder>>;
    /// The stores that have an order with this id.
    fn stores_of(&self, order_id: &OrderId) -> anyhow::Result<Vec<StoreId>>;
    /// A page of orders by arrival (without their histories).
    fn page(&self, query: &OrderQuery) -> anyhow::Result<Vec<StoredOrder>>;
    /// Orders not yet delivered, oldest first, at most `limit`.
    fn open_orders(&self, limit: usize) -> anyhow::Result<Vec<StoredOrder>>;
    /// How many orders are in each state.
    fn counts(&self) -> anyhow::Result<OrderCounts>;
    /// The stores with queued notices, and how many each.
    fn queues(&self) -> anyhow::Result<Vec<(StoreId, u64)>>;
}

/// The changes of one step of the sequencer (one event, or one tick).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Its journal number.
    pub seq: u64,
    /// Its changes, recorded together or not at all.
    pub changes: Vec<Change>,
}

/// What one commit of the writer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Every step up to this number is settled.
    pub up_to: u64,
    /// The steps among them the data dir refused.
    pub refused: Vec<u64>,
}

/// The sequencer's end of the journal.
pub struct Journal {
    requests: mpsc::UnboundedSender<Step>,
    next_seq: u64,
}

/// What the writer reports after each commit, or the error that stopped it.
pub type Committed = Result<Commit, String>;

impl Journal {
    /// Starts the writer thread on `backend`. The receiver yields the highest
    /// journal sequence number committed after each transaction, or the
    /// error that stopped the writer.
    pub fn start(backend: Box<dyn Backend>) -> (Journal, mpsc::UnboundedReceiver<Committed>) {
        let (requests, incoming) = mpsc::unbounded_channel();
        let (committed, reports) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("caps-journal".into())
            .spawn(move || write_batches(backend, incoming, committed))
            .expect("spawning the journal writer");
        (
            Journal {
                requests,
                next_seq: 1,
            },
            reports,
        )
    }

    /// Queues `changes` for commit; returns the sequence number to wait for.
    pub fn append(&mut self, changes: Vec<Change>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.requests.send(Step { seq, changes }).is_err() {
            log::error!("the journal writer has stopped");
        }
        seq
    }
}

fn write_batches(
    mut backend: Box<dyn Backend>,
    mut incoming: mpsc::UnboundedReceiver<Step>,
    committed: mpsc::UnboundedSender<Committed>,
) {
    let mut batch: Vec<Step> = Vec::new();
    while let Some(first) = incoming.blocking_recv() {
        batch.clear();
        batch.push(first);
        while batch.len() < MAX_BATCH {
            let Ok(step) = incoming.try_recv() else {
                break;
            };
            batch.push(step);
        }
        let up_to = batch.last().map_or(0, |step| step.seq);
        let report = match backend.commit(&batch) {
            Ok(refused) => Ok(Commit { up_to, refused }),
            Err(error) => Err(format!("{error:#}")),
        };
        let failed = report.is_err();
        if committed.send(report).is_err() || failed {
            return;
        }
    }
}
