//! The demo mesh services: A calls B and C through its sidecar.
