#!/usr/bin/env python3
"""Cargo runner for wasm32-wasip1: runs a test binary (.wasm) under Wasmtime's WASI.

Used by `toolchain::test_on_wasm32` (CARGO_TARGET_WASM32_WASIP1_RUNNER), which installs the
pinned `wasmtime` PyPI package into .tools/ and puts it on PYTHONPATH. Arguments after the
module (test filters, --nocapture, ...) go to the program; its exit status is ours.
"""
import sys

try:
    from wasmtime import Engine, ExitTrap, Linker, Module, Store, Trap, WasiConfig
except ImportError as e:
    sys.exit(f"wasi-run: the wasmtime package is not importable ({e}); "
             "run the tests through `cargo test -p toolchain`, which installs it")


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit("usage: wasi-run.py MODULE.wasm [ARGS...]")
    path = sys.argv[1]
    engine = Engine()
    store = Store(engine)
    wasi = WasiConfig()
    wasi.argv = [path] + sys.argv[2:]
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    wasi.inherit_env()
    store.set_wasi(wasi)
    linker = Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, Module.from_file(engine, path))
    try:
        instance.exports(store)["_start"](store)
    except ExitTrap as e:
        return e.code
    except Trap as e:
        # A panic aborts on wasm32 (no unwinding): libtest has printed the message already.
        print(f"wasi-run: {path} trapped: {e}", file=sys.stderr)
        return 101
    return 0


if __name__ == "__main__":
    sys.exit(main())
