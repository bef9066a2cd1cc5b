//! Unit and property tests of the codecs and the filter (also run on wasm32 under Wasmtime).
//!
//! Property tests use a seeded generator (`filter_core::rng`), so every run checks the same
//! cases on every target and a failure names its seed.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::time::Duration;

use filter_core::rng::Xoshiro256;

use crate::codec::{Codec, CodecError, Decoder};
use crate::config::{
    AclAction, AclConfig, AclRule, DenyMode, MetadataEntry, Protocol, Route, RpcConfig,
};
use crate::filter::{CLUSTER_FILTER_STATE, Verdict, compile};
use crate::host::Direction;
use crate::host::mock::MockL4Host;
use crate::message::{LocalError, Message, MessageType, ResponseStatus};
use crate::thrift::{self, Header, Thrift, message_type};
use crate::wasmesh_rpc::{self, Frame, WasmeshRpc, status, types};

fn rng(seed: u64) -> Xoshiro256 {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    Xoshiro256::from_seed(s)
}

fn below(r: &mut Xoshiro256, n: u64) -> u64 {
    r.next_u64() % n.max(1)
}

fn word(r: &mut Xoshiro256) -> String {
    let len = below(r, 12) as usize;
    (0..len)
        .map(|_| char::from(b'a' + below(r, 26) as u8))
        .collect()
}

fn wm_frame(r: &mut Xoshiro256) -> Frame {
    let kind = [
        types::REQUEST,
        types::ONEWAY,
        types::RESPONSE,
        types::ERROR,
        types::HEARTBEAT,
    ][below(r, 5) as usize];
    // Canonical order (service, method, then the rest), as a re-encoding proxy writes it.
    let mut headers = vec![
        ("service".to_owned(), format!("s{}", word(r))),
        ("method".to_owned(), format!("m{}", word(r))),
    ];
    for _ in 0..below(r, 4) {
        headers.push((word(r) + "x", word(r)));
    }
    let mut payload = vec![0u8; below(r, 300) as usize];
    r.fill(&mut payload);
    Frame {
        kind,
        flags: if kind == types::HEARTBEAT {
            (r.next_u64() & 1) as u8
        } else {
            0
        },
        status: if kind == types::RESPONSE {
            (r.next_u64() % 2) as u8
        } else {
            0
        },
        request_id: r.next_u64(),
        headers,
        payload,
    }
}

fn thrift_frame(r: &mut Xoshiro256) -> Vec<u8> {
    let kind = [
        message_type::CALL,
        message_type::REPLY,
        message_type::EXCEPTION,
        message_type::ONEWAY,
    ][below(r, 4) as usize];
    let name = if r.next_u64().is_multiple_of(2) {
        format!("{}:{}", word(r), word(r))
    } else {
        word(r)
    };
    let mut body = vec![0u8; below(r, 300) as usize];
    r.fill(&mut body);
    thrift::frame(
        &Header {
            name,
            kind,
            seqid: r.next_u64() as i32,
        },
        &body,
    )
}

/// Decodes `stream` fed in `chunks`; the frames' bytes and messages.
fn decode_chunked<C: Codec>(codec: &C, stream: &[u8], cuts: &[usize]) -> Vec<(Message, Vec<u8>)> {
    let mut d = Decoder::new(1 << 20);
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        out.extend(d.decode_all(codec, &stream[at..cut]).unwrap());
        at = cut;
    }
    assert_eq!(d.buffered(), 0);
    out
}

fn every_chunking_decodes_the_same<C: Codec>(codec: &C, frames: &[Vec<u8>], seed: u64) {
    let stream: Vec<u8> = frames.concat();
    let whole = decode_chunked(codec, &stream, &[]);
    assert_eq!(whole.len(), frames.len(), "seed {seed}");
    for (got, want) in whole.iter().zip(frames) {
        assert_eq!(&got.1, want, "seed {seed}");
    }
    // Every single split point.
    for cut in 0..=stream.len() {
        assert_eq!(
            decode_chunked(codec, &stream, &[cut]),
            whole,
            "seed {seed} cut {cut}"
        );
    }
    // Byte by byte.
    let bytes: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(
        decode_chunked(codec, &stream, &bytes),
        whole,
        "seed {seed} bytewise"
    );
    // Random chunkings.
    let mut r = rng(seed ^ 0xc0ffee);
    for _ in 0..20 {
        let mut cuts: Vec<usize> = (0..below(&mut r, 8))
            .map(|_| below(&mut r, stream.len() as u64 + 1) as usize)
            .collect();
        cuts.sort_unstable();
        assert_eq!(
            decode_chunked(codec, &stream, &cuts),
            whole,
            "seed {seed} {cuts:?}"
        );
    }
}

#[test]
fn wasmesh_rpc_every_split_of_a_pipelined_stream_decodes_to_the_same_frames() {
    for seed in 0..12 {
        let mut r = rng(seed);
        let frames: Vec<Vec<u8>> = (0..1 + below(&mut r, 5))
            .map(|_| wm_frame(&mut r).encode().unwrap())
            .collect();
        every_chunking_decodes_the_same(&WasmeshRpc, &frames, seed);
    }
}

#[test]
fn thrift_every_split_of_a_pipelined_stream_decodes_to_the_same_frames() {
    let codec = Thrift {
        default_service: "Calc".into(),
        ..Thrift::default()
    };
    for seed in 0..12 {
        let mut r = rng(seed);
        let frames: Vec<Vec<u8>> = (0..1 + below(&mut r, 5))
            .map(|_| thrift_frame(&mut r))
            .collect();
        every_chunking_decodes_the_same(&codec, &frames, seed);
    }
}

#[test]
fn wasmesh_rpc_round_trips_frames_and_messages() {
    for seed in 0..200 {
        let mut r = rng(seed);
        let f = wm_frame(&mut r);
        let bytes = f.encode().unwrap();
        assert_eq!(Frame::decode(&bytes).unwrap(), f, "seed {seed}");
        let m = WasmeshRpc.decode(&bytes).unwrap();
        assert_eq!(m.request_id, f.request_id);
        assert_eq!(m.service, f.headers[0].1);
        assert_eq!(m.method, f.headers[1].1);
        assert_eq!(&bytes[m.body.clone()], f.payload.as_slice());
        // Re-encoding an unchanged message reproduces the frame.
        assert_eq!(WasmeshRpc.encode(&m, &bytes).unwrap(), bytes, "seed {seed}");
    }
}

#[test]
fn thrift_round_trips_headers_and_bodies() {
    let codec = Thrift::default();
    for seed in 0..200 {
        let mut r = rng(seed);
        let bytes = thrift_frame(&mut r);
        let m = codec.decode(&bytes).unwrap();
        assert_eq!(codec.encode(&m, &bytes).unwrap(), bytes, "seed {seed}");
    }
}

#[test]
fn wasmesh_rpc_fields_and_statuses() {
    let f = Frame {
        kind: types::REQUEST,
        flags: 0,
        status: 0,
        request_id: 0x0102_0304_0506_0708,
        headers: vec![
            ("service".into(), "Orders".into()),
            ("method".into(), "Get".into()),
            ("caller".into(), "web".into()),
            ("trace-id".into(), "t1".into()),
            ("tenant".into(), "acme".into()),
        ],
        payload: b"hi".to_vec(),
    };
    let m = WasmeshRpc.decode(&f.encode().unwrap()).unwrap();
    assert_eq!(m.kind, MessageType::Request);
    assert_eq!(
        (m.service.as_str(), m.method.as_str(), m.caller.as_str()),
        ("Orders", "Get", "web")
    );
    assert_eq!(m.get("tenant"), Some("acme"));
    assert_eq!(m.request_id, 0x0102_0304_0506_0708);
    let mut resp = f.clone();
    resp.kind = types::RESPONSE;
    resp.status = status::APPLICATION_ERROR;
    let m = WasmeshRpc.decode(&resp.encode().unwrap()).unwrap();
    assert_eq!(m.status, Some(ResponseStatus::Exception));
    resp.kind = types::HEARTBEAT;
    resp.flags = wasmesh_rpc::FLAG_REPLY;
    assert_eq!(
        WasmeshRpc.decode(&resp.encode().unwrap()).unwrap().kind,
        MessageType::HeartbeatReply
    );
}

