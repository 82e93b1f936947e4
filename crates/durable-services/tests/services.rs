//! The helpers against std-only stand-in servers, and `redis` against a real `redis-server`
//! when one is installed.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use durable_services::{
    env_url, env_url_var, find_binary, http_get, llama_ready, nats, nats_ready, nats_venv, redis,
    redis_ready, spare_port, tcp_ready, wait_until, RedisOptions,
};

/// A loopback server that answers each of `replies.len()` connections with the next reply,
/// after reading the request's first line.
fn serve(replies: Vec<&'static str>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for reply in replies {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    port
}

#[test]
fn spare_port_is_free_to_bind() {
    let port = spare_port().unwrap();
    assert_ne!(port, 0);
    TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
fn tcp_ready_tells_a_listener_from_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(tcp_ready(port));
    drop(listener);
    assert!(!tcp_ready(port));
}

#[test]
fn http_get_returns_status_and_body() {
    let port = serve(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}",
    ]);
    assert_eq!(
        http_get(port, "/health"),
        Some((200, "{\"status\":\"ok\"}".to_owned()))
    );
}

#[test]
fn llama_ready_only_once_the_model_is_loaded() {
    let port = serve(vec![
        "HTTP/1.1 503 Service Unavailable\r\n\r\n{\"error\":\"loading model\"}",
        "HTTP/1.1 200 OK\r\n\r\n{\"status\":\"ok\"}",
    ]);
    assert!(!llama_ready(port));
    assert!(llama_ready(port));
}

#[test]
fn redis_ready_wants_pong() {
    let port = serve(vec!["-LOADING Redis is loading\r\n", "+PONG\r\n"]);
    assert!(!redis_ready(port));
    assert!(redis_ready(port));
}

#[test]
fn wait_until_polls_until_the_condition_or_the_limit() {
    let mut calls = 0;
    assert!(wait_until(Duration::from_secs(5), || {
        calls += 1;
        calls == 3
    }));
    assert_eq!(calls, 3);
    assert!(!wait_until(Duration::from_millis(50), || false));
}

#[test]
fn find_binary_searches_path_then_extra_dirs() {
    assert!(find_binary("sh", &[]).is_some());
    let dir = std::env::temp_dir().join(format!("durable-services-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("durable-services-probe"), b"").unwrap();
    let found = find_binary("durable-services-probe", std::slice::from_ref(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found, Some(dir.join("durable-services-probe")));
    assert_eq!(find_binary("durable-services-no-such-binary", &[]), None);
}

#[test]
fn env_url_reads_the_backend_variable_and_ignores_empty_values() {
    std::env::set_var("DURABLE_TEST_SERVICESSELFTEST_URL", "redis://127.0.0.1:1");
    assert_eq!(
        env_url("servicesselftest").as_deref(),
        Some("redis://127.0.0.1:1")
    );
    std::env::set_var("DURABLE_TEST_SERVICESSELFTEST_EMPTY", "");
    assert_eq!(env_url_var("DURABLE_TEST_SERVICESSELFTEST_EMPTY"), None);
}

#[test]
fn redis_server_starts_restarts_and_is_removed_on_drop() {
    if find_binary("redis-server", &[std::path::PathBuf::from("/usr/bin")]).is_none() {
        eprintln!("skipped: redis-server is not installed");
        return;
    }
    let mut server = redis(&RedisOptions { appendonly: true }).unwrap();
    let (port, dir) = (server.port(), server.dir().to_path_buf());
    let pid = server.pid().unwrap();
    assert!(redis_ready(port));
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(pid));
    assert!(redis_ready(port));
    drop(server);
    assert!(!dir.exists());
    assert!(!tcp_ready(port));
}

#[test]
fn postgres_starts_restarts_and_is_removed_on_drop() {
    if durable_services::find_binary("initdb", &[]).is_none()
        && !std::path::Path::new("/usr/lib/postgresql").is_dir()
    {
        eprintln!("skipped: PostgreSQL is not installed");
        return;
    }
    let mut server =
        durable_services::postgres(&durable_services::PostgresOptions::default()).unwrap();
    let (port, dir) = (server.port(), server.dir().to_path_buf());
    let pid = server.pid().unwrap();
    assert!(durable_services::postgres_ready(port));
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(pid));
    assert!(durable_services::postgres_ready(port));
    drop(server);
    assert!(!dir.exists());
    assert!(!tcp_ready(port));
}

#[test]
fn nats_starts_restarts_on_its_store_and_stops() {
    if !nats_venv().join("bin/nats-server").is_file() && find_binary("nats-server", &[]).is_none() {
        eprintln!("SKIPPED: nats-server is not installed");
        return;
    }
    let mut server = nats().unwrap();
    let port = server.port();
    assert!(nats_ready(port));
    assert!(server.dir().join("nats.conf").is_file());
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    assert!(nats_ready(port));
    assert!(server.dir().join("jetstream").is_dir());
    drop(server);
    assert!(wait_until(Duration::from_secs(5), || !tcp_ready(port)));
}

/// Skip (or, with `DURABLE_TEST_REQUIRE=1`, fail) when a server cannot be started here.
fn started<T>(what: &str, r: Result<T, String>) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(why) if std::env::var("DURABLE_TEST_REQUIRE").is_ok_and(|v| v == "1") => {
            panic!("{what}: {why}")
        }
        Err(why) => {
            eprintln!("skipped: {what}: {why}");
            None
        }
    }
}

#[test]
fn a_redis_cluster_has_three_masters_each_with_a_replica() {
    let Some(cluster) = started(
        "redis cluster",
        durable_services::redis_cluster(&durable_services::RedisClusterOptions::default()),
    ) else {
        return;
    };
    let nodes = cluster.topology().unwrap();
    assert_eq!(nodes.len(), 6);
    let masters: Vec<_> = nodes
        .iter()
        .filter(|n| n.master && n.serves_slots)
        .collect();
    assert_eq!(masters.len(), 3);
    for m in masters {
        assert!(nodes
            .iter()
            .any(|n| n.master_id.as_deref() == Some(m.id.as_str())));
    }
    assert_eq!(cluster.url().split(',').count(), 6);
}

#[test]
fn a_nats_cluster_elects_a_jetstream_meta_leader() {
    let Some(cluster) = started("nats cluster", durable_services::nats_cluster(3)) else {
        return;
    };
    assert_eq!(cluster.ports().len(), 3);
    for i in 0..3 {
        let (status, body) = http_get(cluster.monitor_port(i).unwrap(), "/jsz").unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("meta_cluster"), "{body}");
    }
}
