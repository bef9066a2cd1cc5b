//! `demo-services`: the demo mesh's services A, B and C in one binary; the role comes from
//! `--service` / `SERVICE`.
//!
//! ```text
//! demo-services [serve]           serve as SERVICE on BIND:PORT (default)
//! demo-services probe <url>       exit 0 when GET <url> answers 2xx within 2 s, else 1
//!                                 (a health check for images without a shell or curl)
//! ```
//!
//! Settings (flag or environment variable; the compose file and `wasmesh up` set the variables):
//!
//! | variable | flag | default | meaning |
//! |---|---|---|---|
//! | `SERVICE` | `--service` | required | role: `a`, `b`, `c` (any name works; only the callees differ) |
//! | `PORT` | `--port` | `8000` | port to serve on |
//! | `BIND` | `--bind` | `0.0.0.0` | address to serve on (`wasmesh up` gives each instance its own 127.0.0.N) |
//! | `EGRESS` | `--egress` | `http://127.0.0.1:15001` | the sidecar's egress listener; dependencies are called there with `Host: <name>` |
//! | `CALLS` | `--calls` | `b,c` for `a`, none otherwise | dependencies to call, comma-separated (see below) |
//! | `RPC_CALLS` | `--rpc-calls` | none | dependencies among `CALLS` that speak wasmesh-rpc, `name=ip:port` comma-separated: the sidecar's loopback listener for each |
//! | `PROTOCOL` | `--protocol` | `http` | what to serve on `PORT`: `http`, or `wasmesh-rpc` (the demo's C) |
//! | `INSTANCE` | `--instance` | the service name | instance name shown in answers (`b-v2`, `c-1`) |
//! | `LABEL_<KEY>` | | | labels shown in answers; `LABEL_VERSION=v2` is the `version` |
//!
//! Endpoints: `GET /healthz` and `GET /ready` answer `200 ok` (the spec's health checks); every
//! other request gets the JSON answer of [`demo_services::answer`] with response header
//! `x-app-version: <version>` (the demo's front proxy strips it). Dependencies are called
//! concurrently with a 4 s timeout each ([`demo_services::targets`]: a path whose first segment
//! names a dependency calls only that one, `/c/admin` calls method `admin`); a failed call is
//! reported in the answer and the answer's status stays 200, so a transcript shows what each hop
//! did. HTTP dependencies get `GET <path>` with `Host: <name>` at `EGRESS`; wasmesh-rpc ones a
//! request `<name>.<method>` (caller: this service; metadata: [`demo_services::rpc_keys`]) on a
//! new connection to their `RPC_CALLS` address.
//!
//! With `PROTOCOL=wasmesh-rpc` the service answers wasmesh-rpc on `PORT` instead: every request
//! gets a response (status 0) whose payload is the JSON answer of [`demo_services::rpc_answer`],
//! heartbeats are answered (the sidecar's rpc filter relies on it to reply to denied calls),
//! one-way calls are dropped. SIGTERM or SIGINT stops serving.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use demo_services::{
    Identity, answer, call_error, call_result, forwarded, labels_from_env, rpc_answer,
    rpc_metadata, rpc_result, targets,
};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rpc::codec::Decoder;
use rpc::wasmesh_rpc::{FLAG_REPLY, Frame, WasmeshRpc, status, types};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One of the demo mesh's services (A calls B and C through its sidecar; B and C answer).
///
/// Every answer is JSON: who answered (service, instance, version label), what it received
/// (request id, trace id, traceparent, consumer, headers the mesh added) and, for A, what B and C
/// answered. /healthz and /ready answer 200.
#[derive(Parser, Debug)]
#[command(
    name = "demo-services",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve (the default).
    Serve(Serve),
    /// Exit 0 when GET <URL> answers 2xx within 2 s, else 1 (a health check needing no shell).
    Probe {
        /// e.g. http://127.0.0.1:15000/ready
        url: String,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct Serve {
    /// Role: a, b or c.
    #[arg(long, env = "SERVICE")]
    service: Option<String>,
    /// Port to serve on.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    port: u16,
    /// Address to serve on.
    #[arg(long, env = "BIND", default_value = "0.0.0.0")]
    bind: String,
    /// The sidecar's egress listener (dependencies are called here with Host: <name>).
    #[arg(long, env = "EGRESS", default_value = "http://127.0.0.1:15001")]
    egress: String,
    /// Dependencies to call on each request, comma-separated (default: b,c for a, none else).
    #[arg(long, env = "CALLS")]
    calls: Option<String>,
    /// Instance name shown in answers (default: the service name).
    #[arg(long, env = "INSTANCE")]
    instance: Option<String>,
    /// Dependencies called over wasmesh-rpc: name=ip:port, comma-separated.
    #[arg(long, env = "RPC_CALLS")]
    rpc_calls: Option<String>,
    /// What to serve: http or wasmesh-rpc.
    #[arg(long, env = "PROTOCOL", default_value = "http")]
    protocol: Protocol,
}

/// What a service serves on its port.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// HTTP/1.1.
    Http,
    /// wasmesh-rpc (docs/protocol.md).
    #[value(name = "wasmesh-rpc")]
    WasmeshRpc,
}

