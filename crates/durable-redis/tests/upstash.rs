//! The Upstash REST cache: the whole conformance suite (cache on Upstash, the other parts from
//! memory), the emulation's protocol details, and a cross-check of the emulation with the
//! official `@upstash/redis` client.
//!
//! With `DURABLE_TEST_UPSTASH_URL` and `DURABLE_TEST_UPSTASH_TOKEN` the tests use that server;
//! otherwise they start the emulation (`support/upstash_emulator.rs`) in front of the Redis at
//! `DURABLE_TEST_REDIS_URL`.

#![cfg(feature = "upstash")]
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use durable_conformance::harness::require_backends;
use durable_conformance::services::{env_url, env_url_var};
use durable_core::{ErrorKind, ServerCache, ServerCacheExt};
use durable_redis::UpstashConfig;
use support::upstash_emulator;

/// `(url, token)` of the Upstash endpoint under test.
async fn endpoint() -> Result<(String, String), String> {
    if let (Some(url), Some(token)) = (
        env_url_var("DURABLE_TEST_UPSTASH_URL"),
        env_url_var("DURABLE_TEST_UPSTASH_TOKEN"),
    ) {
        return Ok((url, token));
    }
    let redis = env_url("redis").ok_or(
        "neither DURABLE_TEST_UPSTASH_URL/_TOKEN nor DURABLE_TEST_REDIS_URL (for the emulation) is set",
    )?;
    let emulator = upstash_emulator::start(&redis, "test-token").await?;
    Ok((emulator.url, emulator.token))
}

async fn backend() -> Result<durable_conformance::Backend, String> {
    let (url, token) = endpoint().await?;
    let cache = UpstashConfig::new(url, token)
        .key_prefix("durable-upstash-test:")
        .build()
        .map_err(|e| e.to_string())?;
    Ok(durable_conformance::Backend::new("upstash").cache(cache))
}

durable_conformance::suite!(backend);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn upstash_errors_keep_their_kinds() {
    runtime().block_on(async {
        let (url, token) = match endpoint().await {
            Ok(e) => e,
            Err(why) if require_backends() => panic!("{why}"),
            Err(why) => return eprintln!("skipped: {why}"),
        };
        let cache = UpstashConfig::new(&url, &token).build().unwrap();
        let log = format!("upstash-kinds-{}", uuid_like());
        cache.append(&log, "x".into()).await.unwrap();
        // A key operation on a log's name is the contract's `Conflict`, over REST too.
        let e = cache.get(&log).await.unwrap_err();
        assert_eq!((e.kind(), e.backend()), (ErrorKind::Conflict, "upstash"));
        cache.delete(&log).await.unwrap();
        let e = UpstashConfig::new(&url, "wrong")
            .build()
            .unwrap()
            .get("k")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        let e = UpstashConfig::new("http://127.0.0.1:1", &token)
            .build()
            .unwrap()
            .get("k")
            .await
            .unwrap_err();
        assert!(
            e.kind() == ErrorKind::Unavailable && e.is_retryable(),
            "{e}"
        );
        assert!(!format!("{cache:?}").contains(&token));
    });
}

#[test]
fn emulation_speaks_the_upstash_protocol() {
    runtime().block_on(async {
        let Some(redis) = env_url("redis") else {
            assert!(!require_backends(), "DURABLE_TEST_REDIS_URL is not set");
            return eprintln!("skipped: DURABLE_TEST_REDIS_URL is not set");
        };
        let emu = upstash_emulator::start(&redis, "tok").await.unwrap();
        let http = reqwest::Client::new();
        let post = |path: &str, body: &str, token: Option<&str>| {
            let mut r = http
                .post(format!("{}{path}", emu.url))
                .body(body.to_owned());
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send()
        };
        let k = format!("emu-{}", uuid_like());
        for path in ["/", "/pipeline", "/multi-exec"] {
            let r = post(path, "[]", None).await.unwrap();
            assert_eq!(r.status(), 401, "{path} is not behind auth");
        }
        let r = post("/", &format!(r#"["SET","{k}","v"]"#), Some("tok"))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), r#"{"result":"OK"}"#);
        let r = post("/", &format!(r#"["INCR","{k}"]"#), Some("tok"))
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert!(
            body["error"].as_str().unwrap().starts_with("ERR "),
            "{body}"
        );
        let r = post(
            "/pipeline",
            &format!(r#"[["GET","{k}"],["INCR","{k}"],["DEL","{k}"]]"#),
            Some("tok"),
        )
        .await
        .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(body[0]["result"], "v");
        assert!(body[1]["error"].is_string());
        assert_eq!(body[2]["result"], 1);
    });
}

#[test]
fn official_upstash_client_accepts_the_emulation() {
    let client_dir = env_url_var("DURABLE_TEST_UPSTASH_CLIENT_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/durable/tools/npm"))
        })
        .filter(|d| d.join("node_modules/@upstash/redis").is_dir());
    let (Some(client_dir), Some(redis)) = (client_dir, env_url("redis")) else {
        let why = "needs DURABLE_TEST_REDIS_URL and @upstash/redis (cargo xtask test installs it)";
        assert!(!require_backends(), "{why}");
        return eprintln!("skipped: {why}");
    };
    let rt = runtime();
    let emu = rt
        .block_on(upstash_emulator::start(&redis, "node-token"))
        .unwrap();
    let script = durable_services::manifest_dir(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/upstash_check.cjs");
    // The emulation runs on `rt`'s worker threads while node talks to it.
    let out = Command::new("node")
        .arg(&script)
        .env("UPSTASH_CLIENT_DIR", &client_dir)
        .env("UPSTASH_URL", &emu.url)
        .env("UPSTASH_TOKEN", &emu.token)
        .env("KEY_PREFIX", format!("node-check-{}:", uuid_like()))
        .output()
        .expect("node is installed");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "@upstash/redis rejected the emulation:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(rt);
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