#[test]
fn metadata_mutation_re_encodes_the_frame() {
    let f = Frame {
        kind: types::REQUEST,
        flags: 0,
        status: 0,
        request_id: 7,
        headers: vec![
            ("service".into(), "S".into()),
            ("caller".into(), "forged".into()),
        ],
        payload: b"payload".to_vec(),
    };
    let bytes = f.encode().unwrap();
    let mut m = WasmeshRpc.decode(&bytes).unwrap();
    m.set("caller", "svc-a");
    m.set("trace-id", "abc");
    let again = WasmeshRpc.encode(&m, &bytes).unwrap();
    let back = Frame::decode(&again).unwrap();
    assert_eq!(
        back.headers,
        vec![
            ("service".into(), "S".into()),
            ("caller".into(), "svc-a".into()),
            ("trace-id".into(), "abc".into())
        ]
    );
    assert_eq!(back.payload, b"payload");
    assert_eq!(WasmeshRpc.decode(&again).unwrap().caller, "svc-a");
    // Thrift binary has no metadata to carry.
    let t = thrift::frame(
        &Header {
            name: "m".into(),
            kind: 1,
            seqid: 1,
        },
        &[0],
    );
    let mut tm = Thrift::default().decode(&t).unwrap();
    tm.set("trace-id", "x");
    assert!(matches!(
        Thrift::default().encode(&tm, &t),
        Err(CodecError::Unsupported(_))
    ));
}

/// Reads a `TApplicationException` struct the way Apache Thrift's libraries do: (message, type).
fn read_app_exception(body: &[u8]) -> (String, i32) {
    let mut i = 0;
    let (mut msg, mut kind) = (String::new(), -1);
    loop {
        let t = body[i];
        if t == 0 {
            return (msg, kind);
        }
        let id = u16::from_be_bytes([body[i + 1], body[i + 2]]);
        i += 3;
        match (t, id) {
            (11, 1) => {
                let n = u32::from_be_bytes(body[i..i + 4].try_into().unwrap()) as usize;
                msg = String::from_utf8(body[i + 4..i + 4 + n].to_vec()).unwrap();
                i += 4 + n;
            }
            (8, 2) => {
                kind = i32::from_be_bytes(body[i..i + 4].try_into().unwrap());
                i += 4;
            }
            other => panic!("unexpected field {other:?}"),
        }
    }
}

#[test]
fn error_replies_decode_as_the_protocols_own_errors() {
    let codec = Thrift::default();
    let call = thrift::frame(
        &Header {
            name: "Calc:add".into(),
            kind: 1,
            seqid: 42,
        },
        &[0],
    );
    let req = codec.decode(&call).unwrap();
    let reply = codec.error_reply(&req, LocalError::Denied);
    let m = codec.decode(&reply).unwrap();
    assert_eq!(m.kind, MessageType::Error);
    assert_eq!(m.request_id, 42);
    assert_eq!(m.method, "add");
    assert_eq!(
        read_app_exception(&reply[m.body.clone()]),
        (
            "wasmesh: call denied by policy".to_owned(),
            thrift::app_exception::INTERNAL_ERROR
        )
    );
    let probe = codec.probe(&req).unwrap();
    let p = codec.decode(&probe).unwrap();
    assert_eq!(
        (p.service.as_str(), p.method.as_str(), p.request_id),
        ("Calc", thrift::PROBE_METHOD, 42)
    );

    let f = Frame {
        kind: types::REQUEST,
        flags: 0,
        status: 0,
        request_id: 9,
        headers: vec![],
        payload: vec![],
    };
    let req = WasmeshRpc.decode(&f.encode().unwrap()).unwrap();
    let back = Frame::decode(&WasmeshRpc.error_reply(&req, LocalError::OverLimit)).unwrap();
    assert_eq!(
        (back.kind, back.status, back.request_id),
        (types::ERROR, status::OVER_LIMIT, 9)
    );
    assert_eq!(back.headers[0].1, "wasmesh: rate limit exceeded");
    let probe = Frame::decode(&WasmeshRpc.probe(&req).unwrap()).unwrap();
    assert_eq!(
        (probe.kind, probe.flags, probe.request_id),
        (types::HEARTBEAT, 0, 9)
    );
}

#[test]
fn thrift_names_seqids_defaults_and_result_status() {
    let codec = Thrift {
        default_service: "Calc".into(),
        ..Thrift::default()
    };
    let m = codec
        .decode(&thrift::frame(
            &Header {
                name: "ping".into(),
                kind: 4,
                seqid: -1,
            },
            &[0],
        ))
        .unwrap();
    assert_eq!(
        (m.kind, m.service.as_str(), m.method.as_str()),
        (MessageType::Oneway, "Calc", "ping")
    );
    assert_eq!(m.request_id, 0xffff_ffff);
    // Reply with field 0 (success) vs field 1 (declared exception) vs void (just STOP).
    let ok = thrift::frame(
        &Header {
            name: "add".into(),
            kind: 2,
            seqid: 1,
        },
        &[8, 0, 0, 0, 0, 0, 3, 0],
    );
    let exc = thrift::frame(
        &Header {
            name: "add".into(),
            kind: 2,
            seqid: 1,
        },
        &[12, 0, 1, 0, 0],
    );
    let void = thrift::frame(
        &Header {
            name: "add".into(),
            kind: 2,
            seqid: 1,
        },
        &[0],
    );
    assert_eq!(codec.decode(&ok).unwrap().status, Some(ResponseStatus::Ok));
    assert_eq!(
        codec.decode(&exc).unwrap().status,
        Some(ResponseStatus::Exception)
    );
    assert_eq!(
        codec.decode(&void).unwrap().status,
        Some(ResponseStatus::Ok)
    );
    // Old-style (non-strict) header.
    let mut old = Vec::new();
    old.extend_from_slice(&3u32.to_be_bytes());
    old.extend_from_slice(b"add");
    old.push(1);
    old.extend_from_slice(&5i32.to_be_bytes());
    old.push(0);
    let mut framed = (old.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&old);
    let m = codec.decode(&framed).unwrap();
    assert_eq!(
        (m.kind, m.method.as_str(), m.request_id),
        (MessageType::Request, "add", 5)
    );
}

