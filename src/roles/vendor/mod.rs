//! `caps vendor`: a shop that places an order every interval and thanks the
//! courier for each delivery.
//!
//! On every (re)connection the vendor joins its store's room, asks the hub
//! for every delivery notice it has not acknowledged (`getAll`), and re-sends
//! every order not yet delivered, one at a time between whatever else it
//! hears, so that thousands outstanding never hold its thank-yous back. It also re-sends an order that has waited
//! longer than `resend_after`. The same `orderId` twice is the same order, so
//! a re-send is harmless, and an order emitted into a dying connection is not
//! lost. Each notice is acknowledged (`received`) after its thank-you is
//! printed and recorded in the ledger.

mod ledger;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use fake::Fake;
use fake::faker::address::en::{CityName, StateAbbr};
use fake::faker::name::en::Name;
use tokio::time::{Instant, MissedTickBehavior, interval};

use crate::protocol::{
    Address, Customer, ErrorCode, Event, Handshake, JoinRequest, MessageId, Order, OrderId,
    QueueRequest, StoreId,
};
use crate::roles::console::Console;
use crate::roles::hub_link::{HubLink, Inbound, LinkConfig, TokenSource, retry_delay};
use ledger::Ledger;

/// What a vendor does.
#[derive(Debug, Clone)]
pub struct VendorConfig {
    /// Where the hub is.
    pub hubs: Vec<String>,
    /// How long the first connection may take.
    pub connect_timeout: Duration,
    /// A token (or a file to read it from), for a hub that requires one.
    pub token: Option<TokenSource>,
    /// The store this vendor speaks for.
    pub store: StoreId,
    /// Time between two orders.
    pub interval: Duration,
    /// Stop once this many orders (counting earlier runs, with a state file)
    /// have been delivered; `None` runs until shutdown.
    pub count: Option<u64>,
    /// Re-send an order not delivered after this long.
    pub resend_after: Duration,
    /// Where to keep the ledger across restarts; `None` keeps it in memory.
    pub state_file: Option<PathBuf>,
}

/// What a vendor did, for its caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VendorReport {
    /// Orders placed (counting earlier runs, with a state file).
    pub placed: u64,
    /// Of those, delivered.
    pub delivered: u64,
    /// Of those, refused by the hub (they will never be delivered).
    pub refused: u64,
}

/// Orders sent again at one resend check (four a second): at most 40 a
/// second, under half of what the link sends.
const RESENDS_PER_CHECK: usize = 10;

