//! The whole network filter over the mock host: arbitrary bytes in both directions, with ACL,
//! limits, mutation and routing configured, never panic.
#![no_main]

use rpc::host::Direction;
use rpc::host::mock::MockL4Host;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let protocol = if first & 1 == 0 { "wasmesh_rpc" } else { "thrift" };
    let metadata = if first & 1 == 0 {
        r#","set_metadata":[{"key":"caller","value":"me"}]"#
    } else {
        ""
    };
    let json = format!(
        r#"{{"protocol":"{protocol}","max_frame_bytes":4096,"max_pending":8,
            "acl":{{"rules":[{{"action":"deny","method":"m"}}]}},
            "limits":[{{"rate":3}}],"routes":[{{"service":"S","cluster":"c"}}]{metadata}}}"#
    );
    let Ok(cfg) = rpc::RpcConfig::from_json(json.as_bytes()) else {
        return;
    };
    let Ok(f) = rpc::compile(&cfg) else { return };
    let mut h = MockL4Host::default();
    let mut c = f.connection();
    let chunk = usize::from(first >> 1) % 32 + 1;
    for (i, part) in rest.chunks(chunk).enumerate() {
        let dir = if i % 3 == 2 { Direction::Upstream } else { Direction::Downstream };
        h.chunk.insert(dir, part.to_vec());
        let _ = match dir {
            Direction::Downstream => f.on_downstream_data(&mut h, &mut c, part.len()),
            Direction::Upstream => f.on_upstream_data(&mut h, &mut c, part.len()),
        };
    }
});
