//! Edges of the cache contract that the first suite left open, and the append-and-announce
//! capability ([`ServerCache::append_announce`]). The in-memory reference and every adapter
//! must agree on each.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{
    frame, Announce, AppendOptions, Delivery, ErrorKind, EventKind, NewEvent, ObserveOptions,
    PubSub, ServerCache, ServerCacheExt,
};
use futures::StreamExt;

use super::support::{event, expect_kind, run_id, test_config, unique};
use crate::harness::{ensure, within, Backend, CaseResult, Part, Stop};

fn cache(b: &Backend) -> Result<Arc<dyn ServerCache>, Stop> {
    b.cache_under_test()
        .ok_or_else(|| Stop::missing(Part::Cache))
}

/// The backend's paired cache and pubsub, or a skip naming what is missing.
type Paired = (Arc<dyn ServerCache>, Arc<dyn PubSub>);

fn announcing(b: &Backend) -> Result<Paired, Stop> {
    let c = cache(b)?;
    if !c.capabilities().announce {
        return Err(Stop::capability(
            "cache does not claim the announce capability",
        ));
    }
    let p = b
        .pubsub_under_test()
        .ok_or_else(|| Stop::missing(Part::PubSub))?;
    ensure(
        c.announce_domain().is_some() && c.announce_domain() == p.announce_domain(),
        || {
            format!(
                "cache claims announce but is not paired with the backend's pubsub: {:?} vs {:?}",
                c.announce_domain(),
                p.announce_domain()
            )
        },
    )?;
    Ok((c, p))
}

fn payloads(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{{\"i\":{i}}}")))
        .collect()
}

/// A rejected first append (over `max_len`) does not create the log: it has no effect at all.
pub async fn rejected_first_append_creates_no_log(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("first-over");
    expect_kind(
        "a first append over max_len",
        c.append_many(&log, &payloads(3), AppendOptions::fenced(1).with_max_len(2))
            .await,
        ErrorKind::LimitExceeded,
    )?;
    let len = c.len(&log).await?;
    ensure(len.is_none(), || {
        format!("the rejected append left a log of length {len:?}")
    })?;
    // Nor did it raise a fence: an append at epoch 0 creates the log from cursor 0.
    let first = c
        .append_many(&log, &payloads(1), AppendOptions::fenced(0))
        .await?;
    ensure(first == 0, || {
        format!("the first append got cursor {first}")
    })?;
    c.delete(&log).await?;
    Ok(())
}

/// A rejected append has no effect: an over-`max_len` append at epoch 5 does not raise the
/// fence, so a later append at epoch 3 succeeds (the fence is checked before `max_len`).
pub async fn rejected_append_does_not_raise_fence(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("fence-edge");
    c.append_many(&log, &[], AppendOptions::fenced(2)).await?;
    let over = AppendOptions::fenced(5).with_max_len(1);
    expect_kind(
        "over-max_len append at epoch 5",
        c.append_many(&log, &payloads(2), over).await,
        ErrorKind::LimitExceeded,
    )?;
    let first = c
        .append_many(&log, &payloads(1), AppendOptions::fenced(3))
        .await?;
    ensure(first == 0, || {
        format!("append at epoch 3 got cursor {first}")
    })?;
    expect_kind(
        "append at epoch 2 after epoch 3 was accepted",
        c.append_many(&log, &payloads(1), AppendOptions::fenced(2))
            .await,
        ErrorKind::Fenced,
    )?;
    c.delete(&log).await?;
    Ok(())
}

/// With `must_exist`, an append to a missing (or deleted) log is `NotFound` and creates nothing.
pub async fn append_must_exist_never_recreates_a_log(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("must-exist");
    let opts = AppendOptions::default().with_must_exist();
    expect_kind(
        "append to a missing log",
        c.append_many(&log, &payloads(1), opts).await,
        ErrorKind::NotFound,
    )?;
    ensure(c.len(&log).await?.is_none(), || {
        "a rejected must_exist append created the log".into()
    })?;
    c.append_many(&log, &[], AppendOptions::default()).await?;
    c.append_many(&log, &payloads(3), opts).await?;
    c.delete(&log).await?;
    expect_kind(
        "append after delete",
        c.append_many(&log, &payloads(1), opts).await,
        ErrorKind::NotFound,
    )?;
    ensure(c.len(&log).await?.is_none(), || {
        "a deleted log was recreated".into()
    })
}

