//! The outbox: what applying a command yields (replies, offers, notices),
//! held until the changes that caused it are committed, then sent.

use std::collections::VecDeque;
use std::sync::Arc;

use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

use super::group_link::GroupLink;
use super::handle::Reply;
use super::message::Message;
use super::replay::{self, QueueSource, Replay, ReplayTurn};
use crate::hub::domain::{Change, DriverKey, OrderKey, OrderState, rooms};
use crate::hub::mailbox::not_queued;
use crate::hub::storage::journal::Commit;
use crate::protocol::{Activity, ErrorCode, Event, NAMESPACE, Order, Refusal, StoreId};

/// What the steps a commit refused leave: their orders, which the desk holds
/// stale until they are read back, and what their senders are told, which
/// waits for that (so that a retry finds the desk true).
#[derive(Default)]
pub struct Refused {
    /// The orders the refused steps changed.
    pub orders: Vec<OrderKey>,
    /// Their refusals (and offers that stand).
    pub outputs: Vec<Output>,
}

/// Something to do once the changes that caused it are recorded.
pub enum Output {
    /// Accept the sender's event.
    Accept(Reply),
    /// Refuse the sender's event.
    Refuse {
        /// Whom to answer (and which event).
        reply: Reply,
        /// The order it carried, if any.
        order: Option<Order>,
        /// Why.
        refusal: Refusal,
    },
    /// Offer a package to a driver (or hand one it holds back).
    Offer {
        /// The driver.
        driver: DriverKey,
        /// Its socket.
        socket: SocketRef,
        /// The package.
        order: Order,
    },
    /// Tell a store's room.
    ToStore {
        /// What happened.
        event: Event,
        /// The store.
        store: StoreId,
        /// The message.
        message: Message,
    },
    /// Tell one socket.
    ToSocket {
        /// The socket.
        socket: SocketRef,
        /// What happened.
        event: Event,
        /// The message.
        message: Message,
    },
    /// Tell every viewer.
    ToViewers(Activity),
    /// Answer an operator's request with a count.
    Answer(tokio::sync::oneshot::Sender<u64>, u64),
    /// Send one socket many messages, as fast as it takes them, then answer
    /// its `getAll` with how many.
    Replay {
        /// The socket.
        socket: SocketRef,
        /// What to send it.
        event: Event,
        /// What to send: messages in hand, or a store's queue to read.
        replay: Replay,
        /// The `getAll` to answer.
        reply: Reply,
        /// The socket's one replay.
        turn: ReplayTurn,
    },
}

impl Output {
    /// What viewers are told of a change, if it is an order's.
    pub fn activity(change: &Change) -> Option<Output> {
        let (store, order_id, state, driver, at) = match change {
            Change::NewOrder { order, at, .. } => {
                (&order.store, &order.order_id, OrderState::Ready, None, at)
            }
            Change::Transition {
                key,
                state,
                driver,
                at,
                ..
            } => (&key.store, &key.order_id, *state, driver.as_ref(), at),
            Change::NoticeQueued { .. }
            | Change::NoticeRemoved { .. }
            | Change::NoticeAcknowledged { .. }
            | Change::NoticesTrimmed { .. } => return None,
        };
        Some(Output::ToViewers(Activity {
            store: store.clone(),
            order_id: order_id.clone(),
            state,
            driver: driver.map(ToString::to_string),
            time: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }))
    }
}

/// One step's outputs, waiting for its commit.
struct Waiting {
    seq: u64,
    outputs: Vec<Output>,
    /// The orders the step changed, to read back if the data dir refuses it.
    orders: Vec<OrderKey>,
    /// Whether the step recorded changes of its own. A step that changed
    /// nothing waits only to keep the order of replies, behind the step
    /// before it; that step's outcome (refused, or an acknowledgement of a
    /// notice not queued) is not its own, so its outputs go as they are.
    recorded: bool,
}

/// Outputs waiting for their commit, in order, and the sending of them.
pub struct Outbox {
    io: SocketIo,
    /// Outputs waiting for the journal entry of this number to commit, with
    /// the orders that entry changes.
    waiting: VecDeque<Waiting>,
    /// Drivers whose socket turned out dead when offered a package.
    gone: Vec<(DriverKey, SocketRef)>,
    /// In a group of hubs: where what rooms hear is published for the others.
    group: Option<Arc<dyn GroupLink>>,
    /// Where replays read a store's queue.
    queues: QueueSource,
    /// How long a replay may take.
    replay_deadline: std::time::Duration,
}

