//! Counting what one agent turn costs on a backend, where the backend can tell:
//!
//! - PostgreSQL: statements from `pg_stat_statements` (the servers `cargo xtask` starts preload
//!   it), as `crates/durable-postgres`'s bench and README count them;
//! - Redis: commands seen by `MONITOR`, top-level only (a command a Lua script runs inside the
//!   server is no round trip; `INFO commandstats` counts those too, so it is not used);
//! - NATS: messages the client sent (`async_nats` connection statistics). An atomic batch
//!   publish is one message per event with one acknowledgement per batch, so this counts
//!   messages, not round trips: NATS tells no round-trip count;
//! - SQLite: transactions the writer committed (each an fsync of the WAL);
//! - otherwise none ("n/a" and why).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use durable_core::RunId;

/// How a backend's cost is counted.
pub(crate) enum Counter {
    /// Not countable, and why.
    None(&'static str),
    /// `pg_stat_statements` of the database.
    Postgres(durable_postgres::Postgres),
    /// `MONITOR` on `host:port` (`None`: the URL needs credentials or cannot be parsed).
    Redis(Option<String>),
    /// Messages sent by the NATS client.
    Nats(durable_nats::Nats),
    /// Commits of the SQLite writer.
    Sqlite(durable_sqlite::SqliteBackend),
}

/// A count: total, what it counts, and a breakdown (count, what) largest first.
pub(crate) struct Count {
    pub(crate) total: u64,
    pub(crate) method: String,
    /// What is counted, short (`statements`).
    pub(crate) unit: &'static str,
    pub(crate) detail: Vec<(u64, String)>,
}

/// A counter started before the turn.
pub(crate) enum Started {
    None(&'static str),
    Postgres,
    Redis {
        monitor: JoinHandle<Result<Vec<String>, String>>,
        addr: String,
        marker: String,
    },
    Nats(u64),
    Sqlite(u64, u64),
}

impl Counter {
    /// A `MONITOR` counter for a `redis://host:port[/db]` URL without credentials.
    pub(crate) fn redis(url: &str) -> Counter {
        let rest = url.strip_prefix("redis://").unwrap_or("");
        let addr = rest.split('/').next().unwrap_or("");
        let plain = !addr.is_empty() && !addr.contains('@');
        Counter::Redis(plain.then(|| addr.to_owned()))
    }

    /// Start counting (reset or read the counters).
    pub(crate) async fn start(&self) -> Result<Started, String> {
        Ok(match self {
            Counter::None(why) => Started::None(why),
            Counter::Redis(None) => {
                Started::None("MONITOR needs a redis:// URL without credentials")
            }
            Counter::Redis(Some(addr)) => {
                let marker = format!("durable-bench-end-{}", RunId::generate());
                let monitor = monitor(addr, &marker)?;
                Started::Redis {
                    monitor,
                    addr: addr.clone(),
                    marker,
                }
            }
            Counter::Postgres(pg) => {
                let ready = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                    .execute(pg.pool())
                    .await
                    .is_ok()
                    && sqlx::query("SELECT pg_stat_statements_reset()")
                        .execute(pg.pool())
                        .await
                        .is_ok();
                if ready {
                    Started::Postgres
                } else {
                    Started::None("the server does not preload pg_stat_statements")
                }
            }
            Counter::Nats(nats) => Started::Nats(
                nats.client()
                    .statistics()
                    .out_messages
                    .load(Ordering::Relaxed),
            ),
            Counter::Sqlite(sqlite) => {
                let s = sqlite.stats();
                Started::Sqlite(s.commits, s.writes)
            }
        })
    }

