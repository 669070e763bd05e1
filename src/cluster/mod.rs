//! Clustered mode (PROTOCOL.md, "Clustered mode"): the pieces that let many nodes share one
//! Redis and behave as one crowd, chosen in `AppState::new` when `REDIS_URL` is set (the single
//! node, the default, uses none of it).
//!
//! - [`keys`]: keyed hashes of what Redis may never see in plaintext (interests, addresses);
//! - [`seal`]: the authenticated encryption of frames relayed through Redis;
//! - [`matching`]: the matching rules of [`crate::matchmaker`] as atomic Lua scripts;
//! - [`node`]: a node of the crowd: its sessions, matched and relayed through Redis.

pub mod keys;
pub mod matching;
pub mod node;
pub mod safety_store;
pub mod seal;
