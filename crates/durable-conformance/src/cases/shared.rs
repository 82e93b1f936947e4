//! Cases for the `shared` capability: what one instance writes, a second instance of the same
//! backend (another connection, as another process would open) sees. A backend that claims
//! `shared` gets a second instance from its factory ([`Backend::peer`]).

use std::time::Duration;

use bytes::Bytes;
use durable_core::{AppendOptions, Delivery, NewRun, RunId};
use futures::StreamExt;

use super::support::unique;
use crate::harness::{ensure, skip_capability, within_for, Backend, CaseResult, Part, Stop};

/// How long a message may take to reach the other instance.
const DELIVERY: Duration = Duration::from_secs(10);

fn peer(b: &Backend) -> Result<&Backend, Stop> {
    b.peer().ok_or_else(|| {
        Stop::Fail(
            "the backend claims `shared` but no second instance was attached (run the case \
             through suite!, which calls the factory twice)"
                .into(),
        )
    })
}

/// With `shared`, keys and logs written through one instance are read through another, and
/// appends from both continue one cursor sequence.
pub async fn shared_cache_is_seen_by_another_instance(b: Backend) -> CaseResult {
    let c = b.cache_under_test().ok_or(Stop::missing(Part::Cache))?;
    if !c.capabilities().shared {
        return skip_capability("capability shared is off");
    }
    let other = peer(&b)?
        .cache_under_test()
        .ok_or(Stop::missing(Part::Cache))?;
    let key = unique("shared-key");
    c.set(&key, Bytes::from_static(b"from-a"), None).await?;
    let seen = other.get(&key).await?;
    ensure(seen.as_deref() == Some(&b"from-a"[..]), || {
        format!("the other instance read {seen:?}")
    })?;
    let log = unique("shared-log");
    let first = c
        .append_many(
            &log,
            &[Bytes::from_static(b"0"), Bytes::from_static(b"1")],
            AppendOptions::default(),
        )
        .await?;
    let next = other
        .append_many(&log, &[Bytes::from_static(b"2")], AppendOptions::default())
        .await?;
    ensure(first == 0 && next == 2, || {
        format!("cursors {first} then {next} across instances, expected 0 then 2")
    })?;
    let slice = c.read(&log, 0, 10).await?;
    ensure(slice.entries.len() == 3 && slice.next == 3, || {
        format!("read back {:?}", slice.entries)
    })?;
    c.delete(&key).await?;
    c.delete(&log).await?;
    Ok(())
}

/// With `shared`, a message published through one instance reaches a subscriber of another.
pub async fn shared_pubsub_reaches_another_instance(b: Backend) -> CaseResult {
    let p = b.pubsub_under_test().ok_or(Stop::missing(Part::PubSub))?;
    if !p.capabilities().shared {
        return skip_capability("capability shared is off");
    }
    let other = peer(&b)?
        .pubsub_under_test()
        .ok_or(Stop::missing(Part::PubSub))?;
    let topic = unique("shared").replace('-', ".");
    let mut sub = other.subscribe(&topic).await?;
    p.publish(&topic, Bytes::from_static(b"hello")).await?;
    p.flush().await?;
    loop {
        match within_for(DELIVERY, "delivery to the other instance", sub.next()).await? {
            Some(Delivery::Message(m)) => {
                return ensure(m == Bytes::from_static(b"hello"), || {
                    format!("the other instance received {m:?}")
                })
            }
            Some(Delivery::Lagged) => continue,
            None => return Err(Stop::Fail("the subscription ended".into())),
        }
    }
}

/// With `shared`, a run created through one instance is claimed through another, and the
/// first instance's stale epoch is then fenced.
pub async fn shared_store_is_seen_by_another_instance(b: Backend) -> CaseResult {
    let s = b.store_under_test().ok_or(Stop::missing(Part::Store))?;
    if !s.capabilities().shared {
        return skip_capability("capability shared is off");
    }
    let other = peer(&b)?
        .store_under_test()
        .ok_or(Stop::missing(Part::Store))?;
    let id = RunId::new(unique("shared-run"))?;
    s.create_run(NewRun::new(id.clone())).await?;
    let first = s.claim(&id, "a", Duration::from_millis(50)).await?;
    ensure(other.get_run(&id).await?.is_some(), || {
        "the other instance does not see the run".into()
    })?;
    // Once the first lease lapses, the other instance takes the run over.
    let deadline = tokio::time::Instant::now() + DELIVERY;
    let second = loop {
        match other.claim(&id, "b", Duration::from_secs(30)).await {
            Ok(l) => break l,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    ensure(second.epoch > first.epoch, || {
        format!("epochs {} then {}", first.epoch, second.epoch)
    })?;
    let stale = s.renew(&first, Duration::from_secs(30)).await;
    ensure(stale.is_err(), || {
        "the first instance renewed a lease the other had taken over".into()
    })?;
    other.delete_run(&id).await?;
    Ok(())
}
