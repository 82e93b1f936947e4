//! An observer process of the fault suite: observes runs from given cursors (any number of
//! observers in one process, as one server instance holds many clients) and prints every event.
//!
//! `durable-fault-observer --backend <redis|postgres|nats|sqlite> --ns <namespace>
//! --retention-ms <ms>
//! --runs <id,id,…> --from <cursor,cursor,…>` (observer `i` follows `runs[i]` from `from[i]`),
//! the server's URL in `DURABLE_TEST_<BACKEND>_URL`. Exits 0 once every observer saw its run end.

use durable_faults::backend::{connect, Target};
use durable_faults::process::{follow_print, Flags};

fn main() {
    let flags = Flags::parse();
    let target = Target::from_flags(flags.all()).unwrap_or_else(|e| panic!("{e}"));
    let observers = flags.observers();

    durable_faults::runtime().block_on(async {
        let conn = connect(&target, 2).await.unwrap_or_else(|e| panic!("{e}"));
        let log = conn.event_log();
        let observers: Vec<_> = observers
            .into_iter()
            .enumerate()
            .map(|(i, (run, from))| tokio::spawn(follow_print(log.clone(), run, i, from)))
            .collect();
        for o in observers {
            o.await.expect("observer");
        }
    });
}
