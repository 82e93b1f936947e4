//! From durable's logical topic and group names to Kafka topics, record keys and group ids.
//!
//! - A logical topic is checked against Kafka's topic alphabet (`[A-Za-z0-9._-]`), must not be
//!   empty, start or end with `.` or contain `..` (durable's grammar, and `.`/`..` are illegal
//!   Kafka topics), and its Kafka topic must fit Kafka's 249-byte limit.
//! - A run's wake-up topic `<ns>.run.<run_id>` shares one Kafka topic, `<prefix><ns>.run`, with
//!   every other run of the namespace: a Kafka topic per run would never be deleted and cost a
//!   `CreateTopics` per run. Every other topic is its own Kafka topic, `<prefix><topic>`.
//! - Every record carries its logical topic as its key, consumers deliver only records whose key
//!   is their topic, and the partition is a hash of the key: one logical topic is one partition,
//!   in publish order, whatever shares its Kafka topic.
//! - A group id is `<prefix><topic>/<group>`: `/` is in neither alphabet, so distinct
//!   (topic, group) pairs never share a Kafka consumer group.

use durable_core::{Error, Result};

/// Kafka's longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 249;
/// The longest topic prefix accepted (it leaves room for durable's names).
pub const MAX_PREFIX_LEN: usize = 64;

fn kafka_alphabet(s: &str) -> Option<char> {
    s.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
}

/// Check a topic prefix: at most [`MAX_PREFIX_LEN`] bytes of `[A-Za-z0-9._-]`, possibly empty.
///
/// # Errors
/// `InvalidInput` naming the problem.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > MAX_PREFIX_LEN {
        return Err(Error::invalid_input(format!(
            "topic prefix may be at most {MAX_PREFIX_LEN} bytes, got {}",
            prefix.len()
        )));
    }
    if let Some(bad) = kafka_alphabet(prefix) {
        return Err(Error::invalid_input(format!(
            "topic prefix may only contain [A-Za-z0-9._-], found {bad:?}"
        )));
    }
    Ok(())
}

fn validate_segmented(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TOPIC_LEN {
        return Err(Error::invalid_input(format!(
            "{what} must be 1..={MAX_TOPIC_LEN} bytes, got {}",
            name.len()
        )));
    }
    if let Some(bad) = kafka_alphabet(name) {
        return Err(Error::invalid_input(format!(
            "{what} may only contain Kafka's [A-Za-z0-9._-], found {bad:?}"
        )));
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Err(Error::invalid_input(format!(
            "{what} may not start or end with '.' or contain '..'"
        )));
    }
    Ok(())
}

/// Where a logical topic lives in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    /// The Kafka topic.
    pub(crate) topic: String,
    /// The record key: the logical topic.
    pub(crate) key: String,
}

/// Route a logical topic under `prefix` (already validated).
///
/// # Errors
/// `InvalidInput` for a name outside Kafka's rules (module docs).
pub(crate) fn route(prefix: &str, logical: &str) -> Result<Route> {
    validate_segmented("topic", logical)?;
    let shared = match durable_core::names::locality(logical) {
        // `<ns>.run.<id>` (a cache-style `<ns>/run/<id>/…` cannot pass the alphabet check).
        Some(id) => &logical[..logical.len() - id.len() - 1],
        None => logical,
    };
    let topic = format!("{prefix}{shared}");
    if topic.len() > MAX_TOPIC_LEN {
        return Err(Error::invalid_input(format!(
            "Kafka topic {topic:?} is {} bytes, Kafka allows {MAX_TOPIC_LEN}",
            topic.len()
        )));
    }
    Ok(Route {
        topic,
        key: logical.to_owned(),
    })
}

/// The Kafka group id of consumer group `group` of the logical topic routed to `route`.
///
/// # Errors
/// `InvalidInput` for a group name outside `[A-Za-z0-9._-]` (1–249 bytes, no empty segment).
pub(crate) fn group_id(prefix: &str, route: &Route, group: &str) -> Result<String> {
    validate_segmented("group", group)?;
    Ok(format!("{prefix}{}/{group}", route.key))
}

/// The partition of `key` among `partitions` (FNV-1a: stable across processes and versions).
pub(crate) fn partition_for(key: &str, partitions: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let n = u32::try_from(partitions.max(1)).unwrap_or(1);
    i32::try_from(h % n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use durable_core::ErrorKind;

    #[test]
    fn run_topics_share_one_kafka_topic_per_namespace() {
        let r = route("d.", "ns.run.r-1").unwrap();
        assert_eq!(r.topic, "d.ns.run");
        assert_eq!(r.key, "ns.run.r-1");
        assert_eq!(route("d.", "ns.run.r_2").unwrap().topic, "d.ns.run");
        let q = route("d.", "ns.queue.agent").unwrap();
        assert_eq!(
            (q.topic.as_str(), q.key.as_str()),
            ("d.ns.queue.agent", "ns.queue.agent")
        );
        assert_eq!(route("", "plain").unwrap().topic, "plain");
    }

    #[test]
    fn illegal_names_are_rejected() {
        let long = "t".repeat(250);
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "a*",
            "a>",
            "a b",
            "a/b",
            "a:b",
            "a\n",
            "ü",
            long.as_str(),
        ] {
            assert_eq!(
                route("", bad).unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        // The prefix counts towards the 249 bytes.
        let fits = "t".repeat(249);
        assert!(route("", &fits).is_ok());
        assert_eq!(
            route("p.", &fits).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let r = route("", "topic").unwrap();
        for bad in ["", "a b", "a/b", "a..b", "*"] {
            assert_eq!(
                group_id("", &r, bad).unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
        }
        assert_eq!(group_id("p.", &r, "workers").unwrap(), "p.topic/workers");
        for bad in ["a b", "a/b", &"p".repeat(65)] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
        assert!(validate_prefix("").is_ok());
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for n in 1..8 {
            for key in ["a", "ns.run.x", "ns.queue.y"] {
                let p = partition_for(key, n);
                assert!((0..n).contains(&p));
                assert_eq!(p, partition_for(key, n));
            }
        }
        assert_eq!(partition_for("anything", 0), 0);
    }
}
