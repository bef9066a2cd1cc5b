//! wasmesh-rpc decoder: arbitrary bytes in arbitrary chunks never panic, and chunking never
//! changes the frames.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check(&rpc::wasmesh_rpc::WasmeshRpc, data));
