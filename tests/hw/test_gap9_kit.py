"""The GAP9 board kit off the board: hw/gap9/main.c built with the host gcc against a tiny generated network,
a shim pmsis.h (hw/gap9/host/) standing in for the GAP SDK, and test vectors in the format main.c documents;
the build goes through hw/gap9/Makefile itself, with the SDK's pmsis_rules.mk replaced by a host compile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgemtl.backends.c import generate_c
from edgemtl.backends.c.harness import write_test_vectors
from edgemtl.model.intgraph import IntGraph, Node, TensorInfo, accumulator, run_node, run_reference

KIT = Path(__file__).resolve().parents[2] / "hw" / "gap9"
PREFIX = "tiny_net"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="needs the host gcc and make")

# Stands in for the GAP SDK's rules: compiles exactly the Makefile's APP_SRCS / APP_CFLAGS for the host.
FAKE_RULES = """all:
\tgcc -std=c99 -Wall -Wextra -Werror -I$(SHIM_DIR) $(APP_CFLAGS) $(APP_SRCS) -o $(OUT)
clean:
\trm -f $(OUT)
"""


def calibrated(graph: IntGraph, node: Node, values: dict[str, np.ndarray], shift: int = 12) -> None:
    """Give `node` a requantisation that spreads its outputs over the dtype's range, then append it."""
    acc = accumulator(node, values)
    axes = tuple(i for i in range(acc.ndim) if i != 1)
    spread = np.maximum(acc.std(axis=axes), 1.0)
    mul = np.maximum(np.rint(2.0**shift * 50 / spread), 1).astype(np.int32)
    node.params["mul"], node.params["add"] = mul, (np.rint(-acc.mean(axis=axes)) * mul).astype(np.int32)
    node.attrs["shift"] = shift
    values[node.output] = run_node(node, values, graph.tensors)
    graph.nodes.append(node)


def tiny_graph(rng: np.random.Generator, samples: int) -> tuple[IntGraph, np.ndarray]:
    """x (3,8,8) int8 -conv 3x3-> a (8,8,8) uint8 -maxpool 2-> m (8,4,4) -avgpool-> p (8,) -gemm-> y (5,) int8."""
    tensors = {"x": TensorInfo("x", [3, 8, 8], "int8", 0.05), "a": TensorInfo("a", [8, 8, 8], "uint8", 0.05),
               "m": TensorInfo("m", [8, 4, 4], "uint8", 0.05), "p": TensorInfo("p", [8], "int8", 0.05),
               "y": TensorInfo("y", [5], "int8", 0.05)}
    graph = IntGraph("tiny", "x", "y", tensors, [])
    x = rng.integers(-128, 128, size=(samples, 3, 8, 8))
    values = {"x": x}
    calibrated(graph, Node("stem.conv", "conv", ["x"], "a", {"stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 1},
                           {"weight": rng.integers(-127, 128, size=(8, 3, 3, 3)).astype(np.int8)}), values)
    pool = Node("stem.pool", "maxpool", ["a"], "m", {"kernel": [2, 2], "stride": [2, 2], "pads": [0, 0, 0, 0]})
    values["m"] = run_node(pool, values, graph.tensors)
    graph.nodes.append(pool)
    calibrated(graph, Node("head.gap", "avgpool_global", ["m"], "p"), values)
    calibrated(graph, Node("head.fc", "gemm", ["p"], "y",
                           params={"weight": rng.integers(-127, 128, size=(5, 8)).astype(np.int8)}), values)
    graph.validate()
    return graph, x


def build_and_run(tmp_path: Path, graph: IntGraph, x: np.ndarray, expected: np.ndarray,
                  extra: list[str] = ()) -> subprocess.CompletedProcess:
    network = tmp_path / "network"
    generate_c(graph, network, prefix=PREFIX)
    write_test_vectors(graph, network / "test_vectors.h", x, expected)
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "pmsis_rules.mk").write_text(FAKE_RULES)
    exe = tmp_path / "harness"
    make = subprocess.run(["make", "-f", str(KIT / "Makefile"), "all", f"RULES_DIR={rules}",
                           f"NETWORK_DIR={network}", f"PREFIX={PREFIX}", f"SHIM_DIR={KIT / 'host'}", f"OUT={exe}",
                           *extra], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert make.returncode == 0, make.stdout + make.stderr
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)


def test_harness_passes_on_bit_exact_vectors(tmp_path: Path) -> None:
    graph, x = tiny_graph(np.random.default_rng(0), samples=3)
    expected = run_reference(graph, x)[graph.output]
    assert len(np.unique(expected)) > 3            # the vectors exercise more than one output value
    run = build_and_run(tmp_path, graph, x, expected)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert "on the cluster controller core" in lines[0]
    assert [line.split(":")[1].split()[0] for line in lines if line.startswith("sample ")] == ["PASS"] * 3
    assert [line.split(":")[0] for line in lines if line.startswith("layer ")] == [
        f"layer {i} {node.name}" for i, node in enumerate(graph.nodes)]
    assert lines[-1] == "result: PASS 3/3 samples bit-exact"


def test_harness_reports_a_mismatch(tmp_path: Path) -> None:
    graph, x = tiny_graph(np.random.default_rng(1), samples=2)
    expected = run_reference(graph, x)[graph.output].copy()
    original = int(expected[1, 3])
    expected[1, 3] = original + 1 if original < 127 else original - 1
    run = build_and_run(tmp_path, graph, x, expected, extra=["RUN_ON=fc"])
    assert run.returncode == 1
    assert "on the fabric controller" in run.stdout and "sample 0: PASS" in run.stdout
    assert f"sample 1: FAIL at output element 3: got {original}, expected {int(expected[1, 3])}" in run.stdout
    assert run.stdout.splitlines()[-1] == "result: FAIL 1/2 samples bit-exact"


def test_makefile_names_missing_network(tmp_path: Path) -> None:
    made = subprocess.run(["make", "-f", str(KIT / "Makefile"), "all", f"NETWORK_DIR={tmp_path}", "RULES_DIR=/none"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert made.returncode != 0 and "network.h not found" in made.stderr
