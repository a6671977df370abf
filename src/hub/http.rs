//! The hub's HTTP side, on the same port as Socket.IO: the dashboard at `/`,
//! the JSON API under `/api`, `/healthz` and `/metrics`.
//!
//! Errors are JSON in the shape of a refused acknowledgement,
//! `{"ok":false,"error":{"code":"…","message":"…"}}`, with a 4xx status; bad
//! input never yields a 500. With a secret, `/api` needs a token
//! (`Authorization: Bearer …`): a viewer's reads everything, a vendor's reads
//! and places only its own store's orders; `/metrics` needs a viewer's or an
//! operator's.

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::events::Pickup;
use super::peer::{Admission, Peer};
use std::sync::Arc;

use super::domain::{DriverKey, OrderKey, OrderQuery, StoredOrder};
use super::metrics::Metrics;
use super::sequencer::{GroupPresence, PresenceView, SequencerHandle};
use super::storage::journal::Records;
use super::storage::readers::{ReadError, Readers};
use crate::api::{
    MAX_PAGE, NewOrder, ORDERS_PATH, OrderPage, OrderView, QueueStatus, Reclaimed, STATUS_PATH,
    Status,
};
use crate::protocol::{
    Ack, DriverName, ErrorCode, Handshake, Order, OrderId, OrderState, Refusal, StoreId,
};

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The sequencer: it takes orders, and answers reads of an ephemeral hub.
    pub sequencer: SequencerHandle,
    /// Reads of committed orders, beside the sequencer (never on its task)
    /// and below it in priority, when the hub has a data dir.
    pub readers: Option<Readers>,
    /// Who is online, as the sequencer last published it.
    pub presence: PresenceView,
    /// In a group: who is online at the other hubs.
    pub others: Option<tokio::sync::watch::Receiver<GroupPresence>>,
    /// The hub's metrics.
    pub metrics: Arc<Metrics>,
    /// How callers are identified.
    pub admission: Admission,
    /// The door, which limits each identity's rate of requests.
    pub door: super::door::Door,
}

/// The HTTP routes (Socket.IO is layered on top by the caller).
pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/", get(dashboard_page))
        .route("/dashboard.js", get(dashboard_script))
        .route("/dashboard.css", get(dashboard_style))
        .route("/socket.io.min.js", get(socket_io_client))
        .route("/healthz", get(async || "ok\n"))
        .route("/metrics", get(metrics))
        .route(STATUS_PATH, get(status))
        .route(ORDERS_PATH, get(list_orders).post(place_order))
        .route(&format!("{ORDERS_PATH}/{{order_id}}"), get(track_order))
        .route("/api/drivers/{name}/reclaim", post(reclaim_driver))
        .fallback(async || {
            failure(
                StatusCode::NOT_FOUND,
                ErrorCode::InvalidPayload,
                "no such path",
            )
        })
        .with_state(state)
}

/// The dashboard page and its assets, built into the binary.
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");
/// The official socket.io client, from the npm package pinned in
/// package-lock.json, copied in by build.rs.
const SOCKET_IO_CLIENT: &str = include_str!(concat!(env!("OUT_DIR"), "/socket.io.min.js"));

/// Where the page's columns go.
const COLUMNS_PLACE: &str =
    "<!-- one column per order state, filled in by the hub from its lifecycle table -->";

/// The dashboard page, with one column per order state from the lifecycle
/// table: a new state shows up on the board without touching the page.
static DASHBOARD_PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let columns: String = OrderState::ALL
        .into_iter()
        .map(|state| {
            let name = state.name();
            format!(
                "<div class=\"column\" data-state=\"{name}\" data-final=\"{}\">\
                 <h2>{} <b id=\"count-{name}\">0</b></h2><ul id=\"list-{name}\"></ul></div>\n    ",
                state.is_final(),
                state.words()
            )
        })
        .collect();
    DASHBOARD_HTML.replacen(COLUMNS_PLACE, columns.trim_end(), 1)
});

async fn dashboard_page() -> Html<&'static str> {
    Html(DASHBOARD_PAGE.as_str())
}

async fn dashboard_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        DASHBOARD_JS,
    )
        .into_response()
}

async fn dashboard_style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        DASHBOARD_CSS,
    )
        .into_response()
}

async fn socket_io_client() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SOCKET_IO_CLIENT,
    )
        .into_response()
}

/// The caller of an API route, from its bearer token (or open mode).
struct Caller(Peer);

impl FromRequestParts<HttpState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Self, Response> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(|token| token.trim().to_owned());
        let handshake = match (&state.admission, token) {
            // Open mode: an HTTP caller is trusted like a claimed viewer, and may
            // place orders for any store.
            (Admission::Open, _) => return Ok(Caller(Peer::Undeclared)),
            (Admission::Tokens(_), token) => Handshake::default().with_token(token),
        };
        let now = chrono::Utc::now().timestamp();
        let peer = Peer::admit(handshake, &state.admission, now)
            .map_err(|refusal| refuse(StatusCode::UNAUTHORIZED, refusal))?;
        // Each token has its own rate too, so that one caller spread over
        // many addresses is still one caller.
        if !state.door.charge_identity(peer.to_string()) {
            return Err(state.door.too_many_requests());
        }
        Ok(Caller(peer))
    }
}

