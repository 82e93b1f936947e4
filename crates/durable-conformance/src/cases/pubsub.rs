//! [`PubSub`](durable_core::PubSub) cases.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{Delivery, ErrorKind, PubSub, Subscription};
use futures::StreamExt;

use super::support::{expect_kind, unique};
use crate::harness::{ensure, skip_capability, within, Backend, CaseResult, Stop};

fn pubsub(b: &Backend) -> Result<Arc<dyn PubSub>, Stop> {
    b.pubsub_under_test()
        .ok_or_else(|| Stop::missing(crate::Part::PubSub))
}

fn topic() -> String {
    unique("topic").replace('-', ".")
}

fn msg(i: u64) -> Bytes {
    Bytes::from(i.to_string())
}

fn num(b: &Bytes) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

async fn next_message(sub: &mut Subscription) -> Result<Bytes, Stop> {
    loop {
        match within("subscription next", sub.next()).await? {
            Some(Delivery::Message(b)) => return Ok(b),
            Some(Delivery::Lagged) => continue,
            None => return Err(Stop::Fail("subscription ended".into())),
        }
    }
}

/// Every subscriber attached before a publish receives it, in publish order.
pub async fn subscribers_receive_in_order(b: Backend) -> CaseResult {
    let p = pubsub(&b)?;
    let t = topic();
    let mut s1 = p.subscribe(&t).await?;
    let mut s2 = p.subscribe(&t).await?;
    for i in 0..100 {
        p.publish(&t, msg(i)).await?;
    }
    p.flush().await?;
    for sub in [&mut s1, &mut s2] {
        for i in 0..100 {
            let m = next_message(sub).await?;
            ensure(num(&m) == Some(i), || {
                format!("message {i} arrived as {m:?}")
            })?;
        }
    }
    Ok(())
}

/// A subscriber sees only its topic's messages.
pub async fn topics_are_isolated(b: Backend) -> CaseResult {
    let p = pubsub(&b)?;
    let (ta, tb) = (topic(), topic());
    let mut sa = p.subscribe(&ta).await?;
    p.publish(&tb, msg(1)).await?;
    p.publish(&format!("{ta}.x"), msg(2)).await?;
    p.publish(&ta, msg(3)).await?;
    let m = next_message(&mut sa).await?;
    ensure(num(&m) == Some(3), || {
        format!("subscriber of {ta} got {m:?}")
    })
}

/// Dropping a subscription detaches only it; the topic keeps working for others and new ones.
/// A new subscriber gets what is published after it subscribed.
pub async fn dropped_subscription_unsubscribes(b: Backend) -> CaseResult {
    let p = pubsub(&b)?;
    let t = topic();
    let s1 = p.subscribe(&t).await?;
    let mut s2 = p.subscribe(&t).await?;
    drop(s1);
    p.publish(&t, msg(1)).await?;
    ensure(num(&next_message(&mut s2).await?) == Some(1), || {
        "remaining subscriber missed a message".into()
    })?;
    drop(s2);
    p.publish(&t, msg(2)).await?;
    let mut s3 = p.subscribe(&t).await?;
    p.publish(&t, msg(3)).await?;
    // A broker of several nodes (Redis Cluster) forwards a publish to the other nodes after it
    // returns, so message 2, published while nobody subscribed, may still reach a subscription
    // made right after it on another node; it must never come after message 3.
    let mut m = next_message(&mut s3).await?;
    if num(&m) == Some(2) {
        m = next_message(&mut s3).await?;
    }
    ensure(num(&m) == Some(3), || {
        format!("new subscriber got {m:?}, want message 3 (after at most message 2)")
    })
}

/// A subscriber that does not read while 20,000 messages are published receives them in order,
/// and any message it misses is covered by a `Lagged` marker: nothing is lost silently.
pub async fn slow_subscriber_never_loses_silently(b: Backend) -> CaseResult {
    let p = pubsub(&b)?;
    let t = topic();
    let mut sub = p.subscribe(&t).await?;
    let n = 20_000u64;
    for i in 0..n {
        p.publish(&t, msg(i)).await?;
    }
    p.publish(&t, Bytes::from_static(b"end")).await?;
    let (mut expected, mut lagged_since_last) = (0u64, false);
    let mut lagged = 0;
    loop {
        match within("subscription next", sub.next()).await? {
            Some(Delivery::Lagged) => {
                lagged += 1;
                lagged_since_last = true;
            }
            Some(Delivery::Message(m)) if &m[..] == b"end" => break,
            Some(Delivery::Message(m)) => {
                let i = num(&m).ok_or_else(|| Stop::Fail(format!("garbage message {m:?}")))?;
                ensure(i >= expected, || {
                    format!("message {i} after {expected}: out of order or duplicated")
                })?;
                ensure(i == expected || lagged_since_last, || {
                    format!("messages {expected}..{i} lost without a Lagged marker")
                })?;
                expected = i + 1;
                lagged_since_last = false;
            }
            None => return Err(Stop::Fail("subscription ended".into())),
        }
    }
    ensure(expected == n || lagged_since_last, || {
        format!("tail {expected}..{n} lost without a Lagged marker")
    })?;
    let _ = lagged;
    Ok(())
}

