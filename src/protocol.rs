//! The CAPS wire protocol: every event name and payload that crosses a socket.
//!
//! This module is the single source of truth for the wire. The hub and both
//! clients use these names and types; nothing else spells an event name.
//!
//! All traffic uses the Socket.IO namespace [`NAMESPACE`]. The event names and
//! the order payload follow the course's lab so that its JavaScript clients
//! work unmodified.
//!
//! | event        | sent by | payload                        | where the hub routes it                                    |
//! |--------------|---------|--------------------------------|------------------------------------------------------------|
//! | `join`       | vendor  | `"store-id"` or `{"store":id}` | nowhere: the hub puts the socket in that store's room      |
//! | `pickup`     | vendor  | `Order`                        | one driver, chosen by the hub (queued while none is free)  |
//! | `in-transit` | driver  | `Order`                        | the room named by `order.store`, once per order            |
//! | `delivered`  | driver  | `Order`                        | the room named by `order.store`, once per order            |
//! | `refused`    | hub     | `RefusalNotice`                | the sender of a refused event that asked for no ack        |
//! | `getAll`     | vendor  | `QueueRequest`                 | nowhere: the hub replays the store's queued notices to it  |
//! | `received`   | vendor  | `QueueRequest` with messageId  | nowhere: the hub removes that notice from the store's queue |
//! | `activity`   | hub     | `Activity`                     | every viewer (dashboards): each order's every change       |
//!
//! The hub sends `delivered` to a store as a `DeliveryNotice`: the order's own
//! fields (so Phase 2 clients read `payload.orderId`) plus the Phase 3
//! envelope `event`, `messageId`, `queueId`/`clientId` and `order`. It stays
//! queued at the hub until the store's vendor acknowledges it with `received`.
//!
//! A client that asks for an acknowledgement gets an [`Ack`]: `{"ok":true}` or
//! `{"ok":false,"error":{"code":"…","message":"…"}}` with a stable [`ErrorCode`].
//!
//! Our own clients say who they are in the Socket.IO handshake `auth`
//! ([`Handshake`]): `{"role":"vendor","store":"acme"}` or
//! `{"role":"driver","name":"bob","capacity":5}`. Clients that send no `auth`
//! (the lab's) are treated as drivers until they `join` a store, which makes
//! them vendors.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The Socket.IO namespace that carries all CAPS traffic.
pub const NAMESPACE: &str = "/caps";

/// The CAPS events, by their names on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A vendor asks to be put in its store's room.
    Join,
    /// A vendor has a package ready; the hub tells the drivers.
    Pickup,
    /// A driver has picked a package up; the hub tells its store.
    InTransit,
    /// A driver has delivered a package; the hub tells its store.
    Delivered,
    /// The hub refused an event whose sender asked for no acknowledgement.
    Refused,
    /// A client asks for every queued message it has not acknowledged.
    GetAll,
    /// A client acknowledges one queued message.
    Received,
    /// The hub tells viewers that an order changed.
    Activity,
    /// The hub says why it is about to close the connection (a token that
    /// expired, a flood), as a [`Refusal`]; a client may connect again.
    Goodbye,
}

impl Event {
    /// Every event: the lifecycle's, in order, then the others.
    pub const ALL: [Event; 9] = [
        Event::Join,
        Event::Pickup,
        Event::InTransit,
        Event::Delivered,
        Event::Refused,
        Event::GetAll,
        Event::Received,
        Event::Activity,
        Event::Goodbye,
    ];

    /// The event's name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Event::Join => "join",
            Event::Pickup => "pickup",
            Event::InTransit => "in-transit",
            Event::Delivered => "delivered",
            Event::Refused => "refused",
            Event::GetAll => "getAll",
            Event::Received => "received",
            Event::Activity => "activity",
            Event::Goodbye => "goodbye",
        }
    }

    /// The event with this wire name, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|event| event.name() == name)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Event::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown event {name:?}")))
    }
}

/// Limits on the text fields of a payload, in characters.
pub mod limits {
    /// Longest store id.
    pub const STORE: usize = 100;
    /// Longest order id.
    pub const ORDER_ID: usize = 128;
    /// Longest customer name.
    pub const CUSTOMER: usize = 200;
    /// Longest address.
    pub const ADDRESS: usize = 300;
    /// Longest driver name.
    pub const DRIVER_NAME: usize = 100;
    /// Most packages a driver may declare it can carry at once.
    pub const CAPACITY: u32 = 10_000;
}

