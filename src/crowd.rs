//! The seam between the sessions and the crowd they belong to, chosen once at start-up (as
//! Centrifuge's node talks to one broker): this process alone, everything in its memory
//! ([`Lobby`]), or a node of a crowd that shares one Redis ([`Node`], when `REDIS_URL` is set).
//!
//! Only control commands come through here (`find`, `skip`, `stop`, `report`, a close, the
//! timers); a chat frame goes from peer to peer (`relay::Peer::relay_to_partner`), on one node or
//! through the node's publisher. The clustered calls are boxed: a session's future, which every
//! idle session pays for, stays the size the single node needs.

use std::net::IpAddr;
use std::sync::Arc;

pub use crate::cluster::node::Admission;
use crate::cluster::node::Node;
use crate::matchmaker::{BadState, SessionId};
use crate::metrics::{RefusedReason, Stats};
use crate::pow::Challenge;
use crate::protocol::Refusal;
use crate::relay::{ControlError, Lobby, Peer, Reported};

/// This node's crowd. See the module documentation.
#[derive(Debug)]
pub enum Crowd {
    /// A single node: the default.
    Local(Box<Lobby>),
    /// A node of a clustered crowd.
    Cluster(Arc<Node>),
}

impl Crowd {
    /// A connection this node's limits admitted: the crowd's limits (clustered mode) count
    /// it or refuse it. A single node has nothing more to ask.
    pub async fn admit(&self, address: IpAddr) -> Result<Admission, RefusedReason> {
        match self {
            Crowd::Local(_) => Ok(Admission::default()),
            Crowd::Cluster(node) => Box::pin(node.admit(address)).await,
        }
    }

    /// A new session joins as idle and is greeted; returns the number online.
    pub async fn join(
        &self,
        peer: Arc<Peer>,
        challenge: Option<&Challenge>,
        admission: Admission,
    ) -> usize {
        match self {
            Crowd::Local(lobby) => lobby.join(peer, challenge),
            Crowd::Cluster(node) => Box::pin(node.join(peer, challenge, admission.open_key)).await,
        }
    }

    pub async fn find(
        &self,
        id: SessionId,
        check: impl FnOnce() -> Result<Vec<String>, Refusal>,
    ) -> Result<(), ControlError> {
        match self {
            Crowd::Local(lobby) => lobby.find(id, check),
            Crowd::Cluster(node) => Box::pin(node.find(id, check)).await,
        }
    }

    pub async fn skip(
        &self,
        id: SessionId,
        check: impl FnOnce() -> Result<(), Refusal>,
    ) -> Result<(), ControlError> {
        match self {
            Crowd::Local(lobby) => lobby.skip(id, check),
            Crowd::Cluster(node) => Box::pin(node.skip(id, check)).await,
        }
    }

    pub async fn stop(&self, id: SessionId) -> Result<(), BadState> {
        match self {
            Crowd::Local(lobby) => lobby.stop(id),
            Crowd::Cluster(node) => Box::pin(node.stop(id)).await,
        }
    }

    pub async fn report<R>(
        &self,
        id: SessionId,
        check: impl FnOnce() -> Result<R, Refusal>,
    ) -> Result<(R, Reported), ControlError> {
        match self {
            Crowd::Local(lobby) => lobby.report(id, check),
            Crowd::Cluster(node) => Box::pin(node.report(id, check)).await,
        }
    }

    /// The socket closed (see [`Lobby::leave`]).
    pub async fn leave(&self, id: SessionId, tell_partner: bool) {
        match self {
            Crowd::Local(lobby) => lobby.leave(id, tell_partner),
            Crowd::Cluster(node) => Box::pin(node.leave(id, tell_partner)).await,
        }
    }

    /// The graceful shutdown: every session's reader ends and closes with 1012.
    pub fn kill_all(&self) {
        match self {
            Crowd::Local(lobby) => lobby.kill_all(),
            Crowd::Cluster(node) => node.kill_all(),
        }
    }

    /// The matchmaking timers; called a few times a second.
    pub async fn tick(&self) {
        match self {
            Crowd::Local(lobby) => lobby.tick(),
            Crowd::Cluster(node) => node.tick().await,
        }
    }

    /// The crowd's counts (all nodes', in clustered mode).
    pub fn stats(&self) -> Stats {
        match self {
            Crowd::Local(lobby) => lobby.stats(),
            Crowd::Cluster(node) => node.stats(),
        }
    }

    /// This node's own open sessions.
    pub fn local_online(&self) -> usize {
        match self {
            Crowd::Local(lobby) => lobby.stats().online,
            Crowd::Cluster(node) => node.local_stats().online,
        }
    }

    /// `Err(reason)` when the node cannot serve newcomers well (`/healthz` answers 503).
    pub fn health(&self) -> Result<(), &'static str> {
        match self {
            Crowd::Local(_) => Ok(()),
            Crowd::Cluster(node) => node.health(),
        }
    }

    /// After every session has closed: tells the rest of the crowd this node is gone.
    pub async fn shutdown(&self) {
        if let Crowd::Cluster(node) = self {
            node.shutdown().await;
        }
    }
}