#[test]
fn oversized_frames_fail_as_soon_as_their_length_is_known_and_nothing_more_is_buffered() {
    let mut d = Decoder::new(64);
    let big = Frame {
        kind: 1,
        flags: 0,
        status: 0,
        request_id: 1,
        headers: vec![],
        payload: vec![0; 100],
    }
    .encode()
    .unwrap();
    d.feed(&big[..11]);
    assert_eq!(d.next_frame(&WasmeshRpc).unwrap(), None);
    d.feed(&big[11..12]);
    let e = d.next_frame(&WasmeshRpc).unwrap_err();
    assert_eq!(e.error, CodecError::TooLarge { len: 120, max: 64 });
    assert!(
        d.next_frame(&WasmeshRpc).is_err(),
        "a failed stream stays failed"
    );
    let mut d = Decoder::new(64);
    let mut t = (1000u32).to_be_bytes().to_vec();
    t.push(0x80);
    d.feed(&t);
    assert!(matches!(
        d.next_frame(&Thrift::default()).unwrap_err().error,
        CodecError::TooLarge { len: 1004, .. }
    ));
    // A frame of exactly the maximum passes.
    let exact = Frame {
        kind: 1,
        flags: 0,
        status: 0,
        request_id: 1,
        headers: vec![],
        payload: vec![0; 44],
    }
    .encode()
    .unwrap();
    assert_eq!(
        Decoder::new(64)
            .decode_all(&WasmeshRpc, &exact)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn bad_magic_and_inconsistent_frames_are_errors_never_panics() {
    assert!(matches!(
        WasmeshRpc.frame_len(b"GE"),
        Err(CodecError::BadMagic(_))
    ));
    assert!(matches!(
        WasmeshRpc.frame_len(b"WM\x02"),
        Err(CodecError::BadMagic(_))
    ));
    assert!(matches!(
        Thrift::default().frame_len(b"\0\0\0\x10GET"),
        Err(CodecError::BadMagic(_))
    ));
    // Header block entry running past the block.
    let mut f = Frame {
        kind: 1,
        flags: 0,
        status: 0,
        request_id: 1,
        headers: vec![("k".into(), "v".into())],
        payload: vec![1],
    }
    .encode()
    .unwrap();
    f[7] = 3; // block length 3 instead of 6
    f.truncate(f.len() - 3);
    assert!(WasmeshRpc.decode(&f).is_err());
    // Random garbage and random corruptions of valid frames: errors or frames, never a panic.
    for seed in 0..400 {
        let mut r = rng(seed);
        let mut bytes = if seed.is_multiple_of(2) {
            wm_frame(&mut r).encode().unwrap()
        } else {
            thrift_frame(&mut r)
        };
        for _ in 0..1 + below(&mut r, 4) {
            let i = below(&mut r, bytes.len() as u64) as usize;
            bytes[i] = r.next_u64() as u8;
        }
        let _ = Decoder::new(4096).decode_all(&WasmeshRpc, &bytes);
        let _ = Decoder::new(4096).decode_all(&Thrift::default(), &bytes);
    }
}

// ---- the filter ----

fn req(id: u64, service: &str, method: &str, caller: &str) -> Vec<u8> {
    Frame {
        kind: types::REQUEST,
        flags: 0,
        status: 0,
        request_id: id,
        headers: vec![
            ("service".into(), service.into()),
            ("method".into(), method.into()),
            ("caller".into(), caller.into()),
        ],
        payload: b"args".to_vec(),
    }
    .encode()
    .unwrap()
}

fn resp(id: u64, st: u8) -> Vec<u8> {
    Frame {
        kind: types::RESPONSE,
        flags: 0,
        status: st,
        request_id: id,
        headers: vec![],
        payload: b"r".to_vec(),
    }
    .encode()
    .unwrap()
}

/// Runs `bytes` through the filter in direction `dir`; returns (verdict, bytes forwarded).
fn pass(
    f: &crate::Compiled,
    h: &mut MockL4Host,
    c: &mut crate::Connection,
    dir: Direction,
    bytes: &[u8],
) -> (Verdict, Vec<u8>) {
    h.chunk.insert(dir, bytes.to_vec());
    let v = match dir {
        Direction::Downstream => f.on_downstream_data(h, c, bytes.len()),
        Direction::Upstream => f.on_upstream_data(h, c, bytes.len()),
    };
    // The root's tick, here after every callback (counters are summed in the VM until then).
    f.flush_stats(h);
    (v, h.chunk[&dir].clone())
}

fn wm_config() -> RpcConfig {
    RpcConfig::new(Protocol::WasmeshRpc)
}

#[test]
fn stats_per_service_and_method_with_latency_matched_by_id() {
    let f = compile(&wm_config()).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let stream = [req(1, "Orders", "Get", "a"), req(2, "Orders", "Put", "a")].concat();
    let (v, fwd) = pass(&f, &mut h, &mut c, Direction::Downstream, &stream);
    assert_eq!((v, fwd.as_slice()), (Verdict::Continue, stream.as_slice()));
    assert!(h.filter_state.is_empty(), "no routing configured");
    assert_eq!(f.on_new_connection(&f.connection()), Verdict::Continue);
    h.clock += Duration::from_millis(7);
    // Responses out of order, split across two chunks.
    let back = [resp(2, status::OK), resp(1, status::APPLICATION_ERROR)].concat();
    let (_, fwd1) = pass(&f, &mut h, &mut c, Direction::Upstream, &back[..10]);
    assert!(fwd1.is_empty(), "a partial frame is held");
    let (_, fwd2) = pass(&f, &mut h, &mut c, Direction::Upstream, &back[10..]);
    assert_eq!(fwd2, back);
    assert_eq!(h.counter("rpc.wasmesh_rpc.Orders.Get.requests"), 1);
    assert_eq!(
        h.counter("rpc.wasmesh_rpc.Orders.Get.responses.exception"),
        1
    );
    assert_eq!(h.counter("rpc.wasmesh_rpc.Orders.Put.responses.ok"), 1);
    assert_eq!(
        h.counter("rpc.wasmesh_rpc.Orders.Get.request_bytes"),
        req(1, "Orders", "Get", "a").len() as i64
    );
    assert_eq!(
        h.histogram("rpc.wasmesh_rpc.Orders.Put.latency_ms"),
        Some((7, 1))
    );
    assert!(!h.closed);
}

#[test]
fn partial_frames_are_held_and_forwarded_whole_byte_by_byte() {
    let f = compile(&wm_config()).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let frame = req(5, "S", "m", "c");
    let mut forwarded = Vec::new();
    for b in &frame {
        let (v, fwd) = pass(&f, &mut h, &mut c, Direction::Downstream, &[*b]);
        assert_eq!(v, Verdict::Continue);
        forwarded.extend(fwd);
    }
    assert_eq!(forwarded, frame);
    assert_eq!(h.counter("rpc.wasmesh_rpc.S.m.requests"), 1);
}

#[test]
fn acl_denial_is_answered_in_protocol_via_the_probe() {
    let mut cfg = wm_config();
    cfg.acl = Some(AclConfig {
        default_action: AclAction::Allow,
        rules: vec![AclRule {
            action: AclAction::Deny,
            caller: Some("evil".into()),
            service: None,
            method: Some("*".into()),
        }],
    });
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let stream = [req(1, "S", "m", "good"), req(2, "S", "m", "evil")].concat();
    let (_, fwd) = pass(&f, &mut h, &mut c, Direction::Downstream, &stream);
    let got = Decoder::new(1 << 20).decode_all(&WasmeshRpc, &fwd).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, req(1, "S", "m", "good"));
    assert_eq!(
        got[1].0.kind,
        MessageType::Heartbeat,
        "the refused call became a probe"
    );
    assert_eq!(got[1].0.request_id, 2);
    assert_eq!(h.counter("rpc.wasmesh_rpc.S.m.denied"), 1);
    // The server answers the call and the probe; the probe's answer becomes the error reply.
    let hb = Frame {
        kind: types::HEARTBEAT,
        flags: wasmesh_rpc::FLAG_REPLY,
        status: 0,
        request_id: 2,
        headers: vec![],
        payload: vec![],
    }
    .encode()
    .unwrap();
    let (_, back) = pass(
        &f,
        &mut h,
        &mut c,
        Direction::Upstream,
        &[resp(1, 0), hb].concat(),
    );
    let got = Decoder::new(1 << 20)
        .decode_all(&WasmeshRpc, &back)
        .unwrap();
    assert_eq!(got[0].1, resp(1, 0));
    let err = Frame::decode(&got[1].1).unwrap();
    assert_eq!(
        (err.kind, err.status, err.request_id),
        (types::ERROR, status::DENIED, 2)
    );
    assert_eq!(h.counter("rpc.wasmesh_rpc.local_replies"), 1);
    assert!(!h.closed);
}

#[test]
fn thrift_denial_becomes_an_app_exception_and_oneway_denials_are_dropped() {
    let mut cfg = RpcConfig::new(Protocol::Thrift);
    cfg.acl = Some(AclConfig {
        default_action: AclAction::Deny,
        rules: vec![AclRule {
            action: AclAction::Allow,
            caller: None,
            service: Some("Calc".into()),
            method: Some("add".into()),
        }],
    });
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let call = |name: &str, kind, seqid| {
        thrift::frame(
            &Header {
                name: name.into(),
                kind,
                seqid,
            },
            &[0],
        )
    };
    let stream = [
        call("Calc:add", 1, 0),
        call("Calc:sub", 1, 0),
        call("Calc:zap", 4, 0),
    ]
    .concat();
    let (_, fwd) = pass(&f, &mut h, &mut c, Direction::Downstream, &stream);
    let codec = Thrift::default();
    let got = Decoder::new(1 << 20).decode_all(&codec, &fwd).unwrap();
    assert_eq!(got.len(), 2, "oneway denial dropped");
    assert_eq!(got[1].0.method, thrift::PROBE_METHOD);
    // Same seqid for both (as Apache Thrift's Python client does): matched in order.
    let reply = call("add", 2, 0);
    let unknown = thrift::frame(
        &Header {
            name: thrift::PROBE_METHOD.into(),
            kind: 3,
            seqid: 0,
        },
        &thrift::app_exception_struct("Unknown function", 1),
    );
    let (_, back) = pass(
        &f,
        &mut h,
        &mut c,
        Direction::Upstream,
        &[reply.clone(), unknown].concat(),
    );
    let got = Decoder::new(1 << 20).decode_all(&codec, &back).unwrap();
    assert_eq!(got[0].1, reply);
    assert_eq!(got[1].0.kind, MessageType::Error);
    assert_eq!(got[1].0.method, "sub");
    assert_eq!(
        read_app_exception(&got[1].1[got[1].0.body.clone()]).0,
        "wasmesh: call denied by policy"
    );
    assert_eq!(h.counter("rpc.thrift.Calc.sub.denied"), 1);
    assert_eq!(h.counter("rpc.thrift.Calc.zap.denied"), 1);
}

#[test]
fn deny_mode_close_closes_counts_and_logs() {
    let mut cfg = wm_config();
    cfg.on_deny = DenyMode::Close;
    cfg.acl = Some(AclConfig {
        default_action: AclAction::Deny,
        rules: vec![],
    });
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let (v, fwd) = pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        &req(1, "S", "m", "x"),
    );
    assert_eq!(v, Verdict::Pause);
    assert!(fwd.is_empty() && h.closed);
    assert_eq!(h.counter("rpc.wasmesh_rpc.denied_closed"), 1);
    assert_eq!(h.logs.len(), 1, "{:?}", h.logs);
}

