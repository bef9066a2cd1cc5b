// Runs examples/profile_calls.rs built for wasm32-wasip1 under Node's V8 with TurboFan only
// (`--no-liftoff`, as proxy-wasm's V8 runtime in Envoy): the filter's per-call instructions as V8
// compiles them, without Envoy. Instructions per call = the difference of two runs under
// callgrind over the difference in calls (docs/benchmarks.md, "rpc per-call cost under V8"):
//
//   cargo build --profile wasm -p rpc --example profile_calls --target wasm32-wasip1
//   wasm-opt -O3 -s 1 --merge-similar-functions --enable-bulk-memory --enable-multivalue \
//     --enable-mutable-globals --enable-nontrapping-float-to-int --enable-reference-types \
//     --enable-sign-ext target/wasm32-wasip1/wasm/examples/profile_calls.wasm -o /tmp/calls.wasm
//   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//     node --no-liftoff --no-wasm-lazy-compilation filters/rpc/examples/profile_calls_v8.mjs \
//     /tmp/calls.wasm 4000        # and again with 64000; (Ir(64000) - Ir(4000)) / (60000 * 16)
import { readFileSync } from 'node:fs';
import { WASI } from 'node:wasi';

const [file, batches] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: ['profile_calls', batches], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(readFileSync(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