/// `keys()` answers sorted ascending by bytes, each name once, keys and logs alike.
pub async fn keys_are_sorted_and_unique(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    if !c.capabilities().list_keys {
        return Err(Stop::capability("cache does not claim list_keys"));
    }
    let prefix = format!("{}/", unique("keys-order"));
    let mut names: Vec<String> = (0..40)
        .map(|i| format!("{prefix}{:02x}", (i * 37) % 251))
        .collect();
    for (i, n) in names.iter().enumerate() {
        if i % 2 == 0 {
            c.set(n, Bytes::from_static(b"v"), None).await?;
        } else {
            c.append(n, Bytes::from_static(b"e")).await?;
        }
    }
    names.sort();
    names.dedup();
    let got = c.keys(&prefix).await?;
    for n in &names {
        c.delete(n).await?;
    }
    ensure(got == names, || {
        format!("keys() = {got:?}, expected sorted unique {names:?}")
    })
}

/// A `keys()` prefix with characters outside the name alphabet is `InvalidInput`.
pub async fn keys_prefix_is_validated(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    if !c.capabilities().list_keys {
        return Err(Stop::capability("cache does not claim list_keys"));
    }
    for bad in ["a*", "a?", "[a]", "a b", "a\n", "{x}", "..", ".a", "a\\b"] {
        expect_kind(
            &format!("keys({bad:?})"),
            c.keys(bad).await,
            ErrorKind::InvalidInput,
        )?;
    }
    c.keys("").await?;
    Ok(())
}

/// A key and a log may not share a name: key operations on a log and log operations on a key
/// fail with `Conflict` and change nothing.
pub async fn key_and_log_cannot_share_a_name(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("shared-log");
    let key = unique("shared-key");
    c.append(&log, Bytes::from_static(b"e")).await?;
    c.set(&key, Bytes::from_static(b"v"), None).await?;
    expect_kind("get on a log", c.get(&log).await, ErrorKind::Conflict)?;
    expect_kind(
        "set on a log",
        c.set(&log, Bytes::from_static(b"v"), None).await,
        ErrorKind::Conflict,
    )?;
    expect_kind(
        "increment on a log",
        c.increment(&log, 1, None).await,
        ErrorKind::Conflict,
    )?;
    expect_kind(
        "append on a key",
        c.append(&key, Bytes::from_static(b"e")).await,
        ErrorKind::Conflict,
    )?;
    expect_kind(
        "read on a key",
        c.read(&key, 0, 10).await,
        ErrorKind::Conflict,
    )?;
    expect_kind("len on a key", c.len(&key).await, ErrorKind::Conflict)?;
    let len = c.len(&log).await?;
    ensure(len == Some(1), || format!("the log changed: len {len:?}"))?;
    let v = c.get(&key).await?;
    ensure(v.as_deref() == Some(&b"v"[..]), || {
        format!("the key changed: {v:?}")
    })?;
    c.delete(&log).await?;
    c.delete(&key).await?;
    Ok(())
}

async fn next_frame(sub: &mut durable_core::Subscription) -> Result<frame::Frame, Stop> {
    match within("frame", sub.next()).await? {
        Some(Delivery::Message(raw)) => frame::decode(&raw).ok_or_else(|| {
            Stop::Fail(format!(
                "announced bytes are not a frame: {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(80)])
            ))
        }),
        other => Err(Stop::Fail(format!("expected a frame, got {other:?}"))),
    }
}