#[test]
fn malformed_and_oversized_frames_close_the_connection_once() {
    let mut cfg = wm_config();
    cfg.max_frame_bytes = 64;
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let (v, fwd) = pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        b"GET / HTTP/1.1\r\n",
    );
    assert_eq!(v, Verdict::Pause);
    assert!(fwd.is_empty() && h.closed);
    assert_eq!(h.counter("rpc.wasmesh_rpc.malformed_frames"), 1);
    let (v, _) = pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        &req(1, "S", "m", "c"),
    );
    assert_eq!(v, Verdict::Pause, "nothing passes after the close");
    assert_eq!(h.logs.len(), 1, "logged once: {:?}", h.logs);

    let f = compile(&cfg).unwrap(); // metric ids belong to one host
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let big = Frame {
        kind: 1,
        flags: 0,
        status: 0,
        request_id: 1,
        headers: vec![],
        payload: vec![0; 100],
    }
    .encode()
    .unwrap();
    pass(&f, &mut h, &mut c, Direction::Downstream, &big[..12]);
    assert!(h.closed);
    assert_eq!(h.counter("rpc.wasmesh_rpc.oversized_frames"), 1);
}

#[test]
fn metadata_is_set_and_the_frame_re_encoded() {
    let mut cfg = wm_config();
    cfg.set_metadata = vec![
        MetadataEntry {
            key: "caller".into(),
            value: "sidecar-identity".into(),
        },
        MetadataEntry {
            key: "trace-id".into(),
            value: "t-1".into(),
        },
    ];
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let (_, fwd) = pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        &req(3, "S", "m", "forged"),
    );
    let back = Frame::decode(&fwd).unwrap();
    assert_eq!(
        back.headers,
        vec![
            ("service".into(), "S".into()),
            ("method".into(), "m".into()),
            ("caller".into(), "sidecar-identity".into()),
            ("trace-id".into(), "t-1".into()),
        ]
    );
    assert_eq!(back.payload, b"args");
}

#[test]
fn routing_by_first_frame_pauses_until_it_is_complete() {
    let mut cfg = wm_config();
    cfg.routes = vec![Route {
        service: "Orders".into(),
        cluster: "orders".into(),
    }];
    cfg.default_cluster = Some("fallback".into());
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    assert_eq!(
        f.on_new_connection(&c),
        Verdict::Pause,
        "tcp_proxy waits for the route"
    );
    let frame = req(1, "Orders", "Get", "c");
    let (v, fwd) = pass(&f, &mut h, &mut c, Direction::Downstream, &frame[..5]);
    assert_eq!((v, fwd.len()), (Verdict::Pause, 0));
    assert!(h.filter_state.is_empty());
    let (v, fwd) = pass(&f, &mut h, &mut c, Direction::Downstream, &frame[5..]);
    assert_eq!((v, fwd), (Verdict::Continue, frame));
    assert_eq!(
        h.filter_state,
        vec![(CLUSTER_FILTER_STATE.to_owned(), "orders".to_owned())]
    );
    pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        &req(2, "Other", "x", "c"),
    );
    assert_eq!(h.filter_state.len(), 1, "one cluster per connection");
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        &req(1, "Unknown", "x", "c"),
    );
    assert_eq!(h.filter_state[0].1, "fallback");
}

#[test]
fn pending_requests_and_stat_keys_are_bounded() {
    let mut cfg = wm_config();
    cfg.max_pending = 2;
    cfg.max_stat_keys = 2;
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let stream: Vec<u8> = (0..5)
        .flat_map(|i| req(i, &format!("S{i}"), "m", "c"))
        .collect();
    pass(&f, &mut h, &mut c, Direction::Downstream, &stream);
    assert_eq!(h.counter("rpc.wasmesh_rpc.untracked_requests"), 3);
    assert_eq!(h.counter("rpc.wasmesh_rpc.S0.m.requests"), 1);
    assert_eq!(h.counter("rpc.wasmesh_rpc.other.other.requests"), 3);
}

