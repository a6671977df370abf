//! `caps bench-peer`: the library's floor. socketioxide on axum, configured
//! as the hub configures it, doing the Node peer's work
//! (`bench/peer-hub.mjs`) in memory and nothing more: no validation past the
//! keys, no authorization, no history, no event log, no sequencer. What it
//! spends is what the stack costs; what `caps hub --ephemeral` spends beyond
//! it is what caps adds.
//!
//! With `--durable` it is a durable hub's floor: each event is also appended
//! to an SQLite log (one row per event and per assignment, no row ever
//! updated, one index: of new orders' keys, which recognising a re-sent
//! order of any age needs), committed as the
//! hub commits (WAL, `synchronous=FULL`, a batched commit with the hub's commit
//! delay), and what the event sends waits for that commit, as the hub's
//! replies do. What `caps hub` spends beyond it is what caps's record of an
//! order costs over the cheapest record there is.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;

use axum::serve::ListenerExt;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{Data, SocketRef, State, TryData};
use socketioxide::handler::{FromMessageParts, MessageHandler, Value as RawValue};
use socketioxide::socket::{Sid, Socket};

use crate::hub::worth_waiting;
use crate::protocol::NAMESPACE;

/// Serves until the process is stopped; the first stdout line names the URL.
/// With a recorder, every event is recorded before what it sends is sent.
pub async fn serve(port: u16, recorder: Option<Recorder>) -> anyhow::Result<()> {
    let shared = Shared(Arc::new(Mutex::new(PeerState {
        recorder,
        ..PeerState::default()
    })));
    let (layer, io) = SocketIo::builder()
        .ws_read_buffer_size(1024)
        .max_buffer_size(1024)
        .ping_interval(Duration::from_secs(25))
        .ping_timeout(Duration::from_secs(20))
        .with_state(shared)
        .build_layer();
    io.ns(NAMESPACE, on_connect);
    // The hub's one fix to the library's memory per connection, so that the
    // floor is the stack as caps runs it.
    let app = axum::Router::new()
        .layer(layer)
        .layer(axum::middleware::map_request(
            |request: axum::extract::Request| async move {
                crate::hub::detach_from_read_buffer(request)
            },
        ));
    let listener = crate::hub::bind("127.0.0.1", port).await?;
    println!(
        "socketioxide peer listening on http://{}",
        listener.local_addr()?
    );
    // As the hub's listener does: small messages must not wait for Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app.into_make_service()).await?;
    Ok(())
}

#[derive(Clone)]
struct Shared(Arc<Mutex<PeerState>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct PeerState {
    /// By `store/orderId`.
    orders: HashMap<String, Entry>,
    /// By name.
    drivers: HashMap<String, Courier>,
    /// Keys waiting for a driver, oldest first.
    ready: VecDeque<String>,
    /// Each store's connected vendors.
    vendors: HashMap<String, Vec<SocketRef>>,
    /// Queued delivery notices: message id to store.
    notices: HashMap<String, String>,
    /// Durable: where each event's step goes to be committed.
    recorder: Option<Recorder>,
    /// Durable: what the event being handled records and sends.
    step: PeerTurn,
}

struct Entry {
    order: Value,
    stage: Stage,
    driver: Option<(String, Sid)>,
}

#[derive(PartialEq, Eq)]
enum Stage {
    Ready,
    Assigned,
    InTransit,
    Delivered,
}

struct Courier {
    socket: SocketRef,
    load: usize,
}

async fn on_connect(socket: SocketRef, Data(auth): Data<Value>, State(shared): State<Shared>) {
    let text = |key: &str| auth.get(key).and_then(Value::as_str).map(str::to_owned);
    match auth.get("role").and_then(Value::as_str) {
        Some("vendor") => {
            if let Some(store) = text("store") {
                let mut peer = shared.lock();
                peer.vendors.entry(store).or_default().push(socket.clone());
            }
        }
        Some("driver") => {
            if let Some(name) = text("name") {
                let mut peer = shared.lock();
                let courier = Courier {
                    socket: socket.clone(),
                    load: 0,
                };
                peer.drivers.insert(name, courier);
                peer.dispatch();
                peer.finish_step();
            }
        }
        _ => {}
    }
    socket.on_disconnect(async |socket: SocketRef, State(shared): State<Shared>| {
        let mut peer = shared.lock();
        peer.drivers
            .retain(|_, courier| courier.socket.id != socket.id);
        for vendors in peer.vendors.values_mut() {
            vendors.retain(|vendor| vendor.id != socket.id);
        }
    });
    for event in [
        PeerEvent::Pickup,
        PeerEvent::InTransit,
        PeerEvent::Delivered,
        PeerEvent::Received,
    ] {
        let handler = Handler {
            event,
            shared: shared.clone(),
        };
        socket.on(event.name(), handler);
    }
}

#[derive(Clone, Copy)]
enum PeerEvent {
    Pickup,
    InTransit,
    Delivered,
    Received,
}

impl PeerEvent {
    fn name(self) -> &'static str {
        match self {
            PeerEvent::Pickup => "pickup",
            PeerEvent::InTransit => "in-transit",
            PeerEvent::Delivered => "delivered",
            PeerEvent::Received => "received",
        }
    }
}

