//! The subscriptions of one topic in one process share one core subscription, and an append's
//! wake-up reaches this process's observers without the trip through the server: checked
//! against a real server by what the connection receives.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{frame, Announce, AppendOptions, Delivery, PubSub, ServerCache, Subscription};
use durable_nats::{Nats, NatsConfig};
use futures::{FutureExt as _, StreamExt as _};

async fn nats() -> Option<Nats> {
    let url = durable_conformance::harness::backend_url("nats")?;
    Some(
        NatsConfig::new(url)
            .subject_prefix("durable-fanout")
            .names("FANOUT_LOGS", "FANOUT_QUEUES", "FANOUT_RUNS")
            .connect()
            .await
            .unwrap(),
    )
}

fn unique(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

/// The next delivery, within a deadline.
async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the subscription is open")
}

fn message(d: Delivery) -> Bytes {
    match d {
        Delivery::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// A hundred observers of one run in one process cost the server one subscription: each
/// message reaches the process once and every observer gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_of_one_topic_share_one_subscription() {
    let Some(here) = nats().await else { return };
    let Some(there) = nats().await else { return };
    let topic = unique("shared");
    let mut subs = Vec::new();
    for _ in 0..100 {
        subs.push(here.pubsub().subscribe(&topic).await.unwrap());
    }
    let stats = here.client().statistics();
    let before = stats.in_messages.load(Ordering::Relaxed);
    for i in 0..10u8 {
        there
            .pubsub()
            .publish(&topic, Bytes::from(vec![i]))
            .await
            .unwrap();
    }
    for sub in &mut subs {
        for i in 0..10u8 {
            assert_eq!(message(next(sub).await), Bytes::from(vec![i]));
        }
    }
    let received = stats.in_messages.load(Ordering::Relaxed) - before;
    // The ten messages, and the acknowledgements of the ten queue writes of `publish` that
    // went to the other connection: nothing per observer.
    assert!(received < 20, "{received} messages for 100 observers × 10");
}

/// An append in this process hands its frame to the observers here, and the server's echo of
/// it is not delivered a second time; another process still gets it from the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_reaches_local_observers_once_and_remote_ones_too() {
    let Some(here) = nats().await else { return };
    let Some(there) = nats().await else { return };
    let (log, topic) = (unique("log"), unique("topic"));
    let mut local = here.pubsub().subscribe(&topic).await.unwrap();
    let mut remote = there.pubsub().subscribe(&topic).await.unwrap();
    let cache = here.server_cache();
    for i in 0..5u64 {
        let first = cache
            .append_announce(
                &log,
                &[Bytes::from(format!("e{i}"))],
                AppendOptions::default(),
                Announce::new(&topic, 1 << 20),
            )
            .await
            .unwrap();
        assert_eq!(first, i);
    }
    // Published after the appends' echoes on the same connection, so it arrives after them.
    here.pubsub()
        .publish(&topic, Bytes::from_static(b"marker"))
        .await
        .unwrap();
    for sub in [&mut local, &mut remote] {
        for i in 0..5u64 {
            let f = message(next(sub).await);
            let f = frame::decode(&f).expect("a frame");
            assert_eq!((f.first, f.count), (i, 1));
        }
        assert_eq!(message(next(sub).await), Bytes::from_static(b"marker"));
    }
    cache.delete(&log).await.unwrap();
}

/// Subscribing after every observer of a topic left, many observers subscribing at once, and
/// a subscribe abandoned half-way all leave a working subscription behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_come_and_go() {
    let Some(here) = nats().await else { return };
    let Some(there) = nats().await else { return };
    let topic = unique("churn");
    let publish = |b: &'static [u8]| {
        let p = there.pubsub();
        let topic = topic.clone();
        async move { p.publish(&topic, Bytes::from_static(b)).await.unwrap() }
    };

    // The last observer leaves; a new one gets what is published next.
    let sub = here.pubsub().subscribe(&topic).await.unwrap();
    drop(sub);
    let mut sub = here.pubsub().subscribe(&topic).await.unwrap();
    publish(b"1").await;
    assert_eq!(message(next(&mut sub).await), Bytes::from_static(b"1"));
    drop(sub);

    // Fifty at once: each is live when its subscribe returns.
    let pubsub = here.pubsub();
    let mut subs: Vec<Subscription> =
        futures::future::try_join_all((0..50).map(|_| pubsub.subscribe(&topic)))
            .await
            .unwrap();
    publish(b"2").await;
    for sub in &mut subs {
        assert_eq!(message(next(sub).await), Bytes::from_static(b"2"));
    }
    // One leaves, the others keep receiving.
    subs.pop();
    publish(b"3").await;
    for sub in &mut subs {
        assert_eq!(message(next(sub).await), Bytes::from_static(b"3"));
    }
    drop(subs);

    // A subscribe dropped before it finished (polled once: it is waiting for the server)
    // leaves nothing half-made behind.
    let other = unique("abandoned");
    assert!(here.pubsub().subscribe(&other).now_or_never().is_none());
    let mut sub = here.pubsub().subscribe(&other).await.unwrap();
    there
        .pubsub()
        .publish(&other, Bytes::from_static(b"4"))
        .await
        .unwrap();
    assert_eq!(message(next(&mut sub).await), Bytes::from_static(b"4"));
}
