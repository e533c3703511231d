"""The emulated arm64 board (make emulated-arm64): a tracker on 127.0.0.1, the board's RPC server under qemu,
a cross-compiled aarch64 Relax module uploaded, run and checked against numpy. Skips cleanly when the board,
host TVM or the aarch64 cross compiler is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edgemtl.profile import emulated_board
from edgemtl.profile.emulated_board import board_dir_and_reason, emulated_server, start_emulated_server

BOARD, WHY_NOT = board_dir_and_reason()
needs_board = pytest.mark.skipif(BOARD is None, reason=WHY_NOT)
CROSS_CXX = "aarch64-linux-gnu-g++"
AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}

pytestmark = [pytest.mark.needs_qemu]


def test_board_dir_is_none_when_not_built(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMTL_ARM64_BOARD", str(tmp_path / "nowhere"))
    assert emulated_board.board_dir() is None
    board, why = board_dir_and_reason()
    assert board is None and "toolchain install emulated-arm64" in why
    with pytest.raises(RuntimeError, match="toolchain install emulated-arm64"):
        start_emulated_server("127.0.0.1", 9190, "arm64-emu")


@pytest.mark.slow  # the default suite runs ONNX Runtime on the board in test_arm64_end_to_end.py
@needs_board
def test_board_python_is_aarch64_with_onnxruntime(tmp_path):
    """The board's own Python (no RPC): aarch64, and ONNX Runtime runs a model (its import needs the
    emulated /proc/cpuinfo)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = np.arange(12, dtype=np.float32).reshape(4, 3) - 5
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], w.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "tiny.onnx")
    x = np.array([[1, 2, -3, 4], [0.5, -1, 2, 3]], np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import platform, numpy as np, onnxruntime as ort
        s = ort.InferenceSession({str(tmp_path / "tiny.onnx")!r}, providers=["CPUExecutionProvider"])
        np.save({str(tmp_path / "y.npy")!r}, s.run(None, {{"x": np.load({str(tmp_path / "x.npy")!r})}})[0])
        print(platform.machine())
    """)
    out = subprocess.run(
        [str(BOARD / "bin" / "python"), "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "aarch64"
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.maximum(x @ w, 0), rtol=1e-6)


# --- through a tracker ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracker():
    pytest.importorskip("tvm")
    from tvm.rpc.tracker import Tracker

    server = Tracker("127.0.0.1", port=9190, port_end=9390, silent=True)
    yield server
    server.terminate()


PRELOAD = '''
import platform
import tvm_ffi

def register():
    tvm_ffi.register_global_func("edgemtl.test.machine", lambda: platform.machine(), override=True)
'''


@pytest.fixture(scope="module")
def board_server(tracker, tmp_path_factory):
    """One emulated server for the module, registered as `arm64-emu-test`, with a test plug-in preloaded."""
    if BOARD is None:
        pytest.skip(WHY_NOT)
    preload = tmp_path_factory.mktemp("preload") / "edgemtl_test_plugin.py"
    preload.write_text(PRELOAD)
    with emulated_server(
        "127.0.0.1", tracker.port, "arm64-emu-test", extra_args=["--preload", str(preload)]
    ) as proc:
        yield proc


def _session(tracker, key="arm64-emu-test"):
    from tvm import rpc

    return rpc.connect_tracker("127.0.0.1", tracker.port).request(key, priority=1, session_timeout=300)


def _cross_build(tmp_path: Path) -> Path:
    """y = relu(x @ w + b), compiled for aarch64 and linked with Debian's cross g++."""
    import tvm
    from tvm import relax
    from tvm.script import relax as R
    from tvm.support import cc

    @tvm.script.ir_module
    class Tiny:
        @R.function
        def main(
            x: R.Tensor((2, 8), "float32"), w: R.Tensor((8, 4), "float32"), b: R.Tensor((4,), "float32")
        ) -> R.Tensor((2, 4), "float32"):
            with R.dataflow():
                y = R.nn.relu(R.add(R.matmul(x, w), b))
                R.output(y)
            return y

    target = tvm.target.Target(AARCH64)
    with target:
        mod = relax.get_pipeline("zero")(Tiny)
    exe = tvm.compile(mod, target=target)
    path = tmp_path / "tiny_aarch64.so"
    exe.export_library(str(path), fcompile=cc.cross_compiler(CROSS_CXX))
    return path


@needs_board
@pytest.mark.needs_tvm
@pytest.mark.slow
def test_tracker_server_runs_cross_compiled_relax(tracker, board_server, tmp_path):
    if shutil.which(CROSS_CXX) is None:
        pytest.skip(f"{CROSS_CXX} not found (apt-get install g++-aarch64-linux-gnu)")
    import tvm
    from tvm import relax

    lib_path = _cross_build(tmp_path)
    header = lib_path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64

    remote = _session(tracker)
    assert remote.get_function("edgemtl.test.machine")() == "aarch64"  # the --preload plug-in, on the board
    hw = emulated_board.hw_dir()
    if hw is not None and (hw / "ort_runner.py").is_file():  # bin/rpc_server preloads it when present
        info = json.loads(remote.get_function("edgemtl.ort.info")())
        assert info["machine"] == "aarch64" and info["emulated"]
    remote.upload(str(lib_path))
    dev = remote.cpu()
    vm = relax.VirtualMachine(remote.load_module(lib_path.name), dev)
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in [(2, 8), (8, 4), (4,)])
    args = [tvm.runtime.tensor(a, device=dev) for a in (x, w, b)]
    y = vm["main"](*args).numpy()
    np.testing.assert_allclose(y, np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-5)

    timer = vm.time_evaluator("main", dev, number=2, repeat=2)
    result = timer(*args)
    assert len(result.results) == 2 and all(t > 0 for t in result.results)  # emulated seconds, not latency


@needs_board
@pytest.mark.needs_tvm
@pytest.mark.slow
def test_stop_unregisters_and_leaves_no_process(tracker):
    from tvm import rpc

    proc = start_emulated_server("127.0.0.1", tracker.port, "arm64-emu-stop")
    stopped = False
    try:
        assert emulated_board._registered("127.0.0.1", tracker.port, "arm64-emu-stop", proc.port)
        emulated_board.stop_emulated_server(proc)
        stopped = True
        assert proc.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # no process of its group is left
        client = rpc.connect_tracker("127.0.0.1", tracker.port)
        for _ in range(50):  # the tracker notices the closed connection asynchronously
            servers = [s for s in client.summary()["server_info"] if s["key"] == "server:arm64-emu-stop"]
            if not servers:
                break
            time.sleep(0.1)
        assert servers == []
    finally:
        if not stopped:
            emulated_board.stop_emulated_server(proc)
