//! docker-compose for the same mesh: per instance a sidecar Envoy and an app container sharing
//! the sidecar's network namespace, and the front proxy. Official Envoy image by default
//! (`ENVOY_IMAGE` overrides; `cargo xtask compose-e2e` builds a `FROM scratch` stand-in), configs,
//! the wasm module and the static `healthcheck` binary mounted read-only.
//!
//! Start order as seed 000 asks: a sidecar first (it owns the network namespace and the
//! instance's DNS name or pinned address), its app once the sidecar is healthy (Envoy admin
//! `/ready` answers `LIVE`), the front proxy once every app is healthy. `docker-compose stop` /
//! `down` go in reverse: the front proxy, then each app, then its sidecar. Health checks exec the
//! mounted static binary, so they need no shell or curl in the image. The front proxy's
//! listeners are published on 127.0.0.1 only, at host ports overridable with
//! `FRONT_<LISTENER>_PORT`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::emit::{self, EmitError};
use crate::ir::{InstanceIr, Mesh, ServiceIr};
use crate::spec::{EndpointSource, Protocol};

/// Where `cargo xtask wasm` / the tests build the module (after `wasm-opt`), relative to the
/// repository root.
pub const WASM_HOST_PATH: &str = "./target/wasm-build/optimized/wasmesh_module.wasm";

/// The Envoy image, overridable with `ENVOY_IMAGE`; pinned to the version the CI validates with.
pub const ENVOY_IMAGE: &str = "${ENVOY_IMAGE:-envoyproxy/envoy:v1.40.0}";

/// Where the static `healthcheck` binary (crate `healthcheck`, demo/healthcheck) is built by
/// `cargo xtask compose-build`, relative to the repository root; `WASMESH_HEALTHCHECK` overrides.
pub const HEALTHCHECK_HOST_PATH: &str =
    "./target/static/x86_64-unknown-linux-gnu/release/healthcheck";

/// Where the health check binary is mounted in every container.
pub const HEALTHCHECK_PATH: &str = "/usr/local/bin/wasmesh-healthcheck";

/// The compose network every container joins.
const NETWORK: &str = "mesh";

#[derive(Serialize)]
struct ComposeFile {
    services: BTreeMap<String, ComposeService>,
    networks: BTreeMap<&'static str, Network>,
}

