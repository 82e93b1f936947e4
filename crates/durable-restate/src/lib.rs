#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod client;
mod http;
mod serve;
mod workflow;

pub use client::{RestateAgent, RestateAgentBuilder, RestateRun, DEFAULT_ABORT_TIMEOUT};
pub use serve::{
    register_deployment, RestateEndpoint, ServedEndpoint, DEFAULT_MODEL_ATTEMPTS,
    DEFAULT_RETRY_DELAY,
};

/// The Restate service name of the workflow that executes runs (its key is the run id).
pub const SERVICE_NAME: &str = workflow::SERVICE;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use durable_core::agent::{Agent, ScriptedModel, StreamOptions, Turn};
    use durable_core::memory::{InMemoryCache, InMemoryPubSub};
    use durable_core::{ErrorKind, EventLog};

    use super::*;

    fn agent(id: &str) -> Agent {
        Agent::builder()
            .id(id)
            .model(ScriptedModel::new([Turn::text("hi")]))
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn log() -> EventLog {
        EventLog::new(
            Arc::new(InMemoryCache::new()),
            Arc::new(InMemoryPubSub::new()),
        )
    }

    #[test]
    fn bad_configuration_is_rejected_not_panicked_on() {
        let kind = |r: durable_core::Result<RestateAgent>| r.map(|_| ()).unwrap_err().kind();
        let base = || {
            RestateAgent::builder(agent("a"))
                .log(log())
                .ingress_url("http://127.0.0.1:8080/")
                .admin_url("http://127.0.0.1:9070")
        };
        assert!(base().build().is_ok());
        assert_eq!(
            kind(base().ingress_url("ftp://x").build()),
            ErrorKind::InvalidInput
        );
        assert_eq!(kind(base().admin_url("").build()), ErrorKind::InvalidInput);
        assert_eq!(
            kind(base().admin_url("http://a b").build()),
            ErrorKind::InvalidInput
        );
        let live = EventLog::live_only(Arc::new(InMemoryPubSub::new()));
        assert_eq!(
            kind(base().log(live.clone()).build()),
            ErrorKind::InvalidInput
        );
        let endpoint = |e: RestateEndpoint| e.into_endpoint().map(|_| ()).unwrap_err().kind();
        assert_eq!(
            endpoint(RestateEndpoint::new(log())),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            endpoint(RestateEndpoint::new(live).agent(agent("a"))),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            endpoint(
                RestateEndpoint::new(log())
                    .agent(agent("a"))
                    .agent(agent("a"))
            ),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            endpoint(
                RestateEndpoint::new(log())
                    .agent(agent("a"))
                    .model_attempts(0)
            ),
            ErrorKind::InvalidInput
        );
        assert!(RestateEndpoint::new(log())
            .agent(agent("a"))
            .agent(agent("b"))
            .into_endpoint()
            .is_ok());
    }

    #[tokio::test]
    async fn options_this_variant_lacks_are_unsupported() {
        let a = RestateAgent::builder(agent("a"))
            .log(log())
            .ingress_url("http://127.0.0.1:1")
            .admin_url("http://127.0.0.1:1")
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let err = a
            .stream("x", StreamOptions::new().thread_id("t"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        let err = a
            .stream("x", StreamOptions::new().max_steps(0))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        // Nothing listens there: a clear Unavailable, no hang, no panic.
        let err = a.stream("x", StreamOptions::new()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        let err = a
            .abort(&durable_core::RunId::new("nope").unwrap_or_else(|e| panic!("{e}")))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
}
