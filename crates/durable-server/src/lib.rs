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
/// and closes; this returns when all have.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_REQUEST_HEAD);
    let builder = std::sync::Arc::new(builder);
    // Every connection task holds a clone; `closed()` returns once all have ended.
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
    let _ = done_rx.recv().await;
    Ok(())
}

/// The most bytes of a request head (request line and headers) [`serve`] reads.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
