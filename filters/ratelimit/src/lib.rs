//! wasmesh rate-limit filter logic: token buckets exact across workers, bounded key tables, 429 responses, global limits.
