//! A small, faithful emulation of the Upstash Redis REST API in front of a real Redis, for the
//! tests (there is no local Upstash server). Checked against the official `@upstash/redis`
//! client by `tests/upstash.rs`.
//!
//! Implemented: `POST /` (one command as a JSON array), `POST /pipeline` (array of commands,
//! answered with one `{"result"}`/`{"error"}` object each), `POST /multi-exec` (the same, run
//! in `MULTI`/`EXEC`), `Authorization: Bearer <token>` on every path (401 otherwise), command
//! errors as HTTP 400 `{"error": "ERR …"}`, and the `Upstash-Encoding: base64` response
//! encoding (bulk strings base64-encoded, `OK` plain) that the official client asks for.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// A running emulation. It serves until the tokio runtime that started it shuts down (each
/// conformance case runs in its own runtime, so each gets its own emulator).
pub struct Emulator {
    pub url: String,
    pub token: String,
}

struct State {
    redis: redis::Client,
    conn: MultiplexedConnection,
    auth: String,
}

/// Start an emulation on a spare loopback port in front of `redis_url`.
pub async fn start(redis_url: &str, token: &str) -> Result<Emulator, String> {
    let redis = redis::Client::open(redis_url).map_err(|e| e.to_string())?;
    let conn = redis
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("emulator cannot reach redis: {e}"))?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = Arc::new(State {
        redis,
        conn,
        auth: format!("Bearer {token}"),
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Emulator {
        url: format!("http://{addr}"),
        token: token.to_owned(),
    })
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == state.auth.as_bytes());
    if !authorized {
        return reply(StatusCode::UNAUTHORIZED, json!({"error": "Unauthorized"}));
    }
    let base64 = req
        .headers()
        .get("upstash-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"base64"));
    if req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "only POST is emulated"}),
        );
    }
    let path = req.uri().path().to_owned();
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "ERR unreadable body"}),
        );
    };
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "ERR failed to parse command"}),
        );
    };
    match path.as_str() {
        "/" => {
            let Some(cmd) = command(&parsed) else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "ERR failed to parse command"}),
                );
            };
            let mut conn = state.conn.clone();
            match cmd.query_async::<redis::Value>(&mut conn).await {
                Ok(v) => reply(StatusCode::OK, json!({"result": to_json(v, base64)})),
                Err(e) => reply(StatusCode::BAD_REQUEST, json!({"error": error_text(&e)})),
            }
        }
        "/pipeline" | "/multi-exec" => {
            let Some(cmds) = parsed
                .as_array()
                .and_then(|a| a.iter().map(command).collect::<Option<Vec<_>>>())
            else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "ERR failed to parse pipeline"}),
                );
            };
            if path == "/pipeline" {
                let mut conn = state.conn.clone();
                let mut out = Vec::with_capacity(cmds.len());
                for c in cmds {
                    out.push(match c.query_async::<redis::Value>(&mut conn).await {
                        Ok(v) => json!({"result": to_json(v, base64)}),
                        Err(e) => json!({"error": error_text(&e)}),
                    });
                }
                reply(StatusCode::OK, Value::Array(out))
            } else {
                multi_exec(state, cmds, base64).await
            }
        }
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "ERR not found"})),
    }
}

/// `MULTI`, the commands, `EXEC` on a connection of its own (a transaction must not interleave
/// with other clients' commands on a shared connection).
async fn multi_exec(state: &State, cmds: Vec<redis::Cmd>, base64: bool) -> Response<Full<Bytes>> {
    let mut conn = match state.redis.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": error_text(&e)}),
            )
        }
    };
    let mut pipe = redis::pipe();
    pipe.cmd("MULTI");
    let n = cmds.len();
    for c in cmds {
        pipe.add_command(c);
    }
    pipe.cmd("EXEC");
    use redis::aio::ConnectionLike;
    match conn.req_packed_commands(&pipe, n + 1, 1).await {
        Ok(mut v) => match v.pop() {
            Some(redis::Value::Array(items)) => reply(
                StatusCode::OK,
                Value::Array(
                    items
                        .into_iter()
                        .map(|item| match item {
                            redis::Value::ServerError(e) => {
                                json!({"error": error_text(&redis::RedisError::from(e))})
                            }
                            v => json!({"result": to_json(v, base64)}),
                        })
                        .collect(),
                ),
            ),
            _ => reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "EXECABORT Transaction discarded"}),
            ),
        },
        Err(e) => reply(StatusCode::BAD_REQUEST, json!({"error": error_text(&e)})),
    }
}

fn command(v: &Value) -> Option<redis::Cmd> {
    let items = v.as_array()?;
    let (name, args) = items.split_first()?;
    let mut cmd = redis::cmd(&arg(name)?);
    for a in args {
        cmd.arg(arg(a)?);
    }
    Some(cmd)
}

fn arg(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Redis's own error line (`ERR …`, `WRONGTYPE …`, `NOSCRIPT …`), as Upstash returns it.
fn error_text(e: &redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_owned(),
        _ => format!("ERR {e}"),
    }
}

fn to_json(v: redis::Value, base64: bool) -> Value {
    use redis::Value as V;
    match v {
        V::Nil => Value::Null,
        V::Int(i) => json!(i),
        V::BulkString(b) if base64 => Value::String(encode_base64(&b)),
        V::BulkString(b) => Value::String(String::from_utf8_lossy(&b).into_owned()),
        V::Array(a) | V::Set(a) => {
            Value::Array(a.into_iter().map(|v| to_json(v, base64)).collect())
        }
        V::Map(m) => Value::Array(
            m.into_iter()
                .flat_map(|(k, v)| [to_json(k, base64), to_json(v, base64)])
                .collect(),
        ),
        V::SimpleString(s) => Value::String(s),
        V::Okay => Value::String("OK".into()),
        V::Double(d) => json!(d.to_string()),
        V::Boolean(b) => json!(i64::from(b)),
        V::ServerError(e) => json!({"error": error_text(&redis::RedisError::from(e))}),
        _ => Value::Null,
    }
}

fn encode_base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}
