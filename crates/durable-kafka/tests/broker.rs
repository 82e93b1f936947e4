//! What the broker at `DURABLE_TEST_KAFKA_URL` serves, with plain rdkafka: the features this
//! crate relies on (idempotent `acks=all` produce, consumer-group commits, watermarks) and the
//! ones the crate README lists as missing on tansu 0.6.0 (transactions). Each test asserts
//! what tansu 0.6.0 does, so a broker upgrade that changes it shows up here.

#![allow(clippy::unwrap_used)] // test helpers panic on purpose

use std::io::Write;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(20);

fn url() -> Option<String> {
    durable_conformance::harness::backend_url("kafka")
}

fn unique(what: &str) -> String {
    format!(
        "broker-test.{what}.{}",
        durable_core::RunId::generate().as_str()
    )
}

fn config(url: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", url);
    c
}

async fn create_topic(url: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = config(url).create().unwrap();
    let r = admin
        .create_topics(
            [&NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
}

fn poll_one(c: &BaseConsumer) -> rdkafka::message::OwnedMessage {
    let deadline = std::time::Instant::now() + T;
    loop {
        assert!(std::time::Instant::now() < deadline, "nothing consumed");
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            return m.unwrap().detach();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_acks_all_produce_and_group_commits_work() {
    let Some(url) = url() else { return };
    let topic = unique("idem");
    create_topic(&url, &topic).await;
    let producer: FutureProducer = config(&url)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..3 {
        let d = producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&format!("m{i}")),
                Timeout::After(T),
            )
            .await
            .unwrap();
        assert_eq!((d.partition, d.offset), (0, i));
    }
    let group = unique("group");
    let consumer = |g: &str| -> BaseConsumer {
        config(&url)
            .set("group.id", g)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap()
    };
    let c1 = consumer(&group);
    c1.subscribe(&[&topic]).unwrap();
    let first = tokio::task::block_in_place(|| poll_one(&c1));
    assert_eq!(first.payload(), Some(&b"m0"[..]));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(1))
        .unwrap();
    c1.commit(&tpl, CommitMode::Sync).unwrap();
    drop(c1);
    // A new member of the group resumes at the committed offset.
    let c2 = consumer(&group);
    c2.subscribe(&[&topic]).unwrap();
    let next = tokio::task::block_in_place(|| poll_one(&c2));
    assert_eq!(next.payload(), Some(&b"m1"[..]));
    let (low, high) = c2.fetch_watermarks(&topic, 0, T).unwrap();
    assert_eq!((low, high), (0, 3));
}

/// tansu 0.6.0 answers `InitProducerId` with a transactional id but has no `EndTxn`:
/// committing a transaction fails. This crate uses no transactions.
#[tokio::test(flavor = "multi_thread")]
async fn transactions_cannot_be_committed() {
    let Some(url) = url() else { return };
    let topic = unique("txn");
    create_topic(&url, &topic).await;
    let producer: FutureProducer = config(&url)
        .set("transactional.id", unique("txn-id"))
        .create()
        .unwrap();
    tokio::task::block_in_place(|| producer.init_transactions(T)).unwrap();
    producer.begin_transaction().unwrap();
    // A record in the transaction, so committing needs AddPartitionsToTxn and EndTxn.
    let sent = producer
        .send(
            FutureRecord::to(&topic)
                .key("k")
                .payload("in a transaction"),
            Timeout::After(T),
        )
        .await;
    let outcome = match sent {
        Ok(_) => tokio::task::block_in_place(|| producer.commit_transaction(T)),
        Err((e, _)) => Err(e),
    };
    let err = outcome.expect_err("tansu 0.6.0 committed a transaction: update the README");
    let _ = writeln!(std::io::stderr(), "transactions on this broker: {err}");
}

/// `ListOffsets` by timestamp (`offsets_for_times`) should answer the first offset at or after
/// a time (2 here); tansu 0.6.0 answers the earliest offset (0) whatever the time, so lookups by
/// time are not supported there (this crate does not use them).
#[tokio::test(flavor = "multi_thread")]
async fn offsets_for_times_answers_the_earliest_offset_on_tansu() {
    let Some(url) = url() else { return };
    let topic = unique("times");
    create_topic(&url, &topic).await;
    let producer: FutureProducer = config(&url).create().unwrap();
    let base = durable_core::now_ms() as i64 - 60_000;
    for i in 0..3i64 {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("k")
                    .payload("x")
                    .timestamp(base + i * 1000),
                Timeout::After(T),
            )
            .await
            .unwrap();
    }
    let consumer: BaseConsumer = config(&url).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(base + 1500))
        .unwrap();
    let found = tokio::task::block_in_place(|| consumer.offsets_for_times(tpl, T)).unwrap();
    let offset = found.find_partition(&topic, 0).unwrap().offset();
    assert_eq!(
        offset,
        Offset::Offset(0),
        "ListOffsets by timestamp changed: a correct broker answers Offset(2); update the README"
    );
}
