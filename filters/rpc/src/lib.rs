//! wasmesh private-protocol (L4) logic: the codec contract, Thrift and wasmesh-rpc codecs, and the network filter's metering, ACL, limits, mutation and routing.
