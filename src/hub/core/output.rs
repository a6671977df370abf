//! What applying a command yields, and carrying it out: replies, offers and
//! notices wait for the journal to commit the changes that caused them.

use chrono::Utc;
use serde::Serialize;
use socketioxide::extract::SocketRef;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::super::dispatch::{DriverKey, Effect, OrderKey};
use super::super::journal::Change;
use super::Core;
use super::handle::Reply;
use crate::api::OrderState;
use crate::protocol::{
    Activity, DeliveryNotice, Event, NAMESPACE, Order, Refusal, StoreId, VIEWERS_ROOM,
};

/// A message to a store or a socket.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Message {
    Order(Order),
    Notice(DeliveryNotice),
}

/// Something to do once the changes that caused it are recorded.
pub(super) enum Output {
    Accept(Reply),
    Refuse {
        reply: Reply,
        socket: SocketRef,
        event: Event,
        order: Option<Order>,
        refusal: Refusal,
    },
    Offer {
        driver: DriverKey,
        socket: SocketRef,
        order: Order,
    },
    ToStore {
        event: Event,
        store: StoreId,
        message: Message,
    },
    ToSocket {
        socket: SocketRef,
        event: Event,
        message: Message,
    },
    ToViewers(Activity),
    Http(oneshot::Sender<Result<(), Refusal>>, Result<(), Refusal>),
}

impl Core {
    /// Turns the desk's effects into outputs; a delivery is queued in its
    /// store's mailbox first.
    pub(super) fn add_effects(
        &mut self,
        effects: Vec<Effect<SocketRef>>,
        outputs: &mut Vec<Output>,
    ) {
        for effect in effects {
            outputs.push(match effect {
                Effect::Offer {
                    driver,
                    socket,
                    order,
                } => Output::Offer {
                    driver,
                    socket,
                    order,
                },
                Effect::Notify {
                    event: Event::Delivered,
                    order,
                } => {
                    if let Some(placed) = self.desk.placed_at(&OrderKey::of(&order)) {
                        let latency = Utc::now().signed_duration_since(placed);
                        self.metrics
                            .delivered_after(latency.num_microseconds().unwrap_or(0) as f64 / 1e6);
                    }
                    let (message_id, changes) = self.mailbox.enqueue(order.clone());
                    self.mailbox_changes.extend(changes);
                    Output::ToStore {
                        event: Event::Delivered,
                        store: order.store.clone(),
                        message: Message::Notice(DeliveryNotice::new(order, message_id)),
                    }
                }
                Effect::Notify { event, order } => Output::ToStore {
                    event,
                    store: order.store.clone(),
                    message: Message::Order(order),
                },
            });
        }
    }

    /// Hands this step's changes to the journal. Returns the outputs that may
    /// go out now; the others wait for their commit (and anything behind
    /// outputs that wait, waits too, to keep the order).
    pub(super) fn settle(&mut self, mut outputs: Vec<Output>) -> Vec<Output> {
        let mut changes = self.desk.take_changes();
        changes.append(&mut self.mailbox_changes);
        if !self.viewers.is_empty() {
            outputs.extend(
                changes
                    .iter()
                    .filter_map(activity_of)
                    .map(Output::ToViewers),
            );
        }
        let Some(journal) = &mut self.journal else {
            return outputs;
        };
        if !changes.is_empty() {
            let seq = journal.append(changes);
            self.waiting.push_back((seq, outputs));
            return Vec::new();
        }
        match self.waiting.back_mut() {
            Some((_, behind)) => {
                behind.extend(outputs);
                Vec::new()
            }
            None => outputs,
        }
    }

    /// Carries outputs out; drivers found dead on the way are taken off the
    /// desk, and what that causes is settled and carried out in turn.
    pub(super) async fn deliver(&mut self, outputs: Vec<Output>) {
        let mut outputs = outputs;
        loop {
            self.execute(outputs).await;
            if self.gone.is_empty() {
                return;
            }
            let mut more = Vec::new();
            for (driver, socket) in std::mem::take(&mut self.gone) {
                let effects = self.desk.driver_offline(&driver, &socket, Instant::now());
                self.add_effects(effects, &mut more);
            }
            outputs = self.settle(more);
        }
    }

    async fn execute(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Accept(reply) => reply.accept(),
                Output::Refuse {
                    reply,
                    socket,
                    event,
                    order,
                    refusal,
                } => reply.refuse(&socket, event, order.as_ref(), refusal),
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
                    let Some(ns) = self.io.of(NAMESPACE) else {
                        continue;
                    };
                    if let Err(error) = ns.to(store.to_string()).emit(event.name(), &message).await
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
                Output::ToViewers(activity) => {
                    let Some(ns) = self.io.of(NAMESPACE) else {
                        continue;
                    };
                    if let Err(error) = ns
                        .to(VIEWERS_ROOM)
                        .emit(Event::Activity.name(), &activity)
                        .await
                    {
                        log::debug!("cannot tell viewers: {error}");
                    }
                }
                Output::Http(reply, result) => {
                    let _ = reply.send(result);
                }
            }
        }
    }
}

/// What viewers are told of a change, if it is an order's.
fn activity_of(change: &Change) -> Option<Activity> {
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
        Change::NoticeQueued { .. } | Change::NoticeRemoved { .. } => return None,
    };
    Some(Activity {
        store: store.clone(),
        order_id: order_id.clone(),
        state: state.name().to_owned(),
        driver: driver.map(ToString::to_string),
        time: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}
