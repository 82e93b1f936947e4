//! A minimal OTLP/HTTP receiver for tests: a plain HTTP/1.1 server on a loopback port that
//! stores each request's path and body and answers `200 {}`, standing in for a collector.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The largest body the receiver accepts (bigger requests close the connection).
const MAX_BODY: usize = 64 << 20;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct OtlpRequest {
    /// The request path (`/v1/traces`, `/v1/metrics`).
    pub path: String,
    /// The raw body (JSON or protobuf, as the exporter sent it).
    pub body: Vec<u8>,
}

type Shared = Arc<(Mutex<Vec<OtlpRequest>>, Condvar)>;

/// A running receiver; its threads live until the process exits.
#[derive(Debug)]
pub struct OtlpReceiver {
    port: u16,
    got: Shared,
}

impl OtlpReceiver {
    /// Listen on a spare loopback port.
    ///
    /// # Errors
    /// If no port can be bound.
    pub fn start() -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let got: Shared = Arc::default();
        let store = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let store = store.clone();
                std::thread::spawn(move || serve(conn, &store));
            }
        });
        Ok(Self { port, got })
    }

    /// The base URL to give an exporter (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<OtlpRequest> {
        self.got
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The bodies received on `path`, as text (JSON exporters).
    pub fn bodies(&self, path: &str) -> Vec<String> {
        bodies(&self.requests(), path)
    }

    /// Wait until `cond` holds for the requests received, or `limit` elapses (woken by each
    /// request, never polling). `cond` runs under the receiver's lock: it must not call the
    /// receiver's other methods (use [`bodies`] on its argument).
    pub fn wait_until(
        &self,
        limit: Duration,
        mut cond: impl FnMut(&[OtlpRequest]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + limit;
        let (lock, changed) = &*self.got;
        let mut got = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if cond(&got) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            got = changed
                .wait_timeout(got, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The bodies of `requests` on `path`, as text (JSON exporters).
pub fn bodies(requests: &[OtlpRequest], path: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.path == path)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

fn serve(conn: TcpStream, store: &Shared) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        if len > MAX_BODY {
            return;
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        {
            let (lock, changed) = &**store;
            lock.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(OtlpRequest { path, body });
            changed.notify_all();
        }
        let reply =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if out.write_all(reply).is_err() {
            return;
        }
    }
}
