//! [`ServerCache`](durable_core::ServerCache) cases.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{AppendOptions, ErrorKind, ServerCache, ServerCacheExt};

use super::support::{eventually, expect_kind, unique};
use crate::harness::{ensure, skip_capability, within, Backend, CaseResult};

fn cache(b: &Backend) -> Result<Arc<dyn ServerCache>, crate::Stop> {
    b.cache_under_test()
        .ok_or_else(|| crate::Stop::missing(crate::Part::Cache))
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("p{i}"))
}

/// `get` after `set` returns the value; `delete` removes it and says whether it existed.
pub async fn cache_set_get_delete(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let k = unique("kv");
    c.set(&k, Bytes::from_static(b"v1"), None).await?;
    let got = c.get(&k).await?;
    ensure(got.as_deref() == Some(&b"v1"[..]), || {
        format!("get after set: {got:?}")
    })?;
    c.set(&k, Bytes::from_static(b"v2"), None).await?;
    let got = c.get(&k).await?;
    ensure(got.as_deref() == Some(&b"v2"[..]), || {
        format!("set did not replace: {got:?}")
    })?;
    ensure(c.delete(&k).await?, || {
        "delete of an existing key returned false".into()
    })?;
    ensure(c.get(&k).await?.is_none(), || {
        "key still there after delete".into()
    })?;
    ensure(!c.delete(&k).await?, || {
        "delete of a missing key returned true".into()
    })
}

/// A key set with a TTL disappears after it; one without stays.
pub async fn cache_ttl_expires(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    if !c.capabilities().ttl {
        return skip_capability("capability ttl is off");
    }
    let (short, long) = (unique("ttl"), unique("ttl"));
    c.set(
        &short,
        Bytes::from_static(b"x"),
        Some(Duration::from_millis(300)),
    )
    .await?;
    c.set(&long, Bytes::from_static(b"y"), None).await?;
    ensure(c.get(&short).await?.is_some(), || {
        "value gone before its TTL".into()
    })?;
    eventually("ttl key expires", Duration::from_secs(10), || async {
        Ok(c.get(&short).await?.is_none())
    })
    .await?;
    ensure(c.get(&long).await?.is_some(), || {
        "key without TTL expired".into()
    })?;
    c.delete(&long).await?;
    Ok(())
}

/// Names with globs, wildcards, whitespace or `..` are `InvalidInput`; nothing is written and
/// stored data is untouched.
pub async fn cache_rejects_invalid_names(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let base = unique("names");
    let good = format!("{base}/good");
    c.set(&good, Bytes::from_static(b"keep"), None).await?;
    for bad in [
        format!("{base}/a b"),
        format!("{base}/*"),
        format!("{base}/?"),
        format!("{base}/[x]"),
        format!("{base}/{{tag}}"),
        format!("{base}/a>b"),
        format!("{base}/../x"),
        format!("{base}/\n"),
        String::new(),
        format!("{base}/{}", "x".repeat(600)),
    ] {
        expect_kind(
            "set",
            c.set(&bad, Bytes::new(), None).await,
            ErrorKind::InvalidInput,
        )?;
        expect_kind("get", c.get(&bad).await, ErrorKind::InvalidInput)?;
        expect_kind(
            "append",
            c.append(&bad, Bytes::new()).await,
            ErrorKind::InvalidInput,
        )?;
        expect_kind("read", c.read(&bad, 0, 1).await, ErrorKind::InvalidInput)?;
        expect_kind("delete", c.delete(&bad).await, ErrorKind::InvalidInput)?;
    }
    let got = c.get(&good).await?;
    ensure(got.as_deref() == Some(&b"keep"[..]), || {
        format!("stored value changed: {got:?}")
    })?;
    if c.capabilities().list_keys {
        let keys = c.keys(&base).await?;
        ensure(keys == vec![good.clone()], || {
            format!("unexpected keys written: {keys:?}")
        })?;
    }
    c.delete(&good).await?;
    Ok(())
}

/// Concurrent increments never lose an update.
pub async fn cache_increment_is_atomic(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let k = unique("ctr");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, k) = (c.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..100 {
                seen.push(c.increment(&k, 1, None).await?);
            }
            Ok::<_, durable_core::Error>(seen)
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        let seen = within("increments", t)
            .await?
            .map_err(|e| crate::Stop::Fail(e.to_string()))??;
        all.extend(seen);
    }
    ensure(
        all.len() == 800 && all.iter().all(|v| (1..=800).contains(v)),
        || {
            format!(
                "increments returned {} distinct values, want 1..=800",
                all.len()
            )
        },
    )?;
    let last = c.increment(&k, -800, None).await?;
    ensure(last == 0, || format!("final value {last}, want 0"))?;
    c.delete(&k).await?;
    Ok(())
}