/// One event's handler, run as the message is read, as the hub's are
/// (socketioxide spawns a task per message for a closure handler).
#[derive(Clone)]
struct Handler {
    event: PeerEvent,
    shared: Shared,
}

/// Marks [`Handler`]'s `MessageHandler` implementation.
struct HandlerCall;

impl MessageHandler<LocalAdapter, HandlerCall> for Handler {
    fn call(&self, socket: Arc<Socket<LocalAdapter>>, mut value: RawValue, ack_id: Option<i64>) {
        let Ok(TryData(payload)) =
            TryData::<Value>::from_message_parts(&socket, &mut value, &ack_id);
        let Ok(payload) = payload else { return };
        let mut peer = self.shared.lock();
        match self.event {
            PeerEvent::Pickup => peer.pickup(payload),
            PeerEvent::InTransit => peer.in_transit(socket.id, &payload),
            PeerEvent::Delivered => peer.delivered(socket.id, &payload),
            PeerEvent::Received => peer.received(&payload),
        }
        peer.finish_step();
    }
}

impl PeerState {
    fn pickup(&mut self, order: Value) {
        let Some(key) = key_of(&order) else { return };
        if self.orders.contains_key(&key) {
            return;
        }
        if self.recorder.is_some() {
            self.step.records.push(LogRow {
                kind: "pickup",
                key: key.clone(),
                detail: Some(order.to_string()),
            });
        }
        let entry = Entry {
            order,
            stage: Stage::Ready,
            driver: None,
        };
        self.orders.insert(key.clone(), entry);
        self.ready.push_back(key);
        self.dispatch();
    }

    fn in_transit(&mut self, sid: Sid, order: &Value) {
        if let Some(entry) = self.moved_by(sid, order, Stage::Assigned) {
            entry.stage = Stage::InTransit;
            let (store, order) = (store_of(&entry.order), entry.order.clone());
            self.record("in-transit", &order, None);
            self.tell_store(&store, "in-transit", &order);
        }
    }

    fn delivered(&mut self, sid: Sid, order: &Value) {
        let Some(entry) = self.moved_by(sid, order, Stage::InTransit) else {
            return;
        };
        entry.stage = Stage::Delivered;
        let (store, order) = (store_of(&entry.order), entry.order.clone());
        let driver = entry.driver.as_ref().map(|(name, _)| name.clone());
        if let Some(courier) = driver.and_then(|name| self.drivers.get_mut(&name)) {
            courier.load = courier.load.saturating_sub(1);
        }
        let message_id = uuid::Uuid::new_v4().to_string();
        self.record("delivered", &order, Some(&message_id));
        self.notices.insert(message_id.clone(), store.clone());
        let mut notice = order.clone();
        if let Value::Object(fields) = &mut notice {
            fields.insert("event".into(), json!("delivered"));
            fields.insert("messageId".into(), json!(message_id));
            fields.insert("queueId".into(), json!(store));
            fields.insert("clientId".into(), json!(store));
            fields.insert("order".into(), order);
        }
        self.tell_store(&store, "delivered", &notice);
        self.dispatch();
    }

    fn received(&mut self, request: &Value) {
        let (Some(message_id), Some(store)) = (
            request.get("messageId").and_then(Value::as_str),
            request.get("queueId").and_then(Value::as_str),
        ) else {
            return;
        };
        if self.notices.get(message_id).map(String::as_str) == Some(store) {
            self.notices.remove(message_id);
            if self.recorder.is_some() {
                self.step.records.push(LogRow {
                    kind: "received",
                    key: store.to_owned(),
                    detail: Some(message_id.to_owned()),
                });
            }
        }
    }

    /// Offers waiting orders to the least loaded drivers.
    fn dispatch(&mut self) {
        while !self.ready.is_empty() {
            let Some((name, courier)) = self
                .drivers
                .iter_mut()
                .min_by_key(|(_, courier)| courier.load)
            else {
                return;
            };
            let Some(key) = self.ready.pop_front() else {
                return;
            };
            let Some(entry) = self.orders.get_mut(&key) else {
                continue;
            };
            entry.stage = Stage::Assigned;
            entry.driver = Some((name.clone(), courier.socket.id));
            courier.load += 1;
            let durable = self.recorder.is_some();
            if durable {
                self.step.records.push(LogRow {
                    kind: "assigned",
                    key,
                    detail: Some(name.clone()),
                });
            }
            self.step
                .send(durable, &courier.socket, "pickup", &entry.order);
        }
    }

    /// The order `socket` reports on, if it is that order's driver and the
    /// order is at `stage`.
    fn moved_by(&mut self, by: Sid, order: &Value, stage: Stage) -> Option<&mut Entry> {
        let entry = self.orders.get_mut(&key_of(order)?)?;
        let by_its_driver = entry.driver.as_ref().is_some_and(|(_, sid)| *sid == by);
        (entry.stage == stage && by_its_driver).then_some(entry)
    }

