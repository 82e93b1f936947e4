//! A real browser: headless Chromium loads the demo page, which follows a run with
//! `EventSource`; a proxy drops the page's event connection mid-answer; the browser reconnects
//! with `Last-Event-ID` and the page ends with the full answer, without a duplicate.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use durable_core::agent::DurableAgent;
use durable_server::{demo, DurableServer};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn chromium() -> Result<PathBuf, String> {
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("`node` is not on PATH (it drives the browser)".to_owned());
    }
    if let Some(p) = std::env::var_os("DURABLE_TEST_CHROMIUM") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "DURABLE_TEST_CHROMIUM={} is not a file",
                p.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no chromium (set DURABLE_TEST_CHROMIUM, or run `cargo xtask test`)".to_owned()
        })
}

/// A proxy to `upstream` that cuts the first `/events` response after `budget` bytes.
async fn dropping_proxy(upstream: SocketAddr, budget: usize) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cuts = Arc::new(AtomicU64::new(0));
    let counter = cuts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let mut first = vec![0u8; 4096];
                let Ok(n) = cr.read(&mut first).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&first[..n]).into_owned();
                let cut = head.starts_with("GET ")
                    && head.lines().next().is_some_and(|l| l.contains("/events"))
                    && counter
                        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                if sw.write_all(&first[..n]).await.is_err() {
                    return;
                }
                let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut sent = 0usize;
                let mut buf = [0u8; 256];
                while let Ok(k @ 1..) = sr.read(&mut buf).await {
                    let take = if cut { k.min(budget - sent) } else { k };
                    if cw.write_all(&buf[..take]).await.is_err() {
                        break;
                    }
                    sent += take;
                    if cut && sent >= budget {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (addr, cuts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_resumes_after_a_dropped_connection() {
    let chromium = match chromium() {
        Ok(c) => c,
        Err(why) if require() => panic!("DURABLE_TEST_REQUIRE=1 and the browser is missing: {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let server = DurableServer::builder()
        .agent(DurableAgent::new(
            demo::agent(Duration::from_millis(30)).unwrap(),
        ))
        .retry(Duration::from_millis(100))
        .build()
        .unwrap();
    let url = serve(server.router().merge(demo::page())).await;
    let upstream: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let (proxy, cuts) = dropping_proxy(upstream, 2800).await;
    let profile = std::env::temp_dir().join(format!("durable-chromium-{}", std::process::id()));
    let mut browser = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{proxy}/"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(browser.stderr.take().unwrap()).lines();
    let ws = within("DevTools URL", async {
        loop {
            let line = lines.next_line().await.unwrap().expect("chromium exited");
            if let Some(u) = line.strip_prefix("DevTools listening on ") {
                return u.trim().to_owned();
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let script =
        durable_services::manifest_dir(env!("CARGO_MANIFEST_DIR")).join("tests/js/cdp.mjs");
    let out = within(
        "the page finishes",
        tokio::process::Command::new("node")
            .arg("--experimental-websocket")
            .arg(&script)
            .arg(&ws)
            .arg("15000")
            .output(),
    )
    .await
    .unwrap();
    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        cuts.load(Ordering::SeqCst),
        1,
        "the event connection was dropped"
    );
    assert_eq!(page["status"], "done", "{page}");
    assert_eq!(page["out"], demo::DEMO_ANSWER, "{page}");
    assert!(page["reconnects"].as_u64().unwrap() >= 1, "{page}");
    let log = page["log"].as_str().unwrap();
    assert!(!log.contains("duplicate"), "{page}");
    // The cut lands in the answer's text (its deltas start at cursor 7).
    let lost_at: u64 = log
        .split("connection lost after cursor ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(lost_at > 7, "{page}");
}
