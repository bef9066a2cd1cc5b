//! Thrift (framed, binary) decoder: arbitrary bytes in arbitrary chunks never panic, and
//! chunking never changes the frames.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::check(&rpc::thrift::Thrift::default(), data)
});
