//! The compose end-to-end check: images built here, the committed docker-compose.yaml brought
//! up under a throw-away project name with the image and port variables pointed at them, the
//! demo requests sent from the host through the ports published on 127.0.0.1, and everything
//! removed again (containers, network, the images) whatever happened.

// Only `serde_json::Value` is indexed here, and reading a missing key or a non-object gives
// `Null` (never a panic), which the checks then report.
#![allow(clippy::indexing_slicing)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use integration::client::{Connection, Response};
use sdk::compose::{image_variable, port_variable};
use sdk::generate;
use sdk::ir::Mesh;
use sdk::translate::Layout;
use serde_json::Value;

use crate::{exec, images, interrupted, step};

/// How long the containers get to become healthy after `up` returns.
const HEALTH_LIMIT: Duration = Duration::from_secs(180);

/// How long the mesh gets to answer the full path (A, B and C) once healthy: Envoy's active
/// health checks mark hosts healthy on their first pass (every 2 to 5 s).
const FIRST_ANSWER_LIMIT: Duration = Duration::from_secs(60);

fn spec_path() -> PathBuf {
    toolchain::repo_root().join("demo").join("mesh.yaml")
}

/// The demo mesh, from demo/mesh.yaml.
pub fn demo_mesh() -> anyhow::Result<Mesh> {
    Ok(generate::generate(&spec_path(), &Layout::container())?.0)
}

/// How to call Compose: v1 (`docker-compose`) when installed, else v2 (`docker compose`).
#[derive(Clone)]
struct Compose {
    program: &'static str,
    prefix: &'static [&'static str],
    project: String,
    file: PathBuf,
    env: Vec<(String, String)>,
}

