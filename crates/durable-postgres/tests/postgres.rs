//! PostgreSQL-specific behaviour beyond the conformance suite: schemas isolate applications,
//! expired rows are physically purged, configuration is validated before anything connects.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code panics on purpose

mod support;

use std::time::Duration;

use bytes::Bytes;
use durable_conformance::harness::require_backends;
use durable_core::{AppendOptions, ErrorKind, ServerCache};
use durable_postgres::PostgresConfig;

const DEADLINE: Duration = Duration::from_secs(10);

fn url_or_skip() -> Option<String> {
    let url = support::url();
    if url.is_none() {
        assert!(!require_backends(), "DURABLE_TEST_POSTGRES_URL is not set");
        eprintln!("SKIPPED: DURABLE_TEST_POSTGRES_URL is not set");
    }
    url
}

#[tokio::test]
async fn two_schemas_share_a_database_without_seeing_each_other() {
    let Some(url) = url_or_skip() else { return };
    let a = PostgresConfig::new(&url)
        .schema(format!("{}_a", support::schema("iso")))
        .connect()
        .await
        .unwrap()
        .server_cache();
    let b = PostgresConfig::new(&url)
        .schema(format!("{}_b", support::schema("iso")))
        .connect()
        .await
        .unwrap()
        .server_cache();
    a.set("app/key", Bytes::from_static(b"a"), None)
        .await
        .unwrap();
    a.append_many(
        "app/log",
        &[Bytes::from_static(b"x")],
        AppendOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(b.get("app/key").await.unwrap(), None);
    assert_eq!(b.len("app/log").await.unwrap(), None);
    assert!(b.keys("app/").await.unwrap().is_empty());
    assert_eq!(a.keys("app/").await.unwrap(), ["app/key", "app/log"]);
}

#[tokio::test]
async fn purge_removes_expired_logs_and_their_events() {
    let Some(url) = url_or_skip() else { return };
    let pg = PostgresConfig::new(&url)
        .schema(support::schema("purge"))
        .connect()
        .await
        .unwrap();
    let cache = pg.server_cache();
    let log = "purge/run/events";
    let batch: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("{i}"))).collect();
    cache
        .append_many(log, &batch, AppendOptions::default())
        .await
        .unwrap();
    assert!(cache.expire(log, Duration::from_millis(1)).await.unwrap());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while cache.len(log).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "log never expired");
        tokio::task::yield_now().await;
    }
    // Expired is invisible at once; purge makes it gone from the tables.
    let rows = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT (SELECT count(*) FROM cache_items WHERE name = $1) \
                  + (SELECT count(*) FROM log_events WHERE name = $1)",
        )
        .bind(log)
        .fetch_one(pg.pool())
        .await
        .unwrap()
    };
    while rows().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "rows never purged");
        pg.purge(1000).await.unwrap();
    }
}

#[tokio::test]
async fn bad_schema_is_invalid_input_before_connecting() {
    for schema in ["a;drop", "Upper", "\"q\"", "pg_catalog", ""] {
        let e = PostgresConfig::new("postgres://nobody@127.0.0.1:1/x")
            .schema(schema)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{schema}: {e}");
        assert_eq!(e.backend(), "postgres");
    }
}

#[tokio::test]
async fn unreachable_server_is_retryable_unavailable() {
    let e = PostgresConfig::new("postgres://nobody:secret@127.0.0.1:1/x")
        .acquire_timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(e.is_retryable());
    assert!(!format!("{e} {e:?}").contains("secret"));
}

/// A TCP proxy in front of the server of `url`: the URL through it, and a counter whose every
/// increment cuts the connections open through it (the client reads EOF; the server sees the
/// client gone only when it next writes); later connections pass.
async fn cuttable(url: &str) -> (String, tokio::sync::watch::Sender<u64>) {
    let scheme_end = url.find("://").unwrap() + 3;
    let rest = &url[scheme_end..];
    let host_start = rest.find('@').map_or(0, |i| i + 1);
    let host_end = host_start
        + rest[host_start..]
            .find(['/', '?'])
            .unwrap_or(rest.len() - host_start);
    let target = rest[host_start..host_end].to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxied = format!(
        "{}{}{}{}",
        &url[..scheme_end],
        &rest[..host_start],
        listener.local_addr().unwrap(),
        &rest[host_end..]
    );
    let (cut, cuts) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let mut cuts = cuts.clone();
            let born = *cuts.borrow_and_update();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = cuts.wait_for(|c| *c != born) => {}
                }
            });
        }
    });
    (proxied, cut)
}

/// An append whose connection breaks after the server received it is never sent again here:
/// the server may run it (here it does, once the row it waits for is free), so a second send
/// would store the batch twice (it once did, for a recovered run). The error is retryable
/// `Unavailable`, the caller decides (the run writer compares the log's length), and the
/// batch is in the log once.
#[tokio::test]
async fn append_whose_reply_is_lost_is_never_sent_twice() {
    let Some(url) = url_or_skip() else { return };
    let schema = support::schema("lost");
    let log = "lost/run/events";
    let one = |s: &'static [u8]| vec![Bytes::from_static(s)];
    let direct = PostgresConfig::new(&url)
        .schema(&schema)
        .connect()
        .await
        .unwrap();
    let (proxied, cut) = cuttable(&url).await;
    let cache = PostgresConfig::new(proxied)
        .schema(&schema)
        .max_connections(1)
        .connect()
        .await
        .unwrap()
        .server_cache();
    cache
        .append_many(log, &one(b"0"), AppendOptions::default())
        .await
        .unwrap();
    // Hold the log's row: the next append waits on the server, sent and unanswered.
    let mut tx = direct.pool().begin().await.unwrap();
    let me: i32 =
        sqlx::query_scalar("SELECT pg_backend_pid() FROM cache_items WHERE name = $1 FOR UPDATE")
            .bind(log)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    let append = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .append_many(log, &one(b"1"), AppendOptions::default())
                .await
        }
    });
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let appender: i32 = loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(me)
        .fetch_optional(direct.pool())
        .await
        .unwrap();
        if let Some(pid) = waiting {
            break pid;
        }
        assert!(tokio::time::Instant::now() < deadline, "append never sent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    cut.send_modify(|c| *c += 1);
    // The server runs the append it was holding; nothing sends it a second time (a second
    // send would wait for the row too, and land now).
    tx.commit().await.unwrap();
    let err = append
        .await
        .unwrap()
        .expect_err("the append's connection was cut");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable(), "{err}");
    loop {
        let active: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active')",
        )
        .bind(appender)
        .fetch_one(direct.pool())
        .await
        .unwrap();
        if !active {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "append never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(direct.server_cache().len(log).await.unwrap(), Some(2));
    // The cut connection is gone; the next statement runs on a new one.
    assert_eq!(cache.len(log).await.unwrap(), Some(2));
}
