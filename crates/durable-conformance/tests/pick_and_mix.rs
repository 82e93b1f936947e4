//! A backend with only a cache (an Upstash-like adapter): the suite skips the PubSub and
//! store cases as declared by the backend (visible, and fine under `DURABLE_TEST_REQUIRE=1`),
//! and the agent scenarios run with in-memory pubsub and store filling the gaps, shared by
//! every instance of a scenario.

use durable_core::memory::InMemoryCache;

async fn cache_only() -> Result<durable_conformance::Backend, String> {
    Ok(durable_conformance::Backend::new("cache-only").cache(InMemoryCache::new()))
}

durable_conformance::suite!(cache_only);
durable_conformance::agent_suite!(cache_only);
