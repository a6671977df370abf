//! The hub run in-process on port 0 (as `caps hub` runs it), with our own
//! Rust client link: routing stays within a store, and the event log records
//! each inbound event.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use caps::client::{HubLink, Inbound, LinkConfig};
use caps::hub::{self, EventLog, HubConfig};
use caps::protocol::{DriverName, Event, Handshake, JoinRequest, StoreId};
use caps::vendor::fake_order;
use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

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
    /// Waits until the event log has a line starting with `prefix`.
    async fn wait_for_log_line(&self, prefix: &str) {
        let found = async {
            while !self.log.lines().iter().any(|line| line.starts_with(prefix)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        timeout(Duration::from_secs(5), found)
            .await
            .unwrap_or_else(|_| panic!("no {prefix:?} in the event log: {:?}", self.log.lines()));
    }
}

async fn start_hub() -> RunningHub {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = hub::url_for(listener.local_addr().unwrap());
    let log = Captured::default();
    let stop = CancellationToken::new();
    tokio::spawn(hub::serve(
        listener,
        HubConfig::default(),
        EventLog::to_writer(log.clone()),
        stop.clone().cancelled_owned(),
    ));
    RunningHub { url, log, stop }
}

async fn connect(
    url: &str,
    handshake: Handshake,
    listen: Vec<Event>,
) -> (HubLink, UnboundedReceiver<Inbound>) {
    let config = LinkConfig {
        hub_url: url.to_owned(),
        handshake,
        connect_timeout: Duration::from_secs(5),
        listen,
    };
    HubLink::connect(&config)
        .await
        .expect("connecting to the in-process hub")
}

async fn next_order(inbound: &mut UnboundedReceiver<Inbound>) -> Inbound {
    loop {
        let message = timeout(Duration::from_secs(5), inbound.recv())
            .await
            .expect("an event within 5 s")
            .expect("the link is open");
        if matches!(message, Inbound::Order(..)) {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_reach_their_own_store_and_no_other() {
    let hub = start_hub().await;
    let acme = StoreId::new("acme").unwrap();
    let globex = StoreId::new("globex").unwrap();
    let (mut acme_link, mut acme_inbound) = connect(
        &hub.url,
        Handshake::vendor(acme.clone()),
        vec![Event::Delivered, Event::Pickup],
    )
    .await;
    let (_globex_link, mut globex_inbound) = connect(
        &hub.url,
        Handshake::vendor(globex.clone()),
        vec![Event::Delivered],
    )
    .await;
    let (mut driver_link, mut driver_inbound) = connect(
        &hub.url,
        Handshake::driver(DriverName::new("bob").unwrap()),
        vec![Event::Pickup],
    )
    .await;

    let order = fake_order(&acme);
    acme_link.send(Event::Pickup, &order).await;
    assert_eq!(
        next_order(&mut driver_inbound).await,
        Inbound::Order(Event::Pickup, order.clone())
    );

    driver_link.send(Event::Delivered, &order).await;
    assert_eq!(
        next_order(&mut acme_inbound).await,
        Inbound::Order(Event::Delivered, order.clone())
    );

    // globex hears its own delivery, and acme's never reached it before that.
    let own = fake_order(&globex);
    driver_link.send(Event::Delivered, &own).await;
    assert_eq!(
        next_order(&mut globex_inbound).await,
        Inbound::Order(Event::Delivered, own)
    );
    // acme (a vendor) heard no pickup: its next order event is nothing at all.
    assert!(
        timeout(Duration::from_millis(200), acme_inbound.recv())
            .await
            .is_err()
    );

    let logged: Vec<String> = hub.log.lines();
    assert!(
        logged
            .iter()
            .any(|l| l.starts_with(r#"EVENT {"event":"pickup""#)),
        "{logged:?}"
    );
    assert_eq!(
        logged
            .iter()
            .filter(|l| l.starts_with(r#"EVENT {"event":"delivered""#))
            .count(),
        2,
        "{logged:?}"
    );
    hub.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lab_style_client_becomes_a_vendor_when_it_joins() {
    let hub = start_hub().await;
    let store = StoreId::new("1-206-flowers").unwrap();
    let (mut lab, mut lab_inbound) = connect(
        &hub.url,
        Handshake::default(),
        vec![Event::Pickup, Event::Delivered],
    )
    .await;
    let (mut vendor, _vendor_inbound) =
        connect(&hub.url, Handshake::vendor(store.clone()), vec![]).await;

    // Undeclared: it hears pickups, as the lab's drivers do.
    let first = fake_order(&store);
    vendor.send(Event::Pickup, &first).await;
    assert_eq!(
        next_order(&mut lab_inbound).await,
        Inbound::Order(Event::Pickup, first)
    );

    // After joining a store it is that store's vendor: deliveries, no pickups.
    lab.send(
        Event::Join,
        &JoinRequest {
            store: store.clone(),
        },
    )
    .await;
    hub.wait_for_log_line(r#"EVENT {"event":"join""#).await;
    let second = fake_order(&store);
    vendor.send(Event::Pickup, &second).await;
    vendor.send(Event::Delivered, &second).await;
    assert_eq!(
        next_order(&mut lab_inbound).await,
        Inbound::Order(Event::Delivered, second)
    );
    hub.stop.cancel();
}
