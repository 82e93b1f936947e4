//! The naming grammar: every key, log, topic and group name the runtime hands a backend.
//!
//! Backends receive *logical* names and map them into their own namespace (a Redis key, a NATS
//! subject, a SQL row key). All of them are built here, in one place, from a validated
//! namespace and validated ids, so a backend can rely on their shape:
//!
//! | name | shape | kind |
//! |---|---|---|
//! | run scope prefix | `<ns>/run/<run_id>/` | cache keys and logs of one run |
//! | event log | `<ns>/run/<run_id>/events` | cache log |
//! | tombstone | `<ns>/run/<run_id>/gone` | cache key |
//! | other per-run keys | `<ns>/run/<run_id>/<what>` (`what` in `[a-z0-9_-]`) | cache key |
//! | wake-up topic | `<ns>.run.<run_id>` | PubSub topic |
//! | abort control | `<ns>.ctl.<agent_id>` | PubSub topic |
//! | work queue | `<ns>.queue.<agent_id>` | PubSub topic (consumer group `workers`) |
//!
//! - `<ns>` is a namespace: 1–64 characters of `[A-Za-z0-9_-]` ([`validate_namespace`]).
//! - `<run_id>` is a [`RunId`] (`[A-Za-z0-9_-]`, 1–128) and `<agent_id>` an agent id (same
//!   alphabet), so neither contains a separator (`/`, `.`) or anything a backend treats
//!   specially (globs, wildcards, whitespace).
//! - **Locality.** Everything of one run shares the run id, and [`locality`] returns it for any
//!   run-scoped name (cache key, log or topic). A sharded backend places names with equal
//!   locality together (the Redis adapter uses it as the Cluster hash tag, so a run's log, its
//!   tombstone and its record live in one slot and one script can touch them all).
//!
//! Run-scoped cache names are `/`-separated and topics `.`-separated, so a cache name and a
//! topic never collide, and [`run_prefix`](Names::run_prefix) lists exactly one run's keys.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::id::RunId;

/// The longest namespace accepted.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Check a namespace: 1–64 characters of `[A-Za-z0-9_-]`.
///
/// # Errors
/// `InvalidInput` naming the problem.
pub fn validate_namespace(ns: &str) -> Result<()> {
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN {
        return Err(Error::invalid_input(format!(
            "namespace must be 1..={MAX_NAMESPACE_LEN} characters, got {}",
            ns.len()
        )));
    }
    if let Some(bad) = ns
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(Error::invalid_input(format!(
            "namespace may only contain [A-Za-z0-9_-], found {bad:?} in {ns:?}"
        )));
    }
    Ok(())
}

/// Check an id used inside a name (agent ids): 1–128 characters of `[A-Za-z0-9_-]`.
///
/// # Errors
/// `InvalidInput` naming `what` and the problem.
pub fn validate_id(what: &'static str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > crate::MAX_RUN_ID_LEN {
        return Err(Error::invalid_input(format!(
            "{what} must be 1..={} characters, got {}",
            crate::MAX_RUN_ID_LEN,
            id.len()
        )));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(Error::invalid_input(format!(
            "{what} may only contain [A-Za-z0-9_-], found {bad:?}"
        )));
    }
    Ok(())
}

/// The run id that a run-scoped name belongs to (`<ns>/run/<id>/…` or `<ns>.run.<id>`), or
/// `None` for any other name. See the module docs.
pub fn locality(name: &str) -> Option<&str> {
    let (ns_end, sep) = name.char_indices().find(|(_, c)| matches!(c, '/' | '.'))?;
    if ns_end == 0 {
        return None;
    }
    let rest = name[ns_end + 1..].strip_prefix("run")?;
    let rest = rest.strip_prefix(sep)?;
    let id = match sep {
        '/' => rest.split_once('/')?.0,
        _ => rest,
    };
    let valid = !id.is_empty()
        && id.len() <= crate::MAX_RUN_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then_some(id)
}

/// The names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    ns: Arc<str>,
}

