//! A group of hubs on one PostgreSQL database, behaving as one.
//!
//! The database ([`crate::hub::storage::postgres`]) is the truth: each open order belongs
//! to one hub, and changes are conditional on that. This module keeps the
//! group going around it, on the database's runtime:
//! - **heartbeats**: each hub beats every [`GroupConfig::beat_every`] (on its
//!   own, from registration: [`Pg::connect`]); a hub silent for
//!   [`GroupConfig::dead_after`] is taken over by exactly one other hub (its
//!   offers and its anonymous drivers' packages go back to `ready`; named
//!   drivers keep theirs). A hub that finds it was taken over stops: it owns
//!   nothing any more.
//! - **waiting orders**: a hub with room among its drivers takes orders that
//!   have waited `ready` at other hubs for [`GroupConfig::take_after`] (their
//!   hub has no driver free), so a shop whose hub has no courier is served by
//!   couriers on other hubs. A named driver's packages follow it to the hub
//!   it connects to ([`Group::claim_driver`]).
//! - **the bridge**: what a hub tells a store's room or the viewers is also
//!   published with `NOTIFY`, and every other hub repeats it to its own
//!   sockets, so a vendor hears of a delivery made on any hub. The bridge is
//!   a fast path, not the truth: delivery notices stay queued in the
//!   database until acknowledged, a listener that lost its connection
//!   reconnects and then re-sends the notices queued meanwhile, and `getAll`
//!   always reads the queue.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use socketioxide::SocketIo;
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, watch};

mod bridge;
mod desk_work;
mod link;
mod ownership;

use bridge::{Bridged, BridgedWhat};
pub use link::Link;

use crate::hub::desk::Adoption;
use crate::hub::domain::rooms;
use crate::hub::metrics::Metrics;
use crate::hub::sequencer::{GroupPresence, PresenceView, SequencerHandle};
use crate::hub::storage::postgres::Pg;
use crate::protocol::{DeliveryNotice, DriverName, NAMESPACE, StoreId};

/// The `NOTIFY` channel of the bridge.
const CHANNEL: &str = "caps_bridge";
/// Messages published in one statement at most.
const PUBLISH_BATCH: usize = 200;
/// How far back a listener that lost its connection re-sends notices: the
/// loss is noticed a moment after it happens.
const RESEND_MARGIN: Duration = Duration::from_secs(30);
/// Orders taken from other hubs in one go at most.
const TAKE_AT_ONCE: usize = 100;

/// Timing of the group's chores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupConfig {
    /// How often a hub records that it is alive.
    pub beat_every: Duration,
    /// A hub silent this long is dead: its orders are taken over.
    pub dead_after: Duration,
    /// A `ready` order waiting this long at its hub may be taken by a hub
    /// with a driver free.
    pub take_after: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            beat_every: Duration::from_secs(1),
            dead_after: Duration::from_secs(10),
            take_after: Duration::from_millis(500),
        }
    }
}

/// The link the sequencer publishes through and reports to (see
/// [`Link`]), and the bridge's other end, for [`Group::start`].
pub fn link(hub: &str, metrics: Arc<Metrics>) -> (Arc<Link>, mpsc::Receiver<String>) {
    let (bridge, published) = bridge::bridge(hub, metrics);
    (Arc::new(Link::new(bridge)), published)
}

/// The handle the hub keeps: claims for connecting drivers.
#[derive(Clone)]
pub struct Group {
    pg: Pg,
    sequencer: SequencerHandle,
    link: Arc<Link>,
    metrics: Arc<Metrics>,
}

impl Group {
    /// The handle of hub `pg`, whose sequencer is `sequencer` and reports to
    /// `link`.
    pub fn new(pg: Pg, sequencer: SequencerHandle, link: Arc<Link>, metrics: Arc<Metrics>) -> Self {
        Group {
            pg,
            sequencer,
            link,
            metrics,
        }
    }

    /// Starts the group's chores on the database runtime: heartbeats and
    /// take-overs, the bridge's publisher (fed by `published`) and listener.
    /// The returned task ends only with an error: this hub was taken over
    /// and must stop.
    pub fn start(
        self,
        config: GroupConfig,
        io: SocketIo,
        published: mpsc::Receiver<String>,
        board: Board,
    ) -> tokio::task::JoinHandle<anyhow::Error> {
        let Group {
            pg,
            sequencer,
            link,
            metrics,
        } = self;
        let (resend, resends) = mpsc::unbounded_channel();
        pg.spawn(publish(pg.clone(), published, Arc::clone(&metrics)));
        pg.spawn(listen(pg.clone(), io.clone(), resend, Arc::clone(&metrics)));
        pg.spawn(resend_notices(
            pg.clone(),
            io,
            resends,
            Arc::clone(&metrics),
        ));
        pg.spawn(keep_up(pg.clone(), config, sequencer, link, board, metrics))
    }

