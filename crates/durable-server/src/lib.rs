#![doc = include_str!("../README.md")]

pub mod a2a;
pub mod auth;
pub mod chat;
pub mod client;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod problem;
mod routes;
mod server;
pub mod sse;

pub use auth::{AccessControl, Authorizer, RunTokens, TrustedHeader};
pub use problem::Problem;
pub use routes::{RUN_ID_HEADER, RUN_TOKEN_HEADER};
pub use server::{
    DurableServer, DurableServerBuilder, Mounted, ServerConfig, DEFAULT_BODY_LIMIT,
    DEFAULT_HEARTBEAT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRY,
};

/// Serve `router` on `listener` until `shutdown` completes (in-flight SSE responses end with
/// the process; their runs go on, and clients resume with `Last-Event-ID`).
///
/// HTTP/1.1 on hyper's connection directly (what `axum::serve` runs, minus its HTTP/2
/// detection), so the per-connection settings are ours:
/// - `TCP_NODELAY`: SSE frames are small writes, and Nagle's algorithm would hold one back
///   until the client's (delayed, up to 40 ms) ACK of the previous one.
/// - A read buffer of at most [`MAX_REQUEST_HEAD`] bytes: a request head (line and headers)
///   must fit in it (a larger one is answered `431`), and an open stream keeps 8 KiB for
///   reading instead of the 16 KiB hyper's adaptive buffer grows to after the first request.
///   At 1,000 open streams that is 8 MiB.
///
/// After `shutdown`, the listener closes and each connection finishes its current response
/// and closes. This returns when all have, or after [`SHUTDOWN_GRACE`]: an SSE response does
/// not finish by itself, so open streams end with the process.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_grace(listener, router, shutdown, SHUTDOWN_GRACE).await
}

/// How long [`serve`] waits after its shutdown signal for responses in flight to finish.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn serve_with_grace(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_REQUEST_HEAD);
    let builder = std::sync::Arc::new(builder);
    // Every connection task holds a sender; `recv` answers `None` once all have ended.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: transient.
                    // Pause like `axum::serve` does instead of spinning or giving up.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!(error = %e, "TCP_NODELAY not set");
        }
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let mut closing = closing_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let conn = builder
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            let signalled = async {
                // An error means `serve` is gone: closing as well.
                let _ = closing.wait_for(|c| *c).await;
            };
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = signalled => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended");
            }
            drop(done);
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    drop(done_tx);
    let open = tokio::time::timeout(grace, done_rx.recv()).await.is_err();
    if open {
        tracing::info!(
            "shutting down with responses still open (SSE streams); clients resume with Last-Event-ID"
        );
    }
    Ok(())
}

/// The most bytes of a request head (request line and headers) [`serve`] reads.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An open SSE response does not hold the server past its grace period, and a short
    /// request in flight still gets its answer.
    #[tokio::test]
    async fn shutdown_waits_for_answers_not_for_open_streams() {
        let started = std::sync::Arc::new(tokio::sync::Notify::new());
        let slow_started = started.clone();
        let router = axum::Router::new()
            .route(
                "/forever",
                axum::routing::get(|| async {
                    axum::response::sse::Sse::new(futures::stream::pending::<
                        Result<axum::response::sse::Event, std::convert::Infallible>,
                    >())
                }),
            )
            .route(
                "/slow",
                axum::routing::get(move || async move {
                    slow_started.notify_one();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    "done"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(super::serve_with_grace(
            listener,
            router,
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /forever HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // Once the slow request is being served, signal shutdown.
        tokio::time::timeout(Duration::from_secs(5), started.notified())
            .await
            .expect("the slow request reaches its handler");
        stop.send(()).unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer))
            .await
            .expect("the slow answer")
            .unwrap();
        assert!(String::from_utf8_lossy(&answer).ends_with("done"));
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns after its grace period")
            .unwrap()
            .unwrap();
    }
}