/// Checks one text field: not blank, not too long, no control characters.
fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(format!("{field} must be at most {max_chars} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

/// Declares a validated string newtype that can only hold a checked value.
macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, String> {
                let value = value.into();
                check_text($field, &value, $max)?;
                Ok(Self(value))
            }

            /// The text itself.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(value: &str) -> Result<Self, String> {
                $name::new(value)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                $name::new(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_type!(
    /// A store (vendor) id, such as `1-206-flowers`; also its room's name.
    StoreId,
    "store",
    limits::STORE
);
text_type!(
    /// An order id; the lab uses a UUID, but any short text is accepted.
    OrderId,
    "orderId",
    limits::ORDER_ID
);
text_type!(
    /// A customer's name.
    Customer,
    "customer",
    limits::CUSTOMER
);
text_type!(
    /// A delivery address, such as `Schmittfurt, LA`.
    Address,
    "address",
    limits::ADDRESS
);
text_type!(
    /// A driver's display name.
    DriverName,
    "name",
    limits::DRIVER_NAME
);

/// A package: the payload of `pickup`, `in-transit` and `delivered`.
///
/// `orderID` (some course material's spelling) is accepted on input;
/// `orderId` is always sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// The store the package comes from; its room hears about it.
    pub store: StoreId,
    /// The order's id, unique per order.
    #[serde(alias = "orderID")]
    pub order_id: OrderId,
    /// Who the package is for.
    pub customer: Customer,
    /// Where it goes.
    pub address: Address,
}

/// The payload of `join`: the lab sends the store id as a bare string, and
/// `{"store": id}` is accepted too. It is always sent as the bare string,
/// which is what a lab hub passes straight to `socket.join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct JoinRequest {
    /// The store whose room to join.
    pub store: StoreId,
}

impl<'de> Deserialize<'de> for JoinRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct StoreObject {
            store: serde_json::Value,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Bare(String),
            Object(StoreObject),
        }
        let store = match Wire::deserialize(deserializer) {
            Ok(Wire::Bare(store)) => store,
            Ok(Wire::Object(StoreObject {
                store: serde_json::Value::String(store),
            })) => store,
            _ => {
                return Err(serde::de::Error::custom(
                    r#"join needs a store id: "acme" or {"store":"acme"}"#,
                ));
            }
        };
        let store = StoreId::new(store).map_err(serde::de::Error::custom)?;
        Ok(JoinRequest { store })
    }
}

/// The role a client declares in the Socket.IO handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// A shop that places orders.
    Vendor,
    /// A courier that delivers them.
    Driver,
    /// A read-only observer (a dashboard).
    Viewer,
    /// Whoever runs the hub: reads like a viewer, and may hand a driver's
    /// packages back to others.
    Operator,
}

/// The handshake `auth` object our clients send; every field is optional so
/// that clients which send none (the lab's) still connect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handshake {
    /// Who the client is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<RoleName>,
    /// A vendor's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreId>,
    /// A driver's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<DriverName>,
    /// How many packages a driver carries at once; no limit if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// A signed token (see `caps token`); required when the hub has a secret,
    /// and then the only source of the client's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Handshake {
    /// The handshake of a vendor for `store`.
    pub fn vendor(store: StoreId) -> Self {
        Handshake {
            role: Some(RoleName::Vendor),
            store: Some(store),
            name: None,
            capacity: None,
            token: None,
        }
    }

    /// The handshake of a driver called `name` that carries at most `capacity` packages.
    pub fn driver(name: DriverName, capacity: Option<u32>) -> Self {
        Handshake {
            role: Some(RoleName::Driver),
            store: None,
            name: Some(name),
            capacity,
            token: None,
        }
    }

    /// The same handshake, carrying `token`.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }
}

