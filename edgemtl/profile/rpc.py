"""A device from the pool: a board (real or emulated) registered with a TVM RPC tracker.

`--device rpc://HOST:PORT/KEY` asks the tracker at HOST:PORT for a free server registered under KEY (the
standard `tvm.rpc` tracker/server; start a board with `python -m tvm.exec.rpc_server --tracker HOST:PORT
--key KEY`, or hw/arm64/rpc_server.py to add the ONNX Runtime runner hw/arm64/ort_runner.py). Per task it
takes one RPC session, uploads each artifact, times it on the board (TVM: the Relax VM and
`time_evaluator`; ONNX Runtime: the board-side runner's timing loop) and fetches the output for the
reference check.

Never hangs: the tracker is probed with a connect timeout, the wait for a free device and every remote call
are bounded by `timeout` seconds (a call that does not answer in time counts as a dropped connection),
and the server ends each session after a bounded lifetime. A dropped connection (server killed, network
gone) is retried on a fresh session from the tracker, at most `retries` times; then the job stops with a
one-line error and the measurements already taken stay in the results store.

Provenance: "emulated" when the key says so (contains "emu": emulated, qemu, arm64-emu) or the board's
runner reports emulation (qemu-user); otherwise "measured". Emulated timings are never called measured.
"""

from __future__ import annotations

import gc
import json
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgemtl.errors import EdgemtlError
from edgemtl.profile.device import (ORT_FLOAT, ORT_INT8, DeviceLost, SkipRuntime, TaskArtifacts, Timing, first_line,
                                    normalise_arch, time_vm, tvm_missing)

RUNNER = "edgemtl.ort."
SESSION_LIFETIME_CALLS = 12  # a session (one task) lives at most this many `timeout`s on the server
_DROPPED_HINTS = ("kshutdown", "socket", "connection", "broken pipe", "rpcsessiontimeout", "session has expired",
                  "reset by peer", "timed out", "eof")


@dataclass(frozen=True)
class RpcAddress:
    host: str
    port: int
    key: str

    def __str__(self) -> str:
        return f"rpc://{self.host}:{self.port}/{self.key}"


def parse_device(spec: str) -> RpcAddress:
    """`rpc://HOST:PORT/KEY`; anything else is a one-line error."""
    scheme, sep, rest = spec.partition("://")
    if not sep:
        raise EdgemtlError(f"unknown device {spec!r}: use `local` or rpc://HOST:PORT/KEY (a TVM RPC tracker and a device key)")
    if scheme != "rpc":
        raise EdgemtlError(f"unknown device scheme {scheme + '://'!r} in {spec!r}: use `local` or rpc://HOST:PORT/KEY")
    match = re.fullmatch(r"(?P<host>\[[^\]]+\]|[^:/\s]+):(?P<port>\d+)/(?P<key>[^/\s]+)", rest)
    if not match or not 0 < int(match["port"]) < 65536:
        raise EdgemtlError(f"bad device address {spec!r}: expected rpc://HOST:PORT/KEY, e.g. rpc://127.0.0.1:9190/arm64")
    return RpcAddress(match["host"].strip("[]"), int(match["port"]), match["key"])


class _Dropped(Exception):
    """The remote did not answer in time or the connection broke."""


def bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run `fn` in a daemon thread and wait at most `timeout` s (TVM's RPC calls have no timeout of their
    own). On timeout the call is abandoned (the thread dies with the process) and _Dropped is raised."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"edgemtl-rpc: {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _Dropped(f"no answer within {timeout:g} s to: {what}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _looks_dropped(exc: BaseException) -> bool:
    return isinstance(exc, (_Dropped, OSError)) or any(h in str(exc).lower() for h in _DROPPED_HINTS)


class RpcDevice:
    """One device key at one tracker; holds at most one RPC session at a time (one per task)."""

    def __init__(self, address: RpcAddress, *, timeout: float = 60.0, retries: int = 2, priority: int = 1):
        missing = tvm_missing()
        if missing:
            raise EdgemtlError(f"--device {address} needs TVM's RPC client: {missing}")
        self.address, self.timeout, self.retries, self.priority = address, float(timeout), int(retries), priority
        self.key = address.key
        self.retried = 0
        self._session: Any = None
        self._info: dict[str, Any] = {}
        self._probe_tracker()
        self._session = self._request()
        self._describe(self._session)

    # -- the tracker ------------------------------------------------------------------------------------------
    def _probe_tracker(self) -> None:
        """A plain TCP connect with a timeout first: tvm.rpc.connect_tracker retries for 60 s on its own."""
        try:
            socket.create_connection((self.address.host, self.address.port), timeout=min(self.timeout, 10.0)).close()
        except OSError as exc:
            raise EdgemtlError(f"cannot reach the TVM RPC tracker at {self.address.host}:{self.address.port} "
                               f"({exc.strerror or exc}); start one with `python -m tvm.exec.rpc_tracker "
                               f"--host 0.0.0.0 --port {self.address.port}`") from None

    def _tracker(self) -> Any:
        from tvm import rpc

        self._probe_tracker()
        return bounded(lambda: rpc.connect_tracker(self.address.host, self.address.port), self.timeout,
                       "connect to the tracker")

    def pool_summary(self) -> str:
        """One line: the keys the tracker knows, with total / free servers."""
        try:
            tracker = self._tracker()
            try:
                summary = bounded(tracker.summary, min(self.timeout, 10.0), "tracker summary")
            finally:
                tracker.close()
        except Exception as exc:  # noqa: BLE001 - only used inside an error message
            return f"(tracker summary unavailable: {first_line(exc)})"
        totals: dict[str, int] = {}
        for server in summary.get("server_info", []):
            key = str(server.get("key", "")).split(":", 1)[-1]
            totals[key] = totals.get(key, 0) + 1
        keys = sorted(set(totals) | {k for k, v in summary.get("queue_info", {}).items() if totals.get(k)})
        if not keys:
            return "the tracker has no devices registered"
        free = {k: v.get("free", 0) for k, v in summary.get("queue_info", {}).items()}
        return "tracker has: " + ", ".join(f"{k} ({totals.get(k, 0)} registered, {free.get(k, 0)} free)" for k in keys)

    def _request(self) -> Any:
        """A session on a free server with our key, waiting at most `timeout` s (the tracker queues requests)."""
        tracker = self._tracker()
        lifetime = max(120.0, SESSION_LIFETIME_CALLS * self.timeout)
        sock = getattr(tracker, "_sock", None)
        if sock is not None:
            sock.settimeout(self.timeout)  # the tracker answers only when a device is free
        try:
            return bounded(lambda: tracker.request(self.key, priority=self.priority, session_timeout=lifetime, max_retry=1),
                           self.timeout + 5.0, f"a free {self.key} device from the tracker")
        except Exception as exc:  # noqa: BLE001
            if not _looks_dropped(exc):
                raise EdgemtlError(f"tracker {self.address.host}:{self.address.port} could not give a {self.key} "
                                   f"device: {first_line(exc)}") from None
            raise EdgemtlError(f"no free device with key {self.key!r} at tracker {self.address.host}:{self.address.port} "
                               f"within {self.timeout:g} s; {self.pool_summary()}") from None
        finally:
            tracker.close()

    # -- the board ----------------------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        return bounded(fn, self.timeout, what)

    def _function(self, session: Any, name: str) -> Any | None:
        try:
            return self._call(lambda: session.get_function(name), f"look up {name}")
        except _Dropped:
            raise
        except Exception:  # noqa: BLE001 - a missing global function
            return None

    def _describe(self, session: Any) -> None:
        info_fn = self._function(session, RUNNER + "info")
        if info_fn is not None:
            try:
                self._info = json.loads(self._call(info_fn, "ask the board's runner for its facts"))
            except (ValueError, TypeError):
                self._info = {}
        triple_fn = self._function(session, "target.llvm_get_system_triple")
        triple = str(self._call(triple_fn, "ask the board's LLVM triple")) if triple_fn is not None else ""
        key = self.key.lower()
        if self._info.get("machine"):
            self.arch = normalise_arch(self._info["machine"])
        elif triple:
            self.arch = normalise_arch(triple.split("-")[0])
        elif any(word in key for word in ("aarch64", "arm64")):
            self.arch = "aarch64"
        elif any(word in key for word in ("x86", "amd64")):
            self.arch = "x86_64"
        else:
            self.arch = "unknown"
        self.cores = int(self._info.get("cores") or 0)  # 0: unknown (tuning then assumes this machine's count)
        emulated = "emu" in key or bool(self._info.get("emulated"))
        self.provenance = "emulated" if emulated else "measured"
        parts = [f"TVM RPC device {self.key} via tracker {self.address.host}:{self.address.port}"]
        facts = [self.arch]
        if self._info.get("cpu"):
            facts.append(str(self._info["cpu"]))
        if self._info.get("cores"):
            facts.append(f"{self._info['cores']} cores")
        if self._info.get("hostname"):
            facts.append(f"host {self._info['hostname']}")
        if self._info.get("onnxruntime"):
            facts.append(f"onnxruntime {self._info['onnxruntime']}")
        parts.append(f"({', '.join(facts)})")
        if emulated:
            why = self._info.get("emulation") or "the device key says emulated"
            parts.append(f"EMULATED ({why}): timings are not device latencies")
        self.description = " ".join(parts)

    def _ensure_session(self) -> Any:
        if self._session is None:
            try:
                self._session = self._request()
            except EdgemtlError as exc:
                raise DeviceLost(str(exc)) from None
        return self._session

    def _alive(self, session: Any) -> bool:
        try:
            bounded(lambda: session.get_function("tvm.rpc.server.workpath"), min(self.timeout, 10.0), "ping")
            return True
        except Exception:  # noqa: BLE001
            return False

    def run(self, task: TaskArtifacts, runtime: str, artifact: Path, x: np.ndarray, runs: int, max_seconds: float) -> Timing:
        attempts = 0
        while True:
            session = self._ensure_session()
            try:
                timing = self._run_once(session, task, runtime, artifact, x, runs, max_seconds)
                timing.details.update({"attempts": attempts + 1, "device": str(self.address)})
                return timing
            except SkipRuntime:
                raise
            except Exception as exc:  # noqa: BLE001 - dropped connections are retried, other failures skip
                if not isinstance(exc, _Dropped) and self._alive(session):
                    raise SkipRuntime(f"{runtime} failed on {self.key}: {first_line(exc)}") from None
                reason = first_line(exc)
            del session
            self.end_task()
            attempts += 1
            self.retried += 1
            if attempts > self.retries:
                raise DeviceLost(f"lost device {self.key} at {self.address.host}:{self.address.port} while running "
                                 f"{task.name} / {runtime} ({reason}); gave up after {self.retries} retr"
                                 f"{'y' if self.retries == 1 else 'ies'}; the measurements taken so far are in the results store")

    def _run_once(self, session: Any, task: TaskArtifacts, runtime: str, artifact: Path, x: np.ndarray, runs: int,
                  max_seconds: float) -> Timing:
        import tvm

        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{task.name}-{runtime}{''.join(artifact.suffixes)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if runtime in (ORT_FLOAT, ORT_INT8):
            if not self._info:
                raise SkipRuntime(f"the RPC server {self.key} has no edgemtl ONNX Runtime runner (start it with "
                                  "hw/arm64/rpc_server.py --preload hw/arm64/ort_runner.py)")
            if not self._info.get("onnxruntime"):
                raise SkipRuntime(f"no ONNX Runtime on {self.key}: {self._info.get('onnxruntime_error', 'not installed')}")
            functions = {n: self._function(session, RUNNER + n) for n in ("load", "run", "fetch", "time", "free")}
            if any(f is None for f in functions.values()):
                raise SkipRuntime(f"the runner on {self.key} lacks {', '.join(n for n, f in functions.items() if f is None)}")
            self._call(lambda: session.upload(str(artifact), target=name), f"upload {artifact.name}")
            handle = self._call(lambda: functions["load"](name, 0), f"load {name} in ONNX Runtime")
            dev = self._call(session.cpu, "open the board's CPU")
            tensor = self._call(lambda: tvm.runtime.tensor(x, dev), "copy the input to the board")
            outputs = json.loads(self._call(lambda: functions["run"](handle, tensor), "run the model"))
            output = None
            if outputs:
                first = outputs[0]
                remote_out = self._call(lambda: tvm.runtime.empty(first["shape"], first["dtype"], dev), "allocate the output")
                self._call(lambda: functions["fetch"](handle, 0, remote_out), "fetch the output")
                output = self._call(remote_out.numpy, "copy the output back")
            timed = json.loads(self._call(lambda: functions["time"](handle, tensor, 5, runs, max_seconds), f"time {runs} runs"))
            self._call(lambda: functions["free"](handle), "free the session")
            return Timing([float(v) for v in timed["ms"]], output,
                          {"onnxruntime": self._info.get("onnxruntime"), "timer": "board-side perf_counter",
                           "arch": self.arch})
        if self.arch == "unknown":
            raise SkipRuntime(f"cannot tell the architecture of {self.key} (no runner facts, no LLVM triple, the key "
                              "names none); put aarch64/arm64 or x86 in the key")
        from tvm import relax

        self._call(lambda: session.upload(str(artifact), target=name), f"upload {artifact.name}")
        try:
            lib = self._call(lambda: session.load_module(name), f"load {name}")
        except Exception as exc:  # noqa: BLE001
            if _looks_dropped(exc) or not self._alive(session):
                raise
            raise SkipRuntime(f"{self.key} cannot load {artifact.name}: {first_line(exc)}") from None
        dev = self._call(session.cpu, "open the board's CPU")
        vm = self._call(lambda: relax.VirtualMachine(lib, dev), "start the Relax VM")
        tensor = self._call(lambda: tvm.runtime.tensor(x, dev), "copy the input to the board")
        samples, output = time_vm(vm, dev, tensor, runs, max_seconds, call=self._call)
        return Timing(samples, output, {"tvm": tvm.__version__, "timer": "time_evaluator on the board", "arch": self.arch})

    def end_task(self) -> None:
        """Let the session go: the server ends it (and registers with the tracker again) once the client's
        last reference to anything remote (module, VM, tensor, function) is gone; a collection breaks the
        reference cycles exception tracebacks leave."""
        self._session = None
        gc.collect()

    def close(self) -> None:
        self.end_task()
