"""The operator table agrees with the code it describes, and docs/operators.md is its current output."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgemtl.flows.operators import INT8_OPS, int8_onnx_ops, render_markdown
from edgemtl.backends.c.generate import SUPPORTED_OPS as C_OPS
from edgemtl.backends.deeploy_onnx import UNMAPPED_OPS, unmapped_reason
from edgemtl.model.intgraph import OPS, IntGraph, Node, TensorInfo
from edgemtl.passes.quantize_int8 import SUPPORTED_OPS

DOC = Path(__file__).parents[1] / "docs" / "operators.md"


def test_every_converter_op_has_one_entry_and_every_integer_op_a_kernel() -> None:
    assert int8_onnx_ops() == set(SUPPORTED_OPS)
    lowered = {op for entry in INT8_OPS for op in entry.lowered}
    assert lowered | {"flatten"} == set(OPS) == set(C_OPS)


def test_deeploy_column_matches_the_exporter() -> None:
    graph = IntGraph("t", "x", "y", {"x": TensorInfo("x", [4, 2, 2], "int8", 1.0),
                                     "y": TensorInfo("y", [4, 2, 2], "int8", 1.0)}, [])
    for op in UNMAPPED_OPS:
        assert unmapped_reason(Node("n", op, ["x"], "y", {}, {"mul": np.ones(4, np.int32)}), graph), op


def test_docs_operators_md_is_generated_from_the_registry() -> None:
    assert DOC.read_text() == render_markdown(), "docs/operators.md is stale: run `make docs`"
