//! `healthcheck <url> [timeout-ms]`: a container health check that needs no shell and no curl.
//! It sends `GET <url>` (plain HTTP, a literal IPv4 address or `localhost`, no DNS) and exits 0
//! when the answer is 2xx, 1 otherwise, printing one line saying why; `tcp://<ip>:<port>` only
//! opens a TCP connection (apps that do not speak HTTP, such as the demo's wasmesh-rpc C). Built as a static binary
//! and mounted into every container of the docker-compose mesh (Envoy's admin `/ready`, the
//! apps' health paths), so it works in `FROM scratch` images and in the official Envoy image
//! alike.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Whole-probe time limit when none is given (Docker's own `timeout` should be longer).
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);

/// At most this many body bytes are read (and shown when the probe fails).
const BODY_LIMIT: usize = 256;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("unhealthy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<String> {
    let (url, timeout) = match args {
        [url] => (url, DEFAULT_TIMEOUT),
        [url, ms] => (
            url,
            Duration::from_millis(ms.parse().with_context(|| format!("timeout {ms:?}"))?),
        ),
        _ => bail!(
            "usage: healthcheck <http://127.0.0.1:PORT/path | tcp://127.0.0.1:PORT> [timeout-ms]"
        ),
    };
    if let Some(addr) = url.strip_prefix("tcp://") {
        let addr: std::net::SocketAddr = addr
            .parse()
            .with_context(|| format!("url {url:?}: tcp:// needs ip:port"))?;
        std::net::TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect {addr}"))?;
        return Ok(format!("connect {addr} -> ok"));
    }
    let uri: Uri = url.parse().with_context(|| format!("url {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("url {url:?}: only http:// and tcp:// are supported");
    }
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("url {url:?} has no host"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async {
        tokio::time::timeout(timeout, probe(&host, port, uri.clone()))
            .await
            .map_err(|_| anyhow!("GET {url}: no answer within {timeout:?}"))?
    })
}

async fn probe(host: &str, port: u16, uri: Uri) -> anyhow::Result<String> {
    let addr = match host {
        "localhost" => "127.0.0.1".to_owned(),
        h => h.to_owned(),
    };
    let stream = tokio::net::TcpStream::connect((addr.as_str(), port))
        .await
        .with_context(|| format!("connect {addr}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .header(hyper::header::USER_AGENT, "wasmesh-healthcheck")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let mut body = Vec::new();
    let mut stream = resp.into_body();
    while body.len() < BODY_LIMIT {
        match stream.frame().await {
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    body.extend_from_slice(&data);
                }
            }
            None => break,
        }
    }
    body.truncate(BODY_LIMIT);
    let text = String::from_utf8_lossy(&body);
    let line = format!("GET {uri} -> {status} {}", text.trim());
    if status.is_success() {
        Ok(line)
    } else {
        bail!(line)
    }
}
