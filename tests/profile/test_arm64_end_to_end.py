"""Issue 7's "done means", in the default suite: `edgemtl compile --target arm64` then `edgemtl profile` through
a TVM RPC tracker on 127.0.0.1 to the EMULATED arm64 board (make emulated-arm64: aarch64 Python + TVM runtime +
ONNX Runtime under qemu-user). The aarch64 .so and ONNX Runtime (through hw/arm64/ort_runner.py) run on the
board, outputs are checked against the bundle's references, and every row lands in the results store labelled
"emulated" (emulated timings never choose the shipped runtime).

Skips cleanly when the board is not built ("run: make emulated-arm64"), or host TVM or the aarch64 cross linker
is missing. ~60-80 s on a 2-core machine: the compile (~25 s) while the board's server starts (~25 s), then the profile (~20 s).
"""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgemtl.cli import main
from edgemtl.profile.emulated_board import board_dir_and_reason, start_emulated_server, stop_emulated_server
from edgemtl.profile.store import ResultsStore

BOARD, WHY_NOT = board_dir_and_reason()
KEY = "arm64-emu"
TASKS = ("depth", "scene")
RUNTIMES = ("onnxruntime-float", "onnxruntime-int8", "tvm")

pytestmark = [
    pytest.mark.needs_qemu,
    pytest.mark.needs_tvm,
    pytest.mark.skipif(BOARD is None, reason=f"{WHY_NOT}" if "toolchain install emulated-arm64" in WHY_NOT
                       else f"{WHY_NOT}; run: edgemtl toolchain install emulated-arm64"),
]


def _cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return info.value.code or 0, captured.out, captured.err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def tracker():
    pytest.importorskip("tvm")
    from tvm.rpc.tracker import Tracker

    port = _free_port()
    server = Tracker("127.0.0.1", port=port, port_end=port + 1, silent=True)
    try:
        yield server
    finally:
        server.terminate()


def test_compile_arm64_then_profile_on_the_emulated_board(capsys, tmp_path, checkpoints, tracker):
    pytest.importorskip("tvm")
    from edgemtl.backends import tvm_build

    missing = tvm_build.cross_compiler_missing("aarch64")
    if missing:
        pytest.skip(f"no aarch64 cross linker ({missing}): apt-get install g++-aarch64-linux-gnu")

    # the board's server starts (~20 s under qemu, mostly importing TVM) while the compile runs
    pool = ThreadPoolExecutor(1)
    starting = pool.submit(start_emulated_server, "127.0.0.1", tracker.port, KEY)
    try:
        _compile_and_profile(capsys, tmp_path, checkpoints["mtl-cnn"], starting, tracker.port)
    finally:
        pool.shutdown(wait=True)
        if starting.exception() is None:
            stop_emulated_server(starting.result())


def _compile_and_profile(capsys, tmp_path, checkpoint, starting, port: int) -> None:
    bundle = tmp_path / "arm64"
    code, _, err = _cli(capsys, "compile", checkpoint, "--target", "arm64", "-o", bundle,
                        "--tasks", ",".join(TASKS), "--threads", "1")
    assert code == 0, err
    manifest = json.loads((bundle / "manifest.json").read_text())
    for task in TASKS:
        so = bundle / manifest["tasks"][task]["artifacts"]["tvm"]["aarch64"]
        header = so.read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    shipped_before = {t: manifest["tasks"][t]["runtime"] for t in TASKS}

    store = tmp_path / "results.sqlite"
    server = starting.result()
    code, out, err = _cli(capsys, "profile", bundle, "--device", f"rpc://127.0.0.1:{port}/{KEY}",
                          "--runs", "5", "--timeout", "120", "--store", store)
    log = server.log_path.read_text(errors="replace")
    assert code == 0, err
    assert "EMULATED" in out and KEY in out
    # the board's server loaded the cross-compiled aarch64 modules (TVM's RPC server logs each load_module)
    assert sum("load_module" in line for line in log.splitlines()) >= len(TASKS), log[-3000:]

    rows = ResultsStore(store).query(device=KEY)
    assert {(r.task, r.runtime) for r in rows} == {(t, r) for t in TASKS for r in RUNTIMES}
    for row in rows:
        assert row.provenance == "emulated", row
        assert row.check_passed is True, row  # output of the board vs the bundle's reference vectors
        assert 0 < row.min_ms <= row.median_ms <= row.p90_ms and row.runs >= 5
        assert "EMULATED" in row.device_description and "aarch64" in row.device_description
        assert row.details.get("arch") == "aarch64"
    tvm_rows = [r for r in rows if r.runtime == "tvm"]
    assert all(r.artifact.endswith("tvm/aarch64/model.so") for r in tvm_rows)
    assert all(r.details["timer"] == "time_evaluator on the board" for r in tvm_rows)
    ort_rows = [r for r in rows if r.runtime.startswith("onnxruntime")]
    assert all(r.details["timer"] == "board-side perf_counter" and r.details["onnxruntime"] for r in ort_rows)

    profile = json.loads((bundle / "profile" / f"{KEY}.json").read_text())
    assert profile["complete"] and profile["provenance"]["kind"] == "emulated" and profile["device"] == KEY
    assert set(profile["tasks"]) == set(TASKS)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["profiles"][KEY]["provenance"]["kind"] == "emulated"
    for task in TASKS:  # emulated timings are recorded but never choose what ships
        entry = manifest["tasks"][task]
        assert entry["profile"][KEY]["provenance"]["kind"] == "emulated"
        assert entry["runtime"] == shipped_before[task] and "runtime_chosen_by" not in entry
    assert "do not choose the shipped runtime" in err

    # --history reads the same rows back
    code, out, _ = _cli(capsys, "profile", "--history", "--store", store, "--device", KEY, "--json")
    assert code == 0
    history = json.loads(out)
    assert len(history) == len(TASKS) * len(RUNTIMES) and {h["provenance"] for h in history} == {"emulated"}


@pytest.mark.slow
def test_tune_times_configurations_on_the_emulated_board(tracker):
    """`edgemtl tune --device`: a configuration's latency timed board-side through the profiler's RPC client; the
    emulated board's numbers say `emulated`."""
    from conftest import tiny_slimmable_model

    from edgemtl.passes.slice_widths import slice_model
    from edgemtl.search.objectives import CostMeter
    from edgemtl.targets import load_target

    model, spec = tiny_slimmable_model()
    server = start_emulated_server("127.0.0.1", tracker.port, KEY)
    try:
        meter = CostMeter("latency_ms", load_target("arm64"), runs=5, device=f"rpc://127.0.0.1:{tracker.port}/{KEY}")
        try:
            narrow, provenance = meter(*slice_model(model, spec, spec.widths.narrowest()))
            wide, _ = meter(model, spec)
        finally:
            meter.close()
    finally:
        stop_emulated_server(server)
    assert provenance["kind"] == "emulated" and "board-side" in provenance["detail"]
    assert narrow > 0 and wide > 0
