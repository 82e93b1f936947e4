//! The one place where rdkafka errors become [`durable_core::Error`].

use durable_core::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Backend name of this crate's types.
pub(crate) const KAFKA: &str = "kafka";

/// An error of `kind` raised by this crate's own checks.
pub(crate) fn err(kind: ErrorKind, op: &'static str, msg: impl Into<String>) -> Error {
    Error::new(kind, msg.into())
        .with_backend(KAFKA)
        .with_operation(op)
}

/// The broker-side or librdkafka code of an error, if it has one.
pub(crate) fn code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// Map an rdkafka error: unreachable brokers, leaderless partitions and missing topics (which
/// a broker restart produces) are retryable `Unavailable`, timeouts retryable `Timeout`, a
/// rejected name or size `InvalidInput`, a feature the broker lacks `Unsupported`, the rest
/// `Unexpected`.
pub(crate) fn from_kafka(op: &'static str, e: KafkaError) -> Error {
    use RDKafkaErrorCode as C;
    let (kind, retryable) = match code(&e) {
        Some(C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue) => {
            (ErrorKind::Timeout, true)
        }
        Some(
            C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::QueueFull
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::UnknownTopicOrPartition
            | C::UnknownTopic
            | C::UnknownPartition
            | C::BrokerNotAvailable
            | C::NetworkException
            | C::NotCoordinator
            | C::CoordinatorNotAvailable
            | C::CoordinatorLoadInProgress
            | C::RebalanceInProgress
            | C::OutOfOrderSequenceNumber
            | C::UnknownProducerId
            | C::Fatal
            | C::BrokerDestroy,
        ) => (ErrorKind::Unavailable, true),
        Some(
            C::InvalidTopic
            | C::InvalidGroupId
            | C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::InvalidArgument
            | C::InvalidConfig
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed,
        ) => (ErrorKind::InvalidInput, false),
        Some(C::UnsupportedFeature | C::UnsupportedVersion) => (ErrorKind::Unsupported, false),
        _ => match &e {
            KafkaError::Canceled => (ErrorKind::Unavailable, true),
            KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => {
                (ErrorKind::InvalidInput, false)
            }
            _ => (ErrorKind::Unexpected, false),
        },
    };
    let message = match kind {
        ErrorKind::Unavailable => "cannot reach the Kafka broker",
        ErrorKind::Timeout => "the Kafka broker did not answer in time",
        ErrorKind::InvalidInput => "the Kafka broker or client rejected the request",
        ErrorKind::Unsupported => "the Kafka broker does not support this",
        _ => "unexpected Kafka error",
    };
    Error::new(kind, message)
        .with_backend(KAFKA)
        .with_operation(op)
        .with_retryable(retryable)
        .with_source(e)
}
