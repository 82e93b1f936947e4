//! Benchmarks against a real PostgreSQL (`DURABLE_TEST_POSTGRES_URL`; skipped with a message if unset).
//!
//! `DURABLE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:15432/postgres cargo bench -p durable-postgres --bench postgres`
//!
//! - `postgres_append/sequential`: one task, `ServerCache::append` of one 16-byte delta at a time
//!   (one round trip each).
//! - `postgres_append/16_producers`: 16 tasks appending to the same log concurrently (G1 holds).
//! - `postgres_replay/10k`: `EventLog::observe(0)` of a finished 10,000-event run, to the end
//!   (`10k_read_batch_4096`: the same with `LogConfig::read_batch` 4,096 instead of 512;
//!   `10k_raw_reads`: `ServerCache::read` pages of 512 without decoding events).
//! - `postgres_e2e/writer_10k`: one run streaming 10,000 deltas through `EventLog::writer` (batches
//!   while an append is in flight) with one observer, PostgreSQL log + PostgreSQL PubSub, until the
//!   observer has the finish event.
//! - `postgres_e2e/durable_agent_10k`: a `DurableAgent` run of the scripted model streaming 10,000
//!   16-byte deltas on PostgreSQL only (log, wake-ups, run record, lease, checkpoint), drained by its
//!   observer: the multi-instance configuration end to end.
//! - `postgres_e2e/raw_insert_10k`: the floor to compare with: the same 10,000 payloads as plain
//!   `INSERT … SELECT … unnest` statements of 1,024 rows, one in flight (plus one `DELETE`).
//! - `latency`: append → observer receipt at 1 ms pacing, p50/p99 over 2,000 events (printed).
//! - statements per `DurableAgent` turn (3 steps, 2 tool calls, 1,000 deltas), counted from
//!   `pg_stat_statements` when the server preloads it (the servers `cargo xtask` starts do),
//!   else bounded by `pg_stat_database` transactions; printed per statement.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use durable_conformance::bench::{delta, finish, payload, percentile, runtime as rt};
use durable_conformance::services::env_url;
use durable_core::{EventLog, LogConfig, ObserveOptions, RunId, ServerCache};
use durable_postgres::{Postgres, PostgresConfig};
use futures::StreamExt;

static URL: OnceLock<String> = OnceLock::new();
const N: u64 = 10_000;

fn connect(rt: &tokio::runtime::Runtime) -> Postgres {
    let url = URL.get().expect("url").clone();
    rt.block_on(PostgresConfig::new(url).schema("durable_bench").connect())
        .expect("connect")
}

async fn event_log(pg: &Postgres) -> EventLog {
    let mut config = LogConfig::default();
    config.namespace = "bench".to_owned();
    EventLog::new(
        Arc::new(pg.server_cache().with_announce()),
        Arc::new(pg.pubsub().await.expect("pubsub")),
    )
    .with_config(config)
}

