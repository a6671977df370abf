//! The reading room: a few low-priority threads that answer the HTTP API's
//! reads of committed state (SQLite), and turn them into JSON there too.
//!
//! Reads then wait for dispatch, never the other way round: on a busy
//! machine the kernel gives the sequencer, the journal and the sockets their
//! CPU first (the readers run at nice 19), and a flood of reads queues here
//! (and is refused `busy` beyond a bound) instead of taking the cores.

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use tokio::sync::oneshot;

use super::journal::Records;

/// Threads that answer reads, each on a connection of its own.
pub const THREADS: usize = 2;
/// Reads waiting for a thread beyond this many are refused.
const MAX_WAITING: usize = 256;
/// How much lower the readers' scheduling priority is (nice): the lowest, so
/// they take only CPU that dispatch leaves.
const NICENESS: i32 = 19;

type Job = Box<dyn FnOnce(&dyn Records) + Send>;

/// Why a read was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Too many reads are waiting already.
    #[error("too many reads are waiting; try again")]
    Busy,
    /// The data dir could not be read.
    #[error("the data dir cannot be read: {0:#}")]
    Failed(anyhow::Error),
    /// The hub is stopping.
    #[error("the hub is stopping")]
    Stopping,
}

/// The way to the reading room; clone it freely.
#[derive(Clone)]
pub struct Readers {
    jobs: SyncSender<Job>,
}

impl Readers {
    /// Starts one reader thread for each of `connections`, at the lowest
    /// priority: reads that wait for dispatch (the API's).
    pub fn start(connections: Vec<Box<dyn Records>>) -> Readers {
        Readers::start_named(connections, "caps-reader", true)
    }

    /// Starts one reader thread for each of `connections`, at the hub's own
    /// priority: reads that are part of the protocol (a replay's pages),
    /// which CPU-bound work elsewhere on the machine must not starve;
    /// `name` names their threads.
    pub fn start_urgent(connections: Vec<Box<dyn Records>>, name: &str) -> Readers {
        Readers::start_named(connections, name, false)
    }

    fn start_named(connections: Vec<Box<dyn Records>>, name: &str, lower: bool) -> Readers {
        let (jobs, queue) = sync_channel::<Job>(MAX_WAITING);
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for (index, records) in connections.into_iter().enumerate() {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    if lower {
                        lower_priority();
                    }
                    loop {
                        let job = {
                            let queue = queue.lock().unwrap_or_else(|p| p.into_inner());
                            queue.recv()
                        };
                        match job {
                            Ok(job) => job(records.as_ref()),
                            Err(_) => return,
                        }
                    }
                })
                .expect("spawning a reader thread");
        }
        Readers { jobs }
    }

    /// Runs `query` on a reader thread.
    pub async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&dyn Records) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, ReadError> {
        let (answer, outcome) = oneshot::channel();
        let job: Job = Box::new(move |records| {
            let _ = answer.send(query(records));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ReadError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(ReadError::Stopping),
        }
        match outcome.await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(error)) => Err(ReadError::Failed(error)),
            Err(_) => Err(ReadError::Stopping),
        }
    }
}

/// Makes the calling thread yield to the hub's other threads (Linux applies
/// `setpriority` to the calling thread only).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; setpriority only reads its
        // arguments. A failure leaves the thread at normal priority.
        let failed = unsafe {
            let thread = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, NICENESS) != 0
        };
        if failed {
            log::debug!("cannot lower the reader threads' priority");
        }
    }
}