    /// Brings `driver`'s packages held at other hubs here, before it is told
    /// anything: it has just connected to this hub.
    pub async fn claim_driver(&self, driver: &DriverName) {
        claim_driver(&self.pg, &self.sequencer, &self.metrics, driver).await;
    }
}

/// Moves `driver`'s packages to this hub, wherever the group records them,
/// and hands them to the sequencer.
async fn claim_driver(
    pg: &Pg,
    sequencer: &SequencerHandle,
    metrics: &Metrics,
    driver: &DriverName,
) {
    let task_pg = pg.clone();
    let name = driver.clone();
    let claimed = pg
        .spawn(async move { ownership::claim_driver(&task_pg, &name).await })
        .await;
    match claimed {
        Ok(Ok(orders)) => {
            if !orders.is_empty() {
                log::info!(
                    "driver={driver} moved here: took over its {} packages",
                    orders.len()
                );
                metrics.group("orders_claimed", orders.len() as u64);
            }
            desk_work::adopt(sequencer, orders, Adoption::DriverMoved).await;
        }
        Ok(Err(error)) => {
            log::warn!("cannot claim the packages of driver={driver} from other hubs: {error:#}")
        }
        Err(error) => log::warn!("claiming driver={driver}'s packages failed: {error}"),
    }
}

/// The group's board: who is online here (read), and at the other hubs
/// (written, for the status page).
pub struct Board {
    /// This hub's presence, as the sequencer publishes it.
    pub here: PresenceView,
    /// The other hubs' presence, refreshed at every heartbeat.
    pub others: watch::Sender<GroupPresence>,
}

/// Records this hub's presence in the database and reads the others'.
async fn share_presence(pg: &Pg, config: &GroupConfig, board: &Board) {
    let here = {
        let presence = board.here.borrow();
        GroupPresence {
            drivers: presence.drivers.clone(),
            stores: presence.stores.clone(),
        }
    };
    if let Ok(text) = serde_json::to_string(&here)
        && let Err(error) = ownership::record_presence(pg, &text).await
    {
        log::debug!("cannot record who is online here: {error:#}");
    }
    match ownership::others_presence(pg, config.dead_after).await {
        Ok(others) => {
            let mut merged = GroupPresence::default();
            for text in others {
                if let Ok(presence) = serde_json::from_str::<GroupPresence>(&text) {
                    merged.drivers.extend(presence.drivers);
                    merged.stores.extend(presence.stores);
                }
            }
            board.others.send_replace(merged);
        }
        Err(error) => log::debug!("cannot read who is online at other hubs: {error:#}"),
    }
}

/// Taking over dead hubs, taking orders that wait elsewhere, and the
/// group's board. Ends only with the reason this hub must stop: the group
/// took it over (its heartbeat, [`Pg::taken_over`], runs on its own), or
/// the sequencer stopped.
async fn keep_up(
    pg: Pg,
    config: GroupConfig,
    sequencer: SequencerHandle,
    link: Arc<Link>,
    board: Board,
    metrics: Arc<Metrics>,
) -> anyhow::Error {
    tokio::select! {
        () = pg.taken_over() => anyhow::anyhow!(
            "the group took this hub's orders over (it was silent for over {:?}); stopping",
            config.dead_after
        ),
        stop = chores(&pg, &config, &sequencer, &link, &board, &metrics) => stop,
    }
}

