//! The `durable` binary as a real OS process: start with a config file, wait for its address,
//! kill it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "durable-server-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A unique key namespace, so tests sharing a Redis or Postgres server never see each other.
pub fn namespace(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{tag}{}x{nanos}", std::process::id())
}

/// A running `durable serve`.
pub struct Serve {
    child: Child,
    pub url: String,
}

impl Serve {
    /// `durable serve --config <config> <args…>`, once it prints its address (deadline 60 s).
    pub fn start(config: &Path, args: &[&str]) -> Self {
        match Self::try_start(config, args) {
            Ok(s) => s,
            Err(e) => panic!("durable serve did not start: {e}"),
        }
    }

    /// As [`Serve::start`], or the process's stderr if it exits first.
    pub fn try_start(config: &Path, args: &[&str]) -> Result<Self, String> {
        Self::try_start_with_env(config, args, &[])
    }

    /// As [`Serve::try_start`], with extra environment variables.
    pub fn try_start_with_env(
        config: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_durable"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        match line.trim().strip_prefix("listening on ") {
            Some(url) => {
                let mut err = child.stderr.take().unwrap();
                // Drain stderr so a chatty server never blocks on a full pipe.
                std::thread::spawn(move || {
                    let mut sink = Vec::new();
                    let _ = err.read_to_end(&mut sink);
                });
                Ok(Self {
                    child,
                    url: url.to_owned(),
                })
            }
            None => {
                let _ = child.kill();
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// SIGKILL: no shutdown, no flush, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `durable serve --config <config>` that must fail: its exit status and stderr.
pub fn serve_fails(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_durable"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "durable serve accepted a bad config");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The test server URL in `var`, or `None` (skip) unless `DURABLE_TEST_REQUIRE=1`.
pub fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if super::require() => panic!("DURABLE_TEST_REQUIRE=1 and {var} is not set"),
        _ => {
            eprintln!("skipped: {var} is not set");
            None
        }
    }
}