/// An empty append creates the log: `len` goes from `None` to `Some(0)`.
pub async fn empty_append_creates_log(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("log");
    ensure(c.len(&log).await?.is_none(), || "fresh log exists".into())?;
    let first = c.append_many(&log, &[], AppendOptions::default()).await?;
    ensure(first == 0, || format!("empty append returned {first}"))?;
    ensure(c.len(&log).await? == Some(0), || {
        "log not created by empty append".into()
    })?;
    let slice = c.read(&log, 0, 10).await?;
    ensure(slice.entries.is_empty() && slice.next == 0, || {
        format!("read of empty log: {slice:?}")
    })?;
    c.delete(&log).await?;
    ensure(c.len(&log).await?.is_none(), || {
        "log survives delete".into()
    })
}

/// `append_many` returns the first cursor of a contiguous batch.
pub async fn append_many_is_contiguous(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("log");
    let batch1: Vec<Bytes> = (0..3).map(payload).collect();
    let batch2: Vec<Bytes> = (3..5).map(payload).collect();
    let f1 = c
        .append_many(&log, &batch1, AppendOptions::default())
        .await?;
    let f2 = c
        .append_many(&log, &batch2, AppendOptions::default())
        .await?;
    let f3 = c.append(&log, payload(5)).await?;
    ensure((f1, f2, f3) == (0, 3, 5), || {
        format!("first cursors {f1}, {f2}, {f3}; want 0, 3, 5")
    })?;
    let slice = c.read(&log, 0, 100).await?;
    let want: Vec<Bytes> = (0..6).map(payload).collect();
    ensure(slice.entries == want && slice.next == 6, || {
        format!("read back {slice:?}")
    })?;
    c.delete(&log).await?;
    Ok(())
}

/// G1 at the trait level: 8 concurrent appenders × 500 appends get cursors 0..4000, each once,
/// and the entry at each cursor is the one its appender was given.
pub async fn concurrent_appends_get_contiguous_cursors(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("log");
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (c, log) = (c.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(500);
            for i in 0..500u64 {
                let p = Bytes::from(format!("{t}:{i}"));
                got.push((c.append(&log, p.clone()).await?, p));
            }
            Ok::<_, durable_core::Error>(got)
        }));
    }
    let mut by_cursor = std::collections::BTreeMap::new();
    for t in tasks {
        let got = crate::harness::within_for(Duration::from_secs(120), "appenders", t)
            .await?
            .map_err(|e| crate::Stop::Fail(e.to_string()))??;
        for (cursor, p) in got {
            ensure(by_cursor.insert(cursor, p).is_none(), || {
                format!("cursor {cursor} given twice")
            })?;
        }
    }
    ensure(by_cursor.keys().copied().eq(0..4000), || {
        "cursors are not exactly 0..4000".into()
    })?;
    let mut from = 0;
    while from < 4000 {
        let slice = c.read(&log, from, 1000).await?;
        for (i, e) in slice.entries.iter().enumerate() {
            let cursor = from + i as u64;
            ensure(by_cursor.get(&cursor) == Some(e), || {
                format!("entry at {cursor} is not its appender's")
            })?;
        }
        ensure(!slice.entries.is_empty(), || {
            format!("read at {from} returned nothing")
        })?;
        from += slice.entries.len() as u64;
    }
    c.delete(&log).await?;
    Ok(())
}

/// `read(from, limit)` returns entries by cursor with the log's length.
pub async fn read_returns_entries_by_cursor(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("log");
    let all: Vec<Bytes> = (0..10).map(payload).collect();
    c.append_many(&log, &all, AppendOptions::default()).await?;
    let s = c.read(&log, 3, 4).await?;
    ensure(
        s.first == 3 && s.entries == all[3..7] && s.next == 10,
        || format!("read(3,4) = {s:?}"),
    )?;
    let s = c.read(&log, 8, 100).await?;
    ensure(s.entries == all[8..] && s.next == 10, || {
        format!("read(8,100) = {s:?}")
    })?;
    let s = c.read(&log, 0, 0).await?;
    ensure(s.entries.is_empty() && s.next == 10, || {
        format!("read(0,0) = {s:?}")
    })?;
    c.delete(&log).await?;
    Ok(())
}

/// Reading at the end is empty; past it is `OffsetAhead`.
pub async fn read_past_end_is_offset_ahead(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("log");
    let all: Vec<Bytes> = (0..3).map(payload).collect();
    c.append_many(&log, &all, AppendOptions::default()).await?;
    let s = c.read(&log, 3, 10).await?;
    ensure(s.entries.is_empty() && s.next == 3, || {
        format!("read at end = {s:?}")
    })?;
    expect_kind(
        "read past end",
        c.read(&log, 4, 10).await,
        ErrorKind::OffsetAhead,
    )?;
    c.delete(&log).await?;
    Ok(())
}

