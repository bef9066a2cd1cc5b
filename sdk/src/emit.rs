//! Canonical output: typed Envoy messages -> proto3 JSON (via `prost-reflect` and the
//! descriptors `envoy-types` ships) -> `serde_json::Value` with sorted keys -> YAML.
//!
//! Map fields make prost's encoding order vary between runs; going through `serde_json::Value`
//! (a `BTreeMap`) sorts every key, so the same spec always gives the same bytes.

use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use sha2::{Digest, Sha256};

/// Why a message could not be emitted.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The descriptor pool has no such message.
    #[error("no descriptor for {0}")]
    NoDescriptor(String),
    /// A filter's configuration could not be serialised to JSON.
    #[error("serialising the {filter} filter's configuration: {detail}")]
    FilterConfig {
        /// The filter kind.
        filter: &'static str,
        /// What failed.
        detail: String,
    },
    /// Decoding or serialising failed.
    #[error("emitting {what}: {detail}")]
    Encode {
        /// The message type.
        what: String,
        /// What failed.
        detail: String,
    },
}

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

fn pool() -> Result<&'static DescriptorPool, EmitError> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| EmitError::Encode {
            what: "descriptor pool".into(),
            detail: e.clone(),
        })
}

/// A typed message as canonical proto3 JSON (snake_case field names, `Any` expanded with
/// `@type`, defaults omitted), with sorted keys.
pub fn to_json<M: Message + prost::Name>(msg: &M) -> Result<serde_json::Value, EmitError> {
    let name = M::full_name();
    let desc = pool()?
        .get_message_by_name(&name)
        .ok_or_else(|| EmitError::NoDescriptor(name.clone()))?;
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).map_err(|e| {
        EmitError::Encode {
            what: name.clone(),
            detail: e.to_string(),
        }
    })?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    let mut ser = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(&mut ser, &opts)
        .map_err(|e| EmitError::Encode {
            what: name.clone(),
            detail: e.to_string(),
        })?;
    serde_json::from_slice(&ser.into_inner()).map_err(|e| EmitError::Encode {
        what: name,
        detail: e.to_string(),
    })
}

/// YAML text of a JSON value (keys already sorted).
pub fn to_yaml(value: &serde_json::Value) -> Result<String, EmitError> {
    yaml_serde::to_string(value).map_err(|e| EmitError::Encode {
        what: "yaml".into(),
        detail: e.to_string(),
    })
}

/// A short content hash, used as `version_info`.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
