//! Errors a host call can report, mapped from proxy-wasm statuses by the adapter.

use thiserror::Error;

/// A failed host call. The filter decides what a failure means (fail open or closed).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HostError {
    /// The host has no such value (for example a property not set for this request).
    #[error("not found: {0}")]
    NotFound(String),
    /// A compare-and-swap write lost the race: the stored value changed since it was read.
    #[error("compare-and-swap mismatch on shared key {0:?}")]
    CasMismatch(String),
    /// The host refused the arguments (a bad header map, an unknown upstream, ...).
    #[error("host rejected {call}: {detail}")]
    BadArgument {
        /// The host call that failed.
        call: &'static str,
        /// What the host said.
        detail: String,
    },
    /// The host call failed for another reason.
    #[error("host call {call} failed: {detail}")]
    Failed {
        /// The host call that failed.
        call: &'static str,
        /// What the host said.
        detail: String,
    },
}