struct State {
    who: Identity,
    egress: http::Uri,
    calls: Vec<String>,
    /// Dependencies called over wasmesh-rpc, and where.
    rpc: Vec<(String, SocketAddr)>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// Largest wasmesh-rpc frame accepted (the rpc filter's default).
const MAX_FRAME: usize = 1 << 20;

/// `name=ip:port,...`.
fn parse_rpc_calls(list: &str) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, addr) = e
                .split_once('=')
                .with_context(|| format!("RPC_CALLS entry {e:?} is not name=ip:port"))?;
            let addr = addr
                .parse()
                .with_context(|| format!("RPC_CALLS entry {e:?}: {addr:?} is not ip:port"))?;
            Ok((name.to_owned(), addr))
        })
        .collect()
}

type Body = Full<Bytes>;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Some(Cmd::Probe { url }) => {
            let ok = rt.block_on(probe(&url));
            std::process::exit(if ok { 0 } else { 1 });
        }
        Some(Cmd::Serve(s)) => rt.block_on(serve(s)),
        None => rt.block_on(serve(cli.serve)),
    }
}

async fn probe(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        eprintln!("probe: not a URL: {url}");
        return false;
    };
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    match tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await {
        Ok(Ok(r)) if r.status().is_success() => true,
        Ok(Ok(r)) => {
            eprintln!("probe: {url} answered {}", r.status());
            false
        }
        Ok(Err(e)) => {
            eprintln!("probe: {url}: {e}");
            false
        }
        Err(_) => {
            eprintln!("probe: {url}: no answer within 2 s");
            false
        }
    }
}

