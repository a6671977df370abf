//! caps: the CAPS parcel-dispatch system over Socket.IO.
//!
//! The modules read as the design:
//! - the contracts both sides keep: [`protocol`] (every Socket.IO event and
//!   payload), [`lifecycle`] (an order's states and what moves it between
//!   them), [`api`] (the HTTP API's payloads) and [`token`] (signed
//!   identities);
//! - the [`hub`], which routes events between shops and couriers;
//! - the [`roles`] that talk to it: the shop ([`roles::vendor`]), the
//!   courier ([`roles::driver`]), the demo, and the link they share;
//! - the [`tools`] around them: `caps status`, `caps track`, `caps bench`;
//! - [`cli`] and [`shutdown`], which wire it all to the `caps` binary.

pub mod api;
pub mod lifecycle;
pub mod protocol;
pub mod token;

pub mod hub;

pub mod roles;

pub mod tools;

pub mod cli;
pub mod shutdown;
