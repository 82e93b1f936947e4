//! The fault suite: worker, observer and server processes killed at random points (chosen by
//! waiting for the runs' logs to reach a random event count, never by sleeping; the seed is
//! printed). See the crate's README for what each scenario does and checks.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use durable_core::RunId;
use durable_faults::agent::{reference_view, TOOLS};
use durable_faults::backend::{connect, Kind, Server, Target};
use durable_faults::check::{assert_complete, assert_nothing_left, verify_tools, Stitched};
use durable_faults::process::{Hub, ProcId, Report};
use durable_faults::{iterations, runtime, seeded, unique};

const WORKER: &str = env!("CARGO_BIN_EXE_durable-fault-worker");
const OBSERVER: &str = env!("CARGO_BIN_EXE_durable-fault-observer");
/// The longest silence of every process of a scenario before it counts as hung.
const QUIET: Duration = Duration::from_secs(60);
/// How long a finished run is kept: long enough for observers lagging behind to finish
/// reading, short enough to watch it elapse.
const RETENTION: Duration = Duration::from_secs(8);
/// How long retention may take to remove everything once the last run ended.
const RETENTION_LIMIT: Duration = Duration::from_secs(40);

/// The script of a scenario's runs: text deltas per model step and their pace.
#[derive(Clone, Copy)]
struct Pace {
    deltas: usize,
    delay_ms: u64,
}

/// A scenario's backend: the server (none for SQLite), the target, a scratch directory.
struct Setup {
    target: Target,
    dir: PathBuf,
    _server: Option<Server>,
}

impl Setup {
    /// `None` when the backend's server is unavailable (skip; a failure under
    /// `DURABLE_TEST_REQUIRE=1`). `own`: a server of the test's own even when one is given.
    fn new(kind: Kind, tag: &str, own: bool, retention: Duration) -> Option<Setup> {
        let ns = unique(tag);
        let dir = Target::scratch_dir(&ns);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let (url, server) = match kind {
            Kind::Sqlite => (dir.join("durable.db").to_string_lossy().into_owned(), None),
            _ => {
                let server = if own {
                    Server::own(kind)?
                } else {
                    Server::given_or_own(kind)?
                };
                (server.url.clone(), Some(server))
            }
        };
        Some(Setup {
            target: Target {
                kind,
                url,
                ns,
                retention,
            },
            dir,
            _server: server,
        })
    }

    fn server(&mut self) -> &mut Server {
        self._server.as_mut().expect("a server")
    }

    fn spawn_worker(
        &self,
        hub: &mut Hub,
        side: &Path,
        runs: &[RunId],
        from: &[Stitched],
        pace: Pace,
        gate: Option<&Path>,
    ) -> ProcId {
        let (mut args, env) = self.target.child_args();
        args.extend([
            "--side".to_owned(),
            side.to_string_lossy().into_owned(),
            "--runs".to_owned(),
            join(runs),
            "--from".to_owned(),
            join(&from.iter().map(Stitched::next).collect::<Vec<_>>()),
            "--deltas".to_owned(),
            pace.deltas.to_string(),
            "--delay-ms".to_owned(),
            pace.delay_ms.to_string(),
        ]);
        if let Some(gate) = gate {
            args.extend(["--gate".to_owned(), gate.to_string_lossy().into_owned()]);
        }
        hub.spawn(Path::new(WORKER), &args, &env)
    }

    /// One process holding one observer per `(runs[i], from[i].next())`.
    fn spawn_observers(&self, hub: &mut Hub, runs: &[RunId], from: &[Stitched]) -> ProcId {
        let (mut args, env) = self.target.child_args();
        args.extend([
            "--runs".to_owned(),
            join(runs),
            "--from".to_owned(),
            join(&from.iter().map(Stitched::next).collect::<Vec<_>>()),
        ]);
        hub.spawn(Path::new(OBSERVER), &args, &env)
    }

    /// While `runs` are live the leftover check sees them (so it is not vacuous).
    fn assert_visible(&self, runs: &[RunId]) {
        runtime().block_on(async {
            let conn = connect(&self.target, 2)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            let left = conn
                .leftovers(runs)
                .await
                .unwrap_or_else(|e| panic!("leftovers: {e}"));
            for run in runs {
                assert!(
                    left.iter().any(|l| l.contains(run.as_str()) && !l.starts_with("record")),
                    "the leftover check does not see the live run {run} behind the traits: {left:?}"
                );
            }
        });
    }