    /// Stop counting: what happened since [`Counter::start`], or why it cannot be told.
    pub(crate) async fn finish(&self, started: Started) -> Result<Result<Count, String>, String> {
        Ok(match (self, started) {
            (_, Started::None(why)) => Err(why.to_owned()),
            (Counter::Postgres(pg), Started::Postgres) => {
                let rows: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 120) \
                     FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database \
                     WHERE datname = current_database()) \
                     AND query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC",
                )
                .fetch_all(pg.pool())
                .await
                .map_err(|e| format!("pg_stat_statements: {e}"))?;
                let detail: Vec<(u64, String)> = rows
                    .into_iter()
                    .map(|(n, q)| (u64::try_from(n).unwrap_or(0), q))
                    .collect();
                Ok(Count {
                    total: detail.iter().map(|d| d.0).sum(),
                    method: "SQL statements (pg_stat_statements)".to_owned(),
                    unit: "statements",
                    detail,
                })
            }
            (
                Counter::Redis(_),
                Started::Redis {
                    monitor,
                    addr,
                    marker,
                },
            ) => {
                send_echo(&addr, &marker)?;
                let lines = monitor
                    .join()
                    .map_err(|_| "the MONITOR reader panicked".to_owned())??;
                let mut by_command: BTreeMap<String, u64> = BTreeMap::new();
                for line in &lines {
                    if let Some(cmd) = top_level_command(line) {
                        *by_command.entry(cmd).or_default() += 1;
                    }
                }
                let mut detail: Vec<(u64, String)> =
                    by_command.into_iter().map(|(c, n)| (n, c)).collect();
                detail.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                Ok(Count {
                    total: detail.iter().map(|d| d.0).sum(),
                    method: "Redis commands, top level (MONITOR)".to_owned(),
                    unit: "commands",
                    detail,
                })
            }
            (Counter::Nats(nats), Started::Nats(before)) => {
                let after = nats
                    .client()
                    .statistics()
                    .out_messages
                    .load(Ordering::Relaxed);
                Ok(Count {
                    total: after.saturating_sub(before),
                    method: "NATS messages sent (client statistics): an atomic batch \
                             publish sends one message per event and waits for one \
                             acknowledgement, so this counts messages, not round trips"
                        .to_owned(),
                    unit: "messages",
                    detail: Vec::new(),
                })
            }
            (Counter::Sqlite(sqlite), Started::Sqlite(commits, writes)) => {
                let s = sqlite.stats();
                Ok(Count {
                    total: s.commits.saturating_sub(commits),
                    method: "SQLite transactions (writer commits)".to_owned(),
                    unit: "commits",
                    detail: vec![(s.writes.saturating_sub(writes), "writes in them".to_owned())],
                })
            }
            _ => Err("counter mismatch".to_owned()),
        })
    }
}

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Open a `MONITOR` connection; its thread collects the lines it sees until one contains
/// `marker` (sent by [`send_echo`] after the turn).
fn monitor(addr: &str, marker: &str) -> Result<JoinHandle<Result<Vec<String>, String>>, String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("MONITOR connect: {e}"))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    conn.write_all(b"MONITOR\r\n")
        .map_err(|e| format!("MONITOR: {e}"))?;
    let mut reader = BufReader::new(conn);
    let mut ok = String::new();
    reader
        .read_line(&mut ok)
        .map_err(|e| format!("MONITOR: {e}"))?;
    if !ok.starts_with("+OK") {
        return Err(format!("MONITOR answered {:?}", ok.trim_end()));
    }
    let marker = marker.to_owned();
    Ok(std::thread::spawn(move || {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) => return Err("MONITOR connection closed".to_owned()),
                Ok(_) if line.contains(&marker) => return Ok(lines),
                Ok(_) => lines.push(line),
                Err(e) => return Err(format!("MONITOR read: {e}")),
            }
        }
    }))
}

/// `ECHO marker` on a connection of its own: the end of the counted window.
fn send_echo(addr: &str, marker: &str) -> Result<(), String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("ECHO connect: {e}"))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let cmd = format!("*2\r\n$4\r\nECHO\r\n${}\r\n{marker}\r\n", marker.len());
    conn.write_all(cmd.as_bytes())
        .map_err(|e| format!("ECHO: {e}"))?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .map_err(|e| format!("ECHO: {e}"))?;
    Ok(())
}

/// The command of a `MONITOR` line sent by a client, lowercased; `None` for a command a Lua
/// script ran (`+<time> [<db> lua] "cmd" …`) or a line that is no command.
fn top_level_command(line: &str) -> Option<String> {
    let rest = line.strip_prefix('+')?;
    let (_, rest) = rest.split_once(" [")?;
    let (source, rest) = rest.split_once("] ")?;
    if source.ends_with(" lua") {
        return None;
    }
    let rest = rest.strip_prefix('"')?;
    let (cmd, _) = rest.split_once('"').unwrap_or((rest.trim_end(), ""));
    Some(cmd.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_count_clients_not_scripts() {
        assert_eq!(
            top_level_command("+1700000000.1 [0 127.0.0.1:5000] \"EVALSHA\" \"ab\" \"1\"\r\n"),
            Some("evalsha".to_owned())
        );
        assert_eq!(
            top_level_command("+1700000000.1 [0 lua] \"incr\" \"x\"\r\n"),
            None
        );
        assert_eq!(top_level_command("-ERR nope\r\n"), None);
        assert_eq!(top_level_command("+"), None);
    }

    #[test]
    fn redis_urls_with_credentials_are_not_monitored() {
        assert!(matches!(
            Counter::redis("redis://127.0.0.1:6379/0"),
            Counter::Redis(Some(a)) if a == "127.0.0.1:6379"
        ));
        assert!(matches!(
            Counter::redis("redis://:secret@127.0.0.1:6379"),
            Counter::Redis(None)
        ));
        assert!(matches!(
            Counter::redis("rediss://h:1"),
            Counter::Redis(None)
        ));
    }
}