impl Caller {
    /// May the caller read `store`'s orders (none: every store)?
    fn may_read(&self, store: Option<&StoreId>) -> Result<(), Refusal> {
        match (&self.0, store) {
            (Peer::Viewer | Peer::Operator | Peer::Undeclared, _) => Ok(()),
            (Peer::Vendor { store: own }, Some(store)) if own == store => Ok(()),
            (Peer::Vendor { store: own }, _) => Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("a vendor of store {own} may read only its own orders (add ?store={own})"),
            )),
            (Peer::Driver { .. }, _) => {
                Err(Refusal::new(ErrorCode::Forbidden, "drivers use Socket.IO"))
            }
        }
    }
}

async fn status(caller: Caller, State(state): State<HttpState>) -> Response {
    if let Err(refusal) = caller.may_read(None) {
        return refuse(StatusCode::FORBIDDEN, refusal);
    }
    let Some(readers) = state.readers else {
        return match state.sequencer.status().await {
            Some(status) => Json(status).into_response(),
            None => stopping(),
        };
    };
    let presence = state.presence.borrow().clone();
    let (drivers, stores) = match &state.others {
        Some(others) => presence.with_others(&others.borrow()),
        None => (presence.drivers, presence.stores),
    };
    read_json(&readers, move |records| {
        Ok(Status {
            orders: records.counts()?,
            open_orders: records
                .open_orders(Status::OPEN_ORDERS_SHOWN)?
                .iter()
                .map(StoredOrder::summary)
                .collect(),
            drivers,
            stores,
            queues: records
                .queues()?
                .into_iter()
                .map(|(store, queued)| QueueStatus { store, queued })
                .collect(),
        })
    })
    .await
}

async fn metrics(State(state): State<HttpState>, Caller(caller): Caller) -> Response {
    // With a secret, what the hub is doing is for those who watch it.
    if !matches!(caller, Peer::Viewer | Peer::Operator | Peer::Undeclared) {
        return failure(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "metrics need a viewer's or an operator's token",
        );
    }
    let (counts, connections) = match state.readers {
        Some(readers) => {
            let connections = state.presence.borrow().connections;
            match readers.read(|records| records.counts()).await {
                Ok(counts) => (counts, connections),
                Err(error) => return read_failure(error),
            }
        }
        None => match state.sequencer.gauges().await {
            Some(gauges) => gauges,
            None => return stopping(),
        },
    };
    let text = state
        .metrics
        .render(&counts, connections, state.sequencer.pending_events());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(Deserialize)]
