# wasmesh everyday recipes. Every recipe is a thin wrapper over cargo, so nothing here is needed
# that a fresh clone with the Rust toolchain and python3 lacks (`cargo xtask` is a cargo alias).

# List the recipes.
default:
    @just --list

# Run the demo mesh as local processes until Ctrl-C (the README's demo command): `wasmesh up`.
demo *flags:
    cargo run -q -p sdk --bin wasmesh -- up {{flags}}

# Start the demo mesh in the background (`just status`, `just down`).
up *flags:
    cargo run -q -p sdk --bin wasmesh -- up --detach {{flags}}

# Processes of the background mesh: pid, restarts, readiness.
status:
    cargo run -q -p sdk --bin wasmesh -- status

# Stop the background mesh (front proxy, then each app before its sidecar).
down:
    cargo run -q -p sdk --bin wasmesh -- down

# The demo mesh end-to-end tests (routing, faults, endpoint files, supervisor, outlier, soak).
test-demo:
    cargo test -p sdk --test demo_mesh -- --nocapture

# Run every test: unit tests and real-Envoy integration tests (the README's test command).
test:
    cargo test --workspace

# Run the tests of one crate, e.g. `just test-crate headers`.
test-crate crate *flags:
    cargo test -p {{crate}} {{flags}}

# Format the code.
fmt:
    cargo fmt --all

# Lint host code and the filter crates for wasm32-wasip1.
clippy:
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy -p filter-core -p headers -p auth -p ratelimit -p rpc -p chain -p wasmesh-module --target wasm32-wasip1 -- -D warnings
    cargo clippy -p rpc --features floor-probe --all-targets -- -D warnings

# Formatting check and lints, as CI runs them.
check:
    cargo fmt --all -- --check
    just clippy

# Build wasmesh_module.wasm and print its path and size.
wasm:
    cargo xtask wasm

# Install the pinned Envoy (if needed) and print its path.
envoy:
    cargo xtask envoy

# Instructions per request under callgrind, requests/s and RSS (see docs/benchmarks.md).
bench *flags:
    cargo xtask bench {{flags}}

# The rpc filter's Thrift calls: instructions/call and calls/s (interleaved rounds, Envoy pinned),
# with the load generator built optimized, e.g. `just bench-rpc --requests 0 --seconds 2`.
bench-rpc *flags:
    cargo run --release -q -p xtask -- bench --only rpc {{flags}}

# Generate envoy-configs/ and docker-compose.yaml from the demo spec.
gen spec="demo/mesh.yaml":
    cargo run -q -p sdk --bin wasmesh -- gen --spec {{spec}}

# Run `envoy --mode validate` on every generated bootstrap.
validate spec="demo/mesh.yaml":
    cargo run -q -p sdk --bin wasmesh -- validate --spec {{spec}}

# Show what `gen` would change.
diff spec="demo/mesh.yaml":
    cargo run -q -p sdk --bin wasmesh -- diff --spec {{spec}}

# Rewrite the golden files (envoy-configs/, docker-compose.yaml) from demo/mesh.yaml.
golden-update:
    UPDATE_GOLDEN=1 cargo test -p sdk --test golden

# Time generating a 1,000-service mesh (release build).
bench-sdk:
    cargo run --release -p sdk --example gen_bench

# The demo mesh under docker-compose, end to end, pulling nothing: build FROM-scratch images
# (static services, the pinned Envoy) once, then with docker-compose 1.29 and with Compose v2
# (installed pinned into .tools/) `up`, check the demo requests through 127.0.0.1, `down`;
# finally remove the images. `just compose-e2e --compose v2` runs one. Needs a Docker engine.
compose-e2e *flags:
    cargo run -q -p compose-e2e -- e2e {{flags}}

# Build the images docker-compose.yaml runs (wasmesh-demo/{a,b,c}:latest and an Envoy image to
# pass as ENVOY_IMAGE), the module and the mounted health check, without pulling anything.
compose-build:
    cargo run -q -p compose-e2e -- build

# What CI runs.
ci:
    bash .ci/run

# Run the pure filter crates' unit tests compiled for wasm32-wasip1, under Wasmtime (and the
# wasm-bindgen-test tier below).
test-wasm32:
    cargo test -p toolchain --test pure_crates_on_wasm32 -- --nocapture

# Run the pure crates' unit tests compiled for wasm32-unknown-unknown, under Node through
# wasm-bindgen-test (builds the pinned wasm-bindgen-cli into .tools/ once; SKIPPED without node).
test-wasm-bindgen:
    cargo test -p toolchain --test pure_crates_on_wasm32 wasm_bindgen -- --nocapture

# Fuzz the auth filter's token and JWKS parsing for a bounded time per target (needs the
# nightly toolchain; installs cargo-fuzz when missing). Any panic is a failure.
fuzz-auth seconds="60":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
    cd filters/auth/fuzz && cargo +nightly fuzz run token -- -max_total_time={{seconds}}
    cd filters/auth/fuzz && cargo +nightly fuzz run jwks -- -max_total_time={{seconds}}

# Fuzz the rpc codecs (wasmesh-rpc, Thrift: chunking never changes frames, re-encoding decodes)
# and the whole network filter over the mock host, for a bounded time per target (nightly;
# installs cargo-fuzz when missing). Any panic is a failure.
fuzz-rpc seconds="60":
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
    cd filters/rpc/fuzz && cargo +nightly fuzz run wasmesh_rpc_decoder -- -max_total_time={{seconds}}
    cd filters/rpc/fuzz && cargo +nightly fuzz run thrift_decoder -- -max_total_time={{seconds}}
    cd filters/rpc/fuzz && cargo +nightly fuzz run filter_stream -- -max_total_time={{seconds}}
