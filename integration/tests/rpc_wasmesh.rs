//! The rpc filter on wasmesh-rpc through a real, stock Envoy with the project's own Rust client
//! and server: calls, one-way calls, heartbeats, application errors, 1,000 pipelined calls,
//! byte-by-byte delivery, ACL denial answered in-protocol, metadata mutation, two services routed
//! to two clusters, metrics at /stats/prometheus, and a malformed stream closing only its own
//! connection.

mod rpc_common;

use std::net::SocketAddr;
use std::time::Duration;

use integration::envoy::Envoy;
use rpc::wasmesh_rpc::{status, types};
use rpc_client::{Call, Client, ClientError, Server, header};
use rpc_common::{bootstrap, cluster, prom, rpc_filter, settled_stats, tcp_proxy};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn wasmesh_rpc_through_envoy_with_real_client_and_servers() {
    let orders = Server::start("orders").unwrap();
    let users = Server::start("users").unwrap();
    let config = json!({
        "protocol": "wasmesh-rpc",
        "acl": {"rules": [
            {"action": "deny", "caller": "intruder"},
            {"action": "deny", "service": "Users", "method": "Delete"}
        ]},
        "set_metadata": [{"key": "via", "value": "wasmesh"}],
        "limits": [{"service": "Orders", "method": "Rare", "rate": 1, "period_ms": 60000}],
        "routes": [{"service": "Users", "cluster": "users"}],
        "default_cluster": "orders"
    });
    let envoy = Envoy::new(bootstrap(
        vec![rpc_filter(&config), tcp_proxy("orders")],
        vec![
            cluster("orders", orders.addr.port()),
            cluster("users", users.addr.port()),
        ],
    ))
    .start();
    let addr = SocketAddr::from(([127, 0, 0, 1], envoy.listener_port("rpc")));
    let connect = || Client::connect(addr, TIMEOUT).unwrap();

    // A call, its metadata as the server saw it (mutated), a heartbeat, an application error.
    let mut c = connect();
    let r = c
        .call(&Call::new("Orders", "Get", b"order-1").caller("web"))
        .unwrap();
    assert_eq!((r.kind, r.status), (types::RESPONSE, status::OK));
    assert_eq!(r.payload, b"order-1");
    assert_eq!(header(&r, "server"), Some("orders"), "default cluster");
    assert_eq!(
        header(&r, "seen-via"),
        Some("wasmesh"),
        "metadata added by the filter"
    );
    assert_eq!(header(&r, "seen-caller"), Some("web"));
    let hb = c.heartbeat().unwrap();
    assert_eq!(
        (hb.kind, hb.flags),
        (types::HEARTBEAT, rpc::wasmesh_rpc::FLAG_REPLY)
    );
    let r = c.call(&Call::new("Orders", "fail", b"")).unwrap();
    assert_eq!(r.status, status::APPLICATION_ERROR);
    c.send_oneway(&Call::new("Orders", "Log", b"x")).unwrap();
    // Rate limit: one Orders.Rare per minute; the second gets an over-limit error frame.
    let r = c.call(&Call::new("Orders", "Rare", b"1")).unwrap();
    assert_eq!((r.kind, r.status), (types::RESPONSE, status::OK));
    let r = c.call(&Call::new("Orders", "Rare", b"2")).unwrap();
    assert_eq!((r.kind, r.status), (types::ERROR, status::OVER_LIMIT));
    assert_eq!(
        header(&r, "error-message"),
        Some("wasmesh: rate limit exceeded")
    );

    // 1,000 pipelined calls, answered in order.
    let calls: Vec<Call> = (0..1000)
        .map(|i| Call::new("Orders", "Put", format!("item-{i}").as_bytes()))
        .collect();
    let replies = c.pipeline(&calls).unwrap();
    assert_eq!(replies.len(), 1000);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.payload, format!("item-{i}").as_bytes());
    }

    // Byte-by-byte delivery of one frame on a fresh connection.
    let mut slow = connect();
    let frame = rpc::wasmesh_rpc::Frame {
        kind: types::REQUEST,
        flags: 0,
        status: 0,
        request_id: 77,
        headers: vec![
            ("service".into(), "Orders".into()),
            ("method".into(), "Get".into()),
        ],
        payload: b"slow".to_vec(),
    }
    .encode()
    .unwrap();
    for b in &frame {
        slow.write_raw(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let r = slow.recv().unwrap();
    assert_eq!(
        (r.request_id, r.payload.as_slice()),
        (77, b"slow".as_slice())
    );

    // Routing: a connection whose first call names Users goes to the users cluster.
    let mut u = connect();
    let r = u.call(&Call::new("Users", "Get", b"u1")).unwrap();
    assert_eq!(header(&r, "server"), Some("users"));

    // ACL: the denied call gets an error frame in order; the connection keeps working.
    let replies = u
        .pipeline(&[
            Call::new("Users", "Get", b"a"),
            Call::new("Users", "Delete", b"b"),
            Call::new("Users", "Get", b"c"),
        ])
        .unwrap();
    assert_eq!(replies[0].payload, b"a");
    assert_eq!(
        (replies[1].kind, replies[1].status),
        (types::ERROR, status::DENIED)
    );
    assert_eq!(
        header(&replies[1], "error-message"),
        Some("wasmesh: call denied by policy")
    );
    assert_eq!(replies[2].payload, b"c");
    let r = u
        .call(&Call::new("Users", "Get", b"d").caller("intruder"))
        .unwrap();
    assert_eq!(r.status, status::DENIED, "denied by caller");
    let users_seen = users.received.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(users_seen, 3, "denied calls never reach the server");

    // A malformed stream closes only its own connection.
    let mut bad = connect();
    bad.write_raw(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    assert!(matches!(
        bad.recv(),
        Err(ClientError::Closed | ClientError::Io(_))
    ));
    let r = c.call(&Call::new("Orders", "Get", b"still-here")).unwrap();
    assert_eq!(r.payload, b"still-here", "other connections keep working");

    // Metrics at /stats/prometheus.
    let text = settled_stats(&envoy);
    let get = |n: &str| prom(&text, n).unwrap_or_else(|| panic!("no {n} in\n{text}"));
    assert_eq!(get("rpc_wasmesh_rpc_Orders_Put_requests"), 1000);
    assert_eq!(get("rpc_wasmesh_rpc_Orders_Put_responses_ok"), 1000);
    assert_eq!(get("rpc_wasmesh_rpc_Orders_fail_responses_exception"), 1);
    assert_eq!(get("rpc_wasmesh_rpc_Orders_Log_oneway"), 1);
    assert_eq!(get("rpc_wasmesh_rpc_Users_Delete_denied"), 1);
    assert_eq!(get("rpc_wasmesh_rpc_malformed_frames"), 1);
    assert_eq!(get("rpc_wasmesh_rpc_local_replies"), 3);
    assert_eq!(get("rpc_wasmesh_rpc_Orders_Rare_limited"), 1);
    assert!(
        text.contains("rpc_wasmesh_rpc_Orders_Put_latency_ms_bucket"),
        "latency histogram"
    );
    assert!(get("rpc_wasmesh_rpc_Orders_Get_request_bytes") > 0);
}
