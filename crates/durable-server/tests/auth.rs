//! Access control: run tokens and an authorizer; 401/403 never reveal whether a run exists.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use durable_core::agent::{ScriptedModel, Turn};
use durable_server::{
    AccessControl, DurableServer, RunTokens, TrustedHeader, RUN_ID_HEADER, RUN_TOKEN_HEADER,
};
use serde_json::{json, Value};
use support::*;

const KEY: &str = "an-example-key-of-at-least-32-bytes!!";

async fn server(authorizer: bool) -> (DurableServer, String) {
    let mut access =
        AccessControl::new().tokens(RunTokens::new(KEY, Duration::from_secs(60)).unwrap());
    if authorizer {
        access = access.authorizer(TrustedHeader("x-resource-id".to_owned()));
    }
    let server = DurableServer::builder()
        .agent(agent(
            "a",
            ScriptedModel::new([Turn::text("secret answer")]),
        ))
        .access(access)
        .build()
        .unwrap();
    let url = start(&server).await;
    (server, url)
}

/// Start a run as `who`; returns its id and token.
async fn run_as(url: &str, who: Option<&str>) -> (String, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/api/agents/a/stream"))
        .json(&json!({"prompt": "hi"}));
    if let Some(w) = who {
        req = req.header("x-resource-id", w);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let id = res.headers()[RUN_ID_HEADER].to_str().unwrap().to_owned();
    let token = res.headers()[RUN_TOKEN_HEADER].to_str().unwrap().to_owned();
    frames(res).await;
    (id, token)
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = if status == 200 && url.ends_with("/events") {
        frames(res).await;
        Value::Null
    } else {
        res.json().await.unwrap_or(Value::Null)
    };
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_tokens_grant_one_run_and_never_reveal_others() {
    let (server, url) = server(false).await;
    assert!(
        !format!("{server:?}").contains(KEY),
        "the key leaks through Debug"
    );
    let (a, token_a) = run_as(&url, None).await;
    let (b, _) = run_as(&url, None).await;
    let runs = format!("{url}/api/agents/a/runs");
    let bearer = format!("Bearer {token_a}");
    for route in ["events", ""] {
        let path = |run: &str| {
            format!("{runs}/{run}/{route}")
                .trim_end_matches('/')
                .to_owned()
        };
        assert_eq!(get(&path(&a), &[("authorization", &bearer)]).await.0, 200);
        assert_eq!(
            get(&format!("{}?token={token_a}", path(&a)), &[]).await.0,
            200
        );
        // No credentials: 401 for a run that exists and one that does not, same body.
        let (s1, b1) = get(&path(&a), &[]).await;
        let (s2, b2) = get(&path("never-existed"), &[]).await;
        assert_eq!((s1, s2), (401, 401));
        assert_eq!(b1, b2);
        // A token of another run, a forged one, one for a run that does not exist: 403 alike.
        let (s1, b1) = get(&path(&b), &[("authorization", &bearer)]).await;
        let (s2, b2) = get(&path("never-existed"), &[("authorization", &bearer)]).await;
        let forged = format!("Bearer {a}.99999999999.AAAA");
        let (s3, b3) = get(&path(&a), &[("authorization", &forged)]).await;
        assert_eq!((s1, s2, s3), (403, 403, 403));
        assert_eq!(b1, b2);
        assert_eq!(b1, b3);
    }
    let res = reqwest::Client::new()
        .post(format!("{runs}/{b}/abort"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let res = reqwest::Client::new()
        .post(format!("{runs}/{b}/abort"))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_use_their_runs_and_strangers_learn_nothing() {
    let (_server, url) = server(true).await;
    // Starting a run needs an identity when an authorizer is configured.
    let res = reqwest::Client::new()
        .post(format!("{url}/api/agents/a/stream"))
        .json(&json!({"prompt": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let (alice_run, _) = run_as(&url, Some("alice")).await;
    let (bob_run, _) = run_as(&url, Some("bob")).await;
    let runs = format!("{url}/api/agents/a/runs");
    let (status, body) = get(
        &format!("{runs}/{alice_run}"),
        &[("x-resource-id", "alice")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["owner"], "alice");
    assert_eq!(
        get(
            &format!("{runs}/{alice_run}/events"),
            &[("x-resource-id", "alice")]
        )
        .await
        .0,
        200
    );
    let (s1, b1) = get(&format!("{runs}/{alice_run}"), &[("x-resource-id", "bob")]).await;
    let (s2, b2) = get(&format!("{runs}/nobody-run"), &[("x-resource-id", "bob")]).await;
    assert_eq!((s1, s2), (403, 403));
    assert_eq!(b1, b2, "a foreign run and a missing run answer alike");
    // Listing shows the caller's own runs only, and needs an identity.
    assert_eq!(get(&runs, &[]).await.0, 401);
    let (_, listed) = get(&runs, &[("x-resource-id", "bob")]).await;
    let ids: Vec<&str> = listed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["runId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bob_run.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_is_only_found_by_its_owner() {
    let server = DurableServer::builder()
        .agent(agent(
            "a",
            ScriptedModel::new([Turn::new().words("thinking ").hang()]),
        ))
        .access(AccessControl::new().authorizer(TrustedHeader("x-resource-id".to_owned())))
        .build()
        .unwrap();
    let url = start(&server).await;
    let msg = json!({"id": "u", "role": "user", "parts": [{"type": "text", "text": "hi"}]});
    let res = reqwest::Client::new()
        .post(format!("{url}/api/chat"))
        .header("x-resource-id", "alice")
        .json(&json!({"id": "chat-1", "messages": [msg]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let mut live = FrameReader::new(res);
    live.next().await.unwrap();
    let resume = format!("{url}/api/chat/chat-1/stream");
    assert_eq!(get(&resume, &[]).await.0, 401);
    assert_eq!(
        get(&resume, &[("x-resource-id", "bob")]).await.0,
        204,
        "as if there were no chat"
    );
    let res = reqwest::Client::new()
        .get(&resume)
        .header("x-resource-id", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}
