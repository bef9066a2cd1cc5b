//! Bad specs get clear messages, each with its location, and all problems at once.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use sdk::generate::{GenerateError, parse_spec};
use sdk::ir::Mesh;

const BASE: &str = r#"
name: t
front_proxy:
  listeners:
    - name: public
      port: 8080
      routes:
        - match: { prefix: / }
          service: a
services:
  - name: a
    port: 8000
    instances: [{ address: 10.0.0.1 }]
    dependencies: [b]
  - name: b
    port: 8000
    instances: [{ address: 10.0.0.2, labels: { version: v1 } }]
    subsets: [{ name: v1, labels: { version: v1 } }]
"#;

/// Every message for `spec` (parse or validation), one per line.
fn problems(spec: &str) -> Vec<String> {
    match parse_spec(spec, "mesh.yaml") {
        Err(e) => vec![e.to_string()],
        Ok(s) => match Mesh::from_spec(&s) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        },
    }
}

#[test]
fn base_spec_is_valid() {
    assert_eq!(problems(BASE), Vec::<String>::new());
}

#[test]
fn dangling_references() {
    let spec = BASE
        .replace("          service: a\n", "          service: nope\n")
        .replace("dependencies: [b]", "dependencies: [b, ghost]");
    assert_eq!(
        problems(&spec),
        [
            r#"services[0].dependencies[1]: unknown service "ghost""#,
            r#"front_proxy.listeners[0].routes[0].service: unknown service "nope""#,
        ]
    );
    let spec = BASE.replace(
        "          service: a\n",
        "          service: b\n          subset: v9\n",
    );
    assert_eq!(
        problems(&spec),
        [
            r#"front_proxy.listeners[0].routes[0].subset: service "b" has no subset "v9" (subsets: v1)"#
        ]
    );
}

#[test]
fn duplicate_ports() {
    let spec = BASE.replace("      port: 8080\n", "      port: 9901\n");
    assert_eq!(
        problems(&spec),
        ["front_proxy.listeners[0].port: duplicate port 9901: already used by admin_port"]
    );
    let spec = BASE.replace(
        "      routes:\n",
        "      routes:\n        - { match: { prefix: /x }, service: b }\n",
    )
    .replace("services:", "    - name: public\n      port: 8080\n      routes: [{ match: { prefix: / }, service: a }]\nservices:");
    assert_eq!(
        problems(&spec),
        [
            "front_proxy.listeners[1].port: duplicate port 8080: already used by listeners[0].port",
            r#"front_proxy.listeners[1].name: duplicate listener "public""#,
        ]
    );
    let spec = BASE.replace(
        "    port: 8000\n    instances: [{ address: 10.0.0.1 }]",
        "    port: 15001\n    instances: [{ address: 10.0.0.1 }]",
    );
    assert_eq!(
        problems(&spec),
        ["services[0].sidecar.egress: duplicate port 15001: already used by port"]
    );
}

#[test]
fn unknown_filter_field_names_its_path() {
    let spec = BASE.replace(
        "      routes:",
        "      filters:\n        - headers: { request_id: { hedaer: x-id } }\n      routes:",
    );
    let p = problems(&spec);
    assert_eq!(p.len(), 1);
    assert!(
        p[0].starts_with(
            "mesh.yaml: front_proxy.listeners[0].filters[0].headers.request_id.hedaer: unknown field `hedaer`"
        ),
        "{}",
        p[0]
    );
}

#[test]
fn bad_filter_value_is_reported_by_the_filter_itself() {
    let spec = BASE.replace(
        "    dependencies: [b]",
        "    dependencies: [b]\n    filters:\n      - headers:\n          request_headers: [{ ops: [{ set: { name: \":path\", value: /x } }] }]",
    );
    assert_eq!(
        problems(&spec),
        [
            r#"services[0].filters[0].headers: request_headers[0].ops[0].set.name: header is protected (pseudo-headers, host and x-envoy-* cannot be written): ":path""#
        ]
    );
}

#[test]
fn dependency_cycle() {
    let spec = format!("{BASE}    dependencies: [a]\n");
    assert_eq!(
        problems(&spec),
        [
            "services: dependency cycle a -> b -> a (sidecars start in dependency order, so it must be acyclic)"
        ]
    );
}

