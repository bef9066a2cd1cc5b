# The demo services (crate `demo-services`, one binary for A, B and C; the role comes from
# SERVICE), linked statically (glibc, `-C target-feature=+crt-static`), on an empty base.
# The context is assembled by `cargo run -p compose-e2e` (demo/compose/src/images.rs).
FROM scratch
COPY demo-services /usr/local/bin/demo-services
ENV PATH=/usr/local/bin
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/demo-services"]
