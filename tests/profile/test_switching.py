"""Run-time cost of task switching: resident memory of loaded sessions, first call after a switch."""

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import tiny_model
from edgemtl.backends.switchable import export_switchable
from edgemtl.data import data_spec
from edgemtl.errors import EdgemtlError
from edgemtl.model.zoo import build_model, zoo_spec
from edgemtl.profile.switching import resident_memory, switch_latency

WEIGHT_BYTES = 2048 * 2048 * 4  # 16 MiB: far above the ~1 MiB run-to-run noise of RSS
# Resident memory against the bytes of the weights a session holds: at least one copy of each (less RSS
# noise), at most one copy plus what else a batch-1 session keeps. A bare MatMul keeps nothing else
# (measured 1.00x); the MoE artifact's runtime state, activations and dispatch buffers add about half a copy
# (measured 1.47x, onnxruntime 1.31). A second copy of the weights fails both bounds.
AT_LEAST, AT_MOST_MATMUL, AT_MOST_SWITCHABLE = 0.9, 1.25, 2.0
SWITCHABLE_TASKS = ["segmentation", "scene", "depth"]
# an m3vit with ~9 MiB of float weights (16 experts of hidden 512 in its MoE layer): well above RSS noise
SIZED_M3VIT = {"dim": 128, "depth": 2, "mlp_ratio": 4.0, "num_experts": 16, "head_width": 8}


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
def sized_switchable(tmp_path_factory):
    """A switchable artifact with megabytes of weights, and the bytes of the parameters it must hold: the
    shared backbone, the task embeddings and the heads of the tasks it serves (not the other tasks' heads)."""
    input_spec, tasks = data_spec("scenes")
    spec = zoo_spec("m3vit", input_spec, tasks, SIZED_M3VIT, data="scenes")
    torch.manual_seed(0)
    model = build_model(spec).eval()
    held = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
               if not name.startswith("heads.") or name.split(".")[1] in SWITCHABLE_TASKS)
    return export_switchable(model, spec, SWITCHABLE_TASKS, tmp_path_factory.mktemp("sized") / "switchable.onnx"), held


@pytest.fixture(scope="module")
def switchable(tmp_path_factory):
    model, spec = tiny_model("m3vit")
    tasks = ["segmentation", "scene", "depth"]
    return spec, tasks, export_switchable(model, spec, tasks, tmp_path_factory.mktemp("sw") / "switchable.onnx")


def test_resident_memory_counts_each_loaded_copy(big_model):
    one = resident_memory([big_model])
    two = resident_memory([big_model, big_model])
    assert isinstance(one, int) and AT_LEAST * WEIGHT_BYTES <= one <= AT_MOST_MATMUL * WEIGHT_BYTES
    assert AT_LEAST * WEIGHT_BYTES <= two - one <= AT_MOST_MATMUL * WEIGHT_BYTES


def test_resident_memory_of_a_switchable_artifact_is_its_weights_held_once(sized_switchable):
    path, held = sized_switchable
    assert held > 8 * 2**20  # the bound below is only meaningful far above RSS noise
    assert AT_LEAST * held <= resident_memory([path]) <= AT_MOST_SWITCHABLE * held


def test_switch_latency_is_measured(switchable):
    spec, tasks, path = switchable
    result = switch_latency(path, spec, tasks, rounds=5)
    numbers = [result["steady_ms"], result["first_after_switch_ms"], result["ratio"]]
    numbers += [v for per_task in result["per_task"].values() for v in per_task.values()]
    assert all(math.isfinite(v) and v > 0 for v in numbers)
    assert result["ratio"] == pytest.approx(result["first_after_switch_ms"] / result["steady_ms"])
    assert set(result["per_task"]) == set(tasks)
    assert result["provenance"]["kind"] == "measured" and result["runtime"].startswith("onnxruntime ")
    assert result["runs"] == 5 * len(tasks) * 3 and result["threads"] == 1


def test_switch_latency_rejects_a_task_the_artifact_lacks(switchable):
    spec, _, path = switchable
    with pytest.raises(EdgemtlError, match="normals"):
        switch_latency(path, spec, ["scene", "normals"], rounds=1)