/// Why the hub refused an event or a connection; stable, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is not the expected shape: wrong type, missing or bad field.
    InvalidPayload,
    /// The payload is larger than the hub's limit (`--max-payload`).
    PayloadTooLarge,
    /// The handshake `auth` object is not a valid identity.
    InvalidHandshake,
    /// No order with this store and `orderId` is known.
    UnknownOrder,
    /// The order is not assigned to the sender (another driver's, or an
    /// offer that was withdrawn).
    NotAssigned,
    /// The order is not in a state that allows this event (e.g. `delivered`
    /// before `in-transit`).
    OutOfOrder,
    /// A pickup reuses an `orderId` with a different payload.
    OrderConflict,
    /// The hub is overloaded; try again.
    Busy,
    /// No queued message with this id in that queue.
    UnknownMessage,
    /// The sender's identity does not allow this (another store's orders or
    /// queue, a vendor reporting a delivery, a viewer sending anything).
    Forbidden,
    /// The connection sends events faster than its limit.
    RateLimited,
    /// A missing, malformed, forged or expired token (at connect).
    Unauthorized,
    /// The hub holds its maximum number of connections (at connect).
    TooManyConnections,
    /// A browser page from an origin the hub does not allow.
    OriginNotAllowed,
    /// A request naming the hub by a name it is not published under (see
    /// `--public-url`): what a DNS-rebinding page sends.
    HostNotAllowed,
    /// A code this build does not know (from a newer hub).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// Whether the refusal is about the hub's load, not the event: the same
    /// event sent again a little later may well be taken.
    pub const fn is_transient(self) -> bool {
        matches!(self, ErrorCode::Busy | ErrorCode::RateLimited)
    }

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidHandshake => "invalid_handshake",
            ErrorCode::UnknownOrder => "unknown_order",
            ErrorCode::NotAssigned => "not_assigned",
            ErrorCode::OutOfOrder => "out_of_order",
            ErrorCode::OrderConflict => "order_conflict",
            ErrorCode::Busy => "busy",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::HostNotAllowed => "host_not_allowed",
            ErrorCode::Other => "other",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    /// What kind of refusal this is.
    pub code: ErrorCode,
    /// What was wrong, in words.
    pub message: String,
}

impl Refusal {
    /// A refusal with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// The payload of `refused`: what the hub refused and why. Clients that
/// cannot use acknowledgements (rust_socketio) learn of refusals this way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusalNotice {
    /// The event that was refused.
    pub event: Event,
    /// The order's store, when the payload named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreId>,
    /// The order's id, when the payload named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<OrderId>,
    /// Why.
    pub error: Refusal,
}

/// The payload of `getAll` and `received`, in the course's Phase 3 shape:
/// `{"queueId": "acme", "event": "delivered", "messageId": "…"}`.
///
/// Course solutions name the store with any of `store`, `queueId` and
/// `clientId`, often several at once: all are accepted, and refused only when
/// they name different stores. `messageID` may stand for `messageId`, and a
/// `received` that names only an `orderId` acknowledges that order's notice.
/// It is always sent as `queueId`, `event` and `messageId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueRequest {
    /// The queue: a store id for a vendor's notices.
    pub queue_id: StoreId,
    /// Which messages: `pickup` for a driver's packages; any other event,
    /// or none, for the store's notices, whatever their kinds (the course
    /// sends `delivered`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    /// With `received`: the message acknowledged (a notice's `messageId`,
    /// or, as older course code sends, its `orderId`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
}

/// The queue a [`QueueRequest`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// A store's notices, of every kind, until acknowledged.
    StoreNotices,
    /// The packages a driver holds (replayed; acknowledged by `in-transit`).
    DriverPackages,
}

impl QueueRequest {
    /// Which queue it names.
    pub fn queue(&self) -> Queue {
        match self.event {
            Some(Event::Pickup) => Queue::DriverPackages,
            _ => Queue::StoreNotices,
        }
    }
}

impl<'de> Deserialize<'de> for QueueRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Every name the course's clients use, each on its own.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            store: Option<StoreId>,
            queue_id: Option<StoreId>,
            client_id: Option<StoreId>,
            event: Option<Event>,
            message_id: Option<MessageId>,
            #[serde(rename = "messageID")]
            message_id_upper: Option<MessageId>,
            #[serde(alias = "orderID")]
            order_id: Option<MessageId>,
        }
        let wire = Wire::deserialize(deserializer)?;
        let named = [
            ("store", wire.store),
            ("queueId", wire.queue_id),
            ("clientId", wire.client_id),
        ];
        let mut queue: Option<(&str, StoreId)> = None;
        for (key, store) in named {
            let Some(store) = store else { continue };
            match &queue {
                Some((first, seen)) if *seen != store => {
                    return Err(serde::de::Error::custom(format!(
                        "{first} and {key} name different stores ({seen} and {store})"
                    )));
                }
                Some(_) => {}
                None => queue = Some((key, store)),
            }
        }
        let (_, queue_id) = queue.ok_or_else(|| {
            serde::de::Error::custom("name the queue's store with store, queueId or clientId")
        })?;
        let message_id = match (wire.message_id, wire.message_id_upper) {
            (Some(lower), Some(upper)) if lower != upper => {
                return Err(serde::de::Error::custom(
                    "messageId and messageID name different messages",
                ));
            }
            (Some(id), _) | (None, Some(id)) => Some(id),
            (None, None) => wire.order_id,
        };
        Ok(QueueRequest {
            queue_id,
            event: wire.event,
            message_id,
        })
    }
}