    /// After the scenario: nothing of `runs` is left once retention elapsed.
    fn assert_retention_removes(&self, runs: &[RunId]) {
        runtime().block_on(async {
            let conn = connect(&self.target, 2)
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            assert_nothing_left(&conn, runs, RETENTION_LIMIT).await;
        });
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn run_ids(tag: &str, n: usize) -> Vec<RunId> {
    (0..n)
        .map(|i| RunId::new(unique(&format!("{tag}r{i}x"))).expect("run id"))
        .collect()
}

fn total(stitched: &[Stitched]) -> usize {
    stitched.iter().map(|s| s.events.len()).sum()
}

fn connected(stitched: &[Stitched]) -> bool {
    stitched.iter().all(|s| !s.events.is_empty())
}

/// Each run's full log (from the observer process that followed it from cursor 0) is
/// complete, every stitched observer is exactly its suffix, and the tools ran as they should.
fn check_iteration(
    full: &[Stitched],
    stitched: &[(&str, &[Stitched])],
    reference: &[(String, serde_json::Value)],
) {
    for (i, f) in full.iter().enumerate() {
        assert_complete(f, reference, &format!("run {i} from cursor 0"));
    }
    for (who, observers) in stitched {
        for (j, s) in observers.iter().enumerate() {
            s.assert_suffix_of(&full[j % full.len()].events, &format!("{who} {j}"));
        }
    }
}

/// The runs of one iteration as two clients see them: the worker's own observers (stitched
/// across the workers that follow one another) and one observer process from cursor 0 (started
/// once every run has an event, living through every worker kill and server restart).
struct Watch {
    runs: Vec<RunId>,
    side: PathBuf,
    stitched: Vec<Stitched>,
    full: Vec<Stitched>,
    observer: Option<ProcId>,
    /// `observe(0)` of each final log, printed by the worker that completed the runs.
    last: Vec<Stitched>,
}

impl Watch {
    fn new(setup: &Setup, tag: &str, it: usize, n: usize) -> Self {
        Self {
            runs: run_ids(&format!("{tag}{it}"), n),
            side: setup.dir.join(format!("tools-{it}.log")),
            stitched: vec![Stitched::from(0); n],
            full: vec![Stitched::from(0); n],
            observer: None,
            last: vec![Stitched::from(0); n],
        }
    }

    /// Start a worker that picks the runs up where the worker's observers left them.
    fn spawn_worker(&mut self, setup: &Setup, hub: &mut Hub, pace: Pace) -> ProcId {
        self.last = vec![Stitched::from(0); self.runs.len()];
        setup.spawn_worker(hub, &self.side, &self.runs, &self.stitched, pace, None)
    }

    /// Take one report; the exit status when it is worker `w`'s exit.
    fn take(&mut self, setup: &Setup, hub: &mut Hub, w: ProcId) -> Option<ExitStatus> {
        let (id, report) = hub.next(QUIET, "worker and observer");
        match report {
            Report::Event(i, e) if id == w && i >= self.runs.len() => {
                let i = i - self.runs.len();
                self.last[i].push(e, &format!("final observe(0) of run {i}"));
            }
            Report::Event(i, e) if id == w => {
                self.stitched[i].push(e, &format!("worker's observer of run {i}"));
                if self.observer.is_none() && connected(&self.stitched) {
                    let from = vec![Stitched::from(0); self.runs.len()];
                    self.observer = Some(setup.spawn_observers(hub, &self.runs, &from));
                }
            }
            Report::Event(i, e) => self.full[i].push(e, &format!("observer of run {i}")),
            Report::Exited(status) if id == w => return Some(status),
            Report::Exited(status) => {
                assert!(status.success(), "the observer process failed: {status}");
            }
        }
        None
    }

    fn observing(&self, hub: &Hub) -> bool {
        self.observer.is_some_and(|o| hub.running(o))
    }

    /// The iteration's checks (the observer process must have ended).
    fn check(&self, reference: &[(String, serde_json::Value)]) -> usize {
        check_iteration(
            &self.full,
            &[("worker observer", &self.stitched)],
            reference,
        );
        verify_tools(&self.side, self.runs.len() * TOOLS).reruns
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9 of a worker

const KILL_RUNS: usize = 2;
const KILL_PACE: Pace = Pace {
    deltas: 12,
    delay_ms: 1,
};

fn killed_workers(kind: Kind) {
    let Some(setup) = Setup::new(kind, "k", false, RETENTION) else {
        return;
    };
    let mut rng = seeded(&format!("kill on {}", kind.name()));
    let reference = runtime().block_on(reference_view(KILL_PACE.deltas));
    let (mut all_runs, mut kills, mut reruns) = (Vec::new(), 0, 0);
    let mut visible = false;
    let iters = iterations(5, 50);
    for it in 0..iters {
        let mut hub = Hub::new();
        let mut watch = Watch::new(&setup, "k", it, KILL_RUNS);
        // A run's log has at least as many events as an uninterrupted run shows: a kill at
        // fewer events in total lands before every run ended.
        let cap = KILL_RUNS * reference.len() - 1;
        let planned = rng.usize(1..=3);
        let mut landed = 0;
        loop {
            let kill_at = (landed < planned && total(&watch.stitched) < cap)
                .then(|| (total(&watch.stitched) + rng.usize(1..=40)).min(cap));
            let w = watch.spawn_worker(&setup, &mut hub, KILL_PACE);
            let mut killed = false;
            let status = loop {
                if let Some(status) = watch.take(&setup, &mut hub, w) {
                    break status;
                }
                if !killed && kill_at.is_some_and(|k| total(&watch.stitched) >= k) {
                    hub.kill(w);
                    killed = true;
                }
                if it == 0 && !visible && watch.observer.is_some() {
                    setup.assert_visible(&watch.runs);
                    visible = true;
                }
            };
            if !killed {
                assert!(status.success(), "the worker failed: {status}");
                break;
            }
            landed += 1;
        }
        while watch.observing(&hub) {
            watch.take(&setup, &mut hub, usize::MAX);
        }
        assert!(landed >= 1, "iteration {it}: no kill landed");
        reruns += watch.check(&reference);
        kills += landed;
        all_runs.extend(watch.runs);
    }
    setup.assert_retention_removes(&all_runs);
    if matches!(kind, Kind::Sqlite | Kind::Kafka) {
        let conn =
            rusqlite::Connection::open(setup.target.sqlite_file()).expect("open the database");
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(ok, "ok");
    }
    eprintln!(
        "kill on {}: {iters} iterations, {kills} kills, {reruns} tool call(s) re-run after an \
         interrupted attempt; every run exact",
        kind.name()
    );
}

#[test]
fn killed_workers_recover_every_run_exactly_on_redis() {
    killed_workers(Kind::Redis);
}

#[test]
fn killed_workers_recover_every_run_exactly_on_postgres() {
    killed_workers(Kind::Postgres);
}

#[test]
fn killed_workers_recover_every_run_exactly_on_nats() {
    killed_workers(Kind::Nats);
}

#[test]
fn killed_workers_recover_every_run_exactly_on_sqlite() {
    killed_workers(Kind::Sqlite);
}

/// Kafka carries the wake-ups (observer processes are woken through it), the abort and control
/// topics; the log and records are in a SQLite file.
#[test]
fn killed_workers_recover_every_run_exactly_on_kafka() {
    killed_workers(Kind::Kafka);
}

// ---------------------------------------------------------------------------------------------
// server restart mid-run

const RESTART_RUNS: usize = 2;
const RESTART_PACE: Pace = Pace {
    deltas: 40,
    delay_ms: 2,
};

/// Observers may fall behind while the server is down and catch up after it.
const RESTART_RETENTION: Duration = Duration::from_secs(15);

fn restarted_server(kind: Kind) {
    let Some(mut setup) = Setup::new(kind, "r", true, RESTART_RETENTION) else {
        return;
    };
    let mut rng = seeded(&format!("restart on {}", kind.name()));
    let reference = runtime().block_on(reference_view(RESTART_PACE.deltas));
    let (mut all_runs, mut reruns) = (Vec::new(), 0);
    let iters = iterations(1, 10);
    for it in 0..iters {
        let mut hub = Hub::new();
        let mut watch = Watch::new(&setup, "r", it, RESTART_RUNS);
        let restart_at = rng.usize(RESTART_RUNS..=RESTART_RUNS * reference.len() / 2);
        let w = watch.spawn_worker(&setup, &mut hub, RESTART_PACE);
        let mut restarted = false;
        while hub.running(w) || watch.observing(&hub) {
            if let Some(status) = watch.take(&setup, &mut hub, w) {
                assert!(status.success(), "the worker failed: {status}");
            }
            // Once both the worker and the observer process are attached to every run.
            if !restarted && connected(&watch.full) && total(&watch.stitched) >= restart_at {
                assert!(
                    !watch.stitched.iter().all(Stitched::ended),
                    "the runs ended before the restart"
                );
                setup.server().restart();
                restarted = true;
            }
        }
        assert!(restarted, "iteration {it}: the server was not restarted");
        // A tool call runs again only if the outage outlasted the instance's retries while its
        // result was being checkpointed (the instance then restarts the step itself).
        reruns += watch.check(&reference);
        all_runs.extend(watch.runs);
    }
    setup.assert_retention_removes(&all_runs);
    eprintln!(
        "restart on {}: {iters} restarts mid-run, {reruns} tool call(s) re-run after an \
         interrupted attempt; every run exact",
        kind.name()
    );
}

#[test]
fn a_server_restart_mid_run_is_survived_on_redis() {
    restarted_server(Kind::Redis);
}

#[test]
fn a_server_restart_mid_run_is_survived_on_postgres() {
    restarted_server(Kind::Postgres);
}

#[test]
fn a_server_restart_mid_run_is_survived_on_nats() {
    restarted_server(Kind::Nats);
}

/// The Kafka broker (tansu with SQLite storage) restarts while the runs stream: wake-ups
/// between the processes stop and resume; the log in SQLite is untouched.
#[test]
fn a_server_restart_mid_run_is_survived_on_kafka() {
    restarted_server(Kind::Kafka);
}

// ---------------------------------------------------------------------------------------------
// a storm of 200 observers reconnecting at once

/// 200 observers in 8 processes of 25: observers in one process share its connections, as the
/// clients of one server instance do. 200 processes would each bring a runtime and connection
/// pool (PostgreSQL's default 100 connections would not hold them) and on this 2-core machine
/// would measure process start-up rather than reconnection.
const STORM_PROCESSES: usize = 8;
const STORM_PER_PROCESS: usize = 25;
const STORM_PACE: Pace = Pace {
    deltas: 50,
    delay_ms: 8,
};
/// 200 observers print ~40,000 event lines per generation, which the parent parses: the last
/// of them may lag seconds behind the run's end, and must not find it expired.
const STORM_RETENTION: Duration = Duration::from_secs(15);

/// One storm iteration: the worker (its observer from 0 is the full log: it is not killed
/// here) and a generation of 200 clients in observer processes.
struct Storm {
    run: RunId,
    worker: ProcId,
    full: Stitched,
    /// `observe(0)` of the final log.
    last: Stitched,
    clients: Vec<Stitched>,
    /// The current generation: process id and its first client's index.
    procs: Vec<(ProcId, usize)>,
    /// Processes killed in the storm: their exit status is SIGKILL's.
    killed: Vec<ProcId>,
}

impl Storm {
    /// Start one generation of observer processes, each client from its next cursor.
    fn spawn_generation(&mut self, setup: &Setup, hub: &mut Hub) {
        let group = vec![self.run.clone(); STORM_PER_PROCESS];
        self.procs = (0..STORM_PROCESSES)
            .map(|p| {
                let first = p * STORM_PER_PROCESS;
                let from = &self.clients[first..first + STORM_PER_PROCESS];
                (setup.spawn_observers(hub, &group, from), first)
            })
            .collect();
    }

    fn take(&mut self, hub: &mut Hub) {
        let (id, report) = hub.next(QUIET, "worker and observers");
        match report {
            Report::Event(0, e) if id == self.worker => self.full.push(e, "worker's observer"),
            Report::Event(_, e) if id == self.worker => self.last.push(e, "final observe(0)"),
            Report::Event(i, e) => {
                let (_, first) = self
                    .procs
                    .iter()
                    .find(|(p, _)| *p == id)
                    .expect("an observer process of this generation");
                self.clients[first + i].push(e, &format!("client {}", first + i));
            }
            Report::Exited(status) => assert!(
                self.killed.contains(&id) || status.success(),
                "process {id} failed: {status}"
            ),
        }
    }

    fn running(&self, hub: &Hub) -> bool {
        hub.running(self.worker) || self.procs.iter().any(|(p, _)| hub.running(*p))
    }
}

fn observer_storm(kind: Kind) {
    let Some(setup) = Setup::new(kind, "s", false, STORM_RETENTION) else {
        return;
    };
    let mut rng = seeded(&format!("storm on {}", kind.name()));
    let reference = runtime().block_on(reference_view(STORM_PACE.deltas));
    let mut all_runs = Vec::new();
    let iters = iterations(1, 5);
    for it in 0..iters {
        let runs = run_ids(&format!("s{it}"), 1);
        let side = setup.dir.join(format!("tools-{it}.log"));
        let mut hub = Hub::new();
        // The run waits inside its second tool call until every client is attached.
        let gate = setup.dir.join(format!("gate-{it}"));
        let from = [Stitched::from(0)];
        let worker = setup.spawn_worker(&mut hub, &side, &runs, &from, STORM_PACE, Some(&gate));
        let mut storm = Storm {
            run: runs[0].clone(),
            worker,
            full: Stitched::from(0),
            last: Stitched::from(0),
            clients: vec![Stitched::from(0); STORM_PROCESSES * STORM_PER_PROCESS],
            procs: Vec::new(),
            killed: Vec::new(),
        };
        let mut storm_at = None;
        while storm.running(&hub) {
            storm.take(&mut hub);
            if storm.procs.is_empty() && !storm.full.events.is_empty() {
                storm.spawn_generation(&setup, &mut hub);
            }
            if storm_at.is_none() && !storm.procs.is_empty() && connected(&storm.clients) {
                storm_at = Some(storm.full.events.len() + rng.usize(0..=STORM_PACE.deltas));
                std::fs::write(&gate, b"").expect("open the gate");
            }
            if storm.killed.is_empty() && storm_at.is_some_and(|at| storm.full.events.len() >= at) {
                assert!(!storm.full.ended(), "the run ended before the storm");
                storm.killed = storm.procs.iter().map(|(p, _)| *p).collect();
                for p in &storm.killed {
                    hub.kill(*p);
                }
                // Their last lines, then their exits; the worker keeps reporting meanwhile.
                while storm.killed.iter().any(|p| hub.running(*p)) {
                    storm.take(&mut hub);
                }
                // Each client lost a random part of what it had: it reconnects from there.
                for c in &mut storm.clients {
                    let at = rng.u64(c.from..=c.next());
                    c.truncate_at(at);
                }
                storm.spawn_generation(&setup, &mut hub);
            }
        }
        assert!(!storm.killed.is_empty(), "iteration {it}: no storm");
        check_iteration(
            std::slice::from_ref(&storm.full),
            &[
                ("client", &storm.clients),
                ("final observe(0)", std::slice::from_ref(&storm.last)),
            ],
            &reference,
        );
        let tools = verify_tools(&side, TOOLS);
        assert_eq!(tools.reruns, 0, "without a worker kill each tool runs once");
        all_runs.extend(runs);
    }
    setup.assert_retention_removes(&all_runs);
    eprintln!(
        "storm on {}: {iters} storms of {} observers; every observer exact",
        kind.name(),
        STORM_PROCESSES * STORM_PER_PROCESS
    );
}

#[test]
fn two_hundred_observers_reconnecting_at_once_are_exact_on_redis() {
    observer_storm(Kind::Redis);
}

#[test]
fn two_hundred_observers_reconnecting_at_once_are_exact_on_postgres() {
    observer_storm(Kind::Postgres);
}

#[test]
fn two_hundred_observers_reconnecting_at_once_are_exact_on_nats() {
    observer_storm(Kind::Nats);
}