/// Runs a vendor until its `count` orders are settled or `shutdown` completes.
pub async fn run(
    config: VendorConfig,
    console: Console,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<VendorReport> {
    let mut ledger = match &config.state_file {
        Some(path) => Ledger::open(path, &config.store)?,
        None => Ledger::in_memory(),
    };
    let link_config = LinkConfig {
        hubs: config.hubs.clone(),
        handshake: Handshake::vendor(config.store.clone()),
        connect_timeout: config.connect_timeout,
        token: config.token.clone(),
        listen: vec![Event::Delivered],
    };
    let (mut link, mut inbound) = HubLink::connect(&link_config).await?;
    log::info!(
        "vendor connected store={} hub={} placed_before={} outstanding={}",
        config.store,
        config.hubs.join(","),
        ledger.placed(),
        ledger.outstanding_count()
    );

    let mut report = VendorReport {
        placed: ledger.placed(),
        delivered: ledger.placed() - ledger.outstanding_count() as u64,
        refused: 0,
    };
    // When each outstanding order was last sent.
    let mut last_sent: HashMap<OrderId, Instant> = HashMap::new();
    // Outstanding orders still to re-send since the last (re)connection.
    let mut backlog: VecDeque<OrderId> = announce(&mut link, &config.store, &ledger).await;

    let mut ticker = interval(config.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Often enough to retry a refused order within about a second.
    let mut resend_check = interval((config.resend_after / 2).min(Duration::from_millis(250)));
    resend_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let wants_more = |report: &VendorReport| config.count.is_none_or(|n| report.placed < n);
    // When the vendor last asked for every queued notice (it does on connect).
    let mut caught_up = Instant::now();
    // When to ask again, because an acknowledgement was not taken.
    let mut catch_up_at: Option<Instant> = None;
    // Whether the hub keeps a queue for us (Phase 3): its notices carry ids.
    let mut hub_queues = false;
    tokio::pin!(shutdown);

    let finished = loop {
        if config.count.is_some_and(|n| report.placed >= n) && ledger.outstanding_count() == 0 {
            break true;
        }
        tokio::select! {
            () = &mut shutdown => break false,
            _ = ticker.tick(), if wants_more(&report) => {
                let order = fake_order(&config.store);
                ledger.record_placed(&order)?;
                report.placed += 1;
                console.line(format_args!("VENDOR: order {} ready for pickup", order.order_id));
                link.try_send(Event::Pickup, &order).await;
                last_sent.insert(order.order_id.clone(), Instant::now());
            }
            () = std::future::ready(()), if link.is_up() && !backlog.is_empty() => {
                let Some(order_id) = backlog.pop_front() else { continue };
                let Some(order) = ledger.get(&order_id) else { continue }; // delivered meanwhile
                if link.try_send(Event::Pickup, order).await {
                    last_sent.insert(order_id, Instant::now());
                }
            }
            () = tokio::time::sleep_until(catch_up_at.unwrap_or_else(Instant::now)), if catch_up_at.is_some() && link.is_up() => {
                catch_up_at = None;
                link.try_send(Event::GetAll, &catch_up(&config.store)).await;
                caught_up = Instant::now();
            }
            _ = resend_check.tick(), if backlog.is_empty() => {
                // The longest-waiting first, and only so many at a time: a
                // shop with thousands undelivered (no courier about) must
                // still have room in its send rate for new orders.
                let mut due: Vec<(Instant, &Order)> = ledger
                    .outstanding()
                    .map(|order| (*last_sent.entry(order.order_id.clone()).or_insert_with(Instant::now), order))
                    .filter(|(sent, _)| sent.elapsed() >= config.resend_after)
                    .collect();
                due.sort_by_key(|(sent, _)| *sent);
                // Notices the hub sent while our socket's buffer was full
                // are still queued for us: one getAll brings them all back.
                if !due.is_empty() && caught_up.elapsed() >= config.resend_after {
                    link.try_send(Event::GetAll, &catch_up(&config.store)).await;
                    caught_up = Instant::now();
                }
                for (_, order) in due.into_iter().take(RESENDS_PER_CHECK) {
                    log::info!("no delivery yet for order={}; sending it again", order.order_id);
                    link.try_send(Event::Pickup, order).await;
                    last_sent.insert(order.order_id.clone(), Instant::now());
                }
            }
            message = inbound.recv() => {
                let Some(message) = message else { bail!("the connection to the hub ended") };
                link.observe(&message);
                match message {
                    Inbound::Connected => {
                        log::info!("reconnected to hub; re-sending {} undelivered orders", ledger.outstanding_count());
                        backlog = announce(&mut link, &config.store, &ledger).await;
                    }
                    Inbound::ConnectionLost(reason) => {
                        log::warn!("lost the hub ({reason}); reconnecting");
                    }
                    Inbound::ConnectRefused(reason) => bail!("the hub refused us: {reason}"),
                    Inbound::EventRefused(notice) if notice.error.code.is_transient() => {
                        if notice.error.code == ErrorCode::RateLimited {
                            link.slow_down();
                        }
                        if notice.event == Event::Received {
                            // The notice is still queued: ask for the queue
                            // again soon, and acknowledge what comes back.
                            let wait = retry_delay();
                            log::debug!("the hub did not take our received ({}); getAll in {wait:?}", notice.error.code.as_str());
                            catch_up_at = Some(catch_up_at.map_or(Instant::now() + wait, |at| at.min(Instant::now() + wait)));
                            continue;
                        }
                        // The hub's load, not the order: send it again soon.
                        let ours = notice.event == Event::Pickup && notice.store.as_ref() == Some(&config.store);
                        if let Some(order_id) = notice.order_id.filter(|_| ours)
                            && let Some(sent) = last_sent.get_mut(&order_id)
                        {
                            let wait = retry_delay();
                            log::debug!("the hub is busy ({}); order={order_id} again in {wait:?}", notice.error.code.as_str());
                            *sent = Instant::now()
                                .checked_sub(config.resend_after.saturating_sub(wait))
                                .unwrap_or_else(Instant::now);
                        }
                    }
                    Inbound::EventRefused(notice) if notice.event == Event::Received => {
                        // A notice heard twice (live and replayed) is
                        // acknowledged twice; the second finds it gone.
                        log::debug!("the hub refused our received: {}", notice.error);
                    }
                    Inbound::EventRefused(notice) => {
                        log::warn!("the hub refused our {}: {}", notice.event, notice.error);
                        let ours = notice.event == Event::Pickup && notice.store.as_ref() == Some(&config.store);
                        if let Some(order_id) = notice.order_id.filter(|_| ours)
                            && ledger.forget(&order_id)
                        {
                            console.line(format_args!("VENDOR: order {order_id} refused ({})", notice.error.code));
                            report.refused += 1;
                        }
                    }
                    Inbound::Order(Event::Delivered, order, message_id) if order.store == config.store => {
                        // Only our outstanding orders are thanked: a notice
                        // heard again (replayed, or after a restart) is not.
                        if ledger.get(&order.order_id).is_some() {
                            console.line(format_args!("VENDOR: Thank you for delivering {}", order.order_id));
                            ledger.record_thanked(&order.order_id)?;
                            report.delivered += 1;
                            last_sent.remove(&order.order_id);
                        }
                        if let Some(message_id) = message_id {
                            hub_queues = true;
                            acknowledge(&mut link, &config.store, message_id).await;
                        }
                    }
                    Inbound::Order(..) => {}
                }
            }
        }
    };
    // A Phase 2 hub (the course's, in Node) keeps no queue to empty.
    if finished && hub_queues {
        tokio::select! {
            () = &mut shutdown => {}
            () = settle_queue(&mut link, &mut inbound, &config.store) => {}
        }
    }
    link.close().await;
    log::info!(
        "vendor done store={} placed={} delivered={} refused={}",
        config.store,
        report.placed,
        report.delivered,
        report.refused
    );
    if report.refused > 0 {
        bail!(
            "the hub refused {} of {} orders",
            report.refused,
            report.placed
        );
    }
    Ok(report)
}

/// How long a vendor that has finished its orders may spend emptying its
/// store's queue before it leaves.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Pause between two rounds of emptying the queue: the acknowledgements of
/// one round are committed before the next asks again.
const SETTLE_PAUSE: Duration = Duration::from_millis(100);

/// Leaves `store`'s queue empty before a vendor that has finished goes:
/// every notice it heard is acknowledged, and the hub is asked for the
/// queue (`getAll`, answered with how many it sent) until it sends none.
/// The last thank-you may come in the middle of a replay (a reconnection's
/// `getAll`), and an acknowledgement refused while a hub stopped is only
/// retried by asking again. Gives up after [`SETTLE_LIMIT`]: what is left
/// is replayed at the store's next connection.
async fn settle_queue(
    link: &mut HubLink,
    inbound: &mut tokio::sync::mpsc::UnboundedReceiver<Inbound>,
    store: &StoreId,
) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let mut pause = Duration::ZERO;
    loop {
        // Whatever arrives meanwhile is handled; a reconnection re-joins.
        let wait = tokio::time::sleep(pause);
        tokio::pin!(wait);
        loop {
            let message = tokio::select! {
                biased;
                message = inbound.recv() => message,
                () = &mut wait => break,
            };
            let Some(message) = message else { return };
            link.observe(&message);
            match message {
                Inbound::Connected => join_and_catch_up(link, store).await,
                Inbound::ConnectRefused(_) => return,
                Inbound::Order(Event::Delivered, order, Some(message_id))
                    if order.store == *store =>
                {
                    acknowledge(link, store, message_id).await;
                }
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::warn!(
                "store={store}: leaving with delivery notices maybe still queued; they are sent again at the next connection"
            );
            return;
        }
        pause = retry_delay().min(left);
        if let Some(answer) = link
            .request(
                Event::GetAll,
                &catch_up(store),
                left.min(Duration::from_secs(5)),
            )
            .await
            && answer.ok
        {
            if answer.sent == Some(0) {
                log::debug!("store={store}: no delivery notice left queued");
                return;
            }
            // Its notices came before the answer: acknowledged next round.
            pause = SETTLE_PAUSE;
        }
    }
}

/// Acknowledges the delivery notice `message_id` of `store`.
async fn acknowledge(link: &mut HubLink, store: &StoreId, message_id: MessageId) {
    let received = QueueRequest {
        queue_id: store.clone(),
        event: Some(Event::Delivered),
        message_id: Some(message_id),
    };
    link.try_send(Event::Received, &received).await;
}

/// What a vendor says on every connection: who it is and what it missed;
/// returns what it is still waiting for, to be re-sent.
async fn announce(link: &mut HubLink, store: &StoreId, ledger: &Ledger) -> VecDeque<OrderId> {
    join_and_catch_up(link, store).await;
    ledger
        .outstanding()
        .map(|order| order.order_id.clone())
        .collect()
}

/// Joins `store`'s room and asks for every notice not acknowledged yet.
async fn join_and_catch_up(link: &mut HubLink, store: &StoreId) {
    link.try_send(
        Event::Join,
        &JoinRequest {
            store: store.clone(),
        },
    )
    .await;
    link.try_send(Event::GetAll, &catch_up(store)).await;
}

/// `getAll` of `store`'s delivery notices: everything not acknowledged yet.
fn catch_up(store: &StoreId) -> QueueRequest {
    QueueRequest {
        queue_id: store.clone(),
        event: Some(Event::Delivered),
        message_id: None,
    }
}

/// A new order for `store` with a fresh UUID and a fake customer and address.
pub fn fake_order(store: &StoreId) -> Order {
    let name: String = Name().fake();
    let city: String = CityName().fake();
    let state: String = StateAbbr().fake();
    Order {
        store: store.clone(),
        order_id: OrderId::new(uuid::Uuid::new_v4().to_string())
            .expect("a UUID is a valid order id"),
        customer: Customer::new(name).expect("fake names are valid"),
        address: Address::new(format!("{city}, {state}")).expect("fake addresses are valid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_orders_are_valid_and_unique() {
        let store = StoreId::new("acme").unwrap();
        let a = fake_order(&store);
        let b = fake_order(&store);
        assert_ne!(a.order_id, b.order_id);
        assert!(a.address.as_str().contains(", "));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(serde_json::from_value::<Order>(json).unwrap(), a);
    }
}
