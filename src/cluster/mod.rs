//! Clustered mode (PROTOCOL.md, "Clustered mode"): the pieces that let many nodes share one
//! Redis and behave as one crowd. Work in progress: the building blocks come first, each
//! proven on its own; the node wires them in only when `REDIS_URL` is set.
//!
//! - [`keys`]: keyed hashes of what Redis may never see in plaintext (interests, addresses);
//! - [`seal`]: the authenticated encryption of frames relayed through Redis;
//! - [`matching`]: the matching rules of [`crate::matchmaker`] as atomic Lua scripts.

pub mod keys;
pub mod matching;
pub mod seal;
