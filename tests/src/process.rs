//! Worker and observer processes: spawned from the crate's binaries, their event lines read by
//! one thread each into one channel, killed with SIGKILL.
//!
//! Line protocol (stdout of both binaries): `@@event <observer> <event JSON>` for each event an
//! observer receives. A line cut by a kill has no newline and is dropped: the process never
//! finished printing it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use durable_core::{Event, EventLog, ObserveOptions, RunId};
use futures::StreamExt;

/// Starts each event line.
pub const MARK: &str = "@@event ";

/// Print one event line for observer `index` (the binaries' side of the protocol).
pub fn print_event(index: usize, event: &Event) {
    let json = serde_json::to_string(event).expect("events serialize");
    println!("{MARK}{index} {json}");
}

/// A process of the hub.
pub type ProcId = usize;

/// What a process reported.
#[derive(Debug)]
pub enum Report {
    /// Observer `index` of the process received `event`.
    Event(usize, Event),
    /// The process ended (its stdout closed and it was reaped).
    Exited(ExitStatus),
}

/// Child processes whose reports arrive on one channel, in the order they were printed per
/// process.
#[derive(Debug)]
pub struct Hub {
    tx: Sender<(ProcId, Report)>,
    rx: Receiver<(ProcId, Report)>,
    children: HashMap<ProcId, Arc<Mutex<Child>>>,
    next: ProcId,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// No processes yet.
    pub fn new() -> Self {
        let (tx, rx) = channel();
        Self {
            tx,
            rx,
            children: HashMap::new(),
            next: 0,
        }
    }

    /// Start `program args` with `env` added; its stderr goes to the test's.
    pub fn spawn(&mut self, program: &Path, args: &[String], env: &[(String, String)]) -> ProcId {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let id = self.next;
        self.next += 1;
        let stdout = child.stdout.take().expect("piped stdout");
        let child = Arc::new(Mutex::new(child));
        self.children.insert(id, child.clone());
        let tx = self.tx.clone();
        std::thread::spawn(move || read_reports(id, &child, stdout, &tx));
        id
    }

    /// SIGKILL process `id` (no effect once it has exited). Its reports up to the kill still
    /// arrive, then [`Report::Exited`].
    pub fn kill(&mut self, id: ProcId) {
        if let Some(child) = self.children.get(&id) {
            // Through the handle: a child already reaped is not signalled (its pid may be reused).
            let _ = child.lock().map(|mut c| c.kill());
        }
    }

    /// The next report, or a panic naming `what` the test waited for after `limit` of silence.
    pub fn next(&mut self, limit: Duration, what: &str) -> (ProcId, Report) {
        let deadline = Instant::now() + limit;
        match self
            .rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok((id, report)) => {
                if matches!(report, Report::Exited(_)) {
                    self.children.remove(&id);
                }
                (id, report)
            }
            Err(RecvTimeoutError::Timeout) => panic!("nothing happened for {limit:?}: {what}"),
            Err(RecvTimeoutError::Disconnected) => unreachable!("the hub holds a sender"),
        }
    }

    /// Whether process `id` is still running (has not been reported as exited).
    pub fn running(&self, id: ProcId) -> bool {
        self.children.contains_key(&id)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let ids: Vec<ProcId> = self.children.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

fn read_reports(
    id: ProcId,
    child: &Mutex<Child>,
    stdout: std::process::ChildStdout,
    tx: &Sender<(ProcId, Report)>,
) {
    let mut out = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        match out.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Some(rest) = line
            .strip_suffix('\n')
            .and_then(|l| l.split_once(MARK))
            .map(|(_, rest)| rest)
        else {
            continue;
        };
        let (index, json) = rest
            .split_once(' ')
            .unwrap_or_else(|| panic!("bad event line {line:?}"));
        let index: usize = index
            .parse()
            .unwrap_or_else(|_| panic!("bad event line {line:?}"));
        let event: Event =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("bad event {json}: {e}"));
        if tx.send((id, Report::Event(index, event))).is_err() {
            break;
        }
    }
    let status = child
        .lock()
        .map(|mut c| c.wait())
        .expect("the child's lock")
        .expect("wait for a child");
    let _ = tx.send((id, Report::Exited(status)));
}

/// The flags of a worker or observer process.
#[derive(Debug)]
pub struct Flags(HashMap<String, String>);

impl Flags {
    /// The flags of this process (`--name value` each).
    ///
    /// # Panics
    /// On a flag without a value or a stray argument.
    pub fn parse() -> Self {
        Self(flags())
    }

    /// Every flag by name.
    pub fn all(&self) -> &HashMap<String, String> {
        &self.0
    }

    /// The value of `--name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value of `--name`; panics if it is missing.
    pub fn required(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| panic!("--{name} is required"))
    }

    /// `--runs <id,…>` paired with `--from <cursor,…>`: one observer each.
    ///
    /// # Panics
    /// On a bad run id or cursor, or lists of different lengths.
    pub fn observers(&self) -> Vec<(RunId, u64)> {
        let runs: Vec<RunId> = self
            .required("runs")
            .split(',')
            .map(|r| RunId::new(r).expect("run id"))
            .collect();
        let from: Vec<u64> = self
            .required("from")
            .split(',')
            .map(|c| c.parse().expect("cursor"))
            .collect();
        assert_eq!(runs.len(), from.len(), "one cursor per run");
        runs.into_iter().zip(from).collect()
    }
}

fn flags() -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let name = flag
            .strip_prefix("--")
            .unwrap_or_else(|| panic!("unexpected argument {flag:?}"));
        let value = args
            .next()
            .unwrap_or_else(|| panic!("--{name} needs a value"));
        out.insert(name.to_owned(), value);
    }
    out
}

/// Observe `run` from `from` to its end, printing each event as observer `index`. A retryable
/// error (a server restarting) is followed by a new `observe` from the next cursor, as a
/// reconnecting client does; anything else panics. Observing a finished run from its end
/// yields nothing and returns.
pub async fn follow_print(log: EventLog, run: RunId, index: usize, from: u64) {
    let mut next = from;
    loop {
        let mut stream = match log.observe(&run, ObserveOptions::from(next)).await {
            Ok(s) => s,
            Err(e) if e.is_retryable() => {
                // Pacing of the reconnection attempts while the server is down.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => panic!("observe {run} from {next}: {e}"),
        };
        let mut stream_ended = true;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    print_event(index, &event);
                    next = event.cursor + 1;
                    if event.kind.is_terminal() {
                        return;
                    }
                }
                Err(e) if e.is_retryable() => {
                    stream_ended = false;
                    break;
                }
                Err(e) => panic!("observing {run} at {next}: {e}"),
            }
        }
        if stream_ended {
            return;
        }
    }
}
