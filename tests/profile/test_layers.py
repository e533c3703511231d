"""Per-layer ONNX Runtime timing (edgemtl.profile.layers), on a two-node graph built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemtl.manifest import Provenance
from edgemtl.profile.layers import ort_layer_profile


def _graph(path: Path) -> Path:
    weight = numpy_helper.from_array(np.ones((8, 4), dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Relu", ["h"], ["y"], name="act")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    return path


def test_every_node_timed_with_its_share_and_a_measured_provenance(tmp_path: Path) -> None:
    result = ort_layer_profile(_graph(tmp_path / "tiny.onnx"), np.ones((1, 8), dtype=np.float32), "tiny.onnx",
                               runs=3, warmup=1)
    assert result["source"] == "onnxruntime profiler" and result["graph"] == "tiny.onnx" and result["nodes"] == 2
    assert {row["name"] for row in result["layers"]} == {"fc", "act"}
    assert {row["op"] for row in result["layers"]} == {"MatMul", "Relu"} == set(result["by_op"])
    if result["total_node_ms"]:  # both nodes listed: their shares make the whole
        assert sum(row["share"] for row in result["layers"]) == pytest.approx(1.0)
    provenance = Provenance(**result["provenance"])  # the manifest's one shape
    assert provenance.kind == "measured" and "this host" in provenance.device and "3 runs" in provenance.detail