/// Topic and group names with wildcards or whitespace are `InvalidInput`.
pub async fn pubsub_rejects_invalid_names(b: Backend) -> CaseResult {
    let p = pubsub(&b)?;
    let base = topic();
    for bad in [
        format!("{base}.*"),
        format!("{base}.>"),
        format!("{base} x"),
        format!("{base}..x"),
        format!("{base}.\n"),
        String::new(),
    ] {
        expect_kind(
            "publish",
            p.publish(&bad, msg(0)).await,
            ErrorKind::InvalidInput,
        )?;
        expect_kind(
            "subscribe",
            p.subscribe(&bad).await.map(|_| ()),
            ErrorKind::InvalidInput,
        )?;
        if p.capabilities().groups {
            expect_kind(
                "subscribe_group",
                p.subscribe_group(&base, &bad).await.map(|_| ()),
                ErrorKind::InvalidInput,
            )?;
        }
    }
    Ok(())
}

/// Each message published to a group goes to exactly one of its consumers.
pub async fn group_delivers_each_message_once(b: Backend) -> CaseResult {
    let p = pubsub(&b)?;
    if !p.capabilities().groups {
        return skip_capability("capability groups is off");
    }
    let (t, g) = (topic(), unique("group"));
    let c1 = p.subscribe_group(&t, &g).await?;
    let c2 = p.subscribe_group(&t, &g).await?;
    let n = 200u64;
    for i in 0..n {
        p.publish(&t, msg(i)).await?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let mut tasks = Vec::new();
    for mut c in [c1, c2] {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(job) = c.next().await {
                let Ok(job) = job else { break };
                let m = job.payload().clone();
                if job.ack().await.is_err() || tx.send(m).await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let mut seen = HashSet::new();
    while seen.len() < n as usize {
        let m = within("group delivery", rx.recv())
            .await?
            .ok_or_else(|| Stop::Fail("consumers stopped".into()))?;
        let i = num(&m).ok_or_else(|| Stop::Fail(format!("garbage {m:?}")))?;
        ensure(seen.insert(i), || format!("message {i} delivered twice"))?;
    }
    // Nothing more may arrive: every message went to one consumer only.
    let extra = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
    for t in tasks {
        t.abort();
    }
    match extra {
        Ok(Some(m)) => Err(Stop::Fail(format!("extra delivery {m:?}"))),
        _ => Ok(()),
    }
}

/// A nacked job comes back (to some consumer) with a higher attempt number.
pub async fn nacked_job_is_redelivered(b: Backend) -> CaseResult {
    let p = pubsub(&b)?;
    if !p.capabilities().groups {
        return skip_capability("capability groups is off");
    }
    let (t, g) = (topic(), unique("group"));
    let mut c = p.subscribe_group(&t, &g).await?;
    p.publish(&t, msg(7)).await?;
    let job = within("job", c.next())
        .await?
        .ok_or_else(|| Stop::Fail("group ended".into()))??;
    ensure(num(job.payload()) == Some(7) && job.attempt() == 1, || {
        format!("first delivery {job:?}")
    })?;
    job.nack().await?;
    let again = within("redelivery", c.next())
        .await?
        .ok_or_else(|| Stop::Fail("group ended".into()))??;
    ensure(
        num(again.payload()) == Some(7) && again.attempt() >= 2,
        || format!("redelivery {again:?}"),
    )?;
    again.ack().await?;
    let none = tokio::time::timeout(Duration::from_millis(300), c.next()).await;
    ensure(none.is_err(), || "acked job delivered again".into())
}

/// With `durable_groups`, messages published while no consumer is attached wait for one.
pub async fn group_keeps_messages_without_consumers(b: Backend) -> CaseResult {
    let p = pubsub(&b)?;
    if !p.capabilities().durable_groups {
        return skip_capability("capability durable_groups is off");
    }
    let (t, g) = (topic(), unique("group"));
    drop(p.subscribe_group(&t, &g).await?);
    for i in 0..3 {
        p.publish(&t, msg(i)).await?;
    }
    let mut c = p.subscribe_group(&t, &g).await?;
    for i in 0..3 {
        let job = within("job", c.next())
            .await?
            .ok_or_else(|| Stop::Fail("group ended".into()))??;
        ensure(num(job.payload()) == Some(i), || {
            format!("kept message {i} arrived as {job:?}")
        })?;
        job.ack().await?;
    }
    Ok(())
}
