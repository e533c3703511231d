"""TVM RPC server for an arm64 board (real or emulated), with board-side Python plug-ins preloaded.

    python rpc_server.py --tracker HOST:9190 --key KEY [--preload ort_runner.py] [tvm.exec.rpc_server options]

The same as `python -m tvm.exec.rpc_server`, plus `--preload FILE.py` (repeatable). TVM 0.27's RPC server
runs in a worker subprocess (tvm.support.popen_pool.PopenWorker) and forks one process per session from
it, so a Python module imported in *this* process would not be seen by the sessions. `--load-library`
only dlopens shared libraries. The mechanism used here is `tvm.rpc.Server(server_init_callback=...)`: the
callback runs inside the worker before it starts listening, imports each preloaded file there (which
registers its global functions, e.g. ort_runner.py's ONNX Runtime runner), and every session forked
afterwards inherits them. A preloaded module registers its functions when imported; if it also defines
a `register()` function, that is called after the import.

Stops cleanly on SIGTERM / SIGINT: the worker and its session processes are killed with it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys


def _make_preload(paths: list[str]):
    def preload() -> None:
        import importlib.util
        import logging as _logging
        import os as _os
        import sys as _sys

        for path in paths:
            folder, name = _os.path.split(_os.path.abspath(path))
            name = _os.path.splitext(name)[0]
            if folder not in _sys.path:
                _sys.path.insert(0, folder)
            spec = importlib.util.spec_from_file_location(name, _os.path.join(folder, name + ".py"))
            module = importlib.util.module_from_spec(spec)
            _sys.modules[name] = module
            spec.loader.exec_module(module)
            if callable(getattr(module, "register", None)):
                module.register()
            _logging.getLogger("RPCServer").info("preloaded %s", path)

    return preload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="0.0.0.0", help="address the server binds to")
    parser.add_argument("--port", type=int, default=9090, help="first port to try")
    parser.add_argument("--port-end", type=int, default=9199, help="last port to try")
    parser.add_argument("--tracker", help="tracker address HOST:PORT")
    parser.add_argument("--key", default="", help="device key registered with the tracker")
    parser.add_argument("--custom-addr", help="address to report to the tracker (default: the one it sees)")
    parser.add_argument("--load-library", help="extra shared libraries to dlopen, ':'-separated")
    parser.add_argument("--preload", action="append", default=[], help="a Python file to import in the server")
    parser.add_argument("--silent", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for path in args.preload:
        if not os.path.isfile(path):
            parser.error(f"--preload {path}: no such file")
    tracker = None
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        tracker = (host, int(port))
        if not args.key:
            parser.error("--tracker needs --key")

    from tvm import rpc

    server = rpc.Server(
        args.host,
        args.port,
        args.port_end,
        key=args.key,
        tracker_addr=tracker,
        load_library=args.load_library,
        custom_addr=args.custom_addr,
        silent=args.silent,
        server_init_callback=_make_preload(args.preload) if args.preload else None,
    )
    logging.getLogger("RPCServer").info(
        "serving on %s:%d, key %r, tracker %s", args.host, server.port, args.key, args.tracker
    )

    def stop(signum, _frame):
        server.terminate()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.proc.join()


if __name__ == "__main__":
    main()
