"""Run-time cost of task switching: resident memory of loaded sessions, first call after a switch."""

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import tiny_model
from edgemtl.backends.switchable import export_switchable
from edgemtl.errors import EdgemtlError
from edgemtl.profile.switching import resident_memory, switch_latency

WEIGHT_BYTES = 2048 * 2048 * 4  # 16 MiB: far above the ~1 MiB run-to-run noise of RSS


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """One MatMul with a 16 MiB weight: every session that loads it must hold its own copy."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["y"])], "big",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2048])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2048])], [weight])
    path = tmp_path_factory.mktemp("big") / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


@pytest.fixture(scope="module")
def switchable(tmp_path_factory):
    model, spec = tiny_model("m3vit")
    tasks = ["segmentation", "scene", "depth"]
    return spec, tasks, export_switchable(model, spec, tasks, tmp_path_factory.mktemp("sw") / "switchable.onnx")


def test_resident_memory_counts_each_loaded_copy(big_model):
    one = resident_memory([big_model])
    two = resident_memory([big_model, big_model])
    assert isinstance(one, int) and one >= WEIGHT_BYTES // 2
    assert two >= one + WEIGHT_BYTES // 2


def test_resident_memory_of_a_switchable_artifact(switchable):
    assert resident_memory([switchable[2]]) > 0


def test_switch_latency_is_measured(switchable):
    spec, tasks, path = switchable
    result = switch_latency(path, spec, tasks, rounds=5)
    numbers = [result["steady_ms"], result["first_after_switch_ms"], result["ratio"]]
    numbers += [v for per_task in result["per_task"].values() for v in per_task.values()]
    assert all(math.isfinite(v) and v > 0 for v in numbers)
    assert result["ratio"] == pytest.approx(result["first_after_switch_ms"] / result["steady_ms"])
    assert set(result["per_task"]) == set(tasks)
    assert result["provenance"] == "measured" and result["runtime"].startswith("onnxruntime ")
    assert result["runs"] == 5 * len(tasks) * 3 and result["threads"] == 1


def test_switch_latency_rejects_a_task_the_artifact_lacks(switchable):
    spec, _, path = switchable
    with pytest.raises(EdgemtlError, match="normals"):
        switch_latency(path, spec, ["scene", "normals"], rounds=1)
