//! The whole conformance suite on the in-memory reference backends.

async fn backend() -> Result<durable_conformance::Backend, String> {
    Ok(durable_conformance::Backend::memory())
}

durable_conformance::suite!(backend);