#[test]
fn configuration_errors_name_field_and_value() {
    let e = RpcConfig::from_json(
        br#"{"protocol":"thrift","acl":{"rules":[{"action":"deny","methd":"x"}]}}"#,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("acl.rules[0].methd: unknown field"),
        "{e}"
    );
    let e = RpcConfig::from_json(br#"{"protocol":"grpc"}"#).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("protocol: unknown variant `grpc`"),
        "{e}"
    );
    assert_eq!(
        RpcConfig::from_json(br#"{"protocol":"wasmesh-rpc"}"#)
            .unwrap()
            .protocol,
        Protocol::WasmeshRpc
    );
    let mut cfg = RpcConfig::new(Protocol::Thrift);
    cfg.set_metadata = vec![MetadataEntry {
        key: "caller".into(),
        value: "x".into(),
    }];
    assert_eq!(
        compile(&cfg).unwrap_err().to_string(),
        "set_metadata[0].key: Thrift binary frames carry no metadata: \"caller\""
    );
    let mut cfg = wm_config();
    cfg.max_frame_bytes = 1;
    assert!(
        compile(&cfg)
            .unwrap_err()
            .to_string()
            .starts_with("max_frame_bytes")
    );
    let cfg: RpcConfig = serde_json::from_str(r#"{"protocol":"wasmesh_rpc"}"#).unwrap();
    assert_eq!(
        serde_json::to_string(&cfg).unwrap(),
        r#"{"protocol":"wasmesh_rpc"}"#
    );
}

#[test]
fn documented_frames_match_the_codec() {
    // docs/protocol.md, "Annotated example".
    let request = Frame {
        kind: types::REQUEST,
        flags: 0,
        status: 0,
        request_id: 42,
        headers: vec![
            ("service".into(), "Orders".into()),
            ("method".into(), "Get".into()),
            ("caller".into(), "web".into()),
            ("trace-id".into(), "4bf92f35".into()),
        ],
        payload: br#"{"id":7}"#.to_vec(),
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let bytes = request.encode().unwrap();
    assert_eq!(
        hex(&bytes),
        "574d01010000003f00000008000000000000002a00077365727669636500064f726465727300066d6574686f640003476574000663616c6c65720003776562000874726163652d6964000834626639326633357b226964223a377d"
    );
    let req = WasmeshRpc.decode(&bytes).unwrap();
    assert_eq!(
        hex(&WasmeshRpc.error_reply(&req, LocalError::Denied)),
        "574d01040002002f00000000000000000000002a000d6572726f722d6d657373616765001e7761736d6573683a2063616c6c2064656e69656420627920706f6c696379"
    );
}

#[test]
fn rate_limits_answer_over_limit_calls_in_protocol_and_refill() {
    use crate::config::{KeyPart, LimitRule};
    let mut cfg = wm_config();
    cfg.limits = vec![LimitRule {
        caller: None,
        service: Some("S".into()),
        method: None,
        key: vec![KeyPart::Caller],
        rate: 2,
        period_ms: 1000,
        burst: None,
    }];
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let stream: Vec<u8> = (0..3).flat_map(|i| req(i, "S", "m", "a")).collect();
    let (_, fwd) = pass(&f, &mut h, &mut c, Direction::Downstream, &stream);
    let got = Decoder::new(1 << 20).decode_all(&WasmeshRpc, &fwd).unwrap();
    assert_eq!(got[0].0.kind, MessageType::Request);
    assert_eq!(got[1].0.kind, MessageType::Request);
    assert_eq!(
        got[2].0.kind,
        MessageType::Heartbeat,
        "third call over the limit"
    );
    assert_eq!(h.counter("rpc.wasmesh_rpc.S.m.limited"), 1);
    // Another caller has its own bucket; another service is not limited.
    let (_, fwd) = pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        &[req(3, "S", "m", "b"), req(4, "T", "m", "a")].concat(),
    );
    assert_eq!(
        Decoder::new(1 << 20)
            .decode_all(&WasmeshRpc, &fwd)
            .unwrap()
            .iter()
            .filter(|f| f.0.kind == MessageType::Request)
            .count(),
        2
    );
    // The probe's answer becomes an over-limit error frame.
    let hb = Frame {
        kind: types::HEARTBEAT,
        flags: wasmesh_rpc::FLAG_REPLY,
        status: 0,
        request_id: 2,
        headers: vec![],
        payload: vec![],
    }
    .encode()
    .unwrap();
    let (_, back) = pass(
        &f,
        &mut h,
        &mut c,
        Direction::Upstream,
        &[resp(0, 0), resp(1, 0), hb].concat(),
    );
    let last = Decoder::new(1 << 20)
        .decode_all(&WasmeshRpc, &back)
        .unwrap()
        .pop()
        .unwrap();
    let err = Frame::decode(&last.1).unwrap();
    assert_eq!(
        (err.kind, err.status, err.request_id),
        (types::ERROR, status::OVER_LIMIT, 2)
    );
    // Half a second later one token is back (2 per second).
    h.clock += Duration::from_millis(500);
    let (_, fwd) = pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        &[req(5, "S", "m", "a"), req(6, "S", "m", "a")].concat(),
    );
    let kinds: Vec<MessageType> = Decoder::new(1 << 20)
        .decode_all(&WasmeshRpc, &fwd)
        .unwrap()
        .iter()
        .map(|f| f.0.kind)
        .collect();
    assert_eq!(kinds, [MessageType::Request, MessageType::Heartbeat]);
}

#[test]
fn limit_buckets_survive_cas_races_and_bad_limits_are_refused() {
    use crate::config::{KeyPart, LimitRule};
    let rule = LimitRule {
        caller: None,
        service: None,
        method: None,
        key: vec![],
        rate: 3,
        period_ms: 60_000,
        burst: None,
    };
    let mut cfg = wm_config();
    cfg.limits = vec![rule.clone()];
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        &req(1, "S", "m", "a"),
    );
    // Two other workers win the next two writes: the update is retried, tokens stay exact.
    h.cas_conflicts = 2;
    let stream: Vec<u8> = (2..5).flat_map(|i| req(i, "X", "y", "z")).collect();
    let (_, fwd) = pass(&f, &mut h, &mut c, Direction::Downstream, &stream);
    let kinds: Vec<MessageType> = Decoder::new(1 << 20)
        .decode_all(&WasmeshRpc, &fwd)
        .unwrap()
        .iter()
        .map(|f| f.0.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            MessageType::Request,
            MessageType::Request,
            MessageType::Heartbeat
        ],
        "one bucket for all: 3 tokens"
    );
    assert_eq!(h.counter("rpc.wasmesh_rpc.limit_errors"), 0);
    let mut bad = wm_config();
    bad.limits = vec![LimitRule {
        rate: 0,
        key: vec![KeyPart::Service],
        ..rule
    }];
    assert!(
        compile(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("limits[0]"),
        "{:?}",
        compile(&bad).unwrap_err()
    );
}

#[test]
fn a_clients_own_heartbeat_reusing_a_call_id_does_not_steal_the_calls_response() {
    let f = compile(&wm_config()).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let ping = Frame {
        kind: types::HEARTBEAT,
        flags: 0,
        status: 0,
        request_id: 1,
        headers: vec![],
        payload: vec![],
    };
    pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        &[req(1, "S", "m", "c"), ping.encode().unwrap()].concat(),
    );
    let pong = Frame {
        flags: wasmesh_rpc::FLAG_REPLY,
        ..ping
    }
    .encode()
    .unwrap();
    h.clock += Duration::from_millis(3);
    let (_, back) = pass(
        &f,
        &mut h,
        &mut c,
        Direction::Upstream,
        &[pong.clone(), resp(1, 0)].concat(),
    );
    assert_eq!(back, [pong, resp(1, 0)].concat(), "both pass unchanged");
    assert_eq!(h.counter("rpc.wasmesh_rpc.S.m.responses.ok"), 1);
    assert_eq!(h.histogram("rpc.wasmesh_rpc.S.m.latency_ms"), Some((3, 1)));
}

fn compact() -> Thrift {
    Thrift {
        protocol: thrift::ThriftProtocol::Compact,
        ..Thrift::default()
    }
}

fn thrift_compact_frame(r: &mut Xoshiro256) -> Vec<u8> {
    let kind = [1, 2, 3, 4][below(r, 4) as usize];
    let name = format!("{}:{}", word(r), word(r));
    let mut body = vec![0u8; below(r, 300) as usize];
    r.fill(&mut body);
    thrift::frame_compact(
        &Header {
            name,
            kind,
            seqid: r.next_u64() as i32,
        },
        &body,
    )
}

#[test]
fn thrift_compact_splits_round_trips_and_replies() {
    let codec = compact();
    for seed in 0..8 {
        let mut r = rng(seed);
        let frames: Vec<Vec<u8>> = (0..1 + below(&mut r, 4))
            .map(|_| thrift_compact_frame(&mut r))
            .collect();
        every_chunking_decodes_the_same(&codec, &frames, seed);
        for f in &frames {
            let m = codec.decode(f).unwrap();
            assert_eq!(&codec.encode(&m, f).unwrap(), f, "seed {seed}");
        }
    }
    let call = thrift::frame_compact(
        &Header {
            name: "Calc:add".into(),
            kind: 1,
            seqid: 300,
        },
        &[0],
    );
    let req = codec.decode(&call).unwrap();
    assert_eq!(
        (req.service.as_str(), req.method.as_str(), req.request_id),
        ("Calc", "add", 300)
    );
    let reply = codec.error_reply(&req, LocalError::Denied);
    let m = codec.decode(&reply).unwrap();
    assert_eq!(
        (m.kind, m.request_id, m.method.as_str()),
        (MessageType::Error, 300, "add")
    );
    // TApplicationException in compact form: field 1 binary, field 2 i32 (zigzag 6 = 12), stop.
    let text = LocalError::Denied.text();
    let mut want = vec![0x18, text.len() as u8];
    want.extend_from_slice(text.as_bytes());
    want.extend_from_slice(&[0x15, 12, 0]);
    assert_eq!(&reply[m.body.clone()], want.as_slice());
    // Reply status: field 0 (long form: type byte, zigzag id 0) vs field 1 (short form).
    let ok = thrift::frame_compact(
        &Header {
            name: "add".into(),
            kind: 2,
            seqid: 1,
        },
        &[0x05, 0x00, 0x0a, 0x00],
    );
    let exc = thrift::frame_compact(
        &Header {
            name: "add".into(),
            kind: 2,
            seqid: 1,
        },
        &[0x1c, 0x00, 0x00],
    );
    assert_eq!(codec.decode(&ok).unwrap().status, Some(ResponseStatus::Ok));
    assert_eq!(
        codec.decode(&exc).unwrap().status,
        Some(ResponseStatus::Exception)
    );
    // A binary frame is not compact, and the other way round.
    assert!(
        codec
            .frame_len(&thrift::frame(
                &Header {
                    name: "a".into(),
                    kind: 1,
                    seqid: 1
                },
                &[0]
            ))
            .is_err()
    );
    assert!(Thrift::default().frame_len(&call).is_err());
}