/// The group's chores, once per beat.
async fn chores(
    pg: &Pg,
    config: &GroupConfig,
    sequencer: &SequencerHandle,
    link: &Link,
    board: &Board,
    metrics: &Metrics,
) -> anyhow::Error {
    let mut ticker = tokio::time::interval(config.beat_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(reachable_for) = pg.reachable_for() else {
            continue;
        };
        // After an outage every hub's heartbeat is old: a hub back first
        // must not take the others for dead before they have beaten again.
        if reachable_for >= config.dead_after + config.beat_every {
            match ownership::take_over_dead_hubs(pg, config.dead_after).await {
                Ok(taken) => {
                    for (hub, orders) in taken {
                        log::warn!(
                            "hub {hub} is silent: took over its {} open orders",
                            orders.len()
                        );
                        metrics.group("hubs_taken_over", 1);
                        metrics.group("orders_taken_over", orders.len() as u64);
                        desk_work::adopt(sequencer, orders, Adoption::Restart).await;
                    }
                }
                Err(error) => log::warn!("cannot look for silent hubs: {error:#}"),
            }
        }
        share_presence(pg, config, board).await;
        forget_taken(pg, sequencer, metrics).await;
        // Drivers here whose reports met packages another hub records.
        for driver in &link.take_drivers_to_claim() {
            claim_driver(pg, sequencer, metrics, driver).await;
        }
        let Some((room, waiting)) = desk_work::spare(sequencer).await else {
            return anyhow::anyhow!("the sequencer stopped");
        };
        if room > waiting {
            let wanted = (room - waiting).min(TAKE_AT_ONCE);
            match ownership::take_waiting(pg, wanted, config.take_after).await {
                Ok(orders) => {
                    if !orders.is_empty() {
                        log::info!("took {} orders waiting at other hubs", orders.len());
                        metrics.group("orders_taken_waiting", orders.len() as u64);
                    }
                    desk_work::adopt(sequencer, orders, Adoption::Restart).await;
                }
                Err(error) => log::warn!("cannot take waiting orders: {error:#}"),
            }
        }
    }
}

/// Orders checked at each heartbeat for having been taken by another hub.
const CHECKED_AT_ONCE: usize = 1_000;

/// Drops from this hub's desk the waiting orders other hubs have taken:
/// else a hub whose shops' orders are all carried from other hubs (it has
/// no courier of its own) would hold every one of them for ever.
async fn forget_taken(pg: &Pg, sequencer: &SequencerHandle, metrics: &Metrics) {
    let Some(waiting) = desk_work::waiting(sequencer, CHECKED_AT_ONCE).await else {
        return;
    };
    if waiting.is_empty() {
        return;
    }
    match ownership::owned_elsewhere(pg, &waiting).await {
        Ok(taken) => {
            metrics.group("orders_forgotten", taken.len() as u64);
            desk_work::forget(sequencer, taken).await;
        }
        Err(error) => log::debug!("cannot check the waiting orders: {error:#}"),
    }
}

/// Publishes what the outbox hands over, many messages per statement. After
/// a failure, once it can publish again, it asks every hub to re-send the
/// notices queued since.
async fn publish(pg: Pg, mut published: mpsc::Receiver<String>, metrics: Arc<Metrics>) {
    let mut failed_since: Option<DateTime<Utc>> = None;
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while published.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        if let Some(since) = failed_since {
            let resend = Bridged {
                from: pg.hub_id().to_owned(),
                what: BridgedWhat::ResendSince {
                    resend_since: since,
                },
            };
            if let Ok(text) = serde_json::to_string(&resend) {
                batch.push(text);
            }
        }
        let sent = sqlx::query("SELECT pg_notify($1, message) FROM unnest($2::TEXT[]) AS message")
            .bind(CHANNEL)
            .bind(&batch)
            .execute(pg.pool())
            .await;
        match sent {
            Ok(_) => {
                failed_since = None;
                metrics.group("bridge_published", batch.len() as u64);
            }
            Err(error) => {
                metrics.group("bridge_dropped", batch.len() as u64);
                log::warn!(
                    "cannot tell the other hubs ({error}); {} messages stay in the queues",
                    batch.len()
                );
                failed_since.get_or_insert_with(|| Utc::now() - RESEND_MARGIN);
            }
        }
        batch.clear();
    }
}