impl Names {
    /// The names under `namespace`.
    ///
    /// # Errors
    /// `InvalidInput` for an invalid namespace ([`validate_namespace`]).
    pub fn new(namespace: &str) -> Result<Self> {
        validate_namespace(namespace)?;
        Ok(Self {
            ns: namespace.into(),
        })
    }

    pub(crate) fn new_unchecked(namespace: &str) -> Self {
        Self {
            ns: namespace.into(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn join(&self, sep: char, scope: &str, id: &str, suffix: &str) -> String {
        let mut s =
            String::with_capacity(self.ns.len() + scope.len() + id.len() + suffix.len() + 3);
        s.push_str(&self.ns);
        s.push(sep);
        s.push_str(scope);
        s.push(sep);
        s.push_str(id);
        s.push_str(suffix);
        s
    }

    /// The prefix of every cache key and log of the run: `<ns>/run/<id>/`.
    pub fn run_prefix(&self, run: &RunId) -> String {
        self.join('/', "run", run.as_str(), "/")
    }

    /// The run's event log: `<ns>/run/<id>/events`.
    pub fn run_log(&self, run: &RunId) -> String {
        self.join('/', "run", run.as_str(), "/events")
    }

    /// The run's tombstone (answers `Gone` after retention): `<ns>/run/<id>/gone`.
    pub fn run_tombstone(&self, run: &RunId) -> String {
        self.join('/', "run", run.as_str(), "/gone")
    }

    /// Another per-run cache key: `<ns>/run/<id>/<what>`; `what` is a fixed lowercase word of
    /// the runtime (`abort`, …).
    pub fn run_key(&self, run: &RunId, what: &'static str) -> String {
        debug_assert!(what
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'));
        let mut s = self.run_prefix(run);
        s.push_str(what);
        s
    }

    /// The run's wake-up topic: `<ns>.run.<id>`.
    pub fn run_topic(&self, run: &RunId) -> String {
        self.join('.', "run", run.as_str(), "")
    }

    /// The abort-control topic of an agent: `<ns>.ctl.<agent_id>`.
    pub fn control_topic(&self, agent_id: &str) -> String {
        self.join('.', "ctl", agent_id, "")
    }

    /// The work-queue topic of an agent: `<ns>.queue.<agent_id>`.
    pub fn queue_topic(&self, agent_id: &str) -> String {
        self.join('.', "queue", agent_id, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_validated() {
        for ok in ["durable", "a", "a-b_C9", &"n".repeat(64)] {
            assert!(validate_namespace(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a*b",
            "{x}",
            "a b",
            "a..b",
            "x>y",
            "a.b",
            "a/b",
            "a:b",
            "ü",
            &"n".repeat(65),
        ] {
            assert_eq!(
                validate_namespace(bad).unwrap_err().kind(),
                crate::ErrorKind::InvalidInput,
                "{bad}"
            );
        }
    }

    #[test]
    fn names_follow_the_grammar_and_share_locality() {
        let n = Names::new("ns").unwrap();
        let run = RunId::new("r-1").unwrap();
        assert_eq!(n.run_log(&run), "ns/run/r-1/events");
        assert_eq!(n.run_tombstone(&run), "ns/run/r-1/gone");
        assert_eq!(n.run_key(&run, "abort"), "ns/run/r-1/abort");
        assert_eq!(n.run_prefix(&run), "ns/run/r-1/");
        assert_eq!(n.run_topic(&run), "ns.run.r-1");
        assert_eq!(n.control_topic("a"), "ns.ctl.a");
        assert_eq!(n.queue_topic("a"), "ns.queue.a");
        for name in [
            n.run_log(&run),
            n.run_tombstone(&run),
            n.run_key(&run, "abort"),
            n.run_topic(&run),
        ] {
            assert_eq!(locality(&name), Some("r-1"), "{name}");
            assert!(crate::validate_name("name", &name).is_ok());
        }
        for other in [
            "ns.ctl.a",
            "ns.queue.a",
            "ns/run/",
            "ns/run/x",
            "ns.run.",
            "/run/x/y",
            "ns/runs/x/y",
            "ns/run/a.b/y",
            "plain",
        ] {
            assert_eq!(locality(other), None, "{other}");
        }
    }
}
