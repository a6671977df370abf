//! The journal: what the hub writes down, and the writer that commits it.
//!
//! The dispatch desk and the mailboxes describe every change of state as a
//! [`Change`]. The core appends each event's changes to the journal and holds
//! back that event's replies and messages until they are committed, so the
//! hub never confirms what it has not recorded. One writer thread commits
//! whatever has queued up in one transaction (group commit), so a slow disk
//! costs latency, not throughput.
//!
//! [`Store`] is the seam for where changes go: SQLite today
//! ([`super::sqlite::SqliteStore`]).

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::dispatch::{DriverKey, OrderKey, Transition};
use crate::api::OrderState;
use crate::protocol::{MessageId, Order};

/// Most events' changes committed in one transaction.
const MAX_BATCH: usize = 4096;

/// One change of the hub's state.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new order, in `ready`.
    NewOrder {
        /// The order.
        order: Order,
        /// Its arrival number.
        seq: u64,
        /// When it arrived.
        at: DateTime<Utc>,
    },
    /// An order moved to another state.
    Transition {
        /// Which order.
        key: OrderKey,
        /// Its new state.
        state: OrderState,
        /// Who holds it now.
        driver: Option<DriverKey>,
        /// Whether its store has been told it is in transit.
        told_in_transit: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// A delivery notice was queued for the order's store.
    NoticeQueued {
        /// Its id.
        message_id: MessageId,
        /// The order delivered.
        order: Order,
        /// When.
        at: DateTime<Utc>,
    },
    /// A notice left its queue (acknowledged, or dropped over the limit).
    NoticeRemoved {
        /// Its id.
        message_id: MessageId,
    },
}

/// An order as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOrder {
    /// The order.
    pub order: Order,
    /// Its arrival number.
    pub seq: u64,
    /// Its state.
    pub state: OrderState,
    /// Who held it.
    pub driver: Option<DriverKey>,
    /// Whether its store was told it is in transit.
    pub told_in_transit: bool,
    /// When it entered its state.
    pub since: DateTime<Utc>,
    /// Every state it entered, oldest first.
    pub history: Vec<Transition>,
}

/// A queued delivery notice as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNotice {
    /// Its id.
    pub message_id: MessageId,
    /// The order delivered.
    pub order: Order,
}

/// Everything needed to resume.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Open orders, and the most recent delivered ones, by arrival.
    pub orders: Vec<StoredOrder>,
    /// How many orders were ever delivered.
    pub delivered_total: u64,
    /// Queued notices, oldest first.
    pub notices: Vec<StoredNotice>,
}

/// Where changes are kept.
pub trait Store: Send + 'static {
    /// Reads the state back, with at most `keep_delivered` delivered orders.
    fn load(&mut self, keep_delivered: usize) -> anyhow::Result<Snapshot>;
    /// Commits `changes` atomically: all of them, or none.
    fn commit(&mut self, changes: &[Change]) -> anyhow::Result<()>;
}

/// The core's end of the journal.
pub struct Journal {
    requests: mpsc::UnboundedSender<(u64, Vec<Change>)>,
    next_seq: u64,
}

/// What the writer reports.
pub type Committed = Result<u64, String>;

impl Journal {
    /// Starts the writer thread on `store`. The receiver yields the highest
    /// journal sequence number committed after each transaction, or the
    /// error that stopped the writer.
    pub fn start(store: Box<dyn Store>) -> (Journal, mpsc::UnboundedReceiver<Committed>) {
        let (requests, incoming) = mpsc::unbounded_channel();
        let (committed, reports) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("caps-journal".into())
            .spawn(move || write_batches(store, incoming, committed))
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
    mut store: Box<dyn Store>,
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
        match store.commit(&batch) {
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
