//! Who is on the other end of a socket, as the hub understands it.
//!
//! Our clients declare a role in the handshake. The lab's clients declare
//! nothing: the hub treats such a socket as a driver (it hears `pickup`, as
//! every socket does on the lab's hub) until it `join`s a store, which shows
//! it is a vendor.

use std::fmt;

use super::dispatch::DriverKey;
use crate::protocol::{DriverName, ErrorCode, Handshake, Refusal, RoleName, StoreId, limits};

/// The identity of one connected socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A shop, declared in the handshake or shown by a `join`.
    Vendor {
        /// The store it speaks for.
        store: StoreId,
    },
    /// A courier that declared itself.
    Driver {
        /// Its display name, which is also its identity across reconnections.
        name: DriverName,
        /// The most packages it carries at once; no limit if `None`.
        capacity: Option<u32>,
    },
    /// A client that declared nothing (the lab's); handled as a driver until
    /// it joins a store.
    Undeclared,
}

impl Peer {
    /// The identity a handshake claims, or why it is not a valid one.
    pub fn from_handshake(handshake: Handshake) -> Result<Peer, Refusal> {
        let invalid = |message: &str| Refusal::new(ErrorCode::InvalidHandshake, message);
        match handshake {
            Handshake {
                role: None,
                store: None,
                name: None,
                capacity: None,
            } => Ok(Peer::Undeclared),
            Handshake {
                role: Some(RoleName::Vendor),
                store: Some(store),
                name: None,
                capacity: None,
            } => Ok(Peer::Vendor { store }),
            Handshake {
                role: Some(RoleName::Vendor),
                ..
            } => Err(invalid(
                "a vendor handshake needs a store, and no name or capacity",
            )),
            Handshake {
                role: Some(RoleName::Driver),
                capacity: Some(capacity),
                ..
            } if capacity == 0 || capacity > limits::CAPACITY => Err(invalid(&format!(
                "capacity must be between 1 and {}",
                limits::CAPACITY
            ))),
            Handshake {
                role: Some(RoleName::Driver),
                store: None,
                name: Some(name),
                capacity,
            } => Ok(Peer::Driver { name, capacity }),
            Handshake {
                role: Some(RoleName::Driver),
                ..
            } => Err(invalid("a driver handshake needs a name and no store")),
            Handshake { role: None, .. } => Err(invalid(
                r#"the handshake needs a role: {"role":"vendor","store":…} or {"role":"driver","name":…}"#,
            )),
        }
    }

    /// The identity under which the desk knows this socket as a driver, if
    /// it is one (a vendor is not).
    pub fn driver_key(&self, sid: &str) -> Option<DriverKey> {
        match self {
            Peer::Driver { name, .. } => Some(DriverKey::Named(name.clone())),
            Peer::Undeclared => Some(DriverKey::Anonymous(sid.to_owned())),
            Peer::Vendor { .. } => None,
        }
    }

    /// The most packages this peer carries at once, if it said.
    pub fn capacity(&self) -> Option<u32> {
        match self {
            Peer::Driver { capacity, .. } => *capacity,
            Peer::Vendor { .. } | Peer::Undeclared => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Vendor { store } => write!(f, "vendor store={store}"),
            Peer::Driver { name, .. } => write!(f, "driver name={name}"),
            Peer::Undeclared => f.write_str("undeclared"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(json: serde_json::Value) -> Handshake {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn handshakes_map_to_peers() {
        use serde_json::json;
        assert_eq!(
            Peer::from_handshake(handshake(json!({}))).unwrap(),
            Peer::Undeclared
        );
        assert_eq!(
            Peer::from_handshake(handshake(json!({"role":"vendor","store":"acme"}))).unwrap(),
            Peer::Vendor {
                store: StoreId::new("acme").unwrap()
            }
        );
        assert_eq!(
            Peer::from_handshake(handshake(json!({"role":"driver","name":"bob"}))).unwrap(),
            Peer::Driver {
                name: DriverName::new("bob").unwrap(),
                capacity: None
            }
        );
        assert_eq!(
            Peer::from_handshake(handshake(
                json!({"role":"driver","name":"bob","capacity":2})
            ))
            .unwrap()
            .capacity(),
            Some(2)
        );
        for bad in [
            json!({"role":"vendor"}),
            json!({"role":"driver"}),
            json!({"role":"driver","name":"bob","store":"acme"}),
            json!({"store":"acme"}),
            json!({"role":"driver","name":"bob","capacity":0}),
            json!({"role":"vendor","store":"acme","capacity":3}),
        ] {
            let refusal = Peer::from_handshake(handshake(bad.clone())).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::InvalidHandshake, "{bad}");
        }
    }
}