#[test]
fn pipelined_calls_timed_together_are_one_latency_sample_and_exact_counts() {
    let f = compile(&wm_config()).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    // Three calls in one read (one clock reading), a fourth in a later read.
    let batch = [
        req(1, "S", "m", "a"),
        req(2, "S", "m", "a"),
        req(3, "S", "m", "a"),
    ]
    .concat();
    pass(&f, &mut h, &mut c, Direction::Downstream, &batch);
    h.clock += Duration::from_millis(2);
    pass(
        &f,
        &mut h,
        &mut c,
        Direction::Downstream,
        &req(4, "S", "m", "a"),
    );
    h.clock += Duration::from_millis(5);
    let back = [resp(1, 0), resp(2, 0), resp(3, 0), resp(4, 0)].concat();
    let (_, fwd) = pass(&f, &mut h, &mut c, Direction::Upstream, &back);
    assert_eq!(fwd, back);
    assert_eq!(h.counter("rpc.wasmesh_rpc.S.m.requests"), 4);
    assert_eq!(h.counter("rpc.wasmesh_rpc.S.m.responses.ok"), 4);
    // Samples: 7 ms for the group of three (recorded once), then 5 ms for the fourth.
    assert_eq!(h.histogram("rpc.wasmesh_rpc.S.m.latency_ms"), Some((5, 2)));
}

#[test]
fn heads_borrow_the_same_fields_decode_returns_and_fail_alike() {
    for codec in [Thrift::default(), compact()] {
        for (kind, body) in [
            (message_type::CALL, vec![8u8, 0, 1, 0, 0, 0, 2, 0]),
            (message_type::REPLY, vec![8u8, 0, 0, 0, 0, 0, 42, 0]),
            (message_type::REPLY, vec![12u8, 0, 1, 0, 0]),
            (message_type::EXCEPTION, vec![0u8]),
        ] {
            let h = Header {
                name: "Calc:add".into(),
                kind,
                seqid: 77,
            };
            let frame = if codec.protocol == thrift::ThriftProtocol::Binary {
                thrift::frame(&h, &body)
            } else {
                thrift::frame_compact(&h, &body)
            };
            let full = codec.decode(&frame).unwrap();
            let head = codec.head(&frame).unwrap();
            assert_eq!(head.to_message(Vec::new()), full);
            assert_eq!((head.service, head.method), ("Calc", "add"));
            let reply = codec.reply_head(&frame).unwrap();
            assert_eq!(
                (reply.kind, reply.request_id, reply.status, reply.method),
                (full.kind, full.request_id, full.status, "")
            );
        }
    }
    // wasmesh-rpc: the head is the message without its free metadata entries.
    let frame = req(9, "Orders", "Get", "a");
    let full = WasmeshRpc.decode(&frame).unwrap();
    let head = WasmeshRpc.head(&frame).unwrap();
    assert_eq!(head.to_message(full.metadata.clone()), full);
    // A name that is not UTF-8 is refused on both paths, with the same error.
    let mut bad = thrift::frame(
        &Header {
            name: "xy".into(),
            kind: message_type::REPLY,
            seqid: 1,
        },
        &[0],
    );
    bad[12] = 0xff;
    let codec = Thrift::default();
    assert!(codec.decode(&bad).is_err());
    assert_eq!(codec.head(&bad).map(|_| ()), codec.decode(&bad).map(|_| ()));
    assert_eq!(
        codec.reply_head(&bad).map(|_| ()),
        codec.decode(&bad).map(|_| ())
    );
}

#[test]
fn counters_are_summed_in_the_vm_and_sent_once_per_flush() {
    let f = compile(&wm_config()).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let batch = [req(1, "S", "m", "a"), req(2, "S", "m", "a")].concat();
    h.chunk.insert(Direction::Downstream, batch.clone());
    f.on_downstream_data(&mut h, &mut c, batch.len());
    h.chunk.insert(Direction::Downstream, req(3, "S", "m", "a"));
    f.on_downstream_data(&mut h, &mut c, req(3, "S", "m", "a").len());
    assert_eq!(h.counter("rpc.wasmesh_rpc.S.m.requests"), 0, "not sent yet");
    f.flush_stats(&mut h);
    assert_eq!(h.counter("rpc.wasmesh_rpc.S.m.requests"), 3);
    let bytes = (batch.len() + req(3, "S", "m", "a").len()) as i64;
    assert_eq!(h.counter("rpc.wasmesh_rpc.S.m.request_bytes"), bytes);
    // Sent counts are not sent again.
    f.flush_stats(&mut h);
    assert_eq!(h.counter("rpc.wasmesh_rpc.S.m.requests"), 3);
}

#[test]
fn thrift_binary_fast_head_equals_the_general_decoder_on_random_and_damaged_frames() {
    let mut r = rng(0x7e57);
    let codec = Thrift {
        default_service: "Calc".into(),
        ..Thrift::default()
    };
    let (mut fast, mut calls) = (0, 0);
    for i in 0..5_000 {
        let mut frame = thrift_frame(&mut r);
        if i % 2 == 1 {
            // Damage a byte of the message header or the first body bytes.
            let at = 4 + below(&mut r, 20.min(frame.len() as u64 - 4)) as usize;
            frame[at] = r.next_u64() as u8;
        }
        let general = codec.general_head(&frame);
        match codec.binary_head(&frame, true) {
            Some(h) => {
                fast += 1;
                assert_eq!(Ok(h), general, "frame {frame:02x?}");
            }
            None => assert_eq!(codec.head(&frame), general),
        }
        assert_eq!(codec.head(&frame), general);
        // The reply path: the same frames refused with the same errors, the same fields but
        // the names.
        let nameless = |h: crate::message::Head<'_>| (h.kind, h.request_id, h.status, h.body);
        assert_eq!(
            codec.reply_head(&frame).map(nameless),
            general.clone().map(nameless)
        );
        if let Ok(h) = codec.reply_head(&frame) {
            assert_eq!((h.service, h.method), ("", ""));
        }
        // The filter's per-call path for requests: the names key, kind and id of a call or
        // oneway, as `names_key` and `reply_head` have them (for names that decode).
        if let Some((len, key, kind, id)) = codec.call_key(&frame) {
            calls += 1;
            assert_eq!(codec.frame_len(&frame), Ok(Some(len as u64)));
            assert_eq!(len, frame.len());
            assert_eq!(codec.names_key(&frame), Some(key));
            assert!(matches!(kind, MessageType::Request | MessageType::Oneway));
            if std::str::from_utf8(key).is_ok() {
                assert_eq!(
                    codec.reply_head(&frame).map(nameless),
                    Ok((kind, id, None, 16 + key.len()..frame.len()))
                );
            }
            // Cut short, it is no whole frame; with more bytes after it, the same frame.
            assert_eq!(codec.call_key(&frame[..frame.len() - 1]), None);
            let longer = [&frame[..], &[1, 2, 3]].concat();
            assert_eq!(codec.call_key(&longer), Some((len, key, kind, id)));
        } else if let Ok(h) = codec.reply_head(&frame)
            && matches!(h.kind, MessageType::Request | MessageType::Oneway)
        {
            assert_eq!(
                codec.names_key(&frame),
                None,
                "a keyed call left out: {frame:02x?}"
            );
        }
    }
    assert!(fast > 2_500, "the fast path took {fast} of 5000");
    assert!(calls > 1_000, "call_key took {calls} of 5000");
}

