//! Who is on the other end of a socket, and what it may do.
//!
//! With a secret, the hub takes a client's identity from its signed token
//! only. Without one (open mode, for local work and the course's clients) it
//! trusts the identity the handshake claims; clients that claim nothing (the
//! lab's) are handled as drivers until they `join` a store, which shows they
//! are vendors. In both modes the same rules hold for an identity: a vendor
//! acts only for its own store, a driver only on its own packages, a viewer
//! only reads.

use std::fmt;

use super::domain::DriverKey;
use crate::protocol::{DriverName, ErrorCode, Handshake, Refusal, RoleName, StoreId, limits};
use crate::token::{self, Secret};

/// How the hub decides who a client is.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Trust what the handshake claims.
    Open,
    /// Require a token signed with this secret.
    Tokens(Secret),
}

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
    /// A read-only observer.
    Viewer,
    /// Whoever runs the hub: reads, and may hand a driver's packages back.
    Operator,
    /// A client that declared nothing (the lab's, open mode only); handled as
    /// a driver until it joins a store.
    Undeclared,
}

impl Peer {
    /// The identity of a client with this handshake, or why it may not connect.
    pub fn admit(handshake: Handshake, admission: &Admission, now: i64) -> Result<Peer, Refusal> {
        Peer::admit_until(handshake, admission, now).map(|(peer, _)| peer)
    }

    /// As [`Peer::admit`], with the time (seconds since the epoch) at which
    /// the identity ends: its token's `exp`, or never in open mode.
    pub fn admit_until(
        handshake: Handshake,
        admission: &Admission,
        now: i64,
    ) -> Result<(Peer, Option<i64>), Refusal> {
        let capacity = handshake.capacity;
        if let Some(capacity) = capacity
            && (capacity == 0 || capacity > limits::CAPACITY)
        {
            return Err(invalid(&format!(
                "capacity must be between 1 and {}",
                limits::CAPACITY
            )));
        }
        match admission {
            Admission::Open => Peer::from_claim(handshake).map(|peer| (peer, None)),
            Admission::Tokens(secret) => {
                let unauthorized = |message: String| Refusal::new(ErrorCode::Unauthorized, message);
                let token = handshake.token.ok_or_else(|| {
                    unauthorized("this hub requires a token (see `caps token`)".into())
                })?;
                let claims = token::verify(secret, &token, now)
                    .map_err(|error| unauthorized(error.to_string()))?;
                let peer = match (claims.role, claims.store, claims.name) {
                    (RoleName::Vendor, Some(store), _) => Peer::Vendor { store },
                    (RoleName::Driver, _, Some(name)) => Peer::Driver { name, capacity },
                    (RoleName::Viewer, _, _) => Peer::Viewer,
                    (RoleName::Operator, _, _) => Peer::Operator,
                    _ => return Err(unauthorized("the token names no store or driver".into())),
                };
                Ok((peer, Some(claims.exp)))
            }
        }
    }

    /// The identity a handshake claims, in open mode.
    fn from_claim(handshake: Handshake) -> Result<Peer, Refusal> {
        match (handshake.role, handshake.store, handshake.name) {
            (None, None, None) if handshake.capacity.is_none() => Ok(Peer::Undeclared),
            (Some(RoleName::Vendor), Some(store), None) if handshake.capacity.is_none() => {
                Ok(Peer::Vendor { store })
            }
            (Some(RoleName::Vendor), ..) => Err(invalid(
                "a vendor handshake needs a store, and no name or capacity",
            )),
            (Some(RoleName::Driver), None, Some(name)) => Ok(Peer::Driver {
                name,
                capacity: handshake.capacity,
            }),
            (Some(RoleName::Driver), ..) => {
                Err(invalid("a driver handshake needs a name and no store"))
            }
            (Some(RoleName::Viewer), None, None) => Ok(Peer::Viewer),
            (Some(RoleName::Operator), None, None) => Ok(Peer::Operator),
            (Some(RoleName::Operator), ..) => {
                Err(invalid("an operator handshake takes no store or name"))
            }
            (Some(RoleName::Viewer), ..) => {
                Err(invalid("a viewer handshake takes no store or name"))
            }
            (None, ..) => Err(invalid(
                r#"the handshake needs a role: {"role":"vendor","store":…} or {"role":"driver","name":…}"#,
            )),
        }
    }

    /// The identity under which the desk knows this socket as a driver, if
    /// it is one (a vendor or a viewer is not).
    pub fn driver_key(&self, sid: &str) -> Option<DriverKey> {
        match self {
            Peer::Driver { name, .. } => Some(DriverKey::Named(name.clone())),
            Peer::Undeclared => Some(DriverKey::Anonymous(sid.to_owned())),
            Peer::Vendor { .. } | Peer::Viewer | Peer::Operator => None,
        }
    }

    /// The most packages this peer carries at once, if it said.
    pub fn capacity(&self) -> Option<u32> {
        match self {
            Peer::Driver { capacity, .. } => *capacity,
            Peer::Vendor { .. } | Peer::Viewer | Peer::Operator | Peer::Undeclared => None,
        }
    }