/// After `append_announce`, a subscriber of the topic on the paired pubsub receives one frame
/// per non-empty batch naming its cursors, and the events are readable when it arrives.
pub async fn append_announce_wakes_paired_subscribers(b: Backend) -> CaseResult {
    let (c, p) = announcing(&b)?;
    let log = unique("announce");
    let topic = unique("announce-topic").replace('-', ".");
    let mut sub = p.subscribe(&topic).await?;
    c.append_many(&log, &[], AppendOptions::default()).await?;
    let first = c
        .append_announce(
            &log,
            &payloads(3),
            AppendOptions::default(),
            Announce::new(&topic, 64 * 1024),
        )
        .await?;
    let f = next_frame(&mut sub).await?;
    ensure(f.first == first && f.count == 3, || {
        format!(
            "frame names {}+{}, the append got {first}+3",
            f.first, f.count
        )
    })?;
    ensure(f.events.as_deref() == Some(&payloads(3)[..]), || {
        format!("frame events {:?}", f.events)
    })?;
    let slice = c.read(&log, first, 10).await?;
    ensure(slice.entries == payloads(3), || {
        "announced events were not readable when the frame arrived".into()
    })?;
    // An empty batch announces nothing; a big one announces only its range.
    c.append_announce(
        &log,
        &[],
        AppendOptions::default(),
        Announce::new(&topic, 64),
    )
    .await?;
    let big = c
        .append_announce(
            &log,
            &payloads(2),
            AppendOptions::default(),
            Announce::new(&topic, 1),
        )
        .await?;
    let f = next_frame(&mut sub).await?;
    ensure(f.first == big && f.count == 2 && f.events.is_none(), || {
        format!("expected a range-only frame {big}+2, got {f:?}")
    })?;
    c.delete(&log).await?;
    Ok(())
}

/// Frames of concurrent batches to one log arrive in cursor order.
pub async fn append_announce_frames_follow_cursor_order(b: Backend) -> CaseResult {
    let (c, p) = announcing(&b)?;
    let log = unique("announce-order");
    let topic = unique("announce-order").replace('-', ".");
    let mut sub = p.subscribe(&topic).await?;
    c.append_many(&log, &[], AppendOptions::default()).await?;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, log, topic) = (c.clone(), log.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                c.append_announce(
                    &log,
                    &payloads(2),
                    AppendOptions::default(),
                    Announce::new(&topic, 1024),
                )
                .await?;
            }
            Ok::<_, durable_core::Error>(())
        }));
    }
    for t in tasks {
        within("appender", t)
            .await?
            .map_err(|e| Stop::Fail(format!("appender panicked: {e}")))??;
    }
    let mut next = 0;
    while next < 200 {
        let f = next_frame(&mut sub).await?;
        ensure(f.first == next && f.count == 2, || {
            format!("expected frame at {next}, got {}+{}", f.first, f.count)
        })?;
        next += f.count;
    }
    c.delete(&log).await?;
    Ok(())
}

/// A rejected append (stale fence, `max_len`) announces nothing.
pub async fn rejected_append_announces_nothing(b: Backend) -> CaseResult {
    let (c, p) = announcing(&b)?;
    let log = unique("announce-reject");
    let topic = unique("announce-reject").replace('-', ".");
    let mut sub = p.subscribe(&topic).await?;
    c.append_many(&log, &[], AppendOptions::fenced(4)).await?;
    let a = Announce::new(&topic, 1024);
    expect_kind(
        "stale fence",
        c.append_announce(&log, &payloads(1), AppendOptions::fenced(3), a)
            .await,
        ErrorKind::Fenced,
    )?;
    expect_kind(
        "max_len",
        c.append_announce(
            &log,
            &payloads(3),
            AppendOptions::fenced(4).with_max_len(2),
            a,
        )
        .await,
        ErrorKind::LimitExceeded,
    )?;
    // A marker batch: the first frame the subscriber sees must be this one.
    let first = c
        .append_announce(&log, &payloads(1), AppendOptions::fenced(4), a)
        .await?;
    let f = next_frame(&mut sub).await?;
    ensure(f.first == first && f.count == 1, || {
        format!("a rejected append was announced: first frame {f:?}")
    })?;
    c.delete(&log).await?;
    Ok(())
}

