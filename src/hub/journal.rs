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
use crate::protocol::{OrderId, StoreId};

/// Most events' changes committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Where changes are kept: the storage seam.
pub trait Backend: Send + 'static {
    /// Reads back what the hub works on: open orders, queued notices, counts.
    fn load(&mut self) -> anyhow::Result<Snapshot>;
    /// A reader of committed orders, for use on any thread.
    fn records(&self) -> anyhow::Result<Box<dyn Records>>;
    /// Commits `changes` atomically: all of them, or none.
    fn commit(&mut self, changes: &[Change]) -> anyhow::Result<()>;
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
}

/// The sequencer's end of the journal.
pub struct Journal {
    requests: mpsc::UnboundedSender<(u64, Vec<Change>)>,
    next_seq: u64,
}

/// What the writer reports.
pub type Committed = Result<u64, String>;

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
        if self.requests.send((seq, changes)).is_err() {
            log::error!("the journal writer has stopped");
        }
        seq
    }
}

fn write_batches(
    mut backend: Box<dyn Backend>,
    mut incoming: mpsc::UnboundedReceiver<(u64, Vec<Change>)>,
    committed: mpsc::UnboundedSender<Committed>,
) {
    let mut batch: Vec<Change> = Vec::new();
    while let Some((first_seq, changes)) = incoming.blocking_recv() {
        let mut last_seq = first_seq;
        batch.clear();
        batch.extend(changes);
        let mut events = 1;
        while events < MAX_BATCH {
            let Ok((seq, changes)) = incoming.try_recv() else {
                break;
            };
            batch.extend(changes);
            last_seq = seq;
            events += 1;
        }
        match backend.commit(&batch) {
            Ok(()) => {
                if committed.send(Ok(last_seq)).is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = committed.send(Err(format!("{error:#}")));
                return;
            }
        }
    }
}