text_type!(
    /// The id of a queued message; the hub makes one per notice (a UUID).
    MessageId,
    "messageId",
    limits::ORDER_ID
);

/// A queued notice as the hub sends it to a store (`delivered`): the
/// order's fields, plus the Phase 3 envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryNotice {
    /// The order, flattened so that `payload.orderId` works as in Phase 2.
    #[serde(flatten)]
    pub order: Order,
    /// What it tells, the event it is sent as (`delivered`).
    pub event: Event,
    /// What to acknowledge with `received`.
    pub message_id: MessageId,
    /// The queue it sits in (the store).
    pub queue_id: StoreId,
    /// The same, under the course's other name.
    pub client_id: StoreId,
    /// The order again, nested, as the Phase 3 envelope has it.
    #[serde(rename = "order")]
    pub nested_order: Order,
}

impl DeliveryNotice {
    /// The notice of `order`'s delivery, acknowledged as `message_id`.
    pub fn new(order: Order, message_id: MessageId) -> Self {
        DeliveryNotice::of_kind(Event::Delivered, order, message_id)
    }

    /// A notice of `kind` about `order`, acknowledged as `message_id`.
    pub fn of_kind(kind: Event, order: Order, message_id: MessageId) -> Self {
        DeliveryNotice {
            event: kind,
            message_id,
            queue_id: order.store.clone(),
            client_id: order.store.clone(),
            nested_order: order.clone(),
            order,
        }
    }
}

pub use crate::lifecycle::OrderState;

/// The payload of `activity`: one order entered a state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    /// The order's store.
    pub store: StoreId,
    /// The order.
    pub order_id: OrderId,
    /// The state it entered.
    pub state: OrderState,
    /// Who holds it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// When, RFC 3339.
    pub time: String,
}

/// The acknowledgement the hub sends when a client asks for one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Whether the event was accepted.
    pub ok: bool,
    /// Why it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Refusal>,
    /// With `getAll`: how many messages were sent, all of them before this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
}

impl Ack {
    /// The event was accepted.
    pub fn accepted() -> Self {
        Ack {
            ok: true,
            error: None,
            sent: None,
        }
    }

    /// `getAll` was answered with `sent` messages.
    pub fn replayed(sent: u64) -> Self {
        Ack {
            sent: Some(sent),
            ..Ack::accepted()
        }
    }

