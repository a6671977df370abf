//! Nothing leaves the hub before it is recorded, proven in milliseconds with
//! a storage backend that holds or fails its commits: no acknowledgement, no
//! offer and no delivery notice goes out while the commit that caused it is
//! held, and a commit that fails stops the hub.

mod link;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use caps::api::OrderCounts;
use caps::hub::domain::{OrderKey, OrderQuery, Snapshot, StoredNotice, StoredOrder};
use caps::hub::storage::journal::{Backend, Records, Settled, Step};
use caps::hub::{self, EventLog, Hub, HubConfig};
use caps::protocol::{DriverName, Event, Handshake, MessageId, Order, OrderId, StoreId};
use caps::roles::vendor::fake_order;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tower::ServiceExt;

use link::{WAIT, connect, order_within};

/// How long a test watches for what must not happen while a commit is held.
const WATCH: Duration = Duration::from_millis(300);

#[derive(Default)]
struct GateState {
    /// Commits let through from now on.
    open: bool,
    /// Fail the next commit.
    fail: bool,
    /// Refuse every step of the next commit, as a data dir whose records
    /// moved on would (another hub changed the orders).
    refuse: bool,
    /// Commits begun (held or not).
    begun: usize,
}

/// A storage backend whose commits wait at a gate the test opens.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<GateState>, Condvar)>);

impl Gate {
    fn set(&self, change: impl FnOnce(&mut GateState)) {
        change(&mut self.0.0.lock().unwrap());
        self.0.1.notify_all();
    }

    /// Waits until at least `count` commits have begun.
    async fn begun(&self, count: usize) {
        let gate = self.clone();
        let waited = tokio::task::spawn_blocking(move || {
            let (lock, changed) = &*gate.0;
            let state = lock.lock().unwrap();
            changed
                .wait_timeout_while(state, WAIT, |state| state.begun < count)
                .unwrap()
                .1
        })
        .await
        .unwrap();
        assert!(!waited.timed_out(), "commit {count} never began");
    }
}

/// The gate records nothing to read back.
struct NoRecords;

impl Records for NoRecords {
    fn order(&self, _key: &OrderKey) -> anyhow::Result<Option<StoredOrder>> {
        Ok(None)
    }
    fn stores_of(&self, _order_id: &OrderId) -> anyhow::Result<Vec<StoreId>> {
        Ok(Vec::new())
    }
    fn page(&self, _query: &OrderQuery) -> anyhow::Result<Vec<StoredOrder>> {
        Ok(Vec::new())
    }
    fn notices(
        &self,
        _store: &StoreId,
        _after: Option<u64>,
        _limit: usize,
    ) -> anyhow::Result<Vec<StoredNotice>> {
        Ok(Vec::new())
    }
    fn notice_id(&self, _store: &StoreId, _id: &str) -> anyhow::Result<Option<MessageId>> {
        Ok(None)
    }
    fn open_orders(&self, _limit: usize) -> anyhow::Result<Vec<StoredOrder>> {
        Ok(Vec::new())
    }
    fn counts(&self) -> anyhow::Result<OrderCounts> {
        Ok(OrderCounts::default())
    }
    fn queues(&self) -> anyhow::Result<Vec<(StoreId, u64)>> {
        Ok(Vec::new())
    }
}

