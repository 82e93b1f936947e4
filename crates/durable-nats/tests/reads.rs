//! Reads by cursor of logs whose entries are interleaved in the stream with other runs'
//! messages: the unfiltered batch get skips them and the filtered batch covers the rest, and
//! every slice is exact, also while the log grows.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_core::{AppendOptions, ServerCache};
use durable_nats::NatsConfig;

fn entry(log: usize, k: usize) -> Bytes {
    Bytes::from(format!("log{log}-{k}"))
}

async fn cache() -> Option<Arc<dyn ServerCache>> {
    let url = durable_conformance::harness::backend_url("nats")?;
    let nats = NatsConfig::new(url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    Some(Arc::new(nats.server_cache()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_interleaved_logs_are_exact_from_every_offset() {
    let Some(cache) = cache().await else { return };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let logs: Vec<String> = (0..3).map(|i| format!("reads-{id}-{i}")).collect();
    let mut lens = [0usize; 3];
    // Batches of 1 to 3 entries, round robin: every log's entries are spread over the stream.
    for round in 0..200 {
        for (i, log) in logs.iter().enumerate() {
            let n = 1 + (round + i) % 3;
            let batch: Vec<Bytes> = (lens[i]..lens[i] + n).map(|k| entry(i, k)).collect();
            let first = cache
                .append_many(log, &batch, AppendOptions::default())
                .await
                .unwrap();
            assert_eq!(first, lens[i] as u64);
            lens[i] += n;
        }
    }
    for (i, log) in logs.iter().enumerate() {
        for from in (0..=lens[i]).step_by(37).chain([lens[i]]) {
            for limit in [1, 7, 512] {
                let s = cache.read(log, from as u64, limit).await.unwrap();
                assert_eq!(s.first, from as u64);
                assert_eq!(s.next, lens[i] as u64);
                let want: Vec<Bytes> = (from..lens[i].min(from + limit))
                    .map(|k| entry(i, k))
                    .collect();
                assert_eq!(s.entries, want, "log{i} from {from} limit {limit}");
            }
        }
    }
    for log in &logs {
        cache.delete(log).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_following_a_growing_log_reads_each_entry_once_in_order() {
    let Some(cache) = cache().await else { return };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let log = format!("reads-grow-{id}");
    let other = format!("reads-other-{id}");
    const N: usize = 2000;
    let writer = {
        let cache = cache.clone();
        let (log, other) = (log.clone(), other.clone());
        tokio::spawn(async move {
            let mut k = 0;
            while k < N {
                let n = (1 + k % 5).min(N - k);
                let batch: Vec<Bytes> = (k..k + n).map(|j| entry(0, j)).collect();
                cache
                    .append_many(&log, &batch, AppendOptions::default())
                    .await
                    .unwrap();
                cache
                    .append_many(&other, &[entry(1, k)], AppendOptions::default())
                    .await
                    .unwrap();
                k += n;
            }
        })
    };
    let mut got = Vec::with_capacity(N);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {}",
            got.len()
        );
        match cache.read(&log, got.len() as u64, 64).await {
            Ok(s) => {
                assert!(s.next >= (got.len() + s.entries.len()) as u64);
                got.extend(s.entries);
            }
            // Not created yet by the writer.
            Err(e) if e.kind() == durable_core::ErrorKind::NotFound && got.is_empty() => {
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    writer.await.unwrap();
    let want: Vec<Bytes> = (0..N).map(|k| entry(0, k)).collect();
    assert_eq!(got, want);
    cache.delete(&log).await.unwrap();
    cache.delete(&other).await.unwrap();
}

/// The sequence check of every write matches all the subjects of its log on the server, so a
/// log has one chunk subject per page of 256 entries, however it was appended: 600 single
/// appends make 3 chunk subjects, not 600 (with one per append, the 5,000th append of a log
/// took twice as long as its first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_has_a_subject_per_page_not_per_append() {
    let Some(url) = durable_conformance::harness::backend_url("nats") else {
        return;
    };
    let nats = NatsConfig::new(url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect");
    let cache = nats.server_cache();
    let log = format!("pages-{}", uuid::Uuid::new_v4().simple());
    for k in 0..600 {
        cache
            .append_many(&log, &[entry(0, k)], AppendOptions::default())
            .await
            .unwrap();
    }
    let js = async_nats::jetstream::new(nats.client().clone());
    let stream = js.get_stream("DURABLE_LOGS").await.unwrap();
    let info = stream
        .info_with_subjects(format!("durable.c.{log}.>"))
        .await
        .unwrap();
    use futures::TryStreamExt as _;
    let subjects: std::collections::HashMap<String, usize> = info.try_collect().await.unwrap();
    let mut names: Vec<&str> = subjects.keys().map(String::as_str).collect();
    names.sort_unstable();
    let base = format!("durable.c.{log}");
    assert_eq!(
        names,
        [
            format!("{base}.p.0"),
            format!("{base}.p.1"),
            format!("{base}.p.2")
        ],
    );
    assert_eq!(subjects.values().sum::<usize>(), 600);
    // Every entry reads back, from inside each page too.
    for from in [0, 1, 255, 256, 300, 511, 512, 599, 600] {
        let s = cache.read(&log, from, 1000).await.unwrap();
        let want: Vec<Bytes> = (from as usize..600).map(|k| entry(0, k)).collect();
        assert_eq!(s.entries, want, "from {from}");
    }
    cache.delete(&log).await.unwrap();
}

/// A read takes the pages after its first one all at once, each asked for as many chunks as
/// it can hold or as the chunks so far suggest: a log whose chunk sizes change from page to
/// page (one chunk for a page, then a chunk per entry) still reads back exactly, from every
/// offset and for every limit, when the guesses fall short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_across_pages_of_uneven_chunks_are_exact() {
    let Some(cache) = cache().await else { return };
    let log = format!("reads-uneven-{}", uuid::Uuid::new_v4().simple());
    let mut len = 0;
    let mut push = |n: usize| {
        let batch: Vec<Bytes> = (len..len + n).map(|k| entry(0, k)).collect();
        len += n;
        batch
    };
    // 0..300 in one append (chunks 0..256, 256..300), 300..700 one by one, then 700..1100 in
    // one append, then 1100..1150 in pairs.
    let mut batches = vec![push(300)];
    batches.extend((0..400).map(|_| push(1)));
    batches.push(push(400));
    batches.extend((0..25).map(|_| push(2)));
    for b in &batches {
        cache
            .append_many(&log, b, AppendOptions::default())
            .await
            .unwrap();
    }
    for from in (0..=len)
        .step_by(23)
        .chain([255, 256, 299, 300, 511, 512, 700, len])
    {
        for limit in [1, 100, 300, 512, 2000] {
            let s = cache.read(&log, from as u64, limit).await.unwrap();
            let want: Vec<Bytes> = (from..len.min(from + limit)).map(|k| entry(0, k)).collect();
            assert_eq!(s.entries, want, "from {from} limit {limit}");
            assert_eq!(s.next, len as u64);
        }
    }
    cache.delete(&log).await.unwrap();
}
