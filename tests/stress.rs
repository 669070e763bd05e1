//! Many strangers at once: 500 clients send `find` at the same moment and must end up in 250
//! disjoint rooms of two, each relaying exactly to its own partner (PROTOCOL.md, "Matching").

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Barrier;

const CLIENTS: usize = 500;

/// 500 clients and their 500 server sockets live in this one process: make sure the open-file
/// limit allows them (with room for the runtime and the HTTP requests).
fn raise_open_file_limit() {
    let needed = (2 * CLIENTS + 200) as u64;
    let limit = rlimit::increase_nofile_limit(4 * CLIENTS as u64 + 1024)
        .expect("read or raise the open-file limit");
    assert!(
        limit >= needed,
        "the open-file limit is {limit} and cannot be raised to {needed}"
    );
}

/// What one client saw: its partner's id (from the partner's first message) and the token in
/// the partner's second message.
struct Outcome {
    id: usize,
    partner: usize,
    token: String,
    client: Client,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_finds_make_disjoint_pairs_that_relay_only_to_each_other() {
    raise_open_file_limit();
    let server = TestServer::start_default().await;
    let before = server.metrics().await;

    let clients: Vec<Client> = futures::stream::iter(0..CLIENTS)
        .map(|_| server.client())
        .buffer_unordered(50)
        .collect()
        .await;
    server
        .wait_stats(|s| s["online"] == CLIENTS as u64 && s["waiting"] == 0 && s["rooms"] == 0)
        .await;

    // Every client sends `find` at the same moment, then introduces itself to whoever it got,
    // then sends that partner a token addressed to the pair (sender -> receiver).
    let start = Arc::new(Barrier::new(CLIENTS));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, mut client)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                client.send(json!({"type": "find"})).await;
                client.expect("waiting").await;
                let matched = client.expect("matched").await;
                assert_eq!(matched["common"], json!([]), "client {id}: {matched}");

                client
                    .send(json!({"type": "msg", "text": format!("id:{id}")}))
                    .await;
                let first = client.expect("msg").await;
                let partner: usize = first["text"]
                    .as_str()
                    .and_then(|t| t.strip_prefix("id:"))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("client {id}: first message {first}"));

                client
                    .send(json!({"type": "msg", "text": format!("token:{id}->{partner}")}))
                    .await;
                let second = client.expect("msg").await;
                let token = second["text"]
                    .as_str()
                    .unwrap_or_else(|| panic!("client {id}: second message {second}"))
                    .to_string();
                Outcome {
                    id,
                    partner,
                    token,
                    client,
                }
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(CLIENTS);
    for task in tasks {
        outcomes.push(task.await.expect("client task"));
    }

    // The pairs: everyone has exactly one partner, not itself, and partnership is symmetric.
    let partner: HashMap<usize, usize> = outcomes.iter().map(|o| (o.id, o.partner)).collect();
    assert_eq!(partner.len(), CLIENTS);
    let mut rooms = HashSet::new();
    for o in &outcomes {
        assert_ne!(o.partner, o.id, "client {} was paired with itself", o.id);
        assert!(
            o.partner < CLIENTS,
            "client {} heard of an unknown id {}",
            o.id,
            o.partner
        );
        assert_eq!(
            partner[&o.partner], o.id,
            "client {} got {} as partner, but {} got {}",
            o.id, o.partner, o.partner, partner[&o.partner]
        );
        rooms.insert((o.id.min(o.partner), o.id.max(o.partner)));
    }
    assert_eq!(rooms.len(), CLIENTS / 2, "the pairs are not disjoint");

    // The tokens: each received exactly the one its partner addressed to it.
    for o in &outcomes {
        assert_eq!(
            o.token,
            format!("token:{}->{}", o.partner, o.id),
            "client {} (partner {}) received a token meant for someone else",
            o.id,
            o.partner
        );
    }

    // The server agrees: 250 rooms, nobody waiting, 250 matches made.
    server
        .wait_stats(|s| {
            s["online"] == CLIENTS as u64 && s["waiting"] == 0 && s["rooms"] == (CLIENTS / 2) as u64
        })
        .await;
    let after = server.metrics().await;
    assert_eq!(
        metric(&after, "relay_matches_total") - metric(&before, "relay_matches_total"),
        (CLIENTS / 2) as f64
    );

    // Nobody receives anything more (no stray message, no second match).
    let silent = futures::stream::iter(outcomes)
        .map(|mut o| async move {
            o.client.expect_silence(Duration::from_millis(300)).await;
            o.client
        })
        .buffer_unordered(CLIENTS)
        .collect::<Vec<Client>>()
        .await;
    futures::stream::iter(silent)
        .for_each_concurrent(None, |client| client.close())
        .await;
    server
        .wait_stats(|s| s["online"] == 0 && s["waiting"] == 0 && s["rooms"] == 0)
        .await;
}
