"""The emulated arm64 board (hw/arm64/make_emulated_board.sh): find it, start its TVM RPC server, stop it.

The board is an aarch64 Python 3.11 with TVM's runtime and ONNX Runtime, run under qemu-user. It serves
TVM RPC like a real board, registered with a tracker under a key, so the whole hardware-in-the-loop path
(tracker, upload, load, run, time) is exercised for real. Its timings are EMULATED: a figure measured
on it must carry provenance "emulated" and is never a device latency.

    board = board_dir()                       # None when it is not built (edgemtl toolchain install emulated-arm64)
    with emulated_server("127.0.0.1", 9190, "arm64-emu") as proc:
        ...                                   # the server is registered with the tracker here
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, Sequence

from edgemtl.resources import HW_DIR

PROVENANCE = "emulated"
"""The provenance of any figure measured on this board (never "measured")."""

DEFAULT_START_TIMEOUT = 240.0
"""Seconds to wait for the server to register; starting means importing TVM twice under qemu (~15-60 s)."""

_REPO = Path(__file__).resolve().parents[2]
_SERVING = re.compile(r"serving on \S+?:(\d+), key")


def default_board_path() -> Path:
    """Where the board is (to be) built: $EDGEMTL_ARM64_BOARD, else <repo>/.cache/arm64-board."""
    env = os.environ.get("EDGEMTL_ARM64_BOARD")
    return Path(env).expanduser() if env else _REPO / ".cache" / "arm64-board"


def board_dir() -> Path | None:
    """The built board's folder, or None when it is not built or qemu-user is not installed."""
    return board_dir_and_reason()[0]


def board_dir_and_reason() -> tuple[Path | None, str]:
    """(the board, "") when usable, else (None, why not: the sentence a skip or an error should show)."""
    board = default_board_path()
    if not (board / ".built").is_file() or not os.access(board / "bin" / "rpc_server", os.X_OK):
        return None, f"emulated arm64 board not built at {board} (run: edgemtl toolchain install emulated-arm64)"
    if shutil.which("qemu-aarch64-static") is None:
        return None, "qemu-aarch64-static not found (apt-get install qemu-user-static)"
    return board, ""


def hw_dir() -> Path | None:
    """The arm64 board kit edgemtl ships (where ort_runner.py lives)."""
    path = HW_DIR / "arm64"
    return path if path.is_dir() else None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _registered(tracker_host: str, tracker_port: int, key: str, port: int) -> bool:
    """True when a server with `key` listening on `port` is registered with the tracker and free."""
    from tvm import rpc  # lazy: host TVM is optional for edgemtl

    try:
        client = rpc.connect_tracker(tracker_host, tracker_port)
        summary = client.summary()
    except (OSError, RuntimeError, ConnectionError):
        return False
    servers = [
        info
        for info in summary.get("server_info", [])
        if info.get("key") == f"server:{key}" and int(info.get("addr", [None, -1])[1]) == port
    ]
    free = summary.get("queue_info", {}).get(key, {}).get("free", 0)
    return bool(servers) and free >= 1


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def start_emulated_server(
    tracker_host: str,
    tracker_port: int,
    key: str,
    *,
    board: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = DEFAULT_START_TIMEOUT,
    log_path: Path | None = None,
) -> subprocess.Popen:
    """Start the board's RPC server, registered with the tracker under `key`; return once it is.

    The server binds `host` (loopback by default) on `port` (a free one by default) and preloads
    hw/arm64/ort_runner.py from this checkout when that file exists. Its output goes to `log_path` (a
    temporary file by default; `proc.log_path`). The returned process also has `proc.port`. It runs in
    its own process group: stop it with `stop_emulated_server(proc)`, which also removes a temporary log.
    Raises RuntimeError (with the server's log) when the board is missing, the server exits, or it has
    not registered within `timeout`.
    """
    if board is None:
        board, why = board_dir_and_reason()
        if board is None:
            raise RuntimeError(why)
    port = port or _free_port(host)
    own_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"edgemtl-arm64-{key}-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    env = dict(os.environ)
    hw = hw_dir()
    if hw is not None and "EDGEMTL_ARM64_HW" not in env:
        env["EDGEMTL_ARM64_HW"] = str(hw)
    cmd = [
        str(board / "bin" / "rpc_server"),
        "--tracker", f"{tracker_host}:{tracker_port}",
        "--key", key,
        "--host", host,
        "--port", str(port),
        "--port-end", str(port + 1),
        *extra_args,
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    proc.port = port  # type: ignore[attr-defined]
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc._edgemtl_own_log = own_log  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"emulated arm64 RPC server exited with {proc.returncode}:\n{_log_tail(log_path)}"
                )
            if _SERVING.search(_log_tail(log_path, 100_000)) and _registered(tracker_host, tracker_port, key, port):
                return proc
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"emulated arm64 RPC server did not register with {tracker_host}:{tracker_port} "
                    f"as {key!r} within {timeout:.0f} s:\n{_log_tail(log_path)}"
                )
            time.sleep(0.5)
    except BaseException:
        stop_emulated_server(proc)
        raise


def stop_emulated_server(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop the server and everything it started (its worker, session processes): TERM, then KILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    # The group may outlive its leader (a worker that ignored TERM): make sure nothing is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=timeout)
    if getattr(proc, "_edgemtl_own_log", False):  # a temporary log we made (errors already quoted it)
        with contextlib.suppress(OSError):
            proc.log_path.unlink()


@contextlib.contextmanager
def emulated_server(tracker_host: str, tracker_port: int, key: str, **kwargs) -> Iterator[subprocess.Popen]:
    """`start_emulated_server` as a context manager that always stops the server."""
    proc = start_emulated_server(tracker_host, tracker_port, key, **kwargs)
    try:
        yield proc
    finally:
        stop_emulated_server(proc)
