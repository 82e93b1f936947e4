//! Subject safety (G8) against a real NATS server: a name can never address another name's
//! subjects. Names that differ only where a subject would be split (`.`, `/`, `:`, `_`) stay
//! apart; a crafted name that spells another log's entry subject reads nothing of it; names
//! with wildcards or whitespace are rejected before they reach the server, and nothing stored
//! changes.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use bytes::Bytes;
use durable_core::{AppendOptions, ErrorKind, PubSub, RunId, ServerCache, ServerCacheExt};
use durable_nats::{Nats, NatsConfig};

async fn nats() -> Option<Nats> {
    let url = durable_conformance::harness::backend_url("nats")?;
    Some(
        NatsConfig::new(url)
            .subject_prefix("durable-g8")
            .names("G8_LOGS", "G8_QUEUES", "G8_RUNS")
            .connect()
            .await
            .unwrap(),
    )
}

fn scope() -> String {
    format!("g8/{}", RunId::generate())
}

#[tokio::test]
async fn separators_never_merge_two_names() {
    let Some(nats) = nats().await else { return };
    let cache = nats.server_cache();
    let s = scope();
    let names = [
        format!("{s}/a.b"),
        format!("{s}/a_db"),
        format!("{s}/a/b"),
        format!("{s}/a:b"),
        format!("{s}/a_b"),
        format!("{s}/a__b"),
        format!("{s}/a_sb"),
    ];
    for (i, n) in names.iter().enumerate() {
        cache
            .set(n, Bytes::from(i.to_string()), None)
            .await
            .unwrap();
    }
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            cache.get(n).await.unwrap(),
            Some(Bytes::from(i.to_string())),
            "{n}"
        );
    }
    let mut listed = cache.keys(&format!("{s}/")).await.unwrap();
    listed.sort();
    let mut want: Vec<String> = names.to_vec();
    want.sort();
    assert_eq!(listed, want);
}

#[tokio::test]
async fn a_crafted_name_cannot_read_another_log() {
    let Some(nats) = nats().await else { return };
    let cache = nats.server_cache();
    let s = scope();
    let victim = format!("{s}/events");
    cache
        .append(&victim, Bytes::from_static(b"secret"))
        .await
        .unwrap();
    // Names that spell the victim's entry, head and wildcard subjects under this crate's
    // layout (`<prefix>.c.<token>.p.<page>`): each is a name of its own, with nothing in it.
    for crafted in [
        format!("{victim}.p.0"),
        format!("{victim}.e.0"),
        format!("{victim}.p"),
        format!("{victim}.h"),
        format!("{victim}.v"),
        format!("{s}/events.e"),
    ] {
        let err = cache.read(&crafted, 0, 10).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{crafted}");
        assert_eq!(cache.get(&crafted).await.unwrap(), None, "{crafted}");
        assert_eq!(cache.len(&crafted).await.unwrap(), None, "{crafted}");
    }
    let slice = cache.read(&victim, 0, 10).await.unwrap();
    assert_eq!(slice.entries, vec![Bytes::from_static(b"secret")]);
}

#[tokio::test]
async fn wildcards_and_whitespace_are_rejected_and_nothing_changes() {
    let Some(nats) = nats().await else { return };
    let (cache, pubsub) = (nats.server_cache(), nats.pubsub());
    let s = scope();
    let log = format!("{s}/events");
    cache.append(&log, Bytes::from_static(b"0")).await.unwrap();
    let before = cache.keys(&format!("{s}/")).await.unwrap();
    for bad in [
        format!("{s}/*"),
        format!("{s}/>"),
        format!("{s}/events.*"),
        format!("{s}/events.>"),
        format!("{s}/a b"),
        format!("{s}/a\tb"),
        format!("{s}/a\nb"),
        format!("{s}/a\0b"),
        String::new(),
    ] {
        let kinds = [
            cache.get(&bad).await.unwrap_err().kind(),
            cache
                .set(&bad, Bytes::new(), None)
                .await
                .unwrap_err()
                .kind(),
            cache.delete(&bad).await.unwrap_err().kind(),
            cache
                .append_many(&bad, &[Bytes::new()], AppendOptions::default())
                .await
                .unwrap_err()
                .kind(),
            cache.read(&bad, 0, 1).await.unwrap_err().kind(),
            pubsub.publish(&bad, Bytes::new()).await.unwrap_err().kind(),
            pubsub.subscribe(&bad).await.unwrap_err().kind(),
            pubsub.subscribe_group(&bad, "g").await.unwrap_err().kind(),
            pubsub.subscribe_group("t", &bad).await.unwrap_err().kind(),
        ];
        assert!(
            kinds.iter().all(|k| *k == ErrorKind::InvalidInput),
            "{bad:?}: {kinds:?}"
        );
    }
    for bad in ["a.b", "a*", "a>", "a b", "../x"] {
        assert_eq!(
            RunId::new(bad).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{bad}"
        );
    }
    assert_eq!(cache.keys(&format!("{s}/")).await.unwrap(), before);
    assert_eq!(cache.len(&log).await.unwrap(), Some(1));
}
