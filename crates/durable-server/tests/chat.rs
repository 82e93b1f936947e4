//! `/api/chat` over real HTTP: headers, status codes, and `Last-Event-ID` continuation at
//! every cursor of a live turn (the part of the protocol the AI SDK test does not reach).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use durable_core::agent::{ScriptedModel, Turn};
use durable_server::DurableServer;
use serde_json::{json, Value};
use support::*;

fn user(text: &str) -> Value {
    json!({"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]})
}

async fn post_chat(url: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/api/chat"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_continues_from_every_last_event_id_of_a_live_turn() {
    let words = (0..30)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let model = ScriptedModel::new([Turn::new().reasoning("hmm").words(&words)])
        .with_delay(Duration::from_millis(2));
    let server = DurableServer::builder()
        .agent(agent("chat", model))
        .build()
        .unwrap();
    let url = start(&server).await;
    let res = post_chat(
        &url,
        json!({"id": "c1", "messages": [user("hi")], "trigger": "submit-message"}),
    )
    .await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["x-vercel-ai-ui-message-stream"], "v1");
    let mut r = FrameReader::new(res);
    let mut full = Vec::new();
    let mut resumed = Vec::new();
    while let Some(f) = r.next().await {
        if let Some(k) = f.id.clone() {
            let url = format!("{url}/api/chat/c1/stream");
            resumed.push((
                full.len(),
                tokio::spawn(async move {
                    let res = reqwest::Client::new()
                        .get(url)
                        .header("last-event-id", k)
                        .send()
                        .await
                        .unwrap();
                    let status = res.status().as_u16();
                    (
                        status,
                        if status == 200 {
                            frames(res).await
                        } else {
                            Vec::new()
                        },
                    )
                }),
            ));
        }
        full.push(f);
    }
    assert_eq!(full.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = full[..full.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(&f.data).unwrap())
        .collect();
    assert_eq!(chunks[0]["type"], "start");
    assert_eq!(chunks.iter().filter(|c| c["type"] == "start").count(), 1);
    assert!(chunks.iter().any(|c| c["type"] == "reasoning-end"));
    assert_eq!(chunks.last().unwrap()["type"], "finish");
    let mut continued = 0;
    for (i, task) in resumed {
        let (status, rest) = task.await.unwrap();
        // A turn that finished meanwhile has no active stream (204): the AI SDK's rule.
        if status == 204 {
            continue;
        }
        assert_eq!(status, 200);
        continued += 1;
        let mut stitched = full[..=i].to_vec();
        stitched.extend(rest);
        assert_eq!(stitched, full, "continued after frame {i}");
    }
    assert!(
        continued > 10,
        "only {continued} continuations ran while the turn was live"
    );
    // Finished: no active stream.
    let res = reqwest::get(format!("{url}/api/chat/c1/stream"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
}

#[tokio::test]
async fn chat_rejects_bad_input_with_problem_bodies() {
    let server = DurableServer::builder()
        .agent(agent("chat", ScriptedModel::new([Turn::text("x")])))
        .build()
        .unwrap();
    let url = start(&server).await;
    for (body, status) in [
        (json!({"id": "a b", "messages": [user("hi")]}), 400),
        (json!({"id": "c", "messages": []}), 400),
        (json!({"id": "c", "messages": [user("")]}), 400),
        (
            json!({"id": "c", "messages": [user("x")], "trigger": "nope"}),
            400,
        ),
        (
            json!({"id": "c", "messages": [{"role": "assistant", "parts": []}]}),
            400,
        ),
        (
            json!({"id": "c", "messages": [{"role": "assistant", "parts": [{"type": "tool-x", "toolCallId": "t", "state": "approval-responded", "approval": {"id": "a", "approved": true}}]}]}),
            409,
        ),
        (json!({"messages": []}), 400),
    ] {
        let res = post_chat(&url, body.clone()).await;
        assert_eq!(res.status().as_u16(), status, "{body}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    let res = reqwest::get(format!("{url}/api/chat/a%20b/stream"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let res = reqwest::get(format!("{url}/api/chat/never/stream"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 204);
}
