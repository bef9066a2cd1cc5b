//! The compose end-to-end check: images built here once; then for each Compose release asked
//! for (docker-compose 1.29 and the pinned Compose v2) the committed docker-compose.yaml brought
//! up under a throw-away project name with the image and port variables pointed at them, the
//! demo requests sent from the host through the ports published on 127.0.0.1, the stop order
//! checked and the project taken down; finally the images removed. Everything is removed
//! whatever happened (containers, network, the images).

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

/// Which Compose releases the check runs the mesh with (`--compose v1|v2|both`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// docker-compose 1.29 (`docker-compose` on `PATH`, reporting version 1.x).
    V1,
    /// The pinned Compose v2 ([`toolchain::compose_v2_bin`], installed into `.tools/`).
    V2,
    /// v1 then v2, one full run each, sharing the images.
    Both,
}

impl std::str::FromStr for Choice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            "both" => Ok(Self::Both),
            other => bail!("--compose {other:?}: expected v1, v2 or both"),
        }
    }
}

/// The first line of `docker-compose version` when the `docker-compose` on `PATH` is Compose
/// v1 (`docker-compose version 1.29.2, build unknown`), else `None`.
fn installed_v1() -> Option<String> {
    let out = Command::new("docker-compose")
        .arg("version")
        .output()
        .ok()?;
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    (out.status.success() && first.starts_with("docker-compose version 1.")).then_some(first)
}

/// One Compose release to run, as a program (v1 and v2 alike are called `docker-compose`
/// standalone) with the environment and project of one run.
#[derive(Clone)]
struct Compose {
    /// `v1` or `v2`.
    label: &'static str,
    program: PathBuf,
    /// First line of its `version` output.
    version: String,
    project: String,
    file: PathBuf,
    env: Vec<(String, String)>,
}

/// Installs Debian's `docker-compose` (1.29.2 on bookworm) with apt-get, as the project does
/// for other Debian packages it needs (the fresh-machine rule); then the installed v1, if any.
fn install_v1() -> Option<String> {
    if Command::new("apt-get").arg("--version").output().is_err() {
        return None;
    }
    println!("    docker-compose 1.x missing: apt-get install docker-compose");
    if let Err(e) = toolchain::apt_get_install(&["docker-compose"]) {
        println!("    {e}");
    }
    installed_v1()
}

impl Compose {
    /// The releases `choice` asks for, v1 first. v1 is installed with apt-get when missing;
    /// without an explicit choice and still no v1: v2 alone (said loudly).
    fn resolve(choice: Option<Choice>, file: &std::path::Path) -> anyhow::Result<Vec<Self>> {
        let v1 = match (choice, installed_v1()) {
            (Some(Choice::V2), v1) | (_, v1 @ Some(_)) => v1,
            (None | Some(Choice::V1 | Choice::Both), None) => install_v1(),
        };
        let want = match (choice, &v1) {
            (Some(c), _) => c,
            (None, Some(_)) => Choice::Both,
            (None, None) => {
                println!(
                    "    NOTE: docker-compose 1.x is not installed and apt-get could not \
                     install it: running Compose v2 ONLY (install docker-compose 1.29 to check both)"
                );
                Choice::V2
            }
        };
        let make = |label, program: PathBuf, version: String| Self {
            label,
            program,
            version,
            project: String::new(),
            file: file.to_path_buf(),
            env: Vec::new(),
        };
        let mut out = Vec::new();
        if matches!(want, Choice::V1 | Choice::Both) {
            let version = v1.context(
                "docker-compose 1.x is not installed (`docker-compose version` on PATH); \
                 on Debian: apt-get install docker-compose, or run with --compose v2",
            )?;
            out.push(make("v1", PathBuf::from("docker-compose"), version));
        }
        if matches!(want, Choice::V2 | Choice::Both) {
            let bin = toolchain::compose_v2_bin()?;
            let version = exec(Command::new(&bin).arg("version"))?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            out.push(make("v2", bin, version));
        }
        Ok(out)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.program);
        c.arg("-p")
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