/// Frames carry any bytes exactly: newlines, `\r`, NUL, and 1 MB payloads.
pub async fn announced_frames_are_injective(b: Backend) -> CaseResult {
    let (c, p) = announcing(&b)?;
    let log = unique("announce-bytes");
    let topic = unique("announce-bytes").replace('-', ".");
    let mut sub = p.subscribe(&topic).await?;
    c.append_many(&log, &[], AppendOptions::default()).await?;
    let awkward = vec![
        Bytes::from_static(b"line\nbreak"),
        Bytes::from_static(b"cr\r\nlf"),
        Bytes::from_static(b"nul\0byte"),
        Bytes::from_static(b"1 2,3\n"),
        Bytes::from(vec![b'\n'; 1 << 20]),
    ];
    let first = c
        .append_announce(
            &log,
            &awkward,
            AppendOptions::default(),
            Announce::new(&topic, 4 << 20),
        )
        .await?;
    let f = next_frame(&mut sub).await?;
    ensure(
        f.first == first && f.events.as_deref() == Some(&awkward[..]),
        || "announced events differ from the appended bytes".into(),
    )?;
    c.delete(&log).await?;
    Ok(())
}

/// Event data holding raw newlines, `\r` and NUL escapes, and 1 MB strings reaches an
/// observer exactly, through whichever wake-up path the backend uses.
pub async fn event_data_with_control_bytes_is_delivered_exactly(b: Backend) -> CaseResult {
    let mut config = test_config();
    config.max_wake_bytes = 4 << 20;
    let log = b.event_log(config);
    let id = run_id("bytes");
    log.create(&id, None).await?;
    let mut stream = log.observe(&id, ObserveOptions::default()).await?;
    let raw = [
        "{\n  \"text\": \"a\"\n}".to_owned(),
        "{\r\n\"text\":\"b\\r\\n\"}".to_owned(),
        "{\"text\":\"nul\\u0000\"}".to_owned(),
        format!("{{\"text\":\"{}\"}}", "x\\n".repeat(350_000)),
    ];
    let mut sent = Vec::new();
    for r in &raw {
        let data: durable_core::Json =
            serde_json::from_str(r).map_err(|e| Stop::Fail(format!("fixture is not JSON: {e}")))?;
        let e = NewEvent::new(EventKind::TextDelta, data);
        sent.push(e.data.as_bytes().to_vec());
        log.append(&id, &[e], None).await?;
    }
    log.append(&id, &[event(EventKind::Finish)], None).await?;
    let mut got = Vec::new();
    while let Some(e) = within("next", stream.next()).await? {
        got.push(e?);
    }
    ensure(got.len() == raw.len() + 1, || {
        format!(
            "observer got {} events, expected {}",
            got.len(),
            raw.len() + 1
        )
    })?;
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        ensure(g.data.as_bytes() == &s[..] && g.cursor == i as u64, || {
            format!("event {i} differs")
        })?;
    }
    log.delete(&id).await?;
    Ok(())
}

/// Deleting a run that is still producing fences its producer (its next append fails, the log
/// is never recreated from cursor 0) and ends every observer with `NotFound` or `Gone`.
pub async fn deleting_a_live_run_fences_its_producer(b: Backend) -> CaseResult {
    let mut config = test_config();
    config.idle_check = Duration::from_secs(3600);
    let log = b.event_log(config);
    let id = run_id("delete-live");
    log.create(&id, Some(1)).await?;
    let batch: Vec<NewEvent> = (0..100).map(super::support::delta).collect();
    log.append(&id, &batch, Some(1)).await?;
    let mut stream = log.observe(&id, ObserveOptions::default()).await?;
    for c in 0..100u64 {
        let e = within("next", stream.next()).await?;
        let e = e.ok_or_else(|| Stop::Fail("stream ended early".into()))??;
        ensure(e.cursor == c, || format!("cursor {} at {c}", e.cursor))?;
    }
    log.delete(&id).await?;
    expect_kind(
        "the producer's append after delete",
        log.append(&id, &[super::support::delta(100)], Some(1))
            .await,
        ErrorKind::NotFound,
    )?;
    match within("observer end", stream.next()).await? {
        Some(Err(e)) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Gone) => {}
        other => {
            return Err(Stop::Fail(format!(
                "observer of a deleted run got {other:?}, expected NotFound or Gone"
            )))
        }
    }
    ensure(log.len(&id).await?.is_none(), || {
        "the deleted log was recreated".into()
    })
}