async fn serve(s: Serve) -> anyhow::Result<()> {
    let service = s
        .service
        .context("no service role: pass --service or set SERVICE (a, b or c)")?;
    let calls = match s.calls {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        None if service == "a" => vec!["b".to_owned(), "c".to_owned()],
        None => Vec::new(),
    };
    let rpc = parse_rpc_calls(s.rpc_calls.as_deref().unwrap_or(""))?;
    let egress: http::Uri = s
        .egress
        .parse()
        .with_context(|| format!("EGRESS={} is not a URL", s.egress))?;
    let who = Identity {
        instance: s.instance.unwrap_or_else(|| service.clone()),
        service,
        labels: labels_from_env(std::env::vars()),
    };
    let addr: SocketAddr = format!("{}:{}", s.bind, s.port)
        .parse()
        .with_context(|| format!("BIND={} PORT={} is not an address", s.bind, s.port))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    eprintln!(
        "demo-services: {} ({}) serving {:?} on {addr}, calls [{}] via {egress}, wasmesh-rpc {rpc:?}",
        who.service,
        who.instance,
        s.protocol,
        calls.join(",")
    );
    let state = Arc::new(State {
        who,
        egress,
        calls,
        rpc,
        client: Client::builder(TokioExecutor::new()).build_http(),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("demo-services: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        if s.protocol == Protocol::WasmeshRpc {
            tokio::spawn(async move {
                if let Err(e) = serve_rpc(&state.who, stream).await {
                    eprintln!("demo-services: wasmesh-rpc connection: {e:#}");
                }
            });
            continue;
        }
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(Arc::clone(&state), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
    eprintln!("demo-services: stopping");
    Ok(())
}

fn headers_of(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if matches!(req.uri().path(), "/healthz" | "/ready") {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    let headers = headers_of(&req);
    let method = req.method().as_str().to_owned();
    let pass = forwarded(&headers);
    let metadata = rpc_metadata(&headers);
    let calls = futures_join(
        targets(&path, &state.calls)
            .into_iter()
            .map(|(to, method)| {
                let state = Arc::clone(&state);
                let (to, path, pass, metadata) =
                    (to.to_owned(), path.clone(), pass.clone(), metadata.clone());
                async move {
                    match state.rpc.iter().find(|(name, _)| *name == to) {
                        Some((_, addr)) => call_rpc(&state, &to, *addr, &method, metadata).await,
                        None => call(&state, &to, &path, &pass).await,
                    }
                }
            }),
    )
    .await;
    let body = answer(&state.who, &method, &path, &headers, calls);
    let mut text = serde_json::to_vec_pretty(&body).unwrap_or_default();
    text.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = state
        .who
        .version()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        resp.headers_mut().insert("x-app-version", v);
    }
    Ok(resp)
}

/// Runs the calls concurrently on this task and returns their results in order.
async fn futures_join<F>(calls: impl Iterator<Item = F>) -> Vec<demo_services::Call>
where
    F: std::future::Future<Output = demo_services::Call> + Send + 'static,
{
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(
            h.await
                .unwrap_or_else(|e| call_error("?", &format!("task failed: {e}"))),
        );
    }
    out
}

async fn call(
    state: &State,
    to: &str,
    path: &str,
    pass: &[(String, String)],
) -> demo_services::Call {
    let uri = match format!("{}{}", state.egress.to_string().trim_end_matches('/'), path)
        .parse::<http::Uri>()
    {
        Ok(u) => u,
        Err(e) => return call_error(to, &format!("bad URL: {e}")),
    };
    let mut builder = Request::get(uri).header(http::header::HOST, to);
    for (k, v) in pass {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let req = match builder.body(Empty::new()) {
        Ok(r) => r,
        Err(e) => return call_error(to, &e.to_string()),
    };
    let resp = match tokio::time::timeout(Duration::from_secs(4), state.client.request(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return call_error(to, &e.to_string()),
        Err(_) => return call_error(to, "no answer within 4 s"),
    };
    let status = resp.status().as_u16();
    match resp.into_body().collect().await {
        Ok(b) => call_result(to, status, &b.to_bytes()),
        Err(e) => call_error(to, &format!("reading the body: {e}")),
    }
}

/// Calls `to`.`method` over wasmesh-rpc at `addr` (a new connection, so each call is balanced
/// on its own by the sidecar's tcp_proxy), with `metadata` and caller = this service.
async fn call_rpc(
    state: &State,
    to: &str,
    addr: SocketAddr,
    method: &str,
    metadata: Vec<(String, String)>,
) -> demo_services::Call {
    let mut call = rpc_client::Call::new(to, method, b"").caller(&state.who.service);
    call.headers = metadata;
    let timeout = Duration::from_secs(4);
    let reply = tokio::task::spawn_blocking(move || {
        rpc_client::Client::connect(addr, timeout).and_then(|mut c| c.call(&call))
    })
    .await;
    let frame = match reply {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return call_error(to, &format!("wasmesh-rpc {addr}: {e}")),
        Err(e) => return call_error(to, &format!("task failed: {e}")),
    };
    let reply = match frame.kind {
        types::RESPONSE => "response",
        types::ERROR => "error",
        other => return call_error(to, &format!("unexpected wasmesh-rpc frame type {other}")),
    };
    rpc_result(
        to,
        method,
        reply,
        frame.status,
        rpc_client::header(&frame, "error-message"),
        &frame.payload,
    )
}

/// Serves one wasmesh-rpc connection: answers requests and heartbeats until the peer closes.
async fn serve_rpc(who: &Identity, mut stream: TcpStream) -> anyhow::Result<()> {
    let mut decoder = Decoder::new(MAX_FRAME);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        decoder.feed(buf.get(..n).unwrap_or_default());
        let mut out = Vec::new();
        while let Some((_, range)) = decoder.next_frame(&WasmeshRpc)? {
            let frame = Frame::decode(decoder.bytes(&range))?;
            if let Some(reply) = rpc_reply(who, &frame)? {
                out.extend(reply.encode()?);
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
    }
}

/// The answer to one frame: a response to a request, a pong to a ping, nothing otherwise.
fn rpc_reply(who: &Identity, frame: &Frame) -> anyhow::Result<Option<Frame>> {
    let reply = |kind, flags, headers, payload| Frame {
        kind,
        flags,
        status: status::OK,
        request_id: frame.request_id,
        headers,
        payload,
    };
    Ok(match frame.kind {
        types::HEARTBEAT if frame.flags & FLAG_REPLY == 0 => {
            Some(reply(types::HEARTBEAT, FLAG_REPLY, Vec::new(), Vec::new()))
        }
        types::REQUEST => {
            let entry = |k: &str| rpc_client::header(frame, k).unwrap_or_default();
            let body = rpc_answer(who, entry("service"), entry("method"), &frame.headers);
            let mut payload = serde_json::to_vec_pretty(&body)?;
            payload.push(b'\n');
            Some(reply(
                types::RESPONSE,
                0,
                vec![("content-type".to_owned(), "application/json".to_owned())],
                payload,
            ))
        }
        _ => None,
    })
}