/// Repeats what other hubs publish to this hub's sockets; reconnects when
/// its connection is lost, then has the notices queued meanwhile re-sent.
async fn listen(
    pg: Pg,
    io: SocketIo,
    resend: mpsc::UnboundedSender<DateTime<Utc>>,
    metrics: Arc<Metrics>,
) {
    let mut pause = Duration::from_millis(100);
    let mut lost_at: Option<DateTime<Utc>> = None;
    loop {
        let mut listener = match PgListener::connect(pg.url()).await {
            Ok(listener) => listener,
            Err(error) => {
                log::warn!("the bridge cannot connect ({error}); trying again");
                lost_at.get_or_insert_with(Utc::now);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            log::warn!("the bridge cannot listen ({error}); trying again");
            lost_at.get_or_insert_with(Utc::now);
            tokio::time::sleep(pause).await;
            continue;
        }
        pause = Duration::from_millis(100);
        if let Some(lost) = lost_at.take() {
            log::info!("the bridge is back; re-sending notices queued since the loss");
            let _ = resend.send(lost - RESEND_MARGIN);
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if repeat(&pg, &io, notification.payload(), &resend).await {
                        metrics.group("bridge_repeated", 1);
                    }
                }
                Ok(None) => {
                    metrics.group("bridge_lost", 1);
                    // Lost and already reconnected (and listening again).
                    log::warn!("the bridge lost its connection; re-sending recent notices");
                    let _ = resend.send(Utc::now() - RESEND_MARGIN);
                }
                Err(error) => {
                    metrics.group("bridge_lost", 1);
                    log::warn!("the bridge lost its connection ({error}); reconnecting");
                    lost_at = Some(Utc::now());
                    break;
                }
            }
        }
    }
}

/// Tells this hub's sockets what another hub published; whether it did.
async fn repeat(
    pg: &Pg,
    io: &SocketIo,
    payload: &str,
    resend: &mpsc::UnboundedSender<DateTime<Utc>>,
) -> bool {
    let Ok(bridged) = serde_json::from_str::<Bridged>(payload) else {
        log::debug!("ignored a bridge message this hub cannot read");
        return false;
    };
    match bridged.what {
        BridgedWhat::ResendSince { resend_since } => {
            let _ = resend.send(resend_since);
            false
        }
        BridgedWhat::Tell { .. } if bridged.from == pg.hub_id() => false,
        BridgedWhat::Tell {
            store,
            event,
            message,
        } => {
            let Some(ns) = io.of(NAMESPACE) else {
                return false;
            };
            let room = match &store {
                Some(store) => rooms::store(store),
                None => rooms::VIEWERS.to_owned(),
            };
            match ns.to(room).emit(event.name(), &message).await {
                Ok(()) => true,
                Err(error) => {
                    log::debug!("cannot repeat {event} from hub {}: {error}", bridged.from);
                    false
                }
            }
        }
    }
}

/// Notices re-sent to a store's room per read: memory stays one page
/// whatever the queue's length.
const RESEND_PAGE: usize = 256;

/// Re-sends `store`'s notices queued since `since` to its room, a page at a
/// time; returns how many went out.
async fn resend_store_notices(
    pg: &Pg,
    io: &SocketIo,
    store: &StoreId,
    since: DateTime<Utc>,
) -> u64 {
    let mut resent = 0;
    let mut after = None;
    loop {
        let notices = match pg.notices_since(store, since, after, RESEND_PAGE).await {
            Ok(notices) => notices,
            Err(error) => {
                log::warn!("cannot read store={store}'s queued notices: {error:#}");
                return resent;
            }
        };
        let last_page = notices.len() < RESEND_PAGE;
        for notice in notices {
            after = Some(notice.place);
            let message = DeliveryNotice::of_kind(notice.kind, notice.order, notice.message_id);
            let Some(ns) = io.of(NAMESPACE) else {
                return resent;
            };
            if ns
                .to(rooms::store(store))
                .emit(notice.kind.name(), &message)
                .await
                .is_ok()
            {
                resent += 1;
            }
        }
        if last_page {
            return resent;
        }
    }
}

/// Re-sends the delivery notices queued since each time it is given to the
/// vendors connected here (their stores' rooms).
async fn resend_notices(
    pg: Pg,
    io: SocketIo,
    mut resends: mpsc::UnboundedReceiver<DateTime<Utc>>,
    metrics: Arc<Metrics>,
) {
    while let Some(mut since) = resends.recv().await {
        // Requests that piled up are one request, from the earliest.
        while let Ok(earlier) = resends.try_recv() {
            since = since.min(earlier);
        }
        let Some(ns) = io.of(NAMESPACE) else {
            continue;
        };
        let stores: HashSet<StoreId> = match ns.rooms().await {
            Ok(rooms) => rooms
                .iter()
                .filter_map(|room| room.strip_prefix("store:"))
                .filter_map(|store| StoreId::new(store).ok())
                .collect(),
            Err(_) => continue,
        };
        let mut resent = 0;
        for store in stores {
            resent += resend_store_notices(&pg, &io, &store, since).await;
        }
        metrics.group("notices_resent", resent);
        if resent > 0 {
            log::info!("re-sent {resent} queued delivery notices queued since {since}");
        }
    }
}