    fn tell_store(&mut self, store: &str, event: &'static str, message: &Value) {
        let durable = self.recorder.is_some();
        for vendor in self.vendors.get(store).into_iter().flatten() {
            self.step.send(durable, vendor, event, message);
        }
    }

    /// Notes (durable only) that `order` moved to `kind`.
    fn record(&mut self, kind: &'static str, order: &Value, detail: Option<&str>) {
        if self.recorder.is_some()
            && let Some(key) = key_of(order)
        {
            self.step.records.push(LogRow {
                kind,
                key,
                detail: detail.map(str::to_owned),
            });
        }
    }

    /// Hands the event's step to the recorder.
    fn finish_step(&mut self) {
        if let Some(recorder) = &self.recorder
            && !(self.step.records.is_empty() && self.step.sends.is_empty())
        {
            recorder.append(std::mem::take(&mut self.step));
        }
    }
}

/// One event's records and the messages that wait for them.
#[derive(Default)]
struct PeerTurn {
    records: Vec<LogRow>,
    sends: Vec<Outgoing>,
}

impl PeerTurn {
    /// Sends at once, or (durable) once the step is committed.
    fn send(&mut self, durable: bool, to: &SocketRef, event: &'static str, message: &Value) {
        if durable {
            self.sends.push(Outgoing {
                to: to.clone(),
                event,
                message: message.clone(),
            });
        } else {
            let _ = to.emit(event, message);
        }
    }
}

/// One row of the durable peer's log.
struct LogRow {
    kind: &'static str,
    key: String,
    detail: Option<String>,
}

/// A message held until its event is committed.
struct Outgoing {
    to: SocketRef,
    event: &'static str,
    message: Value,
}

/// The durable peer's writer: a thread that commits steps in batches (as
/// the hub's journal does) and then sends what they hold.
pub struct Recorder {
    steps: tokio::sync::mpsc::UnboundedSender<PeerTurn>,
}

impl Recorder {
    /// Opens (creates) the log in `dir` and starts its writer thread.
    pub fn start(dir: &Path, commit_delay: Duration) -> anyhow::Result<Recorder> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let conn = rusqlite::Connection::open(dir.join("peer-log.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Another program holding the log's lock delays commits, and with
        // them everything the peer sends, rather than stopping it.
        conn.busy_timeout(Duration::from_secs(60))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS log (
                id INTEGER PRIMARY KEY,
                kind TEXT NOT NULL,
                key TEXT NOT NULL,
                detail TEXT
            );
            -- What caps promises and the in-memory peer cannot: an order
            -- re-sent at any age is recognised without holding every order
            -- in memory, so each new order's key goes into an index.
            CREATE UNIQUE INDEX IF NOT EXISTS orders_by_key ON log (key) WHERE kind = 'pickup';",
        )?;
        let (steps, incoming) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("peer-recorder".into())
            .spawn(move || {
                if let Err(error) = commit_steps(conn, commit_delay, incoming) {
                    eprintln!("the peer's recorder stopped: {error:#}");
                    std::process::exit(1);
                }
            })?;
        Ok(Recorder { steps })
    }

    fn append(&self, step: PeerTurn) {
        // The writer thread only ends by ending the process (see `start`).
        let _ = self.steps.send(step);
    }
}

/// Commits whatever steps have queued in one transaction, then sends what
/// they held; under load a commit waits as the hub's does.
fn commit_steps(
    mut conn: rusqlite::Connection,
    commit_delay: Duration,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<PeerTurn>,
) -> anyhow::Result<()> {
    let mut batch = Vec::new();
    let mut last_commit: Option<Instant> = None;
    while let Some(first) = incoming.blocking_recv() {
        batch.push(first);
        let mut waited = false;
        loop {
            while let Ok(step) = incoming.try_recv() {
                batch.push(step);
            }
            let since_commit = last_commit.map(|at| at.elapsed());
            if waited || !worth_waiting(batch.len(), since_commit, commit_delay) {
                break;
            }
            waited = true;
            std::thread::sleep(commit_delay);
        }
        let tx = conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO log (kind, key, detail) VALUES (?1, ?2, ?3)")?;
            for record in batch.iter().flat_map(|step| &step.records) {
                insert.execute(rusqlite::params![record.kind, record.key, record.detail])?;
            }
        }
        tx.commit()?;
        last_commit = Some(Instant::now());
        for outgoing in batch.drain(..).flat_map(|step| step.sends) {
            let _ = outgoing.to.emit(outgoing.event, &outgoing.message);
        }
    }
    Ok(())
}

fn key_of(order: &Value) -> Option<String> {
    let store = order.get("store")?.as_str()?;
    let id = order.get("orderId")?.as_str()?;
    Some(format!("{store}/{id}"))
}

fn store_of(order: &Value) -> String {
    order
        .get("store")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}
