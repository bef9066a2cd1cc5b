//! `cargo xtask demo`: a real Envoy with the headers filter in front of an echo service, on fixed
//! loopback ports, for a person to curl.

use integration::bootstrap::{Backend, bootstrap, headers_filter};
use integration::envoy::Envoy;
use integration::upstream::EchoUpstream;
use serde_json::json;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The listener port the demo serves on.
pub const PORT: u16 = 10000;
/// The admin port of the demo Envoy.
pub const ADMIN_PORT: u16 = 9901;
/// The echo service's port.
pub const ECHO_PORT: u16 = 8081;

/// Runs until interrupted.
pub fn run() -> Result<(), String> {
    // Signals only set this flag, so the loop below stops Envoy and reaps it.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .map_err(|e| format!("handling signal {signal}: {e}"))?;
    }
    eprintln!("demo: building the wasm module and installing Envoy if needed ...");
    toolchain::wasm_module().map_err(|e| e.to_string())?;
    toolchain::envoy_bin().map_err(|e| e.to_string())?;
    let echo =
        EchoUpstream::start_on(ECHO_PORT).map_err(|e| format!("echo on :{ECHO_PORT}: {e}"))?;
    let config = json!({
        "request_id": {"echo_in_response": true},
        "trace_context": {},
        "request_headers": [
            {"ops": [{"set": {"name": "x-mesh", "value": "wasmesh"}}]},
            {"when": {"path": {"prefix": "/api/"}}, "ops": [
                {"set": {"name": "x-api-call", "value": "${method} ${path} from ${client_address}"}}
            ]}
        ],
        "response_headers": [{"ops": [
            {"set": {"name": "x-trace-id", "value": "${trace_id}"}},
            {"remove": {"name": "x-app-version"}}
        ]}]
    });
    let mut boot = bootstrap(vec![headers_filter(&config)], Backend::Echo(echo.port));
    set_port(
        &mut boot,
        "/admin/address/socket_address/port_value",
        ADMIN_PORT,
    )?;
    set_port(
        &mut boot,
        "/static_resources/listeners/0/address/socket_address/port_value",
        PORT,
    )?;
    let mut envoy = Envoy::new(boot).try_start()?;
    println!(
        "wasmesh demo: Envoy 1.40 with the headers filter on 127.0.0.1:{PORT} (admin 127.0.0.1:{ADMIN_PORT})"
    );
    println!(
        "in front of an echo service on 127.0.0.1:{ECHO_PORT} that returns the headers it received.\n"
    );
    println!("Try:");
    println!("  curl -si localhost:{PORT}/api/hello");
    println!("    -> response has x-request-id (a UUIDv4) and x-trace-id; the JSON body shows the");
    println!("       upstream got x-request-id, traceparent, x-mesh and x-api-call");
    println!(
        "  curl -si localhost:{PORT}/ -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'"
    );
    println!("    -> same trace id upstream, new span id");
    println!("  curl -s localhost:{ADMIN_PORT}/stats | grep wasm");
    println!("\nCtrl-C stops it.");
    while !stop.load(Ordering::SeqCst) {
        if let Some(status) = envoy.exited() {
            if stop.load(Ordering::SeqCst) {
                break; // A terminal's Ctrl-C reaches Envoy too.
            }
            return Err(format!("Envoy exited with {status}:\n{}", envoy.log()));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    eprintln!("demo: stopping Envoy");
    // Dropping kills and reaps Envoy and removes its scratch directory; then the echo service.
    drop(envoy);
    drop(echo);
    Ok(())
}

fn set_port(boot: &mut serde_json::Value, pointer: &str, port: u16) -> Result<(), String> {
    let slot = boot
        .pointer_mut(pointer)
        .ok_or_else(|| format!("bootstrap has no {pointer}"))?;
    *slot = json!(port);
    Ok(())
}