impl Backend for Gate {
    fn close(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    fn compact(
        &mut self,
        _delivered_before: chrono::DateTime<chrono::Utc>,
        _limit: usize,
    ) -> anyhow::Result<usize> {
        Ok(0)
    }

    fn load(&mut self) -> anyhow::Result<Snapshot> {
        Ok(Snapshot::default())
    }

    fn records(&self) -> anyhow::Result<Box<dyn Records>> {
        Ok(Box::new(NoRecords))
    }

    fn commit(&mut self, steps: &[Step]) -> anyhow::Result<Settled> {
        let (lock, changed) = &*self.0;
        let mut state = lock.lock().unwrap();
        state.begun += 1;
        changed.notify_all();
        let state = changed
            .wait_while(state, |state| !state.open && !state.fail)
            .unwrap();
        let mut state = state;
        if state.fail {
            anyhow::bail!("the disk is on fire");
        }
        if std::mem::take(&mut state.refuse) {
            return Ok(Settled {
                refused: steps.iter().map(|step| step.seq).collect(),
                not_queued: Vec::new(),
            });
        }
        Ok(Settled::default())
    }
}

struct Running {
    url: String,
    routes: axum::Router,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(gate: &Gate) -> Running {
    let hub = Hub::with_backend(
        HubConfig::ephemeral(),
        Box::new(gate.clone()),
        "gated store",
    )
    .unwrap();
    let running = hub.start(EventLog::to_writer(std::io::sink())).unwrap();
    let routes = running.router();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = hub::url_for(listener.local_addr().unwrap());
    let served = tokio::spawn(running.serve(listener, std::future::pending()));
    Running {
        url,
        routes,
        served,
    }
}

fn post_order(routes: &axum::Router, order: &Order) -> tokio::task::JoinHandle<StatusCode> {
    let request = Request::post("/api/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_string(order).unwrap()))
        .unwrap();
    let routes = routes.clone();
    tokio::spawn(async move { routes.oneshot(request).await.unwrap().status() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_offer_or_notice_leaves_before_its_commit() {
    let gate = Gate::default();
    let hub = start(&gate).await;
    let store = StoreId::new("acme").unwrap();
    let (_vendor, mut vendor_inbound) = connect(
        &hub.url,
        Handshake::vendor(store.clone()),
        vec![Event::InTransit, Event::Delivered],
    )
    .await;
    let bob = Handshake::driver(DriverName::new("bob").unwrap(), Some(5));
    let (mut driver, mut driver_inbound) = connect(&hub.url, bob, vec![Event::Pickup]).await;

    // The pickup's commit is held: no acknowledgement, no offer.
    let order = fake_order(&store);
    let answer = post_order(&hub.routes, &order);
    gate.begun(1).await;
    assert_eq!(
        order_within(&mut driver_inbound, WATCH).await,
        None,
        "an offer left before its commit"
    );
    assert!(
        !answer.is_finished(),
        "the pickup was acknowledged before its commit"
    );

    gate.set(|state| state.open = true);
    assert_eq!(answer.await.unwrap(), StatusCode::CREATED);
    assert_eq!(
        order_within(&mut driver_inbound, WAIT).await,
        Some((Event::Pickup, order.clone()))
    );

    // The delivery's commit is held: the store hears nothing yet.
    driver.send(Event::InTransit, &order).await;
    assert_eq!(
        order_within(&mut vendor_inbound, WAIT).await,
        Some((Event::InTransit, order.clone()))
    );
    let begun = gate.0.0.lock().unwrap().begun;
    gate.set(|state| state.open = false);
    driver.send(Event::Delivered, &order).await;
    gate.begun(begun + 1).await;
    assert_eq!(
        order_within(&mut vendor_inbound, WATCH).await,
        None,
        "a notice left before its commit"
    );
    gate.set(|state| state.open = true);
    assert_eq!(
        order_within(&mut vendor_inbound, WAIT).await,
        Some((Event::Delivered, order))
    );
    hub.served.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_fails_stops_the_hub_and_confirms_nothing() {
    let gate = Gate::default();
    let hub = start(&gate).await;
    let order = fake_order(&StoreId::new("acme").unwrap());
    let answer = post_order(&hub.routes, &order);
    gate.begun(1).await;
    gate.set(|state| state.fail = true);

    let stopped = timeout(WAIT, hub.served)
        .await
        .expect("the hub stops")
        .unwrap();
    let error = stopped
        .expect_err("the hub reports the failure")
        .to_string();
    assert!(
        error.contains("cannot be written") && error.contains("on fire"),
        "{error}"
    );
    let status = timeout(WAIT, answer)
        .await
        .expect("the caller is answered")
        .unwrap();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the order was not confirmed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_the_data_dir_refuses_is_refused_to_its_sender_alone() {
    let gate = Gate::default();
    gate.set(|state| {
        state.open = true;
        state.refuse = true;
    });
    let hub = start(&gate).await;
    let store = StoreId::new("acme").unwrap();
    let (first, second) = (fake_order(&store), fake_order(&store));

    let refused = timeout(WAIT, post_order(&hub.routes, &first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        refused,
        StatusCode::SERVICE_UNAVAILABLE,
        "told to try again"
    );
    let placed = timeout(WAIT, post_order(&hub.routes, &second))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        placed,
        StatusCode::CREATED,
        "the hub goes on for everyone else"
    );
    let again = timeout(WAIT, post_order(&hub.routes, &first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again,
        StatusCode::CREATED,
        "the retry is taken as the record says: new"
    );
    assert!(!hub.served.is_finished());
    hub.served.abort();
}