/// The refusal of step `seq`'s acknowledgement, which `commit` found
/// acknowledged no queued notice.
fn unqueued_acknowledgement(commit: &Commit, seq: u64) -> Refusal {
    commit
        .spent
        .iter()
        .filter(|step| step.seq == seq)
        .flat_map(|step| &step.changes)
        .find_map(|change| match change {
            Change::NoticeAcknowledged { store, id } => Some(not_queued(store, id)),
            _ => None,
        })
        .unwrap_or_else(|| Refusal::new(ErrorCode::UnknownMessage, "no such message queued"))
}

impl Outbox {
    /// An empty outbox sending through `io`; replays read queues from
    /// `queues`.
    pub fn new(
        io: SocketIo,
        group: Option<Arc<dyn GroupLink>>,
        queues: QueueSource,
        replay_deadline: std::time::Duration,
    ) -> Self {
        Outbox {
            io,
            waiting: VecDeque::new(),
            gone: Vec::new(),
            group,
            queues,
            replay_deadline,
        }
    }

    /// Whether what rooms hear is published for other hubs too.
    pub fn publishes(&self) -> bool {
        self.group.is_some()
    }

    /// Takes one step's outputs. With `commit` (its journal number and the
    /// orders it changes), they wait for that entry; without, they wait only
    /// behind outputs already waiting (to keep the order). Returns what may
    /// go out now.
    pub fn after(
        &mut self,
        commit: Option<(u64, Vec<OrderKey>)>,
        outputs: Vec<Output>,
    ) -> Vec<Output> {
        match (commit, self.waiting.back_mut()) {
            (Some((seq, orders)), _) => {
                self.waiting.push_back(Waiting {
                    seq,
                    outputs,
                    orders,
                    recorded: true,
                });
                Vec::new()
            }
            (None, Some(behind)) if !behind.recorded => {
                behind.outputs.extend(outputs);
                Vec::new()
            }
            (None, Some(behind)) => {
                let seq = behind.seq;
                self.waiting.push_back(Waiting {
                    seq,
                    outputs,
                    orders: Vec::new(),
                    recorded: false,
                });
                Vec::new()
            }
            (None, None) => outputs,
        }
    }

    /// Everything settled by `commit`, in order, and what the steps the
    /// data dir refused leave. A refused step's sender is told to try again
    /// (what it asked for was not recorded); its other outputs are dropped,
    /// but for packages handed back to a driver that the step did not
    /// change (their offers stand, whatever became of the step).
    pub fn committed(&mut self, commit: &Commit) -> (Vec<Output>, Refused) {
        let mut ready = Vec::new();
        let mut refused = Refused::default();
        while self
            .waiting
            .front()
            .is_some_and(|step| step.seq <= commit.up_to)
        {
            let step = self.waiting.pop_front().expect("front exists");
            if !step.recorded {
                ready.extend(step.outputs);
                continue;
            }
            if commit.not_queued.contains(&step.seq) {
                // Recorded, but the notice it acknowledged was not queued.
                let refusal = unqueued_acknowledgement(commit, step.seq);
                ready.extend(step.outputs.into_iter().map(|output| match output {
                    Output::Accept(reply) => Output::Refuse {
                        reply,
                        order: None,
                        refusal: refusal.clone(),
                    },
                    other => other,
                }));
                continue;
            }
            if !commit.refused.contains(&step.seq) {
                ready.extend(step.outputs);
                continue;
            }
            let changed = step.orders;
            let outputs = &mut refused.outputs;
            outputs.extend(step.outputs.into_iter().filter_map(|output| match output {
                Output::Offer { ref order, .. } if !changed.contains(&OrderKey::of(order)) => {
                    Some(output)
                }
                Output::Accept(reply) => Some(Output::Refuse {
                    reply,
                    order: None,
                    refusal: Refusal::new(
                        ErrorCode::Busy,
                        "the order changed while this was decided; try again",
                    ),
                }),
                refused @ Output::Refuse { .. } => Some(refused),
                _ => None,
            }));
            refused.orders.extend(changed);
        }
        (ready, refused)
    }

    /// Whether nothing waits for a commit.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Drivers found dead while sending, since the last call.
    pub fn take_gone(&mut self) -> Vec<(DriverKey, SocketRef)> {
        std::mem::take(&mut self.gone)
    }

