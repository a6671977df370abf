//! The clients of a hub: the shop ([`vendor`]) and the courier ([`driver`]),
//! the link both talk through ([`hub_link`]), where their lines go
//! ([`console`]), and all of them with a hub in one process ([`demo`]).

pub mod console;
pub mod demo;
pub mod driver;
pub mod hub_link;
pub mod vendor;
