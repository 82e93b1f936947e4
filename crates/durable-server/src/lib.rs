#![doc = include_str!("../README.md")]

pub mod a2a;
pub mod auth;
pub mod chat;
pub mod client;
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
/// # Errors
/// The listener's I/O error.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
