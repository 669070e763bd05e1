mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn two_strangers_chat() {
    let server = TestServer::start_default().await;
    let (mut a, mut b) = pair(&server).await;
    a.send(json!({"type":"msg","text":"hello 😀 <b>"})).await;
    let got = b.expect("msg").await;
    assert_eq!(got["text"], "hello 😀 <b>");
    a.close().await;
    let left = b.expect("left").await;
    assert_eq!(left["reason"], "disconnected");
}
