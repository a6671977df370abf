//! Tools around a hub: reading its board and an order's history
//! ([`status`]), and measuring it under load (`bench`).

pub mod bench;
pub mod status;