    /// The ids of every container of the project, running or not (from Docker's labels, which
    /// v1 and v2 set alike; v2's `ps -q` leaves out exited containers).
    fn container_ids(&self) -> anyhow::Result<Vec<String>> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let ids = exec(Command::new("docker").args(["ps", "-aq", "--filter", &label]))?;
        Ok(ids.split_whitespace().map(str::to_owned).collect())
    }
}

/// Takes one run's project down, on success (checked) and on failure or panic (best effort,
/// after printing `ps` and the last log lines).
struct ProjectTeardown {
    compose: Compose,
    done: bool,
}

impl ProjectTeardown {
    fn down(&self) -> anyhow::Result<()> {
        exec(
            &mut self
                .compose
                .cmd(&["down", "--volumes", "--remove-orphans", "--timeout", "10"]),
        )
        .map(drop)
    }

    /// Takes the project down and checks no container or network of it is left.
    fn finish(mut self) -> anyhow::Result<()> {
        self.done = true;
        self.down()?;
        let ids = self.compose.container_ids()?;
        ensure!(ids.is_empty(), "containers left: {ids:?}");
        let label = format!("label=com.docker.compose.project={}", self.compose.project);
        let networks =
            exec(Command::new("docker").args(["network", "ls", "-q", "--filter", &label]))?;
        ensure!(networks.trim().is_empty(), "networks left: {networks}");
        Ok(())
    }
}

impl Drop for ProjectTeardown {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        println!("==> [{}] tear down after failure", self.compose.label);
        if let Ok(ps) = exec(&mut self.compose.cmd(&["ps", "-a"])) {
            println!("{ps}");
        }
        if let Ok(logs) = exec(&mut self.compose.cmd(&["logs", "--no-color", "--tail", "30"])) {
            println!("{logs}");
        }
        if let Err(e) = self.down() {
            eprintln!("teardown: {e:#}");
        }
    }
}

/// Removes the images the check built, on success (checked) and on failure (best effort).
struct ImagesTeardown {
    images: Vec<String>,
    done: bool,
}

impl ImagesTeardown {
    fn remove(&self) -> anyhow::Result<()> {
        exec(
            Command::new("docker")
                .args(["rmi", "--force"])
                .args(&self.images),
        )
        .map(drop)
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.done = true;
        self.remove()?;
        for image in &self.images {
            let left = exec(Command::new("docker").args(["images", "-q", image]))?;
            ensure!(left.trim().is_empty(), "image {image} left");
        }
        Ok(())
    }
}

