//! The binary as Docker runs it: exit 0 and one line on a 2xx answer, exit 1 saying why
//! otherwise.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Command, Output};

use integration::EchoUpstream;

fn healthcheck(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_healthcheck"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_2xx_answer_is_healthy() {
    let up = EchoUpstream::start();
    let o = healthcheck(&[&format!("http://127.0.0.1:{}/ready", up.port)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("/ready -> 200 OK"), "{}", stdout(&o));
}

#[test]
fn nothing_listening_is_unhealthy() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = healthcheck(&[&format!("http://127.0.0.1:{port}/ready"), "500"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).starts_with("unhealthy: connect 127.0.0.1:"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn a_listener_that_never_answers_times_out() {
    // Accepted by the kernel's backlog, never read: the probe must give up on its own.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let o = healthcheck(&[&format!("http://127.0.0.1:{port}/ready"), "200"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("no answer within 200ms"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn bad_arguments_are_unhealthy_with_usage() {
    for args in [
        &[][..],
        &["https://127.0.0.1:1/"],
        &["http://127.0.0.1:1/", "soon"],
    ] {
        let o = healthcheck(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stdout(&o).starts_with("unhealthy: "), "{}", stdout(&o));
    }
}

#[test]
fn tcp_probes_only_connect() {
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = open.local_addr().unwrap().port();
    let o = healthcheck(&[&format!("tcp://127.0.0.1:{port}")]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(stdout(&o).trim(), format!("connect 127.0.0.1:{port} -> ok"));
    drop(open);
    let o = healthcheck(&[&format!("tcp://127.0.0.1:{port}"), "500"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with("unhealthy: connect 127.0.0.1:"),
        "{}",
        stdout(&o)
    );
    let o = healthcheck(&["tcp://localhost:1"]);
    assert_eq!(o.status.code(), Some(1));
}