    /// The event was refused.
    pub fn refused(refusal: Refusal) -> Self {
        Ack {
            ok: false,
            error: Some(refusal),
            sent: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order() -> Order {
        Order {
            store: StoreId::new("1-206-flowers").unwrap(),
            order_id: OrderId::new("e3669048-7313-427b-b6cc-74010ca1f8f0").unwrap(),
            customer: Customer::new("Jamal Braun").unwrap(),
            address: Address::new("Schmittfurt, LA").unwrap(),
        }
    }

    #[test]
    fn order_serializes_to_the_labs_exact_shape() {
        assert_eq!(
            serde_json::to_value(order()).unwrap(),
            json!({
                "store": "1-206-flowers",
                "orderId": "e3669048-7313-427b-b6cc-74010ca1f8f0",
                "customer": "Jamal Braun",
                "address": "Schmittfurt, LA"
            })
        );
    }

    #[test]
    fn order_accepts_the_order_id_alias_and_ignores_extra_fields() {
        let parsed: Order = serde_json::from_value(json!({
            "store": "1-206-flowers",
            "orderID": "e3669048-7313-427b-b6cc-74010ca1f8f0",
            "customer": "Jamal Braun",
            "address": "Schmittfurt, LA",
            "note": "leave at the door"
        }))
        .unwrap();
        assert_eq!(parsed, order());
    }

    #[test]
    fn order_refuses_missing_empty_long_and_mistyped_fields() {
        let good = serde_json::to_value(order()).unwrap();
        let cases = [
            ("orderId", json!(null), "orderId"),
            ("store", json!(""), "store must not be empty"),
            ("customer", json!("   "), "customer must not be empty"),
            ("address", json!(42), "invalid type"),
            ("store", json!("x".repeat(101)), "at most 100"),
            ("customer", json!("a\u{7}b"), "control characters"),
        ];
        for (field, value, expected) in cases {
            let mut bad = good.clone();
            if value.is_null() {
                bad.as_object_mut().unwrap().remove(field);
            } else {
                bad[field] = value;
            }
            let error = serde_json::from_value::<Order>(bad)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{field}: {error}");
        }
        for not_an_object in [json!("order"), json!([1, 2]), json!(7)] {
            assert!(serde_json::from_value::<Order>(not_an_object).is_err());
        }
    }

    #[test]
    fn join_is_sent_as_a_bare_store_id() {
        let join = JoinRequest {
            store: StoreId::new("acme").unwrap(),
        };
        assert_eq!(serde_json::to_value(join).unwrap(), json!("acme"));
    }

    #[test]
    fn join_accepts_a_bare_string_or_an_object() {
        let expected = JoinRequest {
            store: StoreId::new("acme").unwrap(),
        };
        assert_eq!(
            serde_json::from_value::<JoinRequest>(json!("acme")).unwrap(),
            expected
        );
        assert_eq!(
            serde_json::from_value::<JoinRequest>(json!({"store": "acme"})).unwrap(),
            expected
        );
        for bad in [
            json!(""),
            json!({"store": 5}),
            json!([]),
            json!({"room": "acme"}),
        ] {
            assert!(serde_json::from_value::<JoinRequest>(bad).is_err());
        }
    }

    #[test]
    fn handshake_shapes_are_pinned() {
        let vendor = Handshake::vendor(StoreId::new("acme").unwrap());
        assert_eq!(
            serde_json::to_value(&vendor).unwrap(),
            json!({"role": "vendor", "store": "acme"})
        );
        let driver = Handshake::driver(DriverName::new("bob").unwrap(), Some(3));
        assert_eq!(
            serde_json::to_value(&driver).unwrap(),
            json!({"role": "driver", "name": "bob", "capacity": 3})
        );
        assert_eq!(
            serde_json::from_value::<Handshake>(json!({})).unwrap(),
            Handshake::default()
        );
        assert!(serde_json::from_value::<Handshake>(json!({"role": "admin"})).is_err());
    }

    #[test]
    fn acks_have_the_documented_shape() {
        assert_eq!(
            serde_json::to_value(Ack::accepted()).unwrap(),
            json!({"ok": true})
        );
        let refused = Ack::refused(Refusal::new(ErrorCode::InvalidPayload, "missing field"));
        assert_eq!(
            serde_json::to_value(refused).unwrap(),
            json!({"ok": false, "error": {"code": "invalid_payload", "message": "missing field"}})
        );
    }

    #[test]
    fn refusal_notices_have_the_documented_shape() {
        let notice = RefusalNotice {
            event: Event::Delivered,
            store: Some(StoreId::new("acme").unwrap()),
            order_id: Some(OrderId::new("o-1").unwrap()),
            error: Refusal::new(ErrorCode::NotAssigned, "order o-1 is assigned to alice"),
        };
        let wire = json!({
            "event": "delivered",
            "store": "acme",
            "orderId": "o-1",
            "error": {"code": "not_assigned", "message": "order o-1 is assigned to alice"}
        });
        assert_eq!(serde_json::to_value(&notice).unwrap(), wire);
        assert_eq!(
            serde_json::from_value::<RefusalNotice>(wire).unwrap(),
            notice
        );
        let future: Refusal =
            serde_json::from_value(json!({"code": "brand_new", "message": "m"})).unwrap();
        assert_eq!(future.code, ErrorCode::Other);
    }

    #[test]
    fn error_codes_serialize_as_their_names() {
        for code in [
            ErrorCode::InvalidPayload,
            ErrorCode::PayloadTooLarge,
            ErrorCode::InvalidHandshake,
            ErrorCode::UnknownOrder,
            ErrorCode::NotAssigned,
            ErrorCode::OutOfOrder,
            ErrorCode::OrderConflict,
            ErrorCode::Busy,
            ErrorCode::UnknownMessage,
            ErrorCode::Forbidden,
            ErrorCode::RateLimited,
            ErrorCode::Unauthorized,
            ErrorCode::TooManyConnections,
            ErrorCode::OriginNotAllowed,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }

    #[test]
    fn delivery_notices_carry_the_order_and_the_phase_3_envelope() {
        let notice = DeliveryNotice::new(order(), MessageId::new("m-1").unwrap());
        let wire = serde_json::to_value(&notice).unwrap();
        assert_eq!(
            wire,
            json!({
                "store": "1-206-flowers",
                "orderId": "e3669048-7313-427b-b6cc-74010ca1f8f0",
                "customer": "Jamal Braun",
                "address": "Schmittfurt, LA",
                "event": "delivered",
                "messageId": "m-1",
                "queueId": "1-206-flowers",
                "clientId": "1-206-flowers",
                "order": serde_json::to_value(order()).unwrap()
            })
        );
        assert_eq!(
            serde_json::from_value::<Order>(wire.clone()).unwrap(),
            order()
        );
        assert_eq!(
            serde_json::from_value::<DeliveryNotice>(wire).unwrap(),
            notice
        );
    }

    #[test]
    fn a_queue_request_names_a_drivers_packages_only_with_pickup() {
        let queue = |wire: serde_json::Value| {
            serde_json::from_value::<QueueRequest>(wire)
                .unwrap()
                .queue()
        };
        assert_eq!(queue(json!({"queueId": "acme"})), Queue::StoreNotices);
        // The store's one queue holds notices of every kind, whichever the
        // request names (the course names `delivered`).
        for event in Event::ALL
            .into_iter()
            .filter(|event| *event != Event::Pickup)
        {
            assert_eq!(
                queue(json!({"queueId": "acme", "event": event.name()})),
                Queue::StoreNotices,
                "{event}"
            );
        }
        assert_eq!(
            queue(json!({"queueId": "acme", "event": "pickup"})),
            Queue::DriverPackages
        );
    }

    #[test]
    fn queue_requests_accept_the_courses_field_names() {
        let expected = QueueRequest {
            queue_id: StoreId::new("acme").unwrap(),
            event: Some(Event::Delivered),
            message_id: Some(MessageId::new("m-1").unwrap()),
        };
        for wire in [
            json!({"queueId": "acme", "event": "delivered", "messageId": "m-1"}),
            json!({"clientId": "acme", "event": "delivered", "messageID": "m-1"}),
            // Course solutions send several names of the store at once.
            json!({"store": "acme", "queueId": "acme", "clientId": "acme",
                   "event": "delivered", "messageId": "m-1", "orderId": "o-9"}),
            json!({"store": "acme", "event": "delivered", "messageId": "m-1", "messageID": "m-1"}),
        ] {
            assert_eq!(
                serde_json::from_value::<QueueRequest>(wire).unwrap(),
                expected
            );
        }
        let get_all: QueueRequest = serde_json::from_value(json!({"clientId": "acme"})).unwrap();
        assert_eq!((get_all.event, get_all.message_id), (None, None));
        let all_names: QueueRequest =
            serde_json::from_value(json!({"store": "s", "queueId": "s", "clientId": "s"})).unwrap();
        assert_eq!(all_names.queue_id.as_str(), "s");
        let by_order: QueueRequest =
            serde_json::from_value(json!({"queueId": "acme", "orderId": "o-9"})).unwrap();
        assert_eq!(
            by_order.message_id.unwrap().as_str(),
            "o-9",
            "received by order id"
        );

        let refused = |wire| {
            serde_json::from_value::<QueueRequest>(wire)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(json!({"event": "delivered"})).contains("store, queueId or clientId"));
        let disagree = refused(json!({"store": "acme", "queueId": "globex"}));
        assert!(
            disagree.contains("different stores (acme and globex)"),
            "{disagree}"
        );
        assert!(
            refused(json!({"queueId": "acme", "messageId": "a", "messageID": "b"}))
                .contains("different messages")
        );
    }

    #[test]
    fn event_names_round_trip() {
        for event in Event::ALL {
            assert_eq!(Event::from_name(event.name()), Some(event));
        }
        assert_eq!(Event::InTransit.name(), "in-transit");
        // A refusal names any event, getAll and received included.
        assert_eq!(Event::from_name("getAll"), Some(Event::GetAll));
        assert_eq!(Event::from_name("nonsense"), None);
    }
}
