"""`edgemtl profile`: local timing and the device pool through a TVM RPC tracker, on loopback only.

A tiny bundle (float + int8 ONNX and an x86_64 Relax .so for one task, float ONNX only for another), a
tracker and RPC servers on 127.0.0.1 started as subprocesses in their own process groups (always killed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_model
from edgemtl.cli import main
from edgemtl.errors import EdgemtlError
from edgemtl.profile.device import Timing
from edgemtl.profile.job import profile_bundle
from edgemtl.profile.local import LocalDevice
from edgemtl.profile.store import ResultsStore

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TVM_NUM_THREADS": "1"}
FULL, ONNX_ONLY = "depth", "scene"  # FULL has every artifact, ONNX_ONLY only the float ONNX

# A server with the board-side ONNX Runtime runner, started the way hw/arm64's launcher does it: the
# server_init_callback (pickled by value from __main__) imports ort_runner.py in the server's worker.
RUNNER_SERVER = """
import sys
from tvm import rpc
HW = sys.argv[1]

def init():
    import sys
    sys.path.insert(0, HW)
    import ort_runner
    ort_runner.register()

host, port, key, tracker = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
server = rpc.Server(host, port, port + 1, key=key, tracker_addr=(host, tracker), server_init_callback=init, silent=True)
server.proc.join()
"""
HW_ARM64 = Path(__file__).resolve().parents[2] / "hw" / "arm64"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Pool:
    """A tracker and its servers; every process is in its own group and killed at the end."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = _free_port()
        self.procs: list[subprocess.Popen] = []
        self.tracker = self._start([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                    "--port", str(self.port), "--port-end", str(self.port + 1), "--silent"], "tracker")
        deadline = time.time() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.tracker.poll() is not None:
                    raise RuntimeError(f"tracker did not start: {(tmp / 'tracker.log').read_text()}")
                time.sleep(0.3)

    def _start(self, command: list[str], name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        self.procs.append(proc)
        return proc

    def url(self, key: str) -> str:
        return f"rpc://127.0.0.1:{self.port}/{key}"

    def server(self, key: str, runner: bool = False, wait: bool = True) -> subprocess.Popen:
        port = _free_port()
        if runner:
            command = [sys.executable, "-c", RUNNER_SERVER, str(HW_ARM64), "127.0.0.1", str(port), key, str(self.port)]
        else:
            command = [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{self.port}", "--key", key,
                       "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1), "--silent"]
        proc = self._start(command, f"server-{key}-{port}")
        if wait:
            self.wait_free(key, proc)
        return proc

    def summary(self) -> dict:
        from tvm import rpc

        tracker = rpc.connect_tracker("127.0.0.1", self.port)
        try:
            return tracker.summary()
        finally:
            tracker.close()

    def wait_free(self, key: str, proc: subprocess.Popen | None = None, count: int = 1, limit: float = 120) -> None:
        deadline = time.time() + limit
        while self.summary()["queue_info"].get(key, {}).get("free", 0) < count:
            if time.time() > deadline or (proc is not None and proc.poll() is not None):
                raise RuntimeError(f"server {key} did not register with the tracker")
            time.sleep(0.3)

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(10)

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.kill(proc)


@pytest.fixture(scope="module")
def tvm():
    return pytest.importorskip("tvm")


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tvm):
    pool = Pool(tmp_path_factory.mktemp("pool"))
    try:
        yield pool
    finally:
        pool.close()


def _build_so(onnx_path: Path, shape: list[int], dest: Path) -> None:
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(str(onnx_path)), shape_dict={"input": shape})
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = relax.get_pipeline("zero")(relax.transform.DecomposeOpsForInference()(mod))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tvm.compile(mod, target=target).export_library(str(dest))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, tvm) -> Path:
    """An arm64-flow-shaped bundle made here (float + int8 QDQ ONNX, x86_64 .so, reference vectors)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from edgemtl.model.onnx_export import export_task

    root = tmp_path_factory.mktemp("bundle") / "tiny-arm64"
    model, spec = tiny_model("mtl-cnn")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, *spec.input.shape)).astype(np.float32)
    manifest = {"target": {"name": "host"}, "tasks": {}}
    for task in (FULL, ONNX_ONLY):
        folder = root / "tasks" / task
        onnx_path = export_task(model, spec, task, folder / "model.onnx")
        artifacts = {"onnx": f"tasks/{task}/model.onnx"}
        references = {"input": x, "output_float": ort.InferenceSession(str(onnx_path)).run(None, {"input": x})[0]}
        if task == FULL:
            samples = iter([{"input": rng.standard_normal(x.shape).astype(np.float32)} for _ in range(4)])

            class Calibration(CalibrationDataReader):
                def get_next(self):
                    return next(samples, None)

            quantize_static(str(onnx_path), str(folder / "model.int8.onnx"), Calibration(), quant_format=QuantFormat.QDQ,
                            per_channel=True)
            references["output_int8"] = ort.InferenceSession(str(folder / "model.int8.onnx")).run(None, {"input": x})[0]
            _build_so(onnx_path, list(x.shape), folder / "tvm" / "x86_64" / "model.so")
            artifacts.update({"int8_onnx": f"tasks/{task}/model.int8.onnx",
                              "tvm": {"x86_64": f"tasks/{task}/tvm/x86_64/model.so"}})
        (folder / "reference").mkdir()
        for name, value in references.items():
            np.save(folder / "reference" / f"{name}.npy", value)
        artifacts["reference"] = {name: f"tasks/{task}/reference/{name}.npy" for name in references}
        manifest["tasks"][task] = {"artifacts": artifacts}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    """A fresh copy per test: profiling writes into the bundle."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _cli(*args) -> int:
    """Run `edgemtl ARGS`; the exit status (typer exits even on success)."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    return info.value.code or 0


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


# ------------------------------------------------------------------------------------------- local device

@pytest.mark.needs_tvm
def test_profile_local_times_every_runtime_checks_outputs_and_ships_the_fastest(bundle, tmp_path, capsys):
    store = tmp_path / "results.sqlite"
    assert _cli("profile", bundle, "--device", "local", "--runs", "10", "--store", store) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime-int8" in printed and "shipped" in printed
    rows = ResultsStore(store).query()
    assert {(r.task, r.runtime) for r in rows} == {(FULL, "onnxruntime-float"), (FULL, "onnxruntime-int8"), (FULL, "tvm"),
                                                   (ONNX_ONLY, "onnxruntime-float")}
    for row in rows:
        assert row.provenance == "measured" and row.device_key == "local" and row.check_passed is True
        assert 0 < row.min_ms <= row.median_ms <= row.p90_ms and row.runs == 10
        assert len(row.artifact_sha256) == 64 and row.bundle == str(bundle.resolve())
    profile = json.loads((bundle / "profile" / "local.json").read_text())
    assert profile["complete"] and profile["provenance"]["kind"] == "measured"
    skipped = profile["tasks"][ONNX_ONLY]["runtimes"]
    assert "int8_onnx" in skipped["onnxruntime-int8"]["skipped"] and "tvm" in skipped["tvm"]["skipped"]
    manifest = _manifest(bundle)
    for task in (FULL, ONNX_ONLY):
        medians = {r.runtime: r.median_ms for r in rows if r.task == task}
        assert manifest["tasks"][task]["runtime"] == min(medians, key=medians.get)
        assert manifest["tasks"][task]["profile"]["local"]["fastest_passed"] == manifest["tasks"][task]["runtime"]
    assert manifest["profiles"]["local"]["file"] == "profile/local.json"
    # the report is written again after the profile: its numbers are on the page and in report.json
    report = json.loads((bundle / "report.json").read_text())
    assert report["profiles"]["local"]["tasks"][FULL]["fastest_passed"] == manifest["tasks"][FULL]["runtime"]
    page = (bundle / "report.html").read_text()
    assert "<h2>Profile</h2>" in page and "onnxruntime-int8" in page and "shipped" in page
    # nothing left behind, every file readable by the team the bundle is handed to
    assert not (bundle / ".manifest.lock").exists()
    assert all(path.stat().st_mode & 0o044 == 0o044 for path in bundle.rglob("*") if path.is_file())
    assert _cli("profile", "--history", "--store", store, "--device", "local", "--task", FULL, "--json") == 0
    history = json.loads(capsys.readouterr().out)
    assert [(h["runtime"], h["provenance"]) for h in history] == [
        ("onnxruntime-float", "measured"), ("onnxruntime-int8", "measured"), ("tvm", "measured")]


@pytest.mark.needs_tvm
def test_a_wrong_output_is_never_shipped(bundle, tmp_path):
    reference = bundle / "tasks" / FULL / "reference" / "output_float.npy"
    np.save(reference, np.load(reference) + 1.0)  # float runtimes now disagree with the reference
    result = profile_bundle(bundle, "local", runs=5, store=tmp_path / "r.sqlite", tasks=[FULL])
    checks = {r: o.measurement.check_passed for r, o in result.tasks[FULL].items()}
    assert checks == {"onnxruntime-float": False, "onnxruntime-int8": True, "tvm": False}
    assert _manifest(bundle)["tasks"][FULL]["runtime"] == "onnxruntime-int8"


def test_timings_on_another_architecture_do_not_choose_the_shipped_runtime(bundle, tmp_path):
    """An arm64 bundle timed on this x86 machine: recorded, but what ships is decided on an aarch64 device."""
    manifest = _manifest(bundle)
    manifest["target"]["name"] = "arm64"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = profile_bundle(bundle, "local", runs=5, store=tmp_path / "r.sqlite", tasks=[FULL])
    entry = _manifest(bundle)["tasks"][FULL]
    assert "runtime" not in entry and entry["profile"]["local"]["fastest_passed"]
    assert any("the bundle is for aarch64" in note for note in result.notes)


class _FakeEmulatedBoard(LocalDevice):
    key, provenance = "arm64-emu", "emulated"


def test_emulated_timings_are_recorded_as_emulated_and_choose_nothing(bundle, tmp_path):
    device = _FakeEmulatedBoard()
    device.run = lambda task, runtime, artifact, x, runs, seconds: Timing(
        [3.0, 1.0, 2.0], np.load(task.reference("output_float")))
    store = tmp_path / "r.sqlite"
    result = profile_bundle(bundle, device, store=store, tasks=[ONNX_ONLY])
    (row,) = ResultsStore(store).query()
    assert (row.provenance, row.median_ms, row.min_ms, row.device_key) == ("emulated", 2.0, 1.0, "arm64-emu")
    entry = _manifest(bundle)["tasks"][ONNX_ONLY]
    assert "runtime" not in entry and entry["profile"]["arm64-emu"]["provenance"]["kind"] == "emulated"
    assert any("do not choose the shipped runtime" in note for note in result.notes)


def test_emulated_is_read_from_the_key_or_the_board(tvm):
    from edgemtl.profile.rpc import RpcAddress, RpcDevice

    class Session:
        def __init__(self, facts):
            self.facts = facts

        def get_function(self, name):
            if name == "edgemtl.ort.info" and self.facts is not None:
                return lambda: json.dumps(self.facts)
            raise AttributeError(name)

    def describe(key, facts):
        device = RpcDevice.__new__(RpcDevice)
        device.address, device.key, device.timeout, device._info = RpcAddress("127.0.0.1", 9190, key), key, 5.0, {}
        device._describe(Session(facts))
        return device

    plain = describe("rk3588", {"machine": "aarch64", "emulated": False, "onnxruntime": "1.31.1"})
    assert (plain.provenance, plain.arch) == ("measured", "aarch64")
    by_key = describe("arm64-emu", None)
    assert (by_key.provenance, by_key.arch) == ("emulated", "aarch64") and "EMULATED" in by_key.description
    by_board = describe("rk3588", {"machine": "aarch64", "emulated": True, "emulation": "running under qemu-user"})
    assert by_board.provenance == "emulated" and "qemu-user" in by_board.description


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("device, message", [
    ("ftp://127.0.0.1:1/x", "unknown device scheme 'ftp://'"),
    ("rpc://127.0.0.1/x", "bad device address"),
    ("gpu0", "unknown device 'gpu0'"),
    ("rpc://127.0.0.1:{closed}/x86", "cannot reach the TVM RPC tracker"),
])
def test_bad_devices_are_one_line_errors(tmp_path, capsys, device, message):
    pytest.importorskip("tvm")
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"tasks": {"t": {"artifacts": {}}}}))
    started = time.time()
    code = _cli("profile", bundle, "--device", device.format(closed=_free_port()), "--store", tmp_path / "r.sqlite")
    assert code == 2 and time.time() - started < 15
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgemtl: error: ") and message in lines[0]


def test_not_a_bundle_and_missing_arguments(tmp_path, capsys):
    for argv in (["profile", str(tmp_path), "--device", "local"], ["profile", str(tmp_path)]):
        assert _cli(*argv, "--store", tmp_path / "r.sqlite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "is not an edgemtl bundle" in err[0] and "needs a BUNDLE and --device" in err[1]


# ------------------------------------------------------------------------------------- through a tracker

@pytest.mark.needs_tvm
@pytest.mark.slow
def test_profile_through_the_tracker_end_to_end(pool, bundle, tmp_path, capsys):
    pool.server("x86-ort", runner=True)
    store = tmp_path / "r.sqlite"
    assert _cli("profile", bundle, "--device", pool.url("x86-ort"), "--runs", "10", "--timeout", "30", "--store", store) == 0
    assert "x86-ort" in capsys.readouterr().out
    rows = ResultsStore(store).query(device="x86-ort")
    assert {(r.task, r.runtime) for r in rows} == {(FULL, "onnxruntime-float"), (FULL, "onnxruntime-int8"), (FULL, "tvm"),
                                                   (ONNX_ONLY, "onnxruntime-float")}
    assert all(r.provenance == "measured" and r.check_passed for r in rows)
    assert all("onnxruntime 1." in r.device_description for r in rows)
    tvm_row = next(r for r in rows if r.runtime == "tvm")
    assert tvm_row.details["timer"] == "time_evaluator on the board" and tvm_row.details["attempts"] == 1
    manifest = _manifest(bundle)
    assert manifest["tasks"][FULL]["runtime"] in ("onnxruntime-float", "onnxruntime-int8", "tvm")
    assert manifest["tasks"][FULL]["runtime_chosen_by"]["device"] == "x86-ort"
    assert (bundle / "profile" / "x86-ort.json").is_file()
    # a plain TVM server (no runner): ONNX Runtime is skipped with the reason, TVM still runs
    pool.server("x86-plain")
    result = profile_bundle(bundle, pool.url("x86-plain"), runs=5, timeout=30, store=store, tasks=[FULL])
    assert "no edgemtl ONNX Runtime runner" in result.tasks[FULL]["onnxruntime-float"].skipped
    assert result.tasks[FULL]["tvm"].measurement.check_passed


@pytest.mark.needs_tvm
@pytest.mark.slow
def test_no_free_device_is_an_error_within_the_timeout(pool, bundle, tmp_path):
    from tvm import rpc

    pool.server("x86-busy")
    store = tmp_path / "r.sqlite"
    for key in ("nobody-has-this", "x86-busy"):
        holder = None
        if key == "x86-busy":  # its only server is taken by another client
            tracker = rpc.connect_tracker("127.0.0.1", pool.port)
            holder = tracker.request("x86-busy", session_timeout=120)
            tracker.close()
        started = time.time()
        with pytest.raises(EdgemtlError, match=f"no free device with key '{key}'.*within 3 s.*x86-busy") as info:
            profile_bundle(bundle, pool.url(key), timeout=3, store=store)
        assert time.time() - started < 15, info.value
        del holder
    assert ResultsStore(store).count() == 0


@pytest.mark.needs_tvm
@pytest.mark.slow
def test_a_job_survives_its_server_being_killed(pool, bundle, tiny_bundle, tmp_path):
    """Killed while the job holds a session: the job retries on a fresh session from the tracker (a
    replacement server registers meanwhile) and completes; with no replacement it stops with a one-line
    error within its timeouts, and the store keeps every row measured before, readable."""
    store = tmp_path / "r.sqlite"
    victim = pool.server("x86-victim")
    replacement = []

    def kill_then_replace(event, task, runtime, info):
        if event == "start" and runtime == "tvm" and not replacement:
            pool.kill(victim)
            replacement.append(pool.server("x86-victim", wait=False))

    result = profile_bundle(bundle, pool.url("x86-victim"), runs=5, timeout=60, retries=2, store=store,
                            on_step=kill_then_replace)
    assert result.complete
    measured = [o.measurement for runtimes in result.tasks.values() for o in runtimes.values() if o.measurement]
    assert [m.runtime for m in measured] == ["tvm"]  # a plain server: only TVM runs there
    assert measured[0].details["attempts"] == 2 and measured[0].check_passed
    assert ResultsStore(store).count() == 1

    bundle_two = Path(shutil.copytree(tiny_bundle, tmp_path / "again"))
    pool.wait_free("x86-victim", replacement[0])
    killed = []

    def kill_for_good(event, task, runtime, info):
        if event == "start" and runtime == "tvm" and not killed:
            pool.kill(replacement[0])
            killed.append(task)

    started = time.time()
    with pytest.raises(EdgemtlError, match="no free device with key 'x86-victim'|lost device x86-victim"):
        profile_bundle(bundle_two, pool.url("x86-victim"), runs=5, timeout=4, retries=1, store=store,
                       on_step=kill_for_good)
    assert time.time() - started < 60
    store_rows = ResultsStore(store).query()
    assert len(store_rows) == 1 and store_rows[0].runtime == "tvm"
    partial = json.loads((bundle_two / "profile" / "x86-victim.json").read_text())
    assert partial["complete"] is False and "incomplete" in partial["notes"][0]
    assert "runtime" not in _manifest(bundle_two)["tasks"][FULL]


@pytest.mark.needs_tvm
@pytest.mark.slow
def test_tune_builds_measures_and_reuses_its_database(bundle, tmp_path):
    store = tmp_path / "r.sqlite"
    result = profile_bundle(bundle, "local", runs=5, tune=4, store=store, tasks=[FULL])
    tuned = result.tasks[FULL]["tvm-tuned"].measurement
    assert tuned is not None and tuned.check_passed, result.tasks[FULL]["tvm-tuned"].skipped
    assert tuned.artifact == f"tasks/{FULL}/tvm/x86_64/model.tuned.so"
    database = bundle / "tasks" / FULL / "tvm" / "tuning" / "x86_64" / "database_tuning_record.json"
    records = database.read_text()
    assert json.loads((database.parent / "tuned.json").read_text())["measured_records"] >= 1
    entry = _manifest(bundle)["tasks"][FULL]
    assert entry["artifacts"]["tvm_tuned"] == {"x86_64": tuned.artifact}
    assert {"onnxruntime-float", "tvm-tuned"} <= set(entry["profile"]["local"]["runtimes"])
    started = time.time()
    again = profile_bundle(bundle, "local", runs=5, tune=4, store=store, tasks=[FULL])  # reuses the database
    assert time.time() - started < 30 and database.read_text() == records
    assert again.tasks[FULL]["tvm-tuned"].measurement.artifact_sha256 == tuned.artifact_sha256
