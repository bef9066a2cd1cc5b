//! The `demo-services` binary through its documented interface: environment variables in, JSON
//! answers and health endpoints out, `probe` exit statuses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use demo_services::Answer;

const BIN: &str = env!("CARGO_BIN_EXE_demo-services");

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

fn start(env: &[(&str, &str)]) -> Service {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = Service(cmd.spawn().unwrap());
    let port = env.iter().find(|(k, _)| *k == "PORT").unwrap().1;
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent().get(&url).call().is_err() {
        assert!(Instant::now() < deadline, "service did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn probe(url: &str) -> i32 {
    Command::new(BIN)
        .args(["probe", url])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .code()
        .unwrap()
}

#[test]
fn answers_who_it_is_and_what_it_received_and_calls_its_dependencies_via_egress() {
    let (pb, pa) = (free_port(), free_port());
    let (pb, pa) = (pb.to_string(), pa.to_string());
    let _b = start(&[
        ("SERVICE", "b"),
        ("INSTANCE", "b-v2"),
        ("LABEL_VERSION", "v2"),
        ("BIND", "127.0.0.1"),
        ("PORT", &pb),
    ]);
    // A's "sidecar egress" is B itself here: A sends Host: b and Host: c there.
    let egress = format!("http://127.0.0.1:{pb}");
    let _a = start(&[
        ("SERVICE", "a"),
        ("BIND", "127.0.0.1"),
        ("PORT", &pa),
        ("EGRESS", &egress),
    ]);
    let mut r = agent()
        .get(&format!("http://127.0.0.1:{pa}/hello?x=1"))
        .header("x-request-id", "rid-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-consumer", "alice")
        .header("x-version", "v2")
        .header("x-unrelated", "kept")
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Answer = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!((a.service.as_str(), a.instance.as_str()), ("a", "a"));
    assert_eq!(a.request, "GET /hello?x=1");
    assert_eq!(a.received.consumer.as_deref(), Some("alice"));
    assert_eq!(a.received.mesh_headers["x-unrelated"], "kept");
    // Default CALLS for a: b then c, both answered (by B here), with ids, trace, consumer and
    // routing headers forwarded and nothing else.
    let tos: Vec<&str> = a.calls.iter().map(|c| c.to.as_str()).collect();
    assert_eq!(tos, ["b", "c"]);
    for call in &a.calls {
        assert_eq!(call.status, Some(200));
        let Some(demo_services::Body::Answer(b)) = &call.answer else {
            panic!("{call:?}");
        };
        assert_eq!(b.version.as_deref(), Some("v2"));
        assert_eq!(b.instance, "b-v2");
        assert_eq!(b.request, "GET /hello?x=1");
        assert_eq!(b.received.request_id.as_deref(), Some("rid-1"));
        assert_eq!(
            b.received.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(b.received.consumer.as_deref(), Some("alice"));
        assert_eq!(
            b.received.mesh_headers.get("x-version").map(String::as_str),
            Some("v2")
        );
        assert!(!b.received.mesh_headers.contains_key("x-unrelated"));
    }
    // B labels its answers' responses with x-app-version.
    let r = agent()
        .get(&format!("http://127.0.0.1:{pb}/"))
        .call()
        .unwrap();
    assert_eq!(r.headers()["x-app-version"], "v2");
}

#[test]
fn probe_exit_status_follows_the_answer() {
    let port = free_port().to_string();
    let _c = start(&[("SERVICE", "c"), ("BIND", "127.0.0.1"), ("PORT", &port)]);
    assert_eq!(probe(&format!("http://127.0.0.1:{port}/ready")), 0);
    assert_eq!(probe(&format!("http://127.0.0.1:{port}/healthz")), 0);
    let closed = free_port();
    assert_eq!(probe(&format!("http://127.0.0.1:{closed}/ready")), 1);
    assert_eq!(probe("not a url"), 1);
}

#[test]
fn refuses_to_start_without_a_role_and_names_the_variable() {
    let out = Command::new(BIN).env_clear().output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SERVICE"), "{err}");
}

#[test]
fn speaks_wasmesh_rpc_as_c_and_calls_rpc_dependencies_with_ids_as_metadata() {
    use rpc::wasmesh_rpc::{FLAG_REPLY, status, types};
    let (pc, pa) = (free_port(), free_port());
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .envs([
            ("SERVICE", "c"),
            ("INSTANCE", "c-1"),
            ("BIND", "127.0.0.1"),
            ("PORT", &pc.to_string()),
            ("PROTOCOL", "wasmesh-rpc"),
        ]);
    let _c = Service(cmd.spawn().unwrap());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], pc));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "C did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Directly: a response carrying C's JSON answer; heartbeats are answered.
    let mut client = rpc_client::Client::connect(addr, Duration::from_secs(5)).unwrap();
    let mut call = rpc_client::Call::new("c", "describe", b"").caller("test");
    call.headers.push(("request-id".into(), "r-1".into()));
    let reply = client.call(&call).unwrap();
    assert_eq!((reply.kind, reply.status), (types::RESPONSE, status::OK));
    let c: Answer = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        (c.service.as_str(), c.instance.as_str(), c.request.as_str()),
        ("c", "c-1", "wasmesh-rpc c.describe")
    );
    assert_eq!(c.received.request_id.as_deref(), Some("r-1"));
    assert_eq!(c.received.mesh_headers["caller"], "test");
    let pong = client.heartbeat().unwrap();
    assert_eq!((pong.kind, pong.flags), (types::HEARTBEAT, FLAG_REPLY));

    // A calls C over wasmesh-rpc: /c/admin -> only c, method admin (nothing denies it without
    // a sidecar), with the request id, trace and consumer as metadata.
    let rpc_calls = format!("c=127.0.0.1:{pc}");
    let pa = pa.to_string();
    let _a = start(&[
        ("SERVICE", "a"),
        ("BIND", "127.0.0.1"),
        ("PORT", &pa),
        ("CALLS", "b,c"),
        ("RPC_CALLS", &rpc_calls),
    ]);
    let mut r = agent()
        .get(&format!("http://127.0.0.1:{pa}/c/admin"))
        .header("x-request-id", "rid-2")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-consumer", "alice")
        .call()
        .unwrap();
    let a: Answer = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(a.calls.len(), 1, "{a:?}");
    let call = &a.calls[0];
    let rpc = call.rpc.as_ref().unwrap();
    assert_eq!(
        (
            call.to.as_str(),
            call.status,
            rpc.method.as_str(),
            rpc.reply.as_str(),
            rpc.status
        ),
        ("c", None, "c.admin", "response", 0)
    );
    let Some(demo_services::Body::Answer(c)) = &call.answer else {
        panic!("{call:?}");
    };
    assert_eq!(c.request, "wasmesh-rpc c.admin");
    assert_eq!(c.received.request_id.as_deref(), Some("rid-2"));
    assert_eq!(
        c.received.trace_id.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(c.received.consumer.as_deref(), Some("alice"));
    assert_eq!(c.received.mesh_headers["caller"], "a");
    // Nothing listening: the call is reported as failed, A still answers 200.
    drop(_c);
    let mut r = agent()
        .get(&format!("http://127.0.0.1:{pa}/c"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Answer = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let err = a.calls[0].error.as_deref().unwrap_or_default();
    assert!(err.starts_with("wasmesh-rpc 127.0.0.1:"), "{a:?}");
}