    /// Sends outputs, in order.
    pub async fn send(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Accept(reply) => reply.accept(),
                Output::Refuse {
                    reply,
                    order,
                    refusal,
                } => reply.refuse(order.as_ref(), refusal),
                Output::Offer {
                    driver,
                    socket,
                    order,
                } => {
                    log::debug!("offering order={} to driver={driver}", order.order_id);
                    if let Err(error) = socket.emit(Event::Pickup.name(), &order) {
                        log::warn!(
                            "cannot offer order={} to driver={driver}: {error}",
                            order.order_id
                        );
                        if !socket.connected() {
                            self.gone.push((driver, socket));
                        }
                    }
                }
                Output::ToStore {
                    event,
                    store,
                    message,
                } => {
                    if let Some(group) = &self.group
                        && let Ok(message) = serde_json::to_value(&message)
                    {
                        group.publish(Some(&store), event, message);
                    }
                    let Some(ns) = self.io.of(NAMESPACE) else {
                        continue;
                    };
                    if let Err(error) = ns
                        .to(rooms::store(&store))
                        .emit(event.name(), &message)
                        .await
                    {
                        log::warn!("cannot tell store={store} of {event}: {error}");
                    }
                }
                Output::ToSocket {
                    socket,
                    event,
                    message,
                } => {
                    if let Err(error) = socket.emit(event.name(), &message) {
                        log::debug!("cannot send {event} to sid={}: {error}", socket.id);
                    }
                }
                Output::Replay {
                    socket,
                    event,
                    replay,
                    reply,
                    turn,
                } => {
                    // Beside the sequencer: a socket's buffer holds 1,024
                    // messages, and a queue can hold many more.
                    tokio::spawn(replay::run(
                        socket,
                        event,
                        replay,
                        reply,
                        turn,
                        self.queues.clone(),
                        self.replay_deadline,
                    ));
                }
                Output::Answer(answer, count) => {
                    let _ = answer.send(count);
                }
                Output::ToViewers(activity) => {
                    if let Some(group) = &self.group
                        && let Ok(activity) = serde_json::to_value(&activity)
                    {
                        group.publish(None, Event::Activity, activity);
                    }
                    let Some(ns) = self.io.of(NAMESPACE) else {
                        continue;
                    };
                    if let Err(error) = ns
                        .to(rooms::VIEWERS)
                        .emit(Event::Activity.name(), &activity)
                        .await
                    {
                        log::debug!("cannot tell viewers: {error}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::*;
    use crate::hub::metrics::Metrics;
    use crate::hub::peer::Peer;

    fn reply(event: Event) -> (Reply, oneshot::Receiver<Result<(), Refusal>>) {
        let (answer, outcome) = oneshot::channel();
        let metrics = Arc::new(Metrics::new(Default::default()));
        (Reply::http(Peer::Operator, event, answer, metrics), outcome)
    }

    fn acknowledgement(seq: u64) -> crate::hub::storage::journal::Step {
        crate::hub::storage::journal::Step {
            seq,
            changes: vec![Change::NoticeAcknowledged {
                store: StoreId::new("acme").unwrap(),
                id: "m1".into(),
            }],
        }
    }

    /// A step that changed nothing (a pickup sent again, say) waits behind
    /// the step before it, but that step's outcome is not its own.
    #[tokio::test]
    async fn a_step_without_changes_is_answered_as_if_it_had_its_own_commit() {
        let (_, io) = SocketIo::new_svc();
        let (sequencer, _inbox) =
            crate::hub::sequencer::channel(Arc::new(Metrics::new(Default::default())));
        let queues = QueueSource::Memory(sequencer.downgrade());
        for outcome in ["refused", "not queued"] {
            let mut outbox =
                Outbox::new(io.clone(), None, queues.clone(), replay::DEFAULT_DEADLINE);
            let (received, received_outcome) = reply(Event::Received);
            let (pickup, pickup_outcome) = reply(Event::Pickup);
            assert!(
                outbox
                    .after(Some((7, Vec::new())), vec![Output::Accept(received)])
                    .is_empty()
            );
            assert!(
                outbox.after(None, vec![Output::Accept(pickup)]).is_empty(),
                "the reply keeps its place behind the step before"
            );
            let commit = Commit {
                up_to: 7,
                refused: if outcome == "refused" {
                    vec![7]
                } else {
                    vec![]
                },
                not_queued: if outcome == "not queued" {
                    vec![7]
                } else {
                    vec![]
                },
                spent: vec![acknowledgement(7)],
                in_tables: true,
            };
            let (ready, refused) = outbox.committed(&commit);
            assert!(outbox.is_empty());
            outbox.send(ready).await;
            // A refused step's answers wait for its orders to be read back.
            outbox.send(refused.outputs).await;
            let received = received_outcome.await.unwrap();
            assert!(
                received.is_err(),
                "{outcome}: the step's own reply is refused"
            );
            assert_eq!(
                pickup_outcome.await.unwrap(),
                Ok(()),
                "{outcome}: the pickup that rode on that commit is accepted"
            );
        }
    }
}