impl Compose {
    fn detect(project: String, file: PathBuf) -> anyhow::Result<Self> {
        let works = |p: &str, a: &[&str]| {
            Command::new(p)
                .args(a)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let (program, prefix): (&'static str, &'static [&'static str]) =
            if works("docker-compose", &[]) {
                ("docker-compose", &[])
            } else if works("docker", &["compose"]) {
                ("docker", &["compose"])
            } else {
                bail!("neither docker-compose (v1) nor `docker compose` (v2) is installed");
            };
        Ok(Self {
            program,
            prefix,
            project,
            file,
            env: Vec::new(),
        })
    }

    fn version(&self) -> String {
        let mut c = Command::new(self.program);
        c.args(self.prefix).arg("version");
        exec(&mut c)
            .map(|v| v.lines().next().unwrap_or("").to_owned())
            .unwrap_or_default()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.program);
        c.args(self.prefix)
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = self.file.parent() {
            c.current_dir(dir);
        }
        c
    }
}

/// Removes what the run created, on success (checked) and on failure or panic (best effort).
struct Teardown {
    compose: Compose,
    images: Vec<String>,
    done: bool,
}

impl Teardown {
    fn remove(&self) -> anyhow::Result<()> {
        let down = exec(&mut self.compose.cmd(&[
            "down",
            "--volumes",
            "--remove-orphans",
            "--timeout",
            "10",
        ]));
        let mut rmi = Command::new("docker");
        rmi.args(["rmi", "--force"]).args(&self.images);
        let rmi = exec(&mut rmi);
        down?;
        rmi?;
        Ok(())
    }

    /// Tears down and checks nothing is left: no container or network of the project, none of
    /// the images.
    fn finish(mut self) -> anyhow::Result<()> {
        self.done = true;
        self.remove()?;
        let label = format!("label=com.docker.compose.project={}", self.compose.project);
        let containers = exec(Command::new("docker").args(["ps", "-aq", "--filter", &label]))?;
        ensure!(
            containers.trim().is_empty(),
            "containers left: {containers}"
        );
        let networks =
            exec(Command::new("docker").args(["network", "ls", "-q", "--filter", &label]))?;
        ensure!(networks.trim().is_empty(), "networks left: {networks}");
        for image in &self.images {
            let left = exec(Command::new("docker").args(["images", "-q", image]))?;
            ensure!(left.trim().is_empty(), "image {image} left");
        }
        Ok(())
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        println!("==> tear down after failure");
        if let Ok(ps) = exec(&mut self.compose.cmd(&["ps"])) {
            println!("{ps}");
        }
        if let Ok(logs) = exec(&mut self.compose.cmd(&["logs", "--no-color", "--tail", "30"])) {
            println!("{logs}");
        }
        if let Err(e) = self.remove() {
            eprintln!("teardown: {e:#}");
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `build -> up -> healthy -> requests -> down`, each step timed.
pub fn run() -> anyhow::Result<()> {
    let total = Instant::now();
    let root = toolchain::repo_root();
    step("docker engine answers", || {
        exec(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]))
            .map(|v| println!("    engine {}", v.trim()))
    })?;
    let mesh = step(
        "committed docker-compose.yaml and envoy-configs/ match demo/mesh.yaml",
        || {
            let (mesh, files) = generate::generate(&spec_path(), &Layout::container())?;
            let drift = sdk::diff::diff(&root, &files);
            ensure!(
                drift.is_empty(),
                "stale generated files (run `just gen`):\n{drift}"
            );
            Ok(mesh)
        },
    )?;

    let run_id = std::process::id();
    let project = format!("wasmesh-e2e-{run_id}");
    let envoy_image = format!("wasmesh-e2e/envoy:{run_id}");
    let service_image = format!("wasmesh-e2e/demo-services:{run_id}");
    let mut compose = Compose::detect(project, root.join("docker-compose.yaml"))?;
    println!("    using {}", compose.version());
    let teardown = Teardown {
        compose: compose.clone(),
        images: vec![envoy_image.clone(), service_image.clone()],
        done: false,
    };

    images::build_all(
        std::slice::from_ref(&envoy_image),
        std::slice::from_ref(&service_image),
    )?;

    let mut ports = Vec::new();
    compose
        .env
        .push(("ENVOY_IMAGE".into(), envoy_image.clone()));
    for s in &mesh.services {
        compose
            .env
            .push((image_variable(&s.name), service_image.clone()));
    }
    for l in &mesh.front.listeners {
        let port = free_port()?;
        ports.push((l.name.clone(), port));
        compose.env.push((port_variable(&l.name), port.to_string()));
    }
    let mut teardown = teardown;
    teardown.compose = compose.clone();

    step(
        "docker-compose up -d (apps after their sidecars are healthy)",
        || exec(&mut compose.cmd(&["up", "-d", "--no-build"])).map(drop),
    )?;
    let expected = 1 + 2 * mesh
        .services
        .iter()
        .map(|s| s.instances.len())
        .sum::<usize>();
    step("every container healthy", || {
        wait_healthy(&compose, expected)
    })?;
    step("front proxy published on 127.0.0.1 only", || {
        published_on_loopback_only(&compose)
    })?;
    let port = |name: &str| {
        ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .with_context(|| format!("the demo has no front listener {name:?}"))
    };
    let public = port("public")?;
    let internal = port("internal")?;
    // The public listener authenticates: every request carries the demo's credentials.
    let creds = sdk::up::credentials(&mesh, "public");
    let creds: Vec<(&str, &str)> = creds
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    step(
        "GET / : front proxy -> A -> B and C, one request id and trace id, the consumer",
        || full_path(public, &creds),
    )?;
    step(
        "GET /c/admin : A -> c.admin over wasmesh-rpc, denied by C's sidecar with the protocol's error (status 2)",
        || rpc_denied(public, &creds),
    )?;
    step("GET / without credentials -> 401", || {
        unauthenticated(public)
    })?;
    step("GET /b with x-canary: true -> B v2", || {
        canary(public, &creds)
    })?;
    step(
        "GET /b on the internal listener -> B v1, request id kept",
        || internal_keeps_id(internal),
    )?;
    step(
        "docker-compose stop; order as seed 000: each app started after its sidecar, stopped before it",
        || start_and_stop_order(&compose),
    )?;
    step("tear down: containers, network, images", || {
        teardown.finish()
    })?;
    println!(
        "compose-e2e: PASSED in {:.0} s (build, up, checks, teardown)",
        total.elapsed().as_secs_f64()
    );
    Ok(())
}

fn wait_healthy(compose: &Compose, expected: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let ids = exec(&mut compose.cmd(&["ps", "-q"]))?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        let mut inspect = Command::new("docker");
        inspect
            .args([
                "inspect",
                "--format",
                "{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}}",
            ])
            .args(&ids);
        let states = if ids.is_empty() {
            String::new()
        } else {
            exec(&mut inspect)?
        };
        let rows: Vec<Vec<&str>> = states
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let healthy = rows.iter().filter(|r| r.get(2) == Some(&"healthy")).count();
        if let Some(bad) = rows
            .iter()
            .find(|r| r.get(1) != Some(&"running") || r.get(2) == Some(&"unhealthy"))
        {
            bail!("container {} is {}", bad.join(" "), states);
        }
        if healthy == expected && rows.len() == expected {
            println!("    {expected} containers healthy");
            return Ok(());
        }
        if interrupted() {
            bail!("interrupted");
        }
        if start.elapsed() > HEALTH_LIMIT {
            bail!("not all {expected} containers healthy within {HEALTH_LIMIT:?}:\n{states}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn published_on_loopback_only(compose: &Compose) -> anyhow::Result<()> {
    let id = exec(&mut compose.cmd(&["ps", "-q", "front-proxy"]))?;
    let mappings = exec(Command::new("docker").args(["port", id.trim()]))?;
    ensure!(!mappings.trim().is_empty(), "front-proxy publishes nothing");
    for line in mappings.lines() {
        // `8080/tcp -> 127.0.0.1:49153`
        let host = line.split("->").nth(1).unwrap_or("").trim();
        ensure!(
            host.starts_with("127.0.0.1:"),
            "published beyond loopback: {line}"
        );
        println!("    {line}");
    }
    Ok(())
}

fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Response> {
    Connection::open(port)
        .and_then(|mut c| c.request("GET", path, headers))
        .with_context(|| format!("GET 127.0.0.1:{port}{path}"))
}

fn json(r: &Response) -> anyhow::Result<Value> {
    serde_json::from_slice(&r.body).with_context(|| format!("not JSON: {}", r.text()))
}

/// Whether A's call answered: HTTP 200, or a wasmesh-rpc response with status 0.
fn answered(call: &Value) -> bool {
    call["status"] == 200 || (call["rpc"]["reply"] == "response" && call["rpc"]["status"] == 0)
}

/// A's answer once A, B and C all answered 200 (retried while Envoy's first health checks
/// settle), with the raw response.
fn first_full_answer(port: u16, creds: &[(&str, &str)]) -> anyhow::Result<(Response, Value)> {
    let start = Instant::now();
    let mut last = String::new();
    let mut headers = creds.to_vec();
    headers.push(("x-request-id", "chosen-by-the-client"));
    headers.push(("x-consumer", "forged-by-the-client"));
    while start.elapsed() < FIRST_ANSWER_LIMIT && !interrupted() {
        match get(port, "/", &headers) {
            Ok(r) if r.status == 200 => {
                let body = json(&r)?;
                let calls_ok = body["calls"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty() && c.iter().all(answered));
                if calls_ok {
                    return Ok((r, body));
                }
                last = format!("200 but a dependency failed: {body}");
            }
            Ok(r) => last = format!("{} {}", r.status, r.text()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("no full answer within {FIRST_ANSWER_LIMIT:?}; last: {last}")
}

fn full_path(port: u16, creds: &[(&str, &str)]) -> anyhow::Result<()> {
    let (r, a) = first_full_answer(port, creds)?;
    println!(
        "    $ curl{} -H 'x-request-id: chosen-by-the-client' -H 'x-consumer: forged-by-the-client' http://127.0.0.1:{port}/\n{}",
        creds
            .iter()
            .map(|(k, v)| format!(" -H '{k}: {v}'"))
            .collect::<String>(),
        serde_json::to_string_pretty(&a)?
    );
    ensure!(a["service"] == "a", "answered by {}", a["service"]);
    let id = a["received"]["request_id"]
        .as_str()
        .context("A saw no request id")?;
    ensure!(
        id != "chosen-by-the-client",
        "the public listener replaces client request ids; A saw the client's"
    );
    ensure!(
        r.header("x-request-id") == Some(id),
        "response x-request-id {:?} is not the id A saw ({id})",
        r.header("x-request-id")
    );
    ensure!(
        r.header("x-app-version").is_none(),
        "the front proxy strips x-app-version"
    );
    let trace = a["received"]["trace_id"]
        .as_str()
        .context("A saw no trace id")?;
    let consumer = a["received"]["consumer"]
        .as_str()
        .context("A saw no consumer")?;
    ensure!(
        consumer != "forged-by-the-client",
        "the auth stage replaces a client-sent x-consumer; A saw the client's"
    );
    let mut called: Vec<&str> = Vec::new();
    for call in a["calls"].as_array().context("A reports no calls")? {
        let to = call["to"].as_str().unwrap_or("?");
        let ans = &call["answer"];
        ensure!(answered(call), "A -> {to}: {call}");
        ensure!(
            ans["service"] == to,
            "A -> {to} answered by {}",
            ans["service"]
        );
        ensure!(
            ans["received"]["request_id"] == id,
            "{to} saw request id {} not {id}",
            ans["received"]["request_id"]
        );
        ensure!(
            ans["received"]["trace_id"] == trace,
            "{to} saw trace id {} not {trace}",
            ans["received"]["trace_id"]
        );
        ensure!(
            ans["received"]["consumer"] == consumer,
            "{to} saw consumer {} not {consumer}",
            ans["received"]["consumer"]
        );
        called.push(to);
    }
    called.sort_unstable();
    ensure!(called == ["b", "c"], "A called {called:?}");
    let c = a["calls"]
        .as_array()
        .and_then(|calls| calls.iter().find(|c| c["to"] == "c"))
        .context("no call to c")?;
    ensure!(
        c["rpc"]["method"] == "c.describe" && c["answer"]["request"] == "wasmesh-rpc c.describe",
        "A -> C was not a wasmesh-rpc call: {c}"
    );
    ensure!(
        c["answer"]["received"]["mesh_headers"]["x-served-by"] == "c-sidecar rpc",
        "C's sidecar's rpc filter did not add its metadata: {c}"
    );
    println!("    request id {id}, trace id {trace} and consumer {consumer} seen by A, B and C");
    Ok(())
}

fn rpc_denied(port: u16, creds: &[(&str, &str)]) -> anyhow::Result<()> {
    // The /c route injects a 503 into 1% of requests: retry those.
    let mut r = get(port, "/c/admin", creds)?;
    for _ in 0..5 {
        if r.status != 503 {
            break;
        }
        r = get(port, "/c/admin", creds)?;
    }
    ensure!(r.status == 200, "{} {}", r.status, r.text());
    let a = json(&r)?;
    let calls = a["calls"].as_array().context("A reports no calls")?;
    ensure!(calls.len() == 1, "A should call only C for /c/admin: {a}");
    let rpc = &calls[0]["rpc"];
    ensure!(
        calls[0]["to"] == "c"
            && rpc["method"] == "c.admin"
            && rpc["reply"] == "error"
            && rpc["status"] == 2
            && rpc["error_message"] == "wasmesh: call denied by policy",
        "expected c.admin denied with an error frame, status 2: {}",
        calls[0]
    );
    println!("    {}", calls[0]);
    Ok(())
}

fn unauthenticated(port: u16) -> anyhow::Result<()> {
    let r = get(port, "/", &[])?;
    ensure!(r.status == 401, "{} {}", r.status, r.text());
    ensure!(
        r.header("www-authenticate").is_some(),
        "401 without WWW-Authenticate"
    );
    ensure!(
        json(&r)?["error"] == "missing_credentials",
        "401 body {}",
        r.text()
    );
    Ok(())
}

fn canary(port: u16, creds: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut headers = creds.to_vec();
    headers.push(("x-canary", "true"));
    let r = get(port, "/b", &headers)?;
    ensure!(r.status == 200, "{} {}", r.status, r.text());
    let b = json(&r)?;
    ensure!(
        b["service"] == "b" && b["version"] == "v2",
        "answered by {b}"
    );
    println!("    answered by {} {}", b["instance"], b["version"]);
    Ok(())
}

fn internal_keeps_id(port: u16) -> anyhow::Result<()> {
    let r = get(port, "/b", &[("x-request-id", "kept-by-internal")])?;
    ensure!(r.status == 200, "{} {}", r.status, r.text());
    let b = json(&r)?;
    ensure!(
        b["service"] == "b" && b["version"] == "v1",
        "answered by {b}"
    );
    ensure!(
        b["received"]["request_id"] == "kept-by-internal",
        "B saw request id {}",
        b["received"]["request_id"]
    );
    println!("    answered by {} {}", b["instance"], b["version"]);
    Ok(())
}

/// A Docker timestamp (RFC 3339, UTC, fraction trimmed of trailing zeros) made comparable as a
/// string: the fraction padded to nanoseconds.
fn comparable(ts: &str) -> String {
    let ts = ts.trim_end_matches('Z');
    let (whole, frac) = ts.split_once('.').unwrap_or((ts, ""));
    format!("{whole}.{frac:0<9}Z")
}

/// Stops the project and checks the order seed 000 asks for, from Docker's own start and finish
/// times: each app started after its sidecar and stopped before it; the front proxy started
/// after every app and stopped before them.
fn start_and_stop_order(compose: &Compose) -> anyhow::Result<()> {
    exec(&mut compose.cmd(&["stop", "--timeout", "10"]))?;
    let label = format!("label=com.docker.compose.project={}", compose.project);
    let ids = exec(Command::new("docker").args(["ps", "-aq", "--filter", &label]))?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    ensure!(!ids.is_empty(), "no containers after stop");
    let out = exec(
        Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{index .Config.Labels \"com.docker.compose.service\"}} {{.State.StartedAt}} {{.State.FinishedAt}} {{.State.Running}}",
            ])
            .args(&ids),
    )?;
    // service -> (started, finished)
    let mut times = std::collections::BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [service, started, finished, running] = f.as_slice() else {
            bail!("unexpected inspect line {line:?}");
        };
        ensure!(*running == "false", "{service} still running after stop");
        times.insert(
            (*service).to_owned(),
            (comparable(started), comparable(finished)),
        );
    }
    let front = times
        .get("front-proxy")
        .context("no front-proxy container")?
        .clone();
    let mut apps = 0;
    for (service, (started, finished)) in &times {
        let Some(sidecar) = times.get(&format!("{service}-sidecar")) else {
            continue;
        };
        apps += 1;
        ensure!(
            started > &sidecar.0,
            "{service} started {started} before its sidecar {}",
            sidecar.0
        );
        ensure!(
            finished <= &sidecar.1,
            "{service} stopped {finished} after its sidecar {}",
            sidecar.1
        );
        ensure!(front.0 > *started, "front-proxy started before {service}");
        ensure!(front.1 <= *finished, "front-proxy stopped after {service}");
    }
    ensure!(apps > 0, "no app with a sidecar among {:?}", times.keys());
    println!("    {apps} apps: each started after its sidecar and stopped before it");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::comparable;

    #[test]
    fn docker_timestamps_compare_in_time_order_whatever_their_trimmed_fraction() {
        let a = comparable("2026-11-29T16:51:11.12Z");
        let b = comparable("2026-11-29T16:51:11.123Z");
        let c = comparable("2026-11-29T16:51:12Z");
        assert!(a < b && b < c, "{a} {b} {c}");
        assert_eq!(a, "2026-11-29T16:51:11.120000000Z");
        assert_eq!(c, "2026-11-29T16:51:12.000000000Z");
    }
}
