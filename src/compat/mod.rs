//! The seed APIs on the wire, each a thin adapter over the core:
//! - [`chatwhizz`]: the Chatwhizz external admin API, `/admin/...`.
//! - [`iqstore`]: the iqstore public API for a support chat, `/public/api/v1/...`.
//! - [`hojre`]: the hojre customer API for chats with stores, `/web/...`.

pub mod chatwhizz;
pub mod hojre;
pub mod iqstore;