#[derive(Serialize, Default)]
struct ComposeService {
    image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    networks: Option<Networks>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_mode: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    depends_on: BTreeMap<String, Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<Healthcheck>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Networks {
    /// Joined with an address Docker picks.
    Joined(Vec<&'static str>),
    /// Joined with a DNS alias or a fixed IPv4 address (the instance a sidecar fronts).
    Attached(BTreeMap<&'static str, Attachment>),
}

#[derive(Serialize, Default)]
struct Attachment {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv4_address: Option<String>,
}

#[derive(Serialize)]
struct Condition {
    condition: &'static str,
}

#[derive(Serialize)]
struct Healthcheck {
    test: Vec<String>,
    interval: &'static str,
    timeout: &'static str,
    retries: u32,
}

#[derive(Serialize, Default)]
struct Network {
    #[serde(skip_serializing_if = "Option::is_none")]
    ipam: Option<Ipam>,
}

#[derive(Serialize)]
struct Ipam {
    config: Vec<IpamConfig>,
}

#[derive(Serialize)]
struct IpamConfig {
    subnet: String,
    /// Where Docker picks dynamic addresses: a half of the subnet holding no pinned address, so
    /// a container started first can never take a pinned instance's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_range: Option<String>,
}

fn healthy() -> Condition {
    Condition {
        condition: "service_healthy",
    }
}

fn started() -> Condition {
    Condition {
        condition: "service_started",
    }
}

/// The mount of the static health check binary (same path in every image, none needs a shell).
fn healthcheck_volume() -> String {
    format!("${{WASMESH_HEALTHCHECK:-{HEALTHCHECK_HOST_PATH}}}:{HEALTHCHECK_PATH}:ro")
}

/// A health check that GETs `http://127.0.0.1:<port><path>` inside the container and passes on
/// 2xx (Envoy's admin `/ready` answers 200 only when the server is LIVE).
fn healthcheck(port: u16, path: &str) -> Healthcheck {
    probe(format!("http://127.0.0.1:{port}{path}"))
}

/// A health check running the mounted binary on `url` (`http://...` or `tcp://ip:port`).
fn probe(url: String) -> Healthcheck {
    Healthcheck {
        test: vec!["CMD".into(), HEALTHCHECK_PATH.into(), url],
        interval: "2s",
        timeout: "2s",
        retries: 30,
    }
}

fn envoy(config: &str, admin_port: u16, file_endpoints: bool) -> ComposeService {
    let mut volumes = vec![
        format!("./envoy-configs/{config}.yaml:/etc/envoy/envoy.yaml:ro"),
        format!("{WASM_HOST_PATH}:/etc/envoy/wasm/wasmesh_module.wasm:ro"),
        healthcheck_volume(),
    ];
    if file_endpoints {
        volumes.push("./envoy-configs/endpoints:/etc/envoy/endpoints:ro".into());
    }
    ComposeService {
        image: ENVOY_IMAGE.into(),
        command: [
            "envoy",
            "-c",
            "/etc/envoy/envoy.yaml",
            "--reject-unknown-dynamic-fields",
            "--service-cluster",
            config,
        ]
        .map(String::from)
        .to_vec(),
        volumes,
        healthcheck: Some(healthcheck(admin_port, "/ready")),
        ..Default::default()
    }
}

/// The host-port variable of a front proxy listener: `FRONT_<NAME>_PORT`.
pub fn port_variable(listener: &str) -> String {
    format!(
        "FRONT_{}_PORT",
        listener
            .to_uppercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

/// The image variable of a service's app: `<NAME>_IMAGE`.
pub fn image_variable(service: &str) -> String {
    format!(
        "{}_IMAGE",
        service
            .to_uppercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    )
}

/// The compose service of an instance's app: its DNS name, or `<service>-<n>` for an IP instance.
fn app_name(s: &ServiceIr, index: usize, inst: &InstanceIr) -> String {
    if inst.is_ip {
        format!("{}-{}", s.name, index + 1)
    } else {
        inst.address.clone()
    }
}

/// The compose services of a service's sidecars, one per instance.
fn sidecar_names(s: &ServiceIr) -> impl Iterator<Item = String> + '_ {
    s.instances
        .iter()
        .enumerate()
        .map(|(i, inst)| format!("{}-sidecar", app_name(s, i, inst)))
}

/// The smallest subnet (at most /24) holding every pinned IPv4 address, with a dynamic range
/// that avoids them.
fn subnet(pinned: &[Ipv4Addr]) -> Option<IpamConfig> {
    let first = u32::from(*pinned.first()?);
    let common = pinned
        .iter()
        .map(|a| (u32::from(*a) ^ first).leading_zeros())
        .min()
        .unwrap_or(32)
        .min(24);
    let mask = u32::MAX.checked_shl(32 - common).unwrap_or(0);
    let base = first & mask;
    let half = 1u32.checked_shl(31 - common).unwrap_or(0);
    let ip_range = [base + half, base]
        .into_iter()
        .find(|start| {
            pinned
                .iter()
                .all(|a| (u32::from(*a) & !(half - 1)) != *start)
        })
        .map(|start| format!("{}/{}", Ipv4Addr::from(start), common + 1));
    Some(IpamConfig {
        subnet: format!("{}/{common}", Ipv4Addr::from(base)),
        ip_range,
    })
}

/// The compose file as YAML text.
pub fn render(mesh: &Mesh) -> Result<String, EmitError> {
    let mut services = BTreeMap::new();
    let any_file = mesh
        .services
        .iter()
        .any(|s| s.endpoints == EndpointSource::File);
    let mut front = envoy("front-proxy", mesh.front.admin_port, any_file);
    // Published on the host's loopback only: the demo is not a public service.
    front.ports = mesh
        .front
        .listeners
        .iter()
        .map(|l| {
            format!(
                "127.0.0.1:${{{}:-{}}}:{}",
                port_variable(&l.name),
                l.port,
                l.port
            )
        })
        .collect();
    front.networks = Some(Networks::Joined(vec![NETWORK]));
    front.depends_on = mesh
        .services
        .iter()
        .flat_map(|s| app_names(s).map(move |n| (n, app_ready(s))))
        .collect();
    services.insert("front-proxy".to_owned(), front);
    let mut pinned = Vec::new();
    for s in &mesh.services {
        for (idx, inst) in s.instances.iter().enumerate() {
            let app = app_name(s, idx, inst);
            let sidecar_name = format!("{app}-sidecar");
            // The sidecar owns the instance's network namespace, so it holds the name (or the
            // pinned address) peers dial, and it is up before the app starts.
            let attachment = match inst.address.parse::<Ipv4Addr>() {
                Ok(ip) => {
                    pinned.push(ip);
                    Attachment {
                        ipv4_address: Some(inst.address.clone()),
                        ..Default::default()
                    }
                }
                Err(_) => Attachment {
                    aliases: vec![inst.address.clone()],
                    ..Default::default()
                },
            };
            let mut sidecar = envoy(&format!("{}-sidecar", s.name), s.admin_port, any_file);
            sidecar.networks = Some(Networks::Attached(BTreeMap::from([(NETWORK, attachment)])));
            for d in s.dependencies.iter().filter_map(|d| mesh.service(d)) {
                for name in sidecar_names(d) {
                    sidecar.depends_on.insert(name, healthy());
                }
            }
            services.insert(sidecar_name.clone(), sidecar);

            let mut environment = BTreeMap::from([
                ("SERVICE".to_owned(), s.name.clone()),
                ("PORT".to_owned(), s.port.to_string()),
                (
                    "EGRESS".to_owned(),
                    format!("http://127.0.0.1:{}", s.egress_port),
                ),
            ]);
            environment.insert("INSTANCE".to_owned(), app.clone());
            if !s.dependencies.is_empty() {
                environment.insert("CALLS".to_owned(), s.dependencies.join(","));
            }
            // wasmesh-rpc dependencies: the sidecar's loopback listener on their port.
            let rpc_calls: Vec<String> = s
                .dependencies
                .iter()
                .filter_map(|d| mesh.service(d))
                .filter(|d| d.protocol == Protocol::WasmeshRpc)
                .map(|d| format!("{}=127.0.0.1:{}", d.name, d.port))
                .collect();
            if !rpc_calls.is_empty() {
                environment.insert("RPC_CALLS".to_owned(), rpc_calls.join(","));
            }
            if s.protocol == Protocol::WasmeshRpc {
                environment.insert("PROTOCOL".to_owned(), "wasmesh-rpc".to_owned());
            }
            for (k, v) in &inst.labels {
                environment.insert(
                    format!("LABEL_{}", k.to_uppercase().replace(['-', '.', '/'], "_")),
                    v.clone(),
                );
            }
            // The app starts once its sidecar is ready and the apps it calls are (seed 000).
            let mut depends_on = BTreeMap::from([(sidecar_name.clone(), healthy())]);
            for d in s.dependencies.iter().filter_map(|d| mesh.service(d)) {
                for name in app_names(d) {
                    depends_on.insert(name, app_ready(d));
                }
            }
            services.insert(
                app,
                ComposeService {
                    // The application; its image is built from the service's own repository.
                    image: format!(
                        "${{{}:-wasmesh-demo/{}:latest}}",
                        image_variable(&s.name),
                        s.name
                    ),
                    environment,
                    network_mode: Some(format!("service:{sidecar_name}")),
                    depends_on,
                    healthcheck: app_healthcheck(s),
                    volumes: vec![healthcheck_volume()],
                    ..Default::default()
                },
            );
        }
    }
    let network = Network {
        ipam: subnet(&pinned).map(|config| Ipam {
            config: vec![config],
        }),
    };
    // The Compose Specification, without the obsolete top-level `version` (v2 warns about it;
    // docker-compose 1.27+ reads a file without it as the specification): health-gated
    // depends_on, network_mode service:, static IPs. `just compose-e2e` runs it with
    // docker-compose 1.29 and Compose v2.
    let doc = ComposeFile {
        services,
        networks: BTreeMap::from([(NETWORK, network)]),
    };
    let value = serde_json::to_value(&doc).map_err(|e| EmitError::Encode {
        what: "docker-compose".into(),
        detail: e.to_string(),
    })?;
    Ok(format!(
        "# Generated by `wasmesh gen` from the mesh spec. Do not edit.\n{}",
        emit::to_yaml(&value)?
    ))
}

/// The HTTP path the app answers health checks on: the spec's `resilience.health_check.path`.
fn app_health_path(s: &ServiceIr) -> Option<&str> {
    s.resilience
        .health_check
        .as_ref()
        .and_then(|h| h.http_path.as_deref())
}

/// The app's health check: a GET of its health path (http services), a TCP connect to its port
/// (other protocols), none for an http service without a health path.
fn app_healthcheck(s: &ServiceIr) -> Option<Healthcheck> {
    match (app_health_path(s), s.protocol) {
        (Some(p), _) => Some(healthcheck(s.port, p)),
        (None, Protocol::Http) => None,
        (None, _) => Some(probe(format!("tcp://127.0.0.1:{}", s.port))),
    }
}

/// What a dependent waits for: the app healthy when it has a health check, else started.
fn app_ready(s: &ServiceIr) -> Condition {
    if app_healthcheck(s).is_some() {
        healthy()
    } else {
        started()
    }
}

/// The compose services of a service's apps, one per instance.
fn app_names(s: &ServiceIr) -> impl Iterator<Item = String> + '_ {
    s.instances
        .iter()
        .enumerate()
        .map(|(i, inst)| app_name(s, i, inst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_covers_pinned_addresses_and_keeps_dynamic_ones_apart() {
        let c = subnet(&[ip("172.28.0.13")]).unwrap();
        assert_eq!(c.subnet, "172.28.0.0/24");
        assert_eq!(c.ip_range.as_deref(), Some("172.28.0.128/25"));
        let c = subnet(&[ip("172.28.0.200"), ip("172.28.0.13")]).unwrap();
        assert_eq!(c.ip_range, None);
        let c = subnet(&[ip("172.28.0.200")]).unwrap();
        assert_eq!(c.ip_range.as_deref(), Some("172.28.0.0/25"));
        let c = subnet(&[ip("10.0.1.5"), ip("10.0.2.5")]).unwrap();
        assert_eq!(c.subnet, "10.0.0.0/22");
        assert_eq!(c.ip_range, None, "both halves hold a pinned address");
        assert!(subnet(&[]).is_none());
    }
}