    /// May this peer act for `store` (join its room, place its orders, read
    /// and acknowledge its queue)?
    pub fn may_act_for(&self, store: &StoreId) -> Result<(), Refusal> {
        match self {
            Peer::Vendor { store: own } if own == store => Ok(()),
            Peer::Undeclared => Ok(()),
            Peer::Vendor { store: own } => Err(forbidden(format!(
                "a vendor of store {own} may not act for store {store}"
            ))),
            Peer::Driver { .. } => {
                Err(forbidden(format!("a driver may not act for store {store}")))
            }
            Peer::Viewer => Err(forbidden("a viewer only reads".into())),
            Peer::Operator => Err(forbidden(format!(
                "an operator does not act for a store ({store})"
            ))),
        }
    }

    /// May this peer hand a driver's packages back to others? Only an
    /// operator's token, or anyone on an open (tokenless) hub.
    pub fn may_reclaim(&self) -> Result<(), Refusal> {
        match self {
            Peer::Operator | Peer::Undeclared => Ok(()),
            Peer::Vendor { .. } | Peer::Driver { .. } | Peer::Viewer => Err(forbidden(
                "only an operator may hand a driver's packages back".into(),
            )),
        }
    }

    /// May this peer report packages in transit or delivered?
    pub fn may_carry(&self) -> Result<(), Refusal> {
        match self {
            Peer::Driver { .. } | Peer::Undeclared => Ok(()),
            Peer::Vendor { .. } => Err(forbidden("a vendor may not report deliveries".into())),
            Peer::Viewer => Err(forbidden("a viewer only reads".into())),
            Peer::Operator => Err(forbidden("an operator does not carry packages".into())),
        }
    }
}

fn invalid(message: &str) -> Refusal {
    Refusal::new(ErrorCode::InvalidHandshake, message)
}

fn forbidden(message: String) -> Refusal {
    Refusal::new(ErrorCode::Forbidden, message)
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Vendor { store } => write!(f, "vendor store={store}"),
            Peer::Driver { name, .. } => write!(f, "driver name={name}"),
            Peer::Viewer => f.write_str("viewer"),
            Peer::Operator => f.write_str("operator"),
            Peer::Undeclared => f.write_str("undeclared"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Claims, mint};
    use serde_json::json;

    fn handshake(json: serde_json::Value) -> Handshake {
        serde_json::from_value(json).unwrap()
    }

    fn open(json: serde_json::Value) -> Result<Peer, Refusal> {
        Peer::admit(handshake(json), &Admission::Open, 0)
    }

    #[test]
    fn open_mode_trusts_what_the_handshake_claims() {
        assert_eq!(open(json!({})).unwrap(), Peer::Undeclared);
        assert_eq!(
            open(json!({"role":"vendor","store":"acme"})).unwrap(),
            Peer::Vendor {
                store: StoreId::new("acme").unwrap()
            }
        );
        assert_eq!(
            open(json!({"role":"driver","name":"bob","capacity":2}))
                .unwrap()
                .capacity(),
            Some(2)
        );
        assert_eq!(open(json!({"role":"viewer"})).unwrap(), Peer::Viewer);
        for bad in [
            json!({"role":"vendor"}),
            json!({"role":"driver"}),
            json!({"role":"driver","name":"bob","store":"acme"}),
            json!({"store":"acme"}),
            json!({"role":"driver","name":"bob","capacity":0}),
            json!({"role":"vendor","store":"acme","capacity":3}),
            json!({"role":"viewer","store":"acme"}),
        ] {
            assert_eq!(
                open(bad.clone()).unwrap_err().code,
                ErrorCode::InvalidHandshake,
                "{bad}"
            );
        }
    }

    #[test]
    fn token_mode_takes_the_identity_from_the_token_only() {
        let secret = Secret::new(vec![7; 32]).unwrap();
        let admission = Admission::Tokens(secret.clone());
        let claims = Claims {
            role: RoleName::Vendor,
            store: Some(StoreId::new("acme").unwrap()),
            name: None,
            iat: 0,
            exp: 100,
        };
        let token = mint(&secret, &claims);
        // The claimed store is ignored; the token's counts.
        let claimed = handshake(json!({"role":"vendor","store":"globex","token":token}));
        assert_eq!(
            Peer::admit(claimed, &admission, 50).unwrap(),
            Peer::Vendor {
                store: StoreId::new("acme").unwrap()
            }
        );
        let expired = handshake(json!({"token": token}));
        assert_eq!(
            Peer::admit(expired, &admission, 100).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        let missing = Peer::admit(
            handshake(json!({"role":"vendor","store":"acme"})),
            &admission,
            50,
        );
        assert!(missing.unwrap_err().message.contains("requires a token"));
    }

    #[test]
    fn each_identity_acts_only_within_its_own_rights() {
        let acme = StoreId::new("acme").unwrap();
        let globex = StoreId::new("globex").unwrap();
        let vendor = Peer::Vendor {
            store: acme.clone(),
        };
        assert!(vendor.may_act_for(&acme).is_ok());
        assert_eq!(
            vendor.may_act_for(&globex).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(vendor.may_carry().unwrap_err().code, ErrorCode::Forbidden);
        let driver = Peer::Driver {
            name: DriverName::new("bob").unwrap(),
            capacity: None,
        };
        assert!(driver.may_carry().is_ok());
        assert!(driver.may_act_for(&acme).is_err());
        assert!(Peer::Viewer.may_act_for(&acme).is_err());
        assert!(Peer::Viewer.may_carry().is_err());
    }
}
