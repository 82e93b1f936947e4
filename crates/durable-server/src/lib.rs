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
/// Accepted connections get `TCP_NODELAY`: SSE frames are small writes, and Nagle's algorithm
/// would hold one back until the client's (delayed, up to 40 ms) ACK of the previous one.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::trace!(error = %e, "TCP_NODELAY not set");
        }
    });
    // As a make-service each connection gets a clone of the router (one `Arc`); served as a
    // `Router` itself, axum re-binds its state per connection, rebuilding the route table
    // (~9 KiB per connection: 9 MiB at 1,000 open streams).
    axum::serve(listener, router.into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
}
