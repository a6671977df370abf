//! Storage: the journal that commits each step before its outputs go out,
//! the seam every engine implements ([`journal::Backend`], read through
//! [`journal::Records`]), the two engines ([`sqlite`] for one hub,
//! [`postgres`] for a group of hubs), the rules both follow when they write
//! an order down ([`columns`], [`rows`]), and the reading room the API and
//! replays read through ([`readers`]).

pub mod columns;
pub mod commit_log;
pub mod journal;
pub mod postgres;
pub mod readers;
pub mod rows;
pub mod sqlite;
