//! What an event gets while it is applied: the books it may read and
//! change, who sent it, and where its outputs go; with the skeletons events
//! share as methods, so a new report is a short file.

use serde::Serialize;
use socketioxide::extract::SocketRef;
use tokio::time::Instant;

use super::books::Books;
use super::handle::{Origin, Reply};
use super::outbox::Output;
use crate::hub::desk::{Desk, Effect};
use crate::hub::domain::{Change, DriverKey, OrderKey, StoredOrder};
use crate::hub::mailbox::Mailbox;
use crate::protocol::{Event, Order, Refusal, StoreId};

/// One event's view of the hub while it is applied.
pub struct EventContext<'a> {
    books: &'a mut Books,
    from: &'a Origin,
    out: &'a mut Vec<Output>,
}

impl<'a> EventContext<'a> {
    pub(super) fn new(books: &'a mut Books, from: &'a Origin, out: &'a mut Vec<Output>) -> Self {
        EventContext { books, from, out }
    }

    /// Who sent the event.
    pub fn from(&self) -> &Origin {
        self.from
    }

    /// The dispatch desk.
    pub fn desk(&mut self) -> &mut Desk<SocketRef> {
        &mut self.books.desk
    }

    /// The stores' mailboxes.
    pub fn mailbox(&mut self) -> &mut Mailbox {
        &mut self.books.mailbox
    }

    /// Logs the event as applied, with its payload.
    pub fn log(&self, event: Event, payload: &impl Serialize) {
        self.books.log.record(event, payload);
    }

    /// Answers the sender: done.
    pub fn accept(&mut self, reply: Reply) {
        self.out.push(Output::Accept(reply));
    }

    /// Answers the sender: refused (about `order`, if it names one).
    pub fn refuse(&mut self, reply: Reply, order: Option<Order>, refusal: Refusal) {
        self.out.push(Output::Refuse {
            reply,
            order,
            refusal,
        });
    }

    /// Sends `output` once the event's changes are recorded.
    pub fn send(&mut self, output: Output) {
        self.out.push(output);
    }

    /// Carries out what the desk said a change means.
    pub fn effects(&mut self, effects: Vec<Effect<SocketRef>>) {
        self.books.add_effects(effects, self.out);
    }

    /// Records a change to a store's mailbox.
    pub fn mailbox_changed(&mut self, change: Change) {
        self.books.record_mailbox_change(change);
    }

    /// Puts the sender's socket in `store`'s room.
    pub fn join(&mut self, socket: &SocketRef, store: StoreId) {
        self.books.join(socket, store, self.out);
    }

    /// The recorded order `key`, if only the records hold it.
    pub fn recorded(&self, key: &OrderKey) -> Result<Option<StoredOrder>, Refusal> {
        self.books.recorded(key)
    }

    /// Whether the records are read across the network (a group of hubs).
    pub fn records_are_remote(&self) -> bool {
        self.books.records_are_remote()
    }

    /// Whether a pickup of `key` must look the order up before it is taken.
    pub fn look_up_first(&self, key: &OrderKey) -> bool {
        self.books.look_up_first(key)
    }

    /// The skeleton every driver's report shares: who reports, the desk's
    /// verdict (`decide`), the answer, and what the verdict means. A report
    /// on a package the desk does not know may be of one recorded at another
    /// hub of a group (see [`Books::report_refused`]).
    pub fn driver_report(
        &mut self,
        event: Event,
        order: Order,
        reply: Reply,
        decide: impl FnOnce(
            &mut Desk<SocketRef>,
            &DriverKey,
            &OrderKey,
            Instant,
        ) -> Result<Vec<Effect<SocketRef>>, Refusal>,
    ) {
        if let Some(socket) = self.from.socket() {
            self.books.ensure_driver_online(socket, self.out);
        }
        let driver = self.from.driver_key();
        let key = OrderKey::of(&order);
        match decide(&mut self.books.desk, &driver, &key, Instant::now()) {
            Ok(effects) => {
                self.log(event, &order);
                self.accept(reply);
                self.effects(effects);
            }
            Err(refusal) => {
                let refusal = self.books.report_refused(&driver, &key, refusal);
                self.refuse(reply, Some(order), refusal);
            }
        }
    }
}
