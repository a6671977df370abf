//! The hub run in-process on port 0 (as `caps hub` runs it), with our own
//! Rust client link: routing stays within a store, and the event log records
//! each inbound event.

mod link;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caps::hub::{self, EventLog, Hub, HubConfig};
use caps::protocol::{DriverName, Event, Handshake, JoinRequest, StoreId};
use caps::roles::hub_link::Inbound;
use caps::roles::vendor::fake_order;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use link::{connect, next_order, order_within};

/// Collects what the hub writes to its event log.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

struct RunningHub {
    url: String,
    log: Captured,
    stop: CancellationToken,
}

impl RunningHub {
    /// Waits until the event log has `count` lines starting with `prefix`.
    async fn wait_for_log_count(&self, prefix: &str, count: usize) {
        let found = async {
            while self
                .log
                .lines()
                .iter()
                .filter(|line| line.starts_with(prefix))
                .count()
                < count
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        timeout(link::WAIT, found)
            .await
            .unwrap_or_else(|_| panic!("fewer than {count} {prefix:?} in the event log"));
    }

    /// Waits until the event log has a line starting with `prefix`.
    async fn wait_for_log_line(&self, prefix: &str) {
        let found = async {
            while !self.log.lines().iter().any(|line| line.starts_with(prefix)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        timeout(link::WAIT, found)
            .await
            .unwrap_or_else(|_| panic!("no {prefix:?} in the event log: {:?}", self.log.lines()));
    }
}

async fn start_hub() -> RunningHub {
    start_hub_with(HubConfig::ephemeral()).await
}

async fn start_hub_with(config: HubConfig) -> RunningHub {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = hub::url_for(listener.local_addr().unwrap());
    let log = Captured::default();
    let stop = CancellationToken::new();
    let hub = Hub::open(config).unwrap();
    tokio::spawn(hub.serve(
        listener,
        EventLog::to_writer(log.clone()),
        stop.clone().cancelled_owned(),
    ));
    RunningHub { url, log, stop }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_store_hears_only_of_its_own_packages() {
    let hub = start_hub().await;
    let acme = StoreId::new("acme").unwrap();
    let globex = StoreId::new("globex").unwrap();
    let listen = vec![Event::Pickup, Event::InTransit, Event::Delivered];
    let (mut acme_link, mut acme_inbound) =
        connect(&hub.url, Handshake::vendor(acme.clone()), listen.clone()).await;
    let (mut globex_link, mut globex_inbound) =
        connect(&hub.url, Handshake::vendor(globex.clone()), listen).await;
    let bob = Handshake::driver(DriverName::new("bob").unwrap(), None);
    let (mut driver_link, mut driver_inbound) = connect(&hub.url, bob, vec![Event::Pickup]).await;

    for (link, inbound, store) in [
        (&mut acme_link, &mut acme_inbound, &acme),
        (&mut globex_link, &mut globex_inbound, &globex),
    ] {
        let order = fake_order(store);
        link.send(Event::Pickup, &order).await;
        assert_eq!(
            next_order(&mut driver_inbound).await,
            (Event::Pickup, order.clone())
        );
        driver_link.send(Event::InTransit, &order).await;
        assert_eq!(next_order(inbound).await, (Event::InTransit, order.clone()));
        driver_link.send(Event::Delivered, &order).await;
        assert_eq!(next_order(inbound).await, (Event::Delivered, order));
    }
    // Neither vendor heard a pickup nor the other store's news: nothing is left.
    for inbound in [&mut acme_inbound, &mut globex_inbound] {
        assert_eq!(
            order_within(inbound, Duration::from_millis(200)).await,
            None
        );
    }

    let logged: Vec<String> = hub.log.lines();
    for event in ["pickup", "in-transit", "delivered"] {
        let prefix = format!(r#"EVENT {{"event":"{event}""#);
        assert_eq!(
            logged.iter().filter(|l| l.starts_with(&prefix)).count(),
            2,
            "{logged:?}"
        );
    }
    hub.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_style_client_is_a_driver_until_it_joins_a_store() {
    // Twice in four full runs beside two CPU hogs, the offer to bob did not
    // arrive within the test's 20 s (the default offer timeout is 30 s); not
    // reproduced alone, cause not found. An offer lost on its way is offered
    // again when it expires: a short timeout keeps the test about joining.
    let mut config = HubConfig::ephemeral();
    config.dispatch.offer_timeout = Duration::from_secs(3);
    let hub = start_hub_with(config).await;
    let store = StoreId::new("1-206-flowers").unwrap();
    let (mut lab, mut lab_inbound) = connect(
        &hub.url,
        Handshake::default(),
        vec![Event::Pickup, Event::Delivered],
    )
    .await;
    let (mut vendor, _vendor_inbound) =
        connect(&hub.url, Handshake::vendor(store.clone()), vec![]).await;

    // Undeclared, it is the only driver: it is offered the package.
    let order = fake_order(&store);
    vendor.send(Event::Pickup, &order).await;
    assert_eq!(
        next_order(&mut lab_inbound).await,
        (Event::Pickup, order.clone())
    );

    // Joining a store makes it that store's vendor: the offer goes to a real driver.
    lab.send(
        Event::Join,
        &JoinRequest {
            store: store.clone(),
        },
    )
    .await;
    hub.wait_for_log_line(r#"EVENT {"event":"join""#).await;
    let bob = Handshake::driver(DriverName::new("bob").unwrap(), None);
    let (mut driver, mut driver_inbound) = connect(&hub.url, bob, vec![Event::Pickup]).await;
    assert_eq!(
        next_order(&mut driver_inbound).await,
        (Event::Pickup, order.clone())
    );
    driver.send(Event::InTransit, &order).await;
    driver.send(Event::Delivered, &order).await;
    assert_eq!(
        next_order(&mut lab_inbound).await,
        (Event::Delivered, order)
    );
    hub.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_the_hub_drops_comes_back_and_is_served() {
    let mut config = HubConfig::ephemeral();
    config.limits.events_per_second = 1;
    let hub = start_hub_with(config).await;
    let acme = StoreId::new("acme").unwrap();
    let (mut vendor, mut vendor_inbound) = connect(
        &hub.url,
        Handshake::vendor(acme.clone()),
        vec![Event::Delivered],
    )
    .await;

    // Far over its rate: the hub drops it from the namespace (twice, to be
    // sure a second drop is survived as well as the first).
    for round in 1..=2 {
        // The burst (2) and the strikes that make a flood (100): the last
        // one is dropped, and nothing more is sent after it.
        for _ in 0..102 {
            vendor
                .try_send(
                    Event::Join,
                    &JoinRequest {
                        store: acme.clone(),
                    },
                )
                .await;
        }
        let mut lost = false;
        let back = timeout(Duration::from_secs(10), async {
            loop {
                match vendor_inbound.recv().await {
                    Some(Inbound::ConnectionLost(_)) => lost = true,
                    Some(Inbound::Connected) if lost => return,
                    Some(_) => {}
                    None => panic!("the link ended"),
                }
            }
        })
        .await;
        assert!(
            back.is_ok(),
            "round {round}: dropped={lost}, and never back"
        );
        vendor.observe(&Inbound::Connected);
    }

    // Back, it is served: its order reaches a driver.
    let bob = Handshake::driver(DriverName::new("bob").unwrap(), None);
    let (_driver, mut driver_inbound) = connect(&hub.url, bob, vec![Event::Pickup]).await;
    let order = fake_order(&acme);
    vendor.send(Event::Pickup, &order).await;
    assert_eq!(
        next_order(&mut driver_inbound).await,
        (Event::Pickup, order)
    );
    hub.stop.cancel();
}

/// An ephemeral hub's queue is replayed from memory a page at a time: a
/// queue longer than a page and cut to its limit comes back whole, oldest
/// first, each notice once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_longer_than_a_page_is_replayed_whole_from_memory() {
    const DELIVERED: usize = 150;
    const LIMIT: usize = 100;
    let mut config = HubConfig::ephemeral();
    config.queue_limit = LIMIT;
    let hub = start_hub_with(config).await;
    let acme = StoreId::new("acme").unwrap();
    let (mut shop, _shop_inbound) =
        connect(&hub.url, Handshake::vendor(acme.clone()), vec![]).await;
    let bob = Handshake::driver(DriverName::new("bob").unwrap(), Some(DELIVERED as u32));
    let (mut driver, mut driver_inbound) = connect(&hub.url, bob, vec![Event::Pickup]).await;
    let mut placed = Vec::new();
    for _ in 0..DELIVERED {
        let order = fake_order(&acme);
        shop.send(Event::Pickup, &order).await;
        assert_eq!(
            next_order(&mut driver_inbound).await,
            (Event::Pickup, order.clone())
        );
        driver.send(Event::InTransit, &order).await;
        driver.send(Event::Delivered, &order).await;
        placed.push(order.order_id);
    }
    hub.wait_for_log_count(r#"EVENT {"event":"delivered""#, DELIVERED)
        .await;

    let (mut vendor, mut inbound) =
        connect(&hub.url, Handshake::vendor(acme), vec![Event::Delivered]).await;
    let answer = vendor
        .request(
            Event::GetAll,
            &serde_json::json!({"queueId": "acme"}),
            link::WAIT,
        )
        .await
        .expect("getAll answered");
    assert_eq!(answer.sent, Some(LIMIT as u64), "{answer:?}");
    let mut replayed = Vec::new();
    while replayed.len() < LIMIT {
        let (event, order) = next_order(&mut inbound).await;
        assert_eq!(event, Event::Delivered);
        replayed.push(order.order_id);
    }
    assert_eq!(
        replayed,
        placed[DELIVERED - LIMIT..],
        "the newest {LIMIT}, oldest first"
    );
    assert_eq!(
        order_within(&mut inbound, Duration::from_millis(200)).await,
        None
    );
    hub.stop.cancel();
}
