//! The mapping from logical names to Redis keys and channels.
//!
//! Every key starts with the configured prefix, then a role letter, then a Redis Cluster hash tag
//! (`{…}`), so that everything Redis stores for one run lands in one hash slot:
//!
//! | what | Redis key / channel |
//! |---|---|
//! | cache key or log `name` | `<prefix>c:{<tag>}<name>` |
//! | a log's companion (fence, existence) | `<prefix>c:{<tag>}<name>#m` |
//! | run record / checkpoints | `<prefix>s:{<run id>}r` / `<prefix>s:{<run id>}c` |
//! | status index | `<prefix>s:idx:<status>` |
//! | fan-out topic | channel `<prefix>t:<topic>` |
//! | consumer-group stream / wake-up | `<prefix>q:{<topic>}` / channel `<prefix>w:<topic>` |
//!
//! The tag of a cache name is the segment after `run` in `…/run/<id>/…` (so the event log
//! `<ns>/run/<id>/events`, its tombstone and the run's store keys share the slot of `{<id>}`),
//! otherwise the name's parent (`a/b/c` → `a/b`), otherwise the whole name. Logical names are
//! validated by [`durable_core::validate_name`] first, so they never contain `{`, `}`, `#` or a
//! glob character, and the mapping is reversible.

use std::sync::Arc;

use durable_core::{Error, Result};

/// Suffix of a log's companion hash (never part of a valid logical name).
const META: &[u8] = b"#m";

/// Key prefix plus the mapping functions.
#[derive(Clone, Debug)]
pub(crate) struct KeySpace {
    prefix: Arc<str>,
}

/// Validate a user-supplied key prefix: the characters of a logical name, or empty.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > 128 {
        return Err(Error::invalid_input("key prefix may be at most 128 bytes"));
    }
    if let Some(bad) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/')))
    {
        return Err(Error::invalid_input(format!(
            "key prefix may only contain [A-Za-z0-9_-.:/], found {bad:?}"
        )));
    }
    Ok(())
}

/// The hash tag of a logical cache name (see the module docs): the run id for every run-scoped
/// name, as core's naming grammar defines it ([`locality`]), so a run's log, its companions and
/// its record share one Cluster slot; otherwise the name up to its last `/`.
///
/// [`locality`]: durable_core::names::locality
pub(crate) fn tag(name: &str) -> &str {
    if let Some(run) = durable_core::names::locality(name) {
        return run;
    }
    match name.rfind('/') {
        Some(pos) if pos > 0 => &name[..pos],
        _ => name,
    }
}

/// Escape Redis glob metacharacters (`* ? [ ] \`) for a `SCAN MATCH` pattern.
pub(crate) fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl KeySpace {
    pub(crate) fn new(prefix: &str) -> Result<Self> {
        validate_prefix(prefix)?;
        Ok(Self {
            prefix: Arc::from(prefix),
        })
    }

    fn with_role(&self, role: &str, extra: usize) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + role.len() + extra);
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(role.as_bytes());
        k
    }

    /// The Redis key of cache key or log `name`.
    pub(crate) fn cache_key(&self, name: &str) -> Vec<u8> {
        let t = tag(name);
        let mut k = self.with_role("c:{", t.len() + name.len() + 4);
        k.extend_from_slice(t.as_bytes());
        k.push(b'}');
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// The Redis key of the companion hash of log `name` (same hash slot as the log).
    pub(crate) fn meta_key(&self, name: &str) -> Vec<u8> {
        let mut k = self.cache_key(name);
        k.extend_from_slice(META);
        k
    }

    /// `SCAN MATCH` pattern for every cache key whose logical name starts with `prefix`.
    pub(crate) fn cache_scan_pattern(&self, prefix: &str) -> String {
        format!(
            "{}c:{{*}}{}*",
            escape_glob(&self.prefix),
            escape_glob(prefix)
        )
    }

    /// The logical name of a Redis cache key (companions map to their log's name).
    pub(crate) fn logical_name<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&*self.prefix)?.strip_prefix("c:{")?;
        let (_, name) = rest.split_once('}')?;
        Some(name.strip_suffix("#m").unwrap_or(name))
    }

    /// The run record hash.
    pub(crate) fn run_key(&self, run_id: &str) -> Vec<u8> {
        self.run_part(run_id, b'r')
    }

    /// The run's checkpoint hash.
    pub(crate) fn checkpoints_key(&self, run_id: &str) -> Vec<u8> {
        self.run_part(run_id, b'c')
    }

    fn run_part(&self, run_id: &str, part: u8) -> Vec<u8> {
        let mut k = self.with_role("s:{", run_id.len() + 2);
        k.extend_from_slice(run_id.as_bytes());
        k.push(b'}');
        k.push(part);
        k
    }

    /// The sorted set indexing runs in `status` (member = run id, score = expiry or +inf).
    pub(crate) fn status_index(&self, status: &str) -> Vec<u8> {
        let mut k = self.with_role("s:idx:", status.len());
        k.extend_from_slice(status.as_bytes());
        k
    }

    /// The fan-out channel of `topic`.
    pub(crate) fn topic_channel(&self, topic: &str) -> Vec<u8> {
        let mut k = self.with_role("t:", topic.len());
        k.extend_from_slice(topic.as_bytes());
        k
    }

    /// The channel that wakes the consumer groups of `topic`.
    pub(crate) fn group_wake_channel(&self, topic: &str) -> Vec<u8> {
        let mut k = self.with_role("w:", topic.len());
        k.extend_from_slice(topic.as_bytes());
        k
    }

    /// The stream behind the consumer groups of `topic`.
    pub(crate) fn group_stream(&self, topic: &str) -> Vec<u8> {
        let mut k = self.with_role("q:{", topic.len() + 1);
        k.extend_from_slice(topic.as_bytes());
        k.push(b'}');
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_of_one_run_shares_a_hash_tag() {
        assert_eq!(tag("durable/run/abc-1/events"), "abc-1");
        assert_eq!(tag("durable/run/abc-1/gone"), "abc-1");
        assert_eq!(tag("a/b/c"), "a/b");
        assert_eq!(tag("plain"), "plain");
        assert_eq!(tag("ns/run/x"), "ns/run");
        assert_eq!(tag("/x"), "/x");
        let ks = KeySpace::new("p:").unwrap();
        assert_eq!(
            ks.cache_key("durable/run/abc/events"),
            b"p:c:{abc}durable/run/abc/events"
        );
        assert_eq!(ks.run_key("abc"), b"p:s:{abc}r");
    }

    #[test]
    fn cache_keys_map_back_to_their_logical_names() {
        let ks = KeySpace::new("durable:").unwrap();
        for name in ["durable/run/abc/events", "a/b", "solo"] {
            assert_eq!(ks.logical_name(&ks.cache_key(name)), Some(name));
            assert_eq!(ks.logical_name(&ks.meta_key(name)), Some(name));
        }
        assert_eq!(ks.logical_name(b"other:c:{x}x"), None);
    }

    #[test]
    fn scan_patterns_escape_globs() {
        assert_eq!(escape_glob(r"a*b?[c]\"), r"a\*b\?\[c\]\\");
        let ks = KeySpace::new("p:").unwrap();
        assert_eq!(ks.cache_scan_pattern("conf/"), "p:c:{*}conf/*");
        assert!(KeySpace::new("bad*").is_err());
        assert!(KeySpace::new("bad{").is_err());
    }
}
