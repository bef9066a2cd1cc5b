//! Host decoder throughput, both protocols, 1 KiB frames (issue target: at least 1 GB/s):
//! a pipelined stream of 1,024 frames decoded through [`rpc::codec::Decoder`] fed in 16 KiB
//! chunks (as Envoy hands over reads), every frame decoded into a `Message`.
//!
//! `cargo bench -p rpc-client --bench decoder`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rpc::codec::{Codec, Decoder};
use rpc::thrift::{self, Header, Thrift};
use rpc::wasmesh_rpc::{Frame, WasmeshRpc, types};

const FRAMES: usize = 1024;

fn wasmesh_stream() -> Vec<u8> {
    let mut headers = vec![
        ("service".to_owned(), "Orders".to_owned()),
        ("method".to_owned(), "Get".to_owned()),
        ("caller".to_owned(), "web".to_owned()),
        ("trace-id".to_owned(), "4bf92f3577b34da6".to_owned()),
    ];
    headers.shrink_to_fit();
    let base = Frame {
        kind: types::REQUEST,
        flags: 0,
        status: 0,
        request_id: 0,
        headers,
        payload: Vec::new(),
    };
    let overhead = base.encode().map(|f| f.len()).unwrap_or(0);
    (0..FRAMES as u64)
        .flat_map(|i| {
            let mut f = base.clone();
            f.request_id = i;
            f.payload = vec![0xab; 1024 - overhead];
            f.encode().unwrap_or_default()
        })
        .collect()
}

fn thrift_stream() -> Vec<u8> {
    let name = "Calc:add".to_owned();
    let overhead = thrift::frame(
        &Header {
            name: name.clone(),
            kind: 1,
            seqid: 0,
        },
        &[],
    )
    .len();
    (0..FRAMES as i32)
        .flat_map(|i| {
            thrift::frame(
                &Header {
                    name: name.clone(),
                    kind: 1,
                    seqid: i,
                },
                &vec![0u8; 1024 - overhead],
            )
        })
        .collect()
}

fn decode_stream<C: Codec>(codec: &C, stream: &[u8]) -> usize {
    let mut d = Decoder::new(1 << 20);
    let mut n = 0;
    for chunk in stream.chunks(16 * 1024) {
        d.feed(chunk);
        while let Ok(Some((m, _))) = d.next_frame(codec) {
            n += usize::from(m.request_id != u64::MAX);
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decoder_1KiB_frames");
    let wm = wasmesh_stream();
    g.throughput(Throughput::Bytes(wm.len() as u64));
    g.bench_function("wasmesh-rpc", |b| {
        b.iter(|| {
            assert_eq!(
                decode_stream(&WasmeshRpc, std::hint::black_box(&wm)),
                FRAMES
            )
        })
    });
    let th = thrift_stream();
    let codec = Thrift::default();
    g.throughput(Throughput::Bytes(th.len() as u64));
    g.bench_function("thrift", |b| {
        b.iter(|| assert_eq!(decode_stream(&codec, std::hint::black_box(&th)), FRAMES))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