#[test]
fn thrift_names_keys_are_the_name_and_equal_keys_decode_to_equal_names() {
    let mut r = rng(0x4e41_4d45);
    let codec = Thrift {
        default_service: "Calc".into(),
        ..Thrift::default()
    };
    let names = [
        "Calc:add",
        "add",
        "Calc:sub",
        "Admin:reset",
        ":x",
        "x:",
        "a:b:c",
        "",
        "é:ü",
    ];
    let mut seen: std::collections::HashMap<Vec<u8>, (String, String, String)> =
        std::collections::HashMap::new();
    let mut keyed = 0;
    for i in 0..5_000 {
        let name = names[below(&mut r, names.len() as u64) as usize];
        let kind = [1, 2, 3, 4][below(&mut r, 4) as usize];
        let mut body = vec![0u8; below(&mut r, 40) as usize];
        r.fill(&mut body);
        let header = Header {
            name: name.into(),
            kind,
            seqid: r.next_u64() as i32,
        };
        let mut frame = thrift::frame(&header, &body);
        if i % 3 == 1 {
            let at = 4 + below(&mut r, 20.min(frame.len() as u64 - 4)) as usize;
            frame[at] = r.next_u64() as u8;
        }
        let (Some(key), Ok(h)) = (codec.names_key(&frame), codec.head(&frame)) else {
            continue;
        };
        keyed += 1;
        if i % 3 != 1 {
            assert_eq!(key, name.as_bytes());
        }
        let decoded = (
            h.service.to_owned(),
            h.method.to_owned(),
            h.caller.to_owned(),
        );
        let first = seen.entry(key.to_vec()).or_insert_with(|| decoded.clone());
        assert_eq!(first, &decoded, "key {key:02x?}");
    }
    assert!(keyed > 3_000, "{keyed} of 5000 frames keyed");
    // No key where the names are not read off the frame's strict binary header.
    let old_style = [&3u32.to_be_bytes()[..], b"add", &[1], &7i32.to_be_bytes()].concat();
    let old_style = [&(old_style.len() as u32).to_be_bytes()[..], &old_style].concat();
    assert_eq!(codec.head(&old_style).map(|h| h.method), Ok("add"));
    assert_eq!(codec.names_key(&old_style), None);
    let call = Header {
        name: "Calc:add".into(),
        kind: 1,
        seqid: 1,
    };
    assert_eq!(
        compact().names_key(&thrift::frame_compact(&call, &[0])),
        None
    );
    assert_eq!(WasmeshRpc.names_key(&req(1, "S", "m", "a")), None);
}

#[test]
fn repeated_calls_are_decided_once_and_refused_repeats_keep_their_names() {
    let mut cfg = RpcConfig::new(Protocol::Thrift);
    cfg.default_service = Some("Calc".into());
    cfg.acl = Some(AclConfig {
        default_action: AclAction::Allow,
        rules: vec![AclRule {
            action: AclAction::Deny,
            caller: None,
            service: Some("Admin".into()),
            method: Some("reset".into()),
        }],
    });
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let call = |name: &str, kind, seqid| {
        thrift::frame(
            &Header {
                name: name.into(),
                kind,
                seqid,
            },
            &[0],
        )
    };
    // Runs of equal calls, a refused call repeated, and the same names under another key
    // (`add` is `Calc:add` through the default service).
    let stream = [
        call("Calc:add", 1, 1),
        call("Calc:add", 1, 2),
        call("Admin:reset", 1, 3),
        call("Admin:reset", 1, 4),
        call("add", 1, 5),
        call("Calc:add", 1, 6),
        call("Admin:reset", 4, 7),
    ]
    .concat();
    let (_, fwd) = pass(&f, &mut h, &mut c, Direction::Downstream, &stream);
    let codec = Thrift::default();
    let got = Decoder::new(1 << 20).decode_all(&codec, &fwd).unwrap();
    let sent: Vec<_> = got
        .iter()
        .map(|(m, _)| (m.service.as_str(), m.method.as_str(), m.request_id))
        .collect();
    assert_eq!(
        sent,
        [
            ("Calc", "add", 1),
            ("Calc", "add", 2),
            ("Admin", thrift::PROBE_METHOD, 3),
            ("Admin", thrift::PROBE_METHOD, 4),
            ("", "add", 5),
            ("Calc", "add", 6),
        ],
        "probes in place of the refused calls, the oneway refusal dropped"
    );
    let unknown = |seqid| {
        thrift::frame(
            &Header {
                name: thrift::PROBE_METHOD.into(),
                kind: 3,
                seqid,
            },
            &thrift::app_exception_struct("Unknown function", 1),
        )
    };
    let back = [
        call("add", 2, 1),
        call("add", 2, 2),
        unknown(3),
        unknown(4),
        call("add", 2, 5),
        call("add", 2, 6),
    ]
    .concat();
    let (_, fwd) = pass(&f, &mut h, &mut c, Direction::Upstream, &back);
    let got = Decoder::new(1 << 20).decode_all(&codec, &fwd).unwrap();
    assert_eq!(got.len(), 6);
    for (i, (m, bytes)) in got.iter().enumerate() {
        if i == 2 || i == 3 {
            assert_eq!((m.kind, m.method.as_str()), (MessageType::Error, "reset"));
            assert_eq!(m.request_id, i as u64 + 1);
            let text = read_app_exception(&bytes[m.body.clone()]).0;
            assert_eq!(text, "wasmesh: call denied by policy");
        } else {
            assert_eq!(m.kind, MessageType::Response);
        }
    }
    assert_eq!(h.counter("rpc.thrift.Calc.add.requests"), 4);
    assert_eq!(h.counter("rpc.thrift.Calc.add.responses.ok"), 4);
    assert_eq!(h.counter("rpc.thrift.Admin.reset.requests"), 2);
    assert_eq!(h.counter("rpc.thrift.Admin.reset.oneway"), 1);
    assert_eq!(h.counter("rpc.thrift.Admin.reset.denied"), 3);
    assert_eq!(h.counter("rpc.thrift.local_replies"), 2);
    let len = |name: &str| call(name, 1, 0).len() as i64;
    assert_eq!(
        h.counter("rpc.thrift.Calc.add.request_bytes"),
        3 * len("Calc:add") + len("add")
    );
}

/// One side of [`fast_paths_do_exactly_what_the_general_path_does`]: a filter, its host and a
/// connection.
struct Side {
    f: crate::Compiled,
    h: MockL4Host,
    c: crate::Connection,
}

impl Side {
    fn new(config: &str, general_only: bool) -> Self {
        let mut f = compile(&RpcConfig::from_json(config.as_bytes()).unwrap()).unwrap();
        f.general_only = general_only;
        let c = f.connection();
        Self {
            f,
            h: MockL4Host::default(),
            c,
        }
    }

    /// Sends `bytes` in `dir` cut at `cuts`; returns the verdicts and the bytes forwarded.
    fn send(&mut self, dir: Direction, bytes: &[u8], cuts: &[usize]) -> (Vec<Verdict>, Vec<u8>) {
        let (mut verdicts, mut out, mut from) = (Vec::new(), Vec::new(), 0);
        for &to in cuts.iter().chain([&bytes.len()]) {
            let (v, fwd) = pass(&self.f, &mut self.h, &mut self.c, dir, &bytes[from..to]);
            verdicts.push(v);
            out.extend(fwd);
            from = to;
        }
        (verdicts, out)
    }
}

fn cuts(r: &mut Xoshiro256, len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = (0..below(r, 4))
        .map(|_| below(r, len as u64 + 1) as usize)
        .collect();
    c.sort_unstable();
    c
}

/// Runs 300 seeded sessions of six rounds through `config`'s filter with and without the fast
/// paths: each round `calls` makes a client batch and `answer` the server's replies (swapped
/// now and then) to what reached it (`None`: it did not decode); both sides get the same bytes
/// in the same random chunks and must return the same verdicts, forward the same bytes and end
/// with the same metrics, histogram samples, logs, closes, filter state and buckets. Returns the
/// number of replies sent.
fn compare_fast_and_general(
    config: &str,
    seed: u64,
    mut calls: impl FnMut(&mut Xoshiro256) -> Vec<u8>,
    mut answer: impl FnMut(&mut Xoshiro256, &[u8]) -> Option<Vec<Vec<u8>>>,
) -> usize {
    let mut sent = 0;
    for session in 0..300u64 {
        let mut r = rng(seed + session);
        let mut fast = Side::new(config, false);
        let mut general = Side::new(config, true);
        for round in 0..6 {
            let batch = calls(&mut r);
            let cut = cuts(&mut r, batch.len());
            let a = fast.send(Direction::Downstream, &batch, &cut);
            let b = general.send(Direction::Downstream, &batch, &cut);
            assert_eq!(a, b, "session {session} round {round}: downstream");
            let Some(mut replies) = answer(&mut r, &a.1) else {
                continue;
            };
            if replies.len() > 1 && below(&mut r, 4) == 0 {
                let i = below(&mut r, replies.len() as u64 - 1) as usize;
                replies.swap(i, i + 1);
            }
            sent += replies.len();
            let replies = replies.concat();
            fast.h.clock += Duration::from_millis(below(&mut r, 3));
            general.h.clock = fast.h.clock;
            let cut = cuts(&mut r, replies.len());
            let a = fast.send(Direction::Upstream, &replies, &cut);
            let b = general.send(Direction::Upstream, &replies, &cut);
            assert_eq!(a, b, "session {session} round {round}: upstream");
        }
        let (f, g) = (&fast.h, &general.h);
        assert_eq!(f.metrics, g.metrics, "session {session}: metrics");
        assert_eq!(f.logs, g.logs, "session {session}: logs");
        assert_eq!(f.closed, g.closed, "session {session}: closed");
        assert_eq!(f.filter_state, g.filter_state, "session {session}");
        assert_eq!(f.shared, g.shared, "session {session}: buckets");
    }
    sent
}

