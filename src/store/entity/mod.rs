//! sea-orm entities, one per table. Timestamps are unix milliseconds (`i64`).
//! The tables themselves are created by `store::migrate`, not from these definitions,
//! so that old migrations never change when an entity does.

pub mod addon;
pub mod admin_token;
pub mod assignment;
pub mod chat;
pub mod customer;
pub mod domain;
pub mod file;
pub mod inbox;
pub mod message;
pub mod operator;
pub mod operator_addon;
pub mod organisation;
pub mod receipt;
pub mod session;