/// A missing log: `read` is `NotFound`, `len` is `None`.
pub async fn read_missing_log_is_not_found(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("log");
    expect_kind("read", c.read(&log, 0, 10).await, ErrorKind::NotFound)?;
    ensure(c.len(&log).await?.is_none(), || {
        "len of a missing log is not None".into()
    })
}

/// An append with a lower fence than the log has seen is `Fenced` and stores nothing.
pub async fn stale_fence_is_rejected(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("log");
    c.append_many(&log, &[payload(0)], AppendOptions::fenced(2))
        .await?;
    expect_kind(
        "stale append",
        c.append_many(&log, &[payload(1)], AppendOptions::fenced(1))
            .await,
        ErrorKind::Fenced,
    )?;
    expect_kind(
        "stale empty append",
        c.append_many(&log, &[], AppendOptions::fenced(1)).await,
        ErrorKind::Fenced,
    )?;
    ensure(c.len(&log).await? == Some(1), || {
        "fenced append stored something".into()
    })?;
    c.append_many(&log, &[], AppendOptions::fenced(3)).await?;
    expect_kind(
        "append after fence raised",
        c.append_many(&log, &[payload(1)], AppendOptions::fenced(2))
            .await,
        ErrorKind::Fenced,
    )?;
    let f = c
        .append_many(&log, &[payload(1)], AppendOptions::fenced(3))
        .await?;
    ensure(f == 1, || format!("current owner's append got cursor {f}"))?;
    c.delete(&log).await?;
    Ok(())
}

/// An append that would exceed `max_len` is `LimitExceeded` and stores nothing.
pub async fn log_max_len_is_enforced(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    let log = unique("log");
    let opts = AppendOptions::default().with_max_len(5);
    let three: Vec<Bytes> = (0..3).map(payload).collect();
    c.append_many(&log, &three, opts).await?;
    expect_kind(
        "append over max",
        c.append_many(&log, &three, opts).await,
        ErrorKind::LimitExceeded,
    )?;
    ensure(c.len(&log).await? == Some(3), || {
        "rejected append stored something".into()
    })?;
    let f = c.append_many(&log, &three[..2], opts).await?;
    ensure(f == 3, || format!("append up to max got cursor {f}"))?;
    c.delete(&log).await?;
    Ok(())
}

/// After `expire`, the log and everything the backend stores for it are gone.
pub async fn log_expire_removes_everything(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    if !c.capabilities().ttl {
        return skip_capability("capability ttl is off");
    }
    let prefix = unique("exp");
    let log = format!("{prefix}/log");
    c.append_many(&log, &[payload(0), payload(1)], AppendOptions::fenced(1))
        .await?;
    ensure(c.expire(&log, Duration::from_millis(300)).await?, || {
        "expire said the log is missing".into()
    })?;
    eventually("log expires", Duration::from_secs(10), || async {
        Ok(c.len(&log).await?.is_none())
    })
    .await?;
    if c.capabilities().list_keys {
        let keys = c.keys(&prefix).await?;
        ensure(keys.is_empty(), || {
            format!("keys left after expiry: {keys:?}")
        })?;
    }
    ensure(!c.expire(&log, Duration::from_secs(1)).await?, || {
        "expire of a missing log returned true".into()
    })
}

/// `keys(prefix)` lists keys and logs under the prefix, and nothing else.
pub async fn keys_lists_everything_under_prefix(b: Backend) -> CaseResult {
    let c = cache(&b)?;
    if !c.capabilities().list_keys {
        return skip_capability("capability list_keys is off");
    }
    let prefix = unique("keys");
    let (k, log, other) = (
        format!("{prefix}/a"),
        format!("{prefix}/b"),
        format!("{prefix}x/c"),
    );
    c.set(&k, Bytes::from_static(b"1"), None).await?;
    c.append_many(&log, &[payload(0)], AppendOptions::fenced(1))
        .await?;
    c.set(&other, Bytes::from_static(b"1"), None).await?;
    let keys = c.keys(&format!("{prefix}/")).await?;
    ensure(keys == vec![k.clone(), log.clone()], || {
        format!("keys = {keys:?}")
    })?;
    for key in [&k, &log, &other] {
        c.delete(key).await?;
    }
    let keys = c.keys(&prefix).await?;
    ensure(keys.is_empty(), || format!("keys after delete = {keys:?}"))
}