#[test]
fn fast_paths_do_exactly_what_the_general_path_does() {
    // Allowed, denied, limited and unnamed-service calls, oneways, a small pending queue,
    // replies in and out of order with every status, probes and their answers, damaged and
    // oversized frames, all cut into random chunks.
    let config = r#"{"protocol": "thrift", "default_service": "Calc", "max_pending": 6,
        "max_frame_bytes": 64,
        "acl": {"rules": [{"action": "deny", "service": "Admin", "method": "reset"}]},
        "limits": [{"service": "Calc", "method": "slow", "rate": 3, "period_ms": 60000}],
        "routes": [{"service": "Admin", "cluster": "admin"}], "default_cluster": "calc"}"#;
    let names = [
        "Calc:add",
        "Calc:add",
        "Calc:add",
        "add",
        "Admin:reset",
        "Admin:who",
        "Calc:slow",
    ];
    let mut seqid = 0i32;
    let calls = |r: &mut Xoshiro256| {
        let mut calls = Vec::new();
        for _ in 0..1 + below(r, 10) {
            seqid += 1;
            let oneway = below(r, 8) == 0;
            let mut frame = thrift::frame(
                &Header {
                    name: names[below(r, names.len() as u64) as usize].into(),
                    kind: if oneway { 4 } else { 1 },
                    seqid,
                },
                // Now and then a body that makes the frame oversized.
                &[8, 0, 1, 0, 0, 0, 2, 0].repeat(if below(r, 200) == 0 { 6 } else { 1 }),
            );
            if below(r, 150) == 0 {
                let at = 4 + below(r, 12) as usize;
                frame[at] = r.next_u64() as u8;
            }
            calls.extend(frame);
        }
        calls
    };
    // The server answers each call that reached it: ok, a declared exception or an error.
    let answer = |r: &mut Xoshiro256, forwarded: &[u8]| {
        let got = Decoder::new(1 << 20)
            .decode_all(&Thrift::default(), forwarded)
            .ok()?;
        let replies = got.iter().filter(|(m, _)| m.kind == MessageType::Request);
        Some(
            replies
                .map(|(m, _)| {
                    let (kind, body): (u8, &[u8]) = match below(r, 6) {
                        0 => (2, &[12, 0, 1, 0, 0]),
                        1 => (3, &[11, 0, 1, 0, 0, 0, 1, b'x', 8, 0, 2, 0, 0, 0, 1, 0]),
                        _ => (2, &[8, 0, 0, 0, 0, 0, 42, 0]),
                    };
                    let name = m.method.clone();
                    let seqid = m.request_id as i32;
                    thrift::frame(&Header { name, kind, seqid }, body)
                })
                .collect(),
        )
    };
    let replies = compare_fast_and_general(config, 0xfa57, calls, answer);
    assert!(replies > 5_000, "{replies} replies");
}

#[test]
fn fast_paths_do_exactly_what_the_general_path_does_for_wasmesh_rpc() {
    // The upstream fast path serves every protocol (through `reply_head`): wasmesh-rpc calls,
    // oneways, the client's own heartbeats (which may reuse a pending call's id), denied and
    // limited calls answered through heartbeat probes, responses and error frames in and out of
    // order, random chunking.
    let config = r#"{"protocol": "wasmesh_rpc", "max_pending": 6,
        "acl": {"rules": [{"action": "deny", "service": "Admin", "method": "reset"}]},
        "limits": [{"service": "S", "method": "slow", "rate": 3, "period_ms": 60000}]}"#;
    let names = [
        ("S", "m"),
        ("S", "m"),
        ("S", "n"),
        ("Admin", "reset"),
        ("S", "slow"),
    ];
    let frame = |kind, flags, status, request_id, headers: Vec<(String, String)>| {
        Frame {
            kind,
            flags,
            status,
            request_id,
            headers,
            payload: b"p".to_vec(),
        }
        .encode()
        .unwrap()
    };
    let mut id = 0u64;
    let calls = |r: &mut Xoshiro256| {
        let mut sent = Vec::new();
        for _ in 0..1 + below(r, 10) {
            id += 1;
            let (service, method) = names[below(r, names.len() as u64) as usize];
            let names = vec![
                ("service".into(), service.into()),
                ("method".into(), method.into()),
                ("caller".into(), "c".into()),
            ];
            sent.extend(match below(r, 10) {
                0 => frame(types::ONEWAY, 0, 0, id, names),
                // A ping, now and then with the id of the call before it.
                1 => frame(types::HEARTBEAT, 0, 0, id - below(r, 2), vec![]),
                _ => frame(types::REQUEST, 0, 0, id, names),
            });
        }
        sent
    };
    let answer = |r: &mut Xoshiro256, forwarded: &[u8]| {
        let got = Decoder::new(1 << 20)
            .decode_all(&WasmeshRpc, forwarded)
            .ok()?;
        let expecting = got.iter().filter(|(m, _)| m.kind.expects_reply());
        Some(
            expecting
                .map(|(m, _)| match (m.kind, below(r, 5)) {
                    (MessageType::Heartbeat, _) => frame(
                        types::HEARTBEAT,
                        wasmesh_rpc::FLAG_REPLY,
                        0,
                        m.request_id,
                        vec![],
                    ),
                    (_, 0) => frame(types::ERROR, 0, status::INTERNAL, m.request_id, vec![]),
                    (_, 1) => frame(types::RESPONSE, 0, 1, m.request_id, vec![]),
                    _ => frame(types::RESPONSE, 0, 0, m.request_id, vec![]),
                })
                .collect(),
        )
    };
    let replies = compare_fast_and_general(config, 0x3e5e, calls, answer);
    assert!(replies > 5_000, "{replies} replies");
}

/// The `floor-probe` cost probe (never shipped): once routed, the bytes pass unread by the
/// filter's logic, one clock read per callback, one histogram sample per upstream callback.
/// Only with the feature (`.ci/run` runs it), so it is not one of the unit tests the wasm32
/// tiers count (`toolchain/tests/pure_crates_on_wasm32.rs` counts `#[test]` lines).
#[cfg(feature = "floor-probe")]
#[cfg_attr(feature = "floor-probe", test)]
fn the_floor_probe_reads_and_times_but_decodes_nothing_once_routed() {
    let mut cfg = wm_config();
    cfg.routes = vec![Route {
        service: "Orders".into(),
        cluster: "orders".into(),
    }];
    let f = compile(&cfg).unwrap();
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    // The first callback routes (the general path), as the bench's filter does.
    let first = req(1, "Orders", "Get", "a");
    assert_eq!(
        pass(&f, &mut h, &mut c, Direction::Downstream, &first).0,
        Verdict::Continue
    );
    assert_eq!(
        h.filter_state,
        [(CLUSTER_FILTER_STATE.to_owned(), "orders".to_owned())]
    );
    assert_eq!(h.counter("rpc.wasmesh_rpc.Orders.Get.requests"), 1);
    let next = [req(2, "Orders", "Get", "a"), b"not a frame".to_vec()].concat();
    let (v, fwd) = pass(&f, &mut h, &mut c, Direction::Downstream, &next);
    assert_eq!((v, fwd), (Verdict::Continue, next));
    assert_eq!(h.counter("rpc.wasmesh_rpc.Orders.Get.requests"), 1);
    let back = resp(1, status::OK);
    let (v, fwd) = pass(&f, &mut h, &mut c, Direction::Upstream, &back);
    assert_eq!((v, fwd), (Verdict::Continue, back));
    assert_eq!(h.counter("rpc.wasmesh_rpc.Orders.Get.responses.ok"), 0);
    let (_, samples) = h
        .histogram("rpc.wasmesh_rpc.Orders.Get.latency_ms")
        .unwrap();
    assert_eq!(samples, 1);
    assert!(!h.closed && h.logs.is_empty());
}
