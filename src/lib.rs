//! caps: the CAPS parcel-dispatch system over Socket.IO.
//!
//! A hub ([`hub`]) routes events between shops ([`vendor`]) and couriers
//! ([`driver`]); every event and payload is defined once in [`protocol`], and
//! the clients reach the hub through [`client`]. [`cli`] wires it to a binary.

pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod console;
pub mod demo;
pub mod driver;
pub mod hub;
pub mod ledger;
pub mod protocol;
pub mod recent;
pub mod status;
pub mod token;
pub mod vendor;