fn bench_append(c: &mut Criterion) {
    let rt = rt();
    let pg = connect(&rt);
    let cache = pg.server_cache();
    let shared: Arc<dyn ServerCache> = Arc::new(cache.clone());
    let mut g = c.benchmark_group("postgres_append");
    g.throughput(Throughput::Elements(N));
    g.bench_function("sequential", |b| {
        b.iter_batched(
            || format!("bench/seq/{}", RunId::generate()),
            |log| {
                rt.block_on(durable_conformance::bench::append_sequential(
                    &cache, &log, N,
                ))
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("16_producers", |b| {
        b.iter_batched(
            || format!("bench/par/{}", RunId::generate()),
            |log| {
                rt.block_on(durable_conformance::bench::append_concurrent(
                    shared.clone(),
                    &log,
                    N,
                    16,
                ))
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

fn bench_replay(c: &mut Criterion) {
    let rt = rt();
    let pg = connect(&rt);
    let log = rt.block_on(event_log(&pg));
    let run = RunId::generate();
    rt.block_on(async {
        log.create(&run, None).await.expect("create");
        let batch: Vec<_> = (0..N).map(|_| delta()).collect();
        log.append(&run, &batch, None).await.expect("append");
        log.append(&run, &[finish()], None).await.expect("finish");
    });
    let mut g = c.benchmark_group("postgres_replay");
    g.throughput(Throughput::Elements(N + 1));
    let cache = pg.server_cache();
    let name = log.log_name(&run);
    g.bench_function("10k_raw_reads", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut from = 0;
                while from < N + 1 {
                    from += cache
                        .read(&name, from, 512)
                        .await
                        .expect("read")
                        .entries
                        .len() as u64;
                }
            })
        });
    });
    g.bench_function("10k", |b| {
        b.iter(|| {
            rt.block_on(async {
                let s = log
                    .observe(&run, ObserveOptions::from(0))
                    .await
                    .expect("observe");
                let n = s.fold(0u64, |n, _| async move { n + 1 }).await;
                assert_eq!(n, N + 1);
            })
        });
    });
    // The same log through an EventLog reading pages of 4,096 (`LogConfig::read_batch`).
    let big_pages = rt.block_on(async {
        let mut config = LogConfig::default();
        config.namespace = "bench".to_owned();
        config.read_batch = 4096;
        EventLog::new(
            Arc::new(pg.server_cache().with_announce()),
            Arc::new(pg.pubsub().await.expect("pubsub")),
        )
        .with_config(config)
    });
    g.bench_function("10k_read_batch_4096", |b| {
        b.iter(|| {
            rt.block_on(async {
                let s = big_pages
                    .observe(&run, ObserveOptions::from(0))
                    .await
                    .expect("observe");
                let n = s.fold(0u64, |n, _| async move { n + 1 }).await;
                assert_eq!(n, N + 1);
            })
        });
    });
    g.finish();
    rt.block_on(log.delete(&run)).expect("delete");
}

fn bench_e2e(c: &mut Criterion) {
    let rt = rt();
    let pg = connect(&rt);
    let log = rt.block_on(event_log(&pg));
    let mut g = c.benchmark_group("postgres_e2e");
    g.throughput(Throughput::Elements(N));
    g.bench_function("writer_10k", |b| {
        b.iter_batched(
            || {
                let run = RunId::generate();
                rt.block_on(log.create(&run, None)).expect("create");
                let stream = rt
                    .block_on(log.observe(&run, ObserveOptions::from(0)))
                    .expect("observe");
                let obs =
                    rt.spawn(async move { stream.fold(0u64, |n, _| async move { n + 1 }).await });
                (run, obs)
            },
            |(run, obs)| {
                rt.block_on(async {
                    let w = log.writer(run.clone(), None, 4096);
                    for _ in 0..N {
                        w.send(delta()).await.expect("send");
                    }
                    w.send(finish()).await.expect("finish");
                    w.flush().await.expect("flush");
                    assert_eq!(obs.await.expect("observer"), N + 1);
                    log.delete(&run).await.expect("delete");
                })
            },
            BatchSize::PerIteration,
        );
    });
    // The floor: the same 10,000 payloads as plain batched INSERTs of 1,024 rows (the
    // writer's largest batch), one statement in flight, no fence, no cursor row, no NOTIFY.
    rt.block_on(
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS raw_events \
             (run text, cursor bigint, payload bytea, PRIMARY KEY (run, cursor))",
        )
        .execute(pg.pool()),
    )
    .expect("raw table");
    let rows: Vec<Vec<u8>> = (0..1024).map(|_| payload().to_vec()).collect();
    g.bench_function("raw_insert_10k", |b| {
        b.to_async(&rt).iter(|| async {
            let run = RunId::generate().to_string();
            let mut cursor = 0i64;
            while cursor < N as i64 {
                let n = (N as i64 - cursor).min(1024);
                let cursors: Vec<i64> = (cursor..cursor + n).collect();
                sqlx::query(
                    "INSERT INTO raw_events (run, cursor, payload) \
                     SELECT $1, c, p FROM unnest($2::bigint[], $3::bytea[]) AS t(c, p)",
                )
                .bind(&run)
                .bind(&cursors)
                .bind(&rows[..n as usize])
                .execute(pg.pool())
                .await
                .expect("insert");
                cursor += n;
            }
            sqlx::query("DELETE FROM raw_events WHERE run = $1")
                .bind(&run)
                .execute(pg.pool())
                .await
                .expect("delete");
        });
    });
    let mut config = LogConfig::default();
    config.namespace = "bench-agent".to_owned();
    config.retention = Duration::from_secs(5);
    let agent = durable_core::agent::Agent::builder()
        .id("bench")
        .model(durable_core::agent::ScriptedModel::new([
            durable_core::agent::Turn::new().deltas(N as usize, "0123456789abcdef"),
        ]))
        .build()
        .expect("agent");
    let durable = rt.block_on(async {
        durable_core::agent::DurableAgent::builder(agent)
            .cache(pg.server_cache().with_announce())
            .pubsub(pg.pubsub().await.expect("pubsub"))
            .store(pg.workflow_store())
            .log_config(config)
            .build()
            .expect("durable agent")
    });
    g.bench_function("durable_agent_10k", |b| {
        b.to_async(&rt).iter(|| async {
            let run = durable
                .stream("go", durable_core::agent::StreamOptions::new())
                .await
                .expect("stream");
            let n = run
                .fold(0u64, |n, e| async move {
                    e.expect("event");
                    n + 1
                })
                .await;
            assert!(n > N);
        });
    });
    g.finish();
}

fn report_latency(_: &mut Criterion) {
    ping_baseline();
    let multi = rt();
    latency("2 worker threads", &multi);
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    latency("current thread", &single);
}

/// The machine's own floor: a bare `SELECT 1` round trip at the same 1 ms pacing, same pool.
fn ping_baseline() {
    let rt = rt();
    let pg = connect(&rt);
    let mut sorted = rt.block_on(async {
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        let mut out = Vec::with_capacity(2000);
        for _ in 0..2000 {
            pace.tick().await;
            let t = Instant::now();
            let _: i32 = sqlx::query_scalar("SELECT 1")
                .fetch_one(pg.pool())
                .await
                .expect("select");
            out.push(t.elapsed());
        }
        out
    });
    sorted.sort();
    eprintln!(
        "baseline: bare SELECT 1 round trip at 1 ms pacing over {} calls: p50 {:?}, p99 {:?}, max {:?}",
        sorted.len(),
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1]
    );
}

/// Transactions the database committed or rolled back so far (every statement this crate
/// sends runs in its own transaction, so the difference counts statements). Sessions report
/// their counts to `pg_stat_database` when they have been idle for 10 s at the latest
/// (PostgreSQL's `PGSTAT_IDLE_INTERVAL`), so this first waits that out: a server-side
/// reporting interval, not a race being papered over.
async fn transactions(pg: &Postgres) -> i64 {
    tokio::time::sleep(Duration::from_secs(11)).await;
    sqlx::query_scalar(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .fetch_one(pg.pool())
    .await
    .expect("pg_stat_database")
}

/// SQL statements of one `DurableAgent` turn: 3 steps (2 tool calls), 1,000 deltas. Counted
/// from `pg_stat_database` around the run (run the bench alone on its server).
fn report_statements(_: &mut Criterion) {
    use durable_core::agent::{
        Agent, DurableAgent, FnTool, ScriptedModel, StreamOptions, ToolContext, ToolError, Turn,
    };
    let rt = rt();
    let pg = connect(&rt);
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Args {
        city: String,
    }
    let tool = FnTool::new(
        "weather",
        "Weather",
        |a: Args, _ctx: ToolContext| async move {
            Ok::<_, ToolError>(serde_json::json!({ "city": a.city }))
        },
    );
    let turns = vec![
        Turn::new().deltas(500, "0123456789abcdef").tool_call(
            "c0",
            "weather",
            serde_json::json!({ "city": "Paris" }),
        ),
        Turn::new().deltas(250, "0123456789abcdef").tool_call(
            "c1",
            "weather",
            serde_json::json!({ "city": "Oslo" }),
        ),
        Turn::new().deltas(250, "0123456789abcdef"),
    ];
    let agent = Agent::builder()
        .id("stmts")
        .model(ScriptedModel::new(turns))
        .tool(tool)
        .build()
        .expect("agent");
    let mut config = LogConfig::default();
    config.namespace = "bench-stmts".to_owned();
    let (statements, events) = rt.block_on(async {
        let durable = DurableAgent::builder(agent)
            .cache(pg.server_cache().with_announce())
            .pubsub(pg.pubsub().await.expect("pubsub"))
            .store(pg.workflow_store())
            .log_config(config)
            .build()
            .expect("durable agent");
        // Exact per-statement counts where the server preloads pg_stat_statements (the
        // servers durable-services starts do); otherwise transactions of the whole database,
        // an upper bound (autovacuum and other sessions count too).
        // The extension may live in any schema (usually `public`, off this search_path): its
        // functions and view are named through it. Only this database's counters are reset.
        let ext: Option<String> = match sqlx::query(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements WITH SCHEMA public",
        )
        .execute(pg.pool())
        .await
        {
            Ok(_) => sqlx::query_scalar(
                "SELECT quote_ident(extnamespace::regnamespace::text) FROM pg_extension \
                 WHERE extname = 'pg_stat_statements'",
            )
            .fetch_optional(pg.pool())
            .await
            .expect("pg_extension"),
            Err(_) => None,
        };
        let exact = ext.is_some();
        let ext = ext.unwrap_or_default();
        let before = if exact {
            sqlx::query(&format!(
                "SELECT {ext}.pg_stat_statements_reset(0, (SELECT oid FROM pg_database \
                 WHERE datname = current_database()), 0)"
            ))
            .execute(pg.pool())
            .await
            .expect("pg_stat_statements_reset");
            0
        } else {
            transactions(&pg).await
        };
        let run = durable
            .stream("go", StreamOptions::new())
            .await
            .expect("stream");
        let events = run
            .fold(0u64, |n, e| async move {
                e.expect("event");
                n + 1
            })
            .await;
        if !exact {
            // The first pg_stat_database read counts itself.
            return (Err(transactions(&pg).await - before - 1), events);
        }
        let rows: Vec<(i64, String)> = sqlx::query_as(&format!(
            "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 160) \
             FROM {ext}.pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database \
             WHERE datname = current_database()) \
             AND query NOT LIKE '%pg_stat_statements_reset%' ORDER BY calls DESC"
        ))
        .fetch_all(pg.pool())
        .await
        .expect("pg_stat_statements");
        (Ok(rows), events)
    });
    let head = format!(
        "statements per DurableAgent turn (3 steps, 2 tool calls, 1,000 deltas, {events} events)"
    );
    match statements {
        Ok(rows) => {
            let total: i64 = rows.iter().map(|r| r.0).sum();
            eprintln!("{head}: {total} (pg_stat_statements):");
            for (calls, query) in rows {
                eprintln!("  {calls:>5}  {query}");
            }
        }
        Err(upper) => eprintln!("{head}: at most {upper} (pg_stat_database transactions)"),
    }
}

fn latency(flavor: &str, rt: &tokio::runtime::Runtime) {
    let pg = connect(rt);
    // Percentiles per event: criterion reports means of samples, so measure directly.
    let samples = rt.block_on(async {
        let log = event_log(&pg).await;
        let run = RunId::generate();
        log.create(&run, None).await.expect("create");
        let mut stream = log
            .observe(&run, ObserveOptions::from(0))
            .await
            .expect("observe");
        let ev = [delta()];
        let mut pace = tokio::time::interval(Duration::from_millis(1));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Vec::with_capacity(2000);
        for _ in 0..2000 {
            pace.tick().await;
            let t = Instant::now();
            log.append(&run, &ev, None).await.expect("append");
            stream.next().await.expect("event").expect("ok");
            out.push(t.elapsed());
        }
        log.delete(&run).await.expect("delete");
        out
    });
    let mut sorted = samples;
    sorted.sort();
    eprintln!(
        "postgres latency append→observer at 1 ms pacing over {} events ({flavor}): p50 {:?}, p99 {:?}, max {:?}",
        sorted.len(),
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1]
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5));
    targets = report_statements, report_latency, bench_append, bench_replay, bench_e2e
}

fn main() {
    let Some(url) = env_url("postgres") else {
        eprintln!("postgres bench skipped: DURABLE_TEST_POSTGRES_URL is not set");
        return;
    };
    let _ = URL.set(url);
    benches();
    Criterion::default().configure_from_args().final_summary();
}