#[test]
fn all_problems_at_once_with_locations() {
    let spec = BASE
        .replace("      port: 8080\n", "      port: 0\n")
        .replace("name: b\n", "name: B\n")
        .replace("dependencies: [b]", "dependencies: [a]");
    let p = problems(&spec);
    assert!(
        p.contains(&"front_proxy.listeners[0].port: port 0 is not allowed".to_owned()),
        "{p:?}"
    );
    assert!(
        p.contains(&r#"services[1].name: not a DNS label: "B""#.to_owned()),
        "{p:?}"
    );
    assert!(
        p.contains(&"services[0].dependencies[0]: a service cannot depend on itself".to_owned()),
        "{p:?}"
    );
    assert!(p.len() >= 3);
}

#[test]
fn yaml_errors_carry_the_file_and_position() {
    let err = parse_spec("name: [unclosed", "mesh.yaml").unwrap_err();
    assert!(matches!(err, GenerateError::Parse { .. }));
    assert!(err.to_string().starts_with("mesh.yaml: "), "{err}");
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn traffic_values_are_checked() {
    let spec = BASE.replace(
        "          service: a\n",
        "          split: [{ service: a, weight: 0 }]\n          timeout: soon\n          fault: { abort: { percent: 150, status: 99 } }\n",
    );
    assert_eq!(
        problems(&spec),
        [
            "front_proxy.listeners[0].routes[0].split: weights add up to 0",
            "front_proxy.listeners[0].routes[0].fault.abort.status: not an HTTP status: 99",
            "front_proxy.listeners[0].routes[0].fault.abort.percent: percentage out of range 0-100: 150",
            r#"front_proxy.listeners[0].routes[0].timeout: not a duration: "soon" (use e.g. 250ms, 1s, 2m)"#,
        ]
    );
}

#[test]
fn service_routes_are_checked_where_they_are_written() {
    let spec = BASE.replace(
        "    subsets: [{ name: v1, labels: { version: v1 } }]\n",
        "    subsets: [{ name: v1, labels: { version: v1 } }]
    routes:
      - { match: { prefix: /x }, subset: v2 }
      - { match: { prefix: /y }, split: [{ subset: v1, weight: 1 }, { subset: v3, weight: 1 }] }
      - { match: { prefix: /z }, subset: v1, split: [{ subset: v1, weight: 1 }] }
      - { match: { prefix: z }, fault: {} }
",
    );
    assert_eq!(
        problems(&spec),
        [
            r#"services[1].routes[0].subset: service "b" has no subset "v2" (subsets: v1)"#,
            r#"services[1].routes[1].split[1].subset: service "b" has no subset "v3" (subsets: v1)"#,
            "services[1].routes[2]: give either `subset` or `split`, not both",
            r#"services[1].routes[3].match.prefix: must start with /: "z""#,
            "services[1].routes[3].fault: give `delay`, `abort` or both",
        ]
    );
}

#[test]
fn tcp_services_get_tcp_checks_and_their_own_egress_port() {
    let spec = BASE.replace(
        "    dependencies: [b]\n",
        "    dependencies: [b, db, cache]
  - name: db
    port: 8000
    protocol: tcp
    instances: [{ address: 10.0.0.3 }]
    resilience: { timeout: 1s, health_check: { path: /healthz } }
    routes: [{ match: { prefix: / } }]
  - name: cache
    port: 6379
    protocol: tcp
    instances: [{ address: 10.0.0.4 }]
    resilience: { health_check: {} }
",
    );
    assert_eq!(
        problems(&spec),
        [
            r#"services[0].dependencies[1]: tcp dependency "db" is reached on 127.0.0.1:8000, but port 8000 is already this service's port"#,
            "services[1].routes: routes need protocol http (a tcp service is reached as a whole)",
            "services[1].resilience.timeout: request timeouts need protocol http",
            "services[1].resilience.health_check.path: tcp services are checked by connecting; remove path",
        ]
    );
    // A front-proxy route cannot target a tcp service.
    let spec = BASE.replace("    dependencies: [b]\n", "    protocol: tcp\n");
    assert_eq!(
        problems(&spec),
        [
            r#"front_proxy.listeners[0].routes[0].service: "a" is a tcp service; HTTP routes need protocol http"#
        ]
    );
}

#[test]
fn http_health_checks_need_a_path() {
    let spec = format!("{BASE}    resilience: {{ health_check: {{ interval: 1s }} }}\n");
    assert_eq!(
        problems(&spec),
        [
            "services[1].resilience.health_check.path: http services need a health check path, e.g. /healthz"
        ]
    );
}

#[test]
fn duplicate_dependencies_and_retry_conditions() {
    let spec = BASE
        .replace("dependencies: [b]", "dependencies: [b, b]")
        .replace(
            "          service: a\n",
            "          service: a\n          retries: { attempts: 1, on: [\"5xx,reset\"] }\n",
        );
    assert_eq!(
        problems(&spec),
        [
            r#"services[0].dependencies[1]: duplicate dependency "b""#,
            r#"front_proxy.listeners[0].routes[0].retries.on[0]: not one retry condition: "5xx,reset" (e.g. 5xx, reset, connect-failure)"#,
        ]
    );
}
