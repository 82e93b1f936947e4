//! Redis-specific PubSub behaviour beyond the conformance suite: one subscription connection
//! with refcounted topics, batched subscribes, `Lagged` after a reconnect, a server that stops
//! answering, and reclaim of a crashed consumer's job.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use durable_conformance::harness::require_backends;
use durable_conformance::services::{self, env_url, RedisOptions};
use durable_core::{Delivery, PubSub};
use durable_redis::RedisConfig;
use futures::StreamExt;

const DEADLINE: Duration = Duration::from_secs(10);

fn url_or_skip() -> Option<String> {
    let url = env_url("redis");
    if url.is_none() {
        assert!(!require_backends(), "DURABLE_TEST_REDIS_URL is not set");
        eprintln!("skipped: DURABLE_TEST_REDIS_URL is not set");
    }
    url
}

fn unique(tag: &str) -> String {
    format!("{tag}.{}", uuid_like())
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// `PUBSUB NUMSUB` of each channel, as seen by the server.
async fn numsub(conn: &mut redis::aio::MultiplexedConnection, channels: &[String]) -> Vec<i64> {
    let reply: Vec<redis::Value> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channels)
        .query_async(conn)
        .await
        .unwrap();
    reply
        .chunks(2)
        .map(|p| match &p[1] {
            redis::Value::Int(n) => *n,
            _ => -1,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_share_one_subscription_per_topic() {
    let Some(url) = url_or_skip() else { return };
    let prefix = format!("pstest-{}:", uuid_like());
    let redis = RedisConfig::new(&url)
        .key_prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let pubsub = redis.pubsub().await.unwrap();
    let topics: Vec<String> = (0..10).map(|i| unique(&format!("t{i}"))).collect();
    let mut subs = Vec::new();
    for t in &topics {
        subs.push(pubsub.subscribe(t).await.unwrap());
        subs.push(pubsub.subscribe(t).await.unwrap());
    }
    assert_eq!(pubsub.active_channels(), 10);
    let channels: Vec<String> = topics.iter().map(|t| format!("{prefix}t:{t}")).collect();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Twenty local subscribers, one server-side subscription per topic.
    assert_eq!(numsub(&mut conn, &channels).await, vec![1; 10]);
    pubsub
        .publish(&topics[3], Bytes::from_static(b"hi"))
        .await
        .unwrap();
    for s in &mut subs[6..8] {
        let got = tokio::time::timeout(DEADLINE, s.next()).await.unwrap();
        assert_eq!(got, Some(Delivery::Message(Bytes::from_static(b"hi"))));
    }
    subs.truncate(1);
    assert_eq!(pubsub.active_channels(), 1);
    // UNSUBSCRIBE is sent by the subscription task after the drop: wait for it, bounded.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let n = numsub(&mut conn, &channels).await;
        if n[0] == 1 && n[1..].iter().all(|c| *c == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "topics not released: {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_consumers_job_is_reclaimed_after_the_idle_time() {
    let Some(url) = url_or_skip() else { return };
    let redis = RedisConfig::new(&url)
        .key_prefix(format!("pstest-{}:", uuid_like()))
        .group_reclaim_idle(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let pubsub = redis.pubsub().await.unwrap();
    let (topic, group) = (unique("jobs"), "workers");
    let mut crashed = pubsub.subscribe_group(&topic, group).await.unwrap();
    pubsub
        .publish(&topic, Bytes::from_static(b"job"))
        .await
        .unwrap();
    let job = tokio::time::timeout(DEADLINE, crashed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(job.attempt(), 1);
    // A crash: the job is neither acked, nacked nor dropped (no nack on drop), and the
    // consumer goes away.
    std::mem::forget(job);
    drop(crashed);
    let mut survivor = pubsub.subscribe_group(&topic, group).await.unwrap();
    let again = tokio::time::timeout(DEADLINE, survivor.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.payload().as_ref(), again.attempt()),
        (&b"job"[..], 2)
    );
    again.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_lagged_after_a_reconnect_then_messages_again() {
    let mut server = match services::redis(&RedisOptions::default()) {
        Ok(s) => s,
        Err(why) if require_backends() => panic!("{why}"),
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let url = format!("redis://127.0.0.1:{}", server.port());
    let redis = RedisConfig::new(url).connect().await.unwrap();
    let pubsub = redis.pubsub().await.unwrap();
    let mut sub = pubsub.subscribe("reconnect.topic").await.unwrap();
    server = tokio::task::spawn_blocking(move || {
        server.restart().unwrap();
        server
    })
    .await
    .unwrap();
    let got = tokio::time::timeout(DEADLINE, sub.next()).await.unwrap();
    assert_eq!(got, Some(Delivery::Lagged));
    // Re-subscribed on the new connection: a publish reaches the subscriber again. Publishes
    // may race the re-subscription, so publish until one arrives.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let _ = pubsub
            .publish("reconnect.topic", Bytes::from_static(b"back"))
            .await;
        match tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            Ok(Some(Delivery::Message(m))) => {
                assert_eq!(&m[..], b"back");
                break;
            }
            Ok(other) => assert!(matches!(other, Some(Delivery::Lagged)), "{other:?}"),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "no message after reconnect"
            ),
        }
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_subscribes_is_batched_and_every_subscriber_is_live() {
    let Some(url) = url_or_skip() else { return };
    let prefix = format!("pstest-{}:", uuid_like());
    let redis = RedisConfig::new(&url)
        .key_prefix(&prefix)
        .connect()
        .await
        .unwrap();
    let pubsub = redis.pubsub().await.unwrap();
    // 2,500 topics with two subscribers each, all requested at once: new channels and second
    // subscribers of channels whose SUBSCRIBE is still in flight land in the same batches.
    let topics: Vec<String> = (0..2_500).map(|i| unique(&format!("burst{i}"))).collect();
    let requests = topics.iter().chain(topics.iter()).map(|t| {
        let (p, t) = (pubsub.clone(), t.clone());
        tokio::spawn(async move { p.subscribe(&t).await })
    });
    let mut subs = Vec::new();
    for r in requests.collect::<Vec<_>>() {
        subs.push(
            tokio::time::timeout(DEADLINE, r)
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(pubsub.active_channels(), topics.len());
    for t in &topics {
        pubsub.publish(t, Bytes::from(t.clone())).await.unwrap();
    }
    let n = topics.len();
    for (i, s) in subs.iter_mut().enumerate() {
        let got = tokio::time::timeout(DEADLINE, s.next()).await.unwrap();
        assert_eq!(
            got,
            Some(Delivery::Message(Bytes::from(topics[i % n].clone())))
        );
    }
    drop(subs);
    assert_eq!(pubsub.active_channels(), 0);
    let channels: Vec<String> = topics.iter().map(|t| format!("{prefix}t:{t}")).collect();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The releases go out batched too: wait for them, bounded.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let n = numsub(&mut conn, &channels).await;
        if n.iter().all(|c| *c == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} channels not released",
            n.iter().filter(|c| **c != 0).count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_is_a_retryable_error_then_recovers() {
    let server = match services::redis(&RedisOptions::default()) {
        Ok(s) => s,
        Err(why) if require_backends() => panic!("{why}"),
        Err(why) => return eprintln!("skipped: {why}"),
    };
    let url = format!("redis://127.0.0.1:{}", server.port());
    let redis = RedisConfig::new(&url)
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let pubsub = redis.pubsub().await.unwrap();
    let mut old = pubsub.subscribe("paused.old").await.unwrap();
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The server keeps every connection open but answers nobody for 1.5 s.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let e = tokio::time::timeout(DEADLINE, pubsub.subscribe("paused.new"))
        .await
        .expect("subscribe hung on a paused server")
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(1), "{e}");
    // Once the server answers again, subscribing works and the old subscriber is told that it
    // may have missed messages, then hears new ones.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut new = loop {
        match pubsub.subscribe("paused.new").await {
            Ok(s) => break s,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(tokio::time::Instant::now() < deadline, "no recovery: {e}");
                // Retry pacing only (refusals while reconnecting are immediate).
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    pubsub
        .publish("paused.new", Bytes::from_static(b"n"))
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, new.next()).await.unwrap();
    assert_eq!(got, Some(Delivery::Message(Bytes::from_static(b"n"))));
    let got = tokio::time::timeout(DEADLINE, old.next()).await.unwrap();
    assert_eq!(got, Some(Delivery::Lagged));
    pubsub
        .publish("paused.old", Bytes::from_static(b"o"))
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, old.next()).await.unwrap();
    assert_eq!(got, Some(Delivery::Message(Bytes::from_static(b"o"))));
    drop(server);
}
