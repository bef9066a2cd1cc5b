//! Shared by the decoder targets: the first input byte picks a chunk size, the rest is the
//! stream; every frame decoded whole must decode the same when fed in chunks, and nothing panics.

use rpc::codec::{Codec, Decoder};

pub fn check<C: Codec>(codec: &C, data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let whole = Decoder::new(1 << 16).decode_all(codec, stream);
    let mut d = Decoder::new(1 << 16);
    let mut chunked = Vec::new();
    let mut failed = false;
    for c in stream.chunks(chunk) {
        match d.decode_all(codec, c) {
            Ok(frames) => chunked.extend(frames),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if let Ok(frames) = whole {
        if !failed {
            assert_eq!(frames, chunked, "chunking changed the decoded frames");
        }
        for (m, bytes) in &frames {
            // Re-encoding a decoded message never panics and decodes back to the same message.
            if let Ok(again) = codec.encode(m, bytes) {
                let m2 = codec.decode(&again).expect("re-encoded frame decodes");
                assert_eq!((m.kind, m.request_id), (m2.kind, m2.request_id));
            }
        }
    }
}