struct ListParams {
    store: Option<String>,
    state: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list_orders(
    caller: Caller,
    State(state): State<HttpState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return failure(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload,
            "bad query: use store, state, after, limit",
        );
    };
    let store = match params.store.map(StoreId::new).transpose() {
        Ok(store) => store,
        Err(message) => {
            return failure(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
        }
    };
    let order_state = match params.state.as_deref() {
        None => None,
        Some(name) => match OrderState::parse(name) {
            Some(state) => Some(state),
            None => {
                let refusal = Refusal::new(
                    ErrorCode::InvalidPayload,
                    format!("state must be {}", OrderState::names()),
                );
                return refuse(StatusCode::BAD_REQUEST, refusal);
            }
        },
    };
    if let Err(refusal) = caller.may_read(store.as_ref()) {
        return refuse(StatusCode::FORBIDDEN, refusal);
    }
    let query = OrderQuery {
        store,
        state: order_state,
        after: params.after,
        limit: params.limit.unwrap_or(100).clamp(1, MAX_PAGE),
    };
    let Some(readers) = state.readers else {
        return match state.sequencer.orders(query).await {
            Some(page) => Json(page).into_response(),
            None => stopping(),
        };
    };
    read_json(&readers, move |records| {
        let mut orders = records.page(&OrderQuery {
            limit: query.limit + 1,
            ..query.clone()
        })?;
        let next = (orders.len() > query.limit).then(|| orders[query.limit - 1].seq);
        orders.truncate(query.limit);
        Ok(OrderPage {
            orders: orders.iter().map(StoredOrder::summary).collect(),
            next,
        })
    })
    .await
}

#[derive(Deserialize)]
struct TrackParams {
    store: Option<String>,
}

async fn track_order(
    caller: Caller,
    State(state): State<HttpState>,
    Path(order_id): Path<String>,
    params: Result<Query<TrackParams>, QueryRejection>,
) -> Response {
    let Ok(Query(params)) = params else {
        return failure(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPayload,
            "bad query: use store",
        );
    };
    let order_id = match OrderId::new(order_id) {
        Ok(order_id) => order_id,
        Err(message) => {
            return failure(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
        }
    };
    let store = match params.store.map(StoreId::new).transpose() {
        Ok(store) => store,
        Err(message) => {
            return failure(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
        }
    };
    // A vendor looks only in its own store.
    let store = match (&caller.0, store) {
        (Peer::Vendor { store: own }, None) => Some(own.clone()),
        (_, store) => store,
    };
    if let Err(refusal) = caller.may_read(store.as_ref()) {
        return refuse(StatusCode::FORBIDDEN, refusal);
    }
    let found = match state.readers {
        Some(readers) => {
            let read = readers.read(move |records| recorded_view(records, order_id, store));
            match read.await {
                Ok(found) => Some(found),
                Err(error) => return read_failure(error),
            }
        }
        None => state.sequencer.order(order_id, store).await,
    };
    match found {
        Some(Ok(view)) => Json(view).into_response(),
        Some(Err(refusal)) if refusal.code == ErrorCode::UnknownOrder => {
            refuse(StatusCode::NOT_FOUND, refusal)
        }
        Some(Err(refusal)) => refuse(StatusCode::CONFLICT, refusal),
        None => stopping(),
    }
}

async fn place_order(
    caller: Caller,
    State(state): State<HttpState>,
    body: Result<Json<NewOrder>, JsonRejection>,
) -> Response {
    let new = match body {
        Ok(Json(new)) => new,
        Err(rejection) => {
            let status = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                ErrorCode::PayloadTooLarge
            } else {
                ErrorCode::InvalidPayload
            };
            return failure(status, code, &rejection.body_text());
        }
    };
    let order = Order {
        store: new.store,
        order_id: new.order_id.unwrap_or_else(|| {
            OrderId::new(uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid id")
        }),
        customer: new.customer,
        address: new.address,
    };
    let pickup = Box::new(Pickup(order.clone()));
    match state.sequencer.submit_http(caller.0, pickup).await {
        Some(Ok(())) => (StatusCode::CREATED, Json(order)).into_response(),
        Some(Err(refusal)) => {
            let status = match refusal.code {
                ErrorCode::Forbidden => StatusCode::FORBIDDEN,
                ErrorCode::OrderConflict => StatusCode::CONFLICT,
                ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            refuse(status, refusal)
        }
        None => stopping(),
    }
}

/// Runs `query` in the reading room and answers with its JSON, made there too.
async fn read_json<T: Serialize>(
    readers: &Readers,
    query: impl FnOnce(&dyn Records) -> anyhow::Result<T> + Send + 'static,
) -> Response {
    let json = readers
        .read(move |records| Ok(serde_json::to_vec(&query(records)?)?))
        .await;
    match json {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(error) => read_failure(error),
    }
}

/// A read that was not answered: 503, with the usual error shape.
fn read_failure(error: ReadError) -> Response {
    match error {
        ReadError::Stopping => stopping(),
        ReadError::Busy => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Busy,
            &error.to_string(),
        ),
        ReadError::Failed(cause) => {
            log::error!("cannot read the data dir: {cause:#}");
            failure(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Busy,
                "the hub cannot read its records; try again",
            )
        }
    }
}

/// One recorded order by id; an id that several stores use needs its store.
fn recorded_view(
    records: &dyn Records,
    order_id: OrderId,
    store: Option<StoreId>,
) -> anyhow::Result<Result<OrderView, Refusal>> {
    let stores: Vec<StoreId> = records
        .stores_of(&order_id)?
        .into_iter()
        .filter(|found| store.as_ref().is_none_or(|store| store == found))
        .collect();
    let store = match stores.as_slice() {
        [store] => store.clone(),
        [] => {
            return Ok(Err(Refusal::new(
                ErrorCode::UnknownOrder,
                format!("no such order: {order_id}"),
            )));
        }
        several => {
            let names: Vec<&str> = several.iter().map(StoreId::as_str).collect();
            return Ok(Err(Refusal::new(
                ErrorCode::InvalidPayload,
                format!(
                    "order {order_id} exists in stores {}: add ?store=",
                    names.join(", ")
                ),
            )));
        }
    };
    let key = OrderKey { store, order_id };
    Ok(records
        .order(&key)?
        .map(StoredOrder::view)
        .ok_or_else(|| Refusal::new(ErrorCode::UnknownOrder, format!("no such order: {key}"))))
}

/// An operator hands a driver's packages back to `ready` at once.
async fn reclaim_driver(
    caller: Caller,
    State(state): State<HttpState>,
    Path(name): Path<String>,
) -> Response {
    if let Err(refusal) = caller.0.may_reclaim() {
        return refuse(StatusCode::FORBIDDEN, refusal);
    }
    let name = match DriverName::new(name) {
        Ok(name) => name,
        Err(message) => {
            return failure(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
        }
    };
    match state
        .sequencer
        .reclaim(DriverKey::Named(name.clone()))
        .await
    {
        Some(reclaimed) => Json(Reclaimed {
            driver: name.to_string(),
            reclaimed,
        })
        .into_response(),
        None => stopping(),
    }
}

fn refuse(status: StatusCode, refusal: Refusal) -> Response {
    (status, Json(Ack::refused(refusal))).into_response()
}

fn failure(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    refuse(status, Refusal::new(code, message))
}

fn stopping() -> Response {
    failure(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Busy,
        "the hub is stopping",
    )
}