impl Drop for ImagesTeardown {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = self.remove()
        {
            eprintln!("teardown: {e:#}");
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The images of one check, shared by its runs.
struct Images {
    envoy: String,
    service: String,
}

/// `build -> (up -> healthy -> requests -> stop order -> down) per Compose release -> remove
/// images`, each step timed. A failed run does not skip the next one; the check fails if any
/// run did.
pub fn run(choice: Option<Choice>) -> anyhow::Result<()> {
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
    let composes = step(
        "Compose releases (v2 installed into .tools/ if missing)",
        || {
            let c = Compose::resolve(choice, &root.join("docker-compose.yaml"))?;
            for c in &c {
                println!("    {}: {} ({})", c.label, c.version, c.program.display());
            }
            Ok(c)
        },
    )?;

    let run_id = std::process::id();
    let images = Images {
        envoy: format!("wasmesh-e2e/envoy:{run_id}"),
        service: format!("wasmesh-e2e/demo-services:{run_id}"),
    };
    let images_teardown = ImagesTeardown {
        images: vec![images.envoy.clone(), images.service.clone()],
        done: false,
    };
    let build = Instant::now();
    images::build_all(
        std::slice::from_ref(&images.envoy),
        std::slice::from_ref(&images.service),
    )?;
    let build = build.elapsed().as_secs_f64();

    let mut results = Vec::new();
    for mut compose in composes {
        if interrupted() {
            break;
        }
        compose.project = format!("wasmesh-e2e-{run_id}-{}", compose.label);
        let t = Instant::now();
        let r = run_one(compose.clone(), &mesh, &images);
        if let Err(e) = &r {
            eprintln!("compose-e2e: [{}] FAILED: {e:#}", compose.label);
        }
        results.push((compose, r.is_ok(), t.elapsed().as_secs_f64()));
    }
    step("remove the images", || images_teardown.finish())?;
    println!("compose-e2e: images built in {build:.0} s (module, static binaries, both images)");
    for (c, ok, took) in &results {
        println!(
            "compose-e2e: [{}] {} {} in {took:.0} s (up, checks, stop order, down)",
            c.label,
            c.version,
            if *ok { "PASSED" } else { "FAILED" }
        );
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(c, _, _)| c.label)
        .collect();
    ensure!(
        failed.is_empty(),
        "failed with Compose {}",
        failed.join(", ")
    );
    ensure!(!results.is_empty(), "interrupted before any run");
    println!(
        "compose-e2e: PASSED in {:.0} s (build, {} run{}, teardown)",
        total.elapsed().as_secs_f64(),
        results.len(),
        if results.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// One full run of the mesh with one Compose release: up, checks, stop order, down.
fn run_one(mut compose: Compose, mesh: &Mesh, images: &Images) -> anyhow::Result<()> {
    let v = compose.label;
    let mut ports = Vec::new();
    compose
        .env
        .push(("ENVOY_IMAGE".into(), images.envoy.clone()));
    for s in &mesh.services {
        compose
            .env
            .push((image_variable(&s.name), images.service.clone()));
    }
    for l in &mesh.front.listeners {
        let port = free_port()?;
        ports.push((l.name.clone(), port));
        compose.env.push((port_variable(&l.name), port.to_string()));
    }
    let teardown = ProjectTeardown {
        compose: compose.clone(),
        done: false,
    };

    step(
        &format!("[{v}] docker-compose up -d (apps after their sidecars are healthy)"),
        || exec(&mut compose.cmd(&["up", "-d", "--no-build"])).map(drop),
    )?;
    let expected = 1 + 2 * mesh
        .services
        .iter()
        .map(|s| s.instances.len())
        .sum::<usize>();
    step(&format!("[{v}] every container healthy"), || {
        wait_healthy(&compose, expected)
    })?;
    step(
        &format!("[{v}] front proxy published on 127.0.0.1 only"),
        || published_on_loopback_only(&compose),
    )?;
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
    let creds = sdk::up::credentials(mesh, "public");
    let creds: Vec<(&str, &str)> = creds
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    step(
        &format!(
            "[{v}] GET / : front proxy -> A -> B and C, one request id and trace id, the consumer"
        ),
        || full_path(public, &creds),
    )?;
    step(
        &format!(
            "[{v}] GET /c/admin : A -> c.admin over wasmesh-rpc, denied by C's sidecar with the protocol's error (status 2)"
        ),
        || rpc_denied(public, &creds),
    )?;
    step(&format!("[{v}] GET / without credentials -> 401"), || {
        unauthenticated(public)
    })?;
    step(&format!("[{v}] GET /b with x-canary: true -> B v2"), || {
        canary(public, &creds)
    })?;
    step(
        &format!("[{v}] GET /b on the internal listener -> B v1, request id kept"),
        || internal_keeps_id(internal),
    )?;
    step(
        &format!(
            "[{v}] docker-compose stop; order as seed 000: each app started after its sidecar, stopped before it"
        ),
        || start_and_stop_order(&compose),
    )?;
    step(
        &format!("[{v}] docker-compose down: no container or network left"),
        || teardown.finish(),
    )?;
    Ok(())
}

fn wait_healthy(compose: &Compose, expected: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let ids = compose.container_ids()?;
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
    let ids = compose.container_ids()?;
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
