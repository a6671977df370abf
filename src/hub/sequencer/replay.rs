//! Replays (`getAll`): what a socket has not acknowledged, sent again to it
//! beside the sequencer. A store's queue is read a page at a time off the
//! sequencer, the next page only once the socket's buffer has taken the
//! last, so a replay holds one page whatever the queue's length. A socket
//! has at most one replay under way, and a replay ends at a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use tokio::time::Instant;

use super::handle::{Reply, WeakSequencerHandle};
use super::message::Message;
use crate::hub::domain::StoredNotice;
use crate::hub::storage::readers::{ReadError, Readers};
use crate::protocol::{DeliveryNotice, ErrorCode, Event, Refusal, StoreId};

/// Notices read per page.
pub const PAGE: usize = 64;
/// How long a replay may take before it stops, unless configured.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// The longest wait between tries to send to a socket whose buffer is full.
const MOST_PAUSE: Duration = Duration::from_millis(100);

/// Where replays read a store's queue.
#[derive(Clone)]
pub enum QueueSource {
    /// The data dir (or a group's database), on a reader thread of its own
    /// at the hub's priority.
    Records(Readers),
    /// An ephemeral hub's memory: the sequencer answers a page at a time.
    Memory(WeakSequencerHandle),
}

impl QueueSource {
    async fn page(&self, store: &StoreId, after: Option<u64>) -> Result<Page, Refusal> {
        match self {
            QueueSource::Records(readers) => {
                let store = store.clone();
                match readers
                    .read(move |records| records.notices(&store, after, PAGE))
                    .await
                {
                    Ok(notices) => Ok(Page::Notices(notices)),
                    Err(ReadError::Busy) => Ok(Page::NotNow),
                    Err(error) => Err(unreadable(error)),
                }
            }
            QueueSource::Memory(sequencer) => sequencer
                .notices(store.clone(), after, PAGE)
                .await
                .ok_or_else(|| Refusal::new(ErrorCode::Busy, "the hub is stopping"))?
                .map(Page::Notices),
        }
    }
}

enum Page {
    Notices(Vec<StoredNotice>),
    /// The readers are all busy: try again shortly.
    NotNow,
}

fn unreadable(error: ReadError) -> Refusal {
    log::error!("cannot read a queue for a replay: {error}");
    Refusal::new(
        ErrorCode::Busy,
        "the hub cannot read its queue now; try again",
    )
}

/// Marks a socket's replay under way; at most one at a time.
#[derive(Clone, Default)]
pub struct Replaying(Arc<AtomicBool>);

impl Replaying {
    /// The socket's turn to replay, unless one is under way already.
    pub fn begin(socket: &SocketRef) -> Option<ReplayTurn> {
        let replaying = socket.extensions.get::<Replaying>().unwrap_or_default();
        // Lazily: a turn made and dropped on refusal would end the replay
        // under way (its drop clears the mark).
        (!replaying.0.swap(true, Ordering::AcqRel)).then(|| ReplayTurn(replaying))
    }
}

/// A socket's replay, held from its `getAll` until the replay ends (or is
/// dropped unsent); the socket may ask again after that.
pub struct ReplayTurn(Replaying);

impl Drop for ReplayTurn {
    fn drop(&mut self) {
        (self.0).0.store(false, Ordering::Release);
    }
}

/// What a replay sends.
pub enum Replay {
    /// Messages already in hand (a driver's packages: a few).
    Messages(Vec<Message>),
    /// A store's queued delivery notices, read as they are sent.
    Queue(StoreId),
}

/// Why a replay ended early.
enum Stopped {
    /// The socket is gone: nobody to answer.
    Gone,
    /// Answer with this.
    Refused(Refusal),
}

/// Sends `replay` to `socket` as `event`, as fast as the socket takes it,
/// then answers its `getAll` with how many it sent.
pub async fn run(
    socket: SocketRef,
    event: Event,
    replay: Replay,
    mut reply: Reply,
    turn: ReplayTurn,
    source: QueueSource,
    deadline: Duration,
) {
    // From here the socket's turn holds its place, not the budget every
    // client shares.
    reply.release_pending();
    let mut sender = Sender {
        socket,
        event,
        sent: 0,
        deadline: Instant::now() + deadline,
    };
    let outcome = match replay {
        Replay::Messages(messages) => {
            let event = sender.event;
            sender
                .send_all(messages.iter().map(|message| (event, message)))
                .await
        }
        Replay::Queue(store) => sender.send_queue(&store, &source).await,
    };
    drop(turn);
    match outcome {
        Ok(()) => reply.replayed(sender.sent),
        Err(Stopped::Gone) => {
            log::debug!(
                "replay to sid={} stopped after {}: gone",
                sender.socket.id,
                sender.sent
            );
        }
        Err(Stopped::Refused(refusal)) => reply.refuse(None, refusal),
    }
}

struct Sender {
    socket: SocketRef,
    event: Event,
    sent: u64,
    deadline: Instant,
}

impl Sender {
    async fn send_queue(&mut self, store: &StoreId, source: &QueueSource) -> Result<(), Stopped> {
        let mut after = None;
        loop {
            // A connection's buffers may take a whole queue at once (the
            // kernel's alone hold megabytes): the deadline is checked at
            // every page too, not only while waiting for room.
            if after.is_some() && Instant::now() >= self.deadline {
                return Err(self.too_slow());
            }
            let notices = loop {
                let page = tokio::time::timeout_at(self.deadline, source.page(store, after))
                    .await
                    .map_err(|_| self.too_slow())?;
                match page.map_err(Stopped::Refused)? {
                    Page::Notices(notices) => break notices,
                    Page::NotNow => self.pause(Duration::from_millis(10)).await?,
                }
            };
            let Some(last) = notices.last() else {
                return Ok(());
            };
            after = Some(last.place);
            let full = notices.len() == PAGE;
            let messages: Vec<(Event, Message)> = notices
                .into_iter()
                .map(|notice| {
                    let message =
                        DeliveryNotice::of_kind(notice.kind, notice.order, notice.message_id);
                    (notice.kind, Message::Notice(message))
                })
                .collect();
            self.send_all(messages.iter().map(|(kind, message)| (*kind, message)))
                .await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Sends each message as its event.
    async fn send_all<'a>(
        &mut self,
        messages: impl Iterator<Item = (Event, &'a Message)>,
    ) -> Result<(), Stopped> {
        for (event, message) in messages {
            let mut pause = Duration::from_millis(2);
            loop {
                match self.socket.emit(event.name(), message) {
                    Ok(()) => break,
                    Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                        self.pause(pause).await?;
                        pause = (pause * 2).min(MOST_PAUSE);
                    }
                    Err(_) => return Err(Stopped::Gone),
                }
            }
            self.sent += 1;
        }
        Ok(())
    }

    /// Waits `pause`, unless that would pass the deadline.
    async fn pause(&self, pause: Duration) -> Result<(), Stopped> {
        if Instant::now() + pause >= self.deadline {
            return Err(self.too_slow());
        }
        tokio::time::sleep(pause).await;
        Ok(())
    }

    fn too_slow(&self) -> Stopped {
        Stopped::Refused(Refusal::new(
            ErrorCode::Busy,
            format!(
                "the replay stopped at its deadline after {} messages; read them, then \
                 send getAll again for the rest",
                self.sent
            ),
        ))
    }
}
