//! The filter's hand-written protobuf (`ratelimit::global`) against the generated Envoy types
//! (prost): what the filter sends decodes as a `RateLimitRequest`, and what this service
//! answers decodes in the filter.

// Test helpers outside #[test] fns: a failed step should stop the test loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use prost::Message;
use ratelimit::global::{decode_response, encode_request};

#[test]
fn the_filters_request_is_a_rate_limit_request() {
    let long = "ü".repeat(200);
    let bytes = encode_request("mesh", [("per-user", "alice"), ("posts", long.as_str())]);
    let r = RateLimitRequest::decode(&bytes[..]).unwrap();
    assert_eq!(r.domain, "mesh");
    assert_eq!(r.hits_addend, 0);
    let got: Vec<Vec<(String, String)>> = r
        .descriptors
        .iter()
        .map(|d| {
            d.entries
                .iter()
                .map(|e| (e.key.clone(), e.value.clone()))
                .collect()
        })
        .collect();
    assert_eq!(
        got,
        vec![
            vec![
                ("rule".into(), "per-user".into()),
                ("key".into(), "alice".into())
            ],
            vec![
                ("rule".into(), "posts".into()),
                ("key".into(), long.clone())
            ],
        ]
    );
}

#[test]
fn the_services_answer_decodes_in_the_filter() {
    let status = |code: Code, reset: Option<Duration>| DescriptorStatus {
        code: code as i32,
        duration_until_reset: reset.map(|d| envoy_types::pb::google::protobuf::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }),
        ..Default::default()
    };
    let resp = RateLimitResponse {
        overall_code: Code::OverLimit as i32,
        statuses: vec![
            status(Code::Ok, None),
            status(Code::OverLimit, Some(Duration::from_millis(7_500))),
        ],
        raw_body: b"ignored".to_vec(),
        ..Default::default()
    };
    let a = decode_response(&resp.encode_to_vec()).unwrap();
    assert_eq!(a.overall, Code::OverLimit as u64);
    assert_eq!(a.statuses, vec![Code::Ok as u64, Code::OverLimit as u64]);
    assert_eq!(a.reset_secs, 8);
    let ok = RateLimitResponse {
        overall_code: Code::Ok as i32,
        ..Default::default()
    };
    assert_eq!(decode_response(&ok.encode_to_vec()).unwrap().overall, 1);
}
