"""Deeploy: the integer ONNX export (format; its values under onnxruntime and onnx.reference against the IntGraph
reference; the checks that refuse an inexact export; unmapped layers) runs everywhere; code generation with GAP9's
L1 / L2 needs `.venv-deeploy`. Deeploy's generated C is run only where Deeploy's Generic kernel sources are on disk
(EDGEMTL_DEEPLOY_GENERIC_KERNELS): deeploy-pulp on PyPI ships none."""

from __future__ import annotations

import json
import stat
import subprocess

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgemtl.backends.deeploy import (GENERIC_KERNELS_ENV, WORKER, deeploy_generate, deeploy_python,
                                      generic_kernels_dir, generic_record, run_generic_on_host, tile_summary)
from edgemtl.backends.deeploy_onnx import (RQS_DOMAIN, evaluate_standard, export_deeploy_onnx, read_deeploy_metadata,
                                           standard_onnx)
from edgemtl.backends.deeploy_split import describe_split, mappable_prefix
from edgemtl.errors import EdgemtlError
from edgemtl.model.intgraph import IntGraph, Node, TensorInfo, run_reference

L1, L2 = 128_000, 1_500_000  # GAP9's cluster L1 and L2 (targets/gap9.toml)


def tiny_graph(seed: int = 0, k: int = 8, classes: int = 4) -> IntGraph:
    """conv (uint8 out) -> conv (int8) -> residual add -> global average pool -> gemm, random int8 weights."""
    rng = np.random.default_rng(seed)
    shapes = {"x": ([3, 8, 8], "int8"), "c1": ([k, 8, 8], "uint8"), "c2": ([k, 8, 8], "int8"),
              "s": ([k, 8, 8], "int8"), "p": ([k], "int8"), "y": ([classes], "int8")}
    tensors = {name: TensorInfo(name, shape, dtype, 0.05) for name, (shape, dtype) in shapes.items()}

    def folded(out: int) -> dict:
        mul = rng.integers(1, 200, out).astype(np.int32)
        return {"mul": mul, "add": (rng.integers(-50, 50, out) * mul).astype(np.int32)}

    conv = {"stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 1}
    nodes = [
        Node("trunk.conv1", "conv", ["x"], "c1", {**conv, "shift": 16},
             {"weight": rng.integers(-127, 128, (k, 3, 3, 3)).astype(np.int8), **folded(k)}),
        Node("trunk.conv2", "conv", ["c1"], "c2", {**conv, "shift": 17},
             {"weight": rng.integers(-127, 128, (k, k, 3, 3)).astype(np.int8), **folded(k)}),
        Node("trunk.res", "add", ["c1", "c2"], "s", {"mul_a": 3, "mul_b": 2, "shift": 2},
             {"mul": np.ones(k, np.int32), "add": np.zeros(k, np.int32)}),
        Node("head.pool", "avgpool_global", ["s"], "p", {"shift": 12},
             {"mul": np.full(k, 64, np.int32), "add": np.zeros(k, np.int32)}),
        Node("head.fc", "gemm", ["p"], "y", {"shift": 14},
             {"weight": rng.integers(-127, 128, (classes, k)).astype(np.int8), **folded(classes)}),
    ]
    return IntGraph("scene", "x", "y", tensors, nodes)


def landmarks_graph(seed: int = 0) -> IntGraph:
    """tiny_graph whose 10 outputs are reshaped to a (5, 2) sample, as a landmark head's are."""
    graph = tiny_graph(seed, classes=10)
    graph.tensors["xy"] = TensorInfo("xy", [5, 2], "int8", 0.05)
    graph.nodes.append(Node("head.reshape", "flatten", ["y"], "xy", {"shape": [5, 2]}))
    graph.output = "xy"
    return graph


def branchy_graph(seed: int = 2) -> IntGraph:
    """conv -> maxpool and a strided conv, concatenated, a lone per-channel requant (uint8), a per-channel add of
    unscaled inputs, global pool, gemm: the other ops PULPOpen maps."""
    rng = np.random.default_rng(seed)
    tensors = {n: TensorInfo(n, s, d, 0.1) for n, s, d in [
        ("x", [4, 8, 8], "int8"), ("a", [8, 8, 8], "int8"), ("m", [8, 4, 4], "int8"), ("b", [8, 4, 4], "int8"),
        ("c", [16, 4, 4], "int8"), ("r", [16, 4, 4], "uint8"), ("s", [16, 4, 4], "int8"), ("p", [16], "int8"),
        ("y", [16], "int8")]}

    def folded(out: int) -> dict:
        mul = rng.integers(1, 100, out).astype(np.int32)
        return {"mul": mul, "add": (rng.integers(-9, 9, out) * mul).astype(np.int32)}

    def conv(name: str, stride: int, out: str) -> Node:
        return Node(name, "conv", ["x"], out, {"stride": [stride] * 2, "pads": [1, 1, 1, 1], "groups": 1, "shift": 12},
                    {"weight": rng.integers(-127, 128, (8, 4, 3, 3)).astype(np.int8), **folded(8)})

    nodes = [
        conv("a.conv", 1, "a"),
        Node("a.pool", "maxpool", ["a"], "m", {"kernel": [2, 2], "stride": [2, 2], "pads": [0, 0, 0, 0]}),
        conv("b.conv", 2, "b"),
        Node("cat", "concat", ["m", "b"], "c"),
        Node("rq", "requant", ["c"], "r", {"shift": 6},
             {"mul": rng.integers(1, 100, 16).astype(np.int32), "add": rng.integers(-99, 99, 16).astype(np.int32)}),
        Node("res", "add", ["r", "c"], "s", {"mul_a": 1, "mul_b": 1, "shift": 1},
             {"mul": np.ones(16, np.int32), "add": rng.integers(-3, 3, 16).astype(np.int32)}),
        Node("pool", "avgpool_global", ["s"], "p", {"shift": 8},
             {"mul": np.full(16, 16, np.int32), "add": np.zeros(16, np.int32)}),
        Node("fc", "gemm", ["p"], "y", {"shift": 10},
             {"weight": rng.integers(-127, 128, (16, 16)).astype(np.int8), **folded(16)}),
    ]
    return IntGraph("branchy", "x", "y", tensors, nodes)


def _nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def _attr(node: onnx.NodeProto, key: str) -> np.ndarray:
    return numpy_helper.to_array(next(a.t for a in node.attribute if a.name == key))


# ---- format --------------------------------------------------------------------------------------------------

def test_every_tensor_has_a_shape_and_requantshift_follows_deeploy(tmp_path):
    graph = tiny_graph()
    out = export_deeploy_onnx(graph, tmp_path / "net.onnx")
    model = onnx.load(str(out.path))
    assert out.unmapped == [] and out.input_dtype == "int8"

    declared = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    produced = {o for n in model.graph.node for o in n.output}
    assert produced | {graph.input} <= set(declared)
    assert declared["x"] == [1, 3, 8, 8] and declared["y"] == [1, 4] and declared["p"] == [1, 8]
    assert all(all(d > 0 for d in shape) for shape in declared.values())

    rqs = _nodes(model, "RequantShift")
    assert rqs and all(n.domain == RQS_DOMAIN and len(n.input) == 3 for n in rqs)
    assert all({a.name for a in n.attribute} == {"div", "n_levels_out", "signed", "channels_first"} for n in rqs)
    # Deeploy reads `.values` of these; channels_first=1: a lone RequantShift sees an NCHW tensor
    assert all(a.type == onnx.AttributeProto.TENSOR for n in rqs for a in n.attribute if a.name != "channels_first")
    assert all(a.i == 1 for n in rqs for a in n.attribute if a.name == "channels_first")
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert all(v.dtype == np.float32 and np.all(v == np.round(v)) for v in init.values())

    conv1 = next(n for n in rqs if n.output[0] == "c1")
    assert int(_attr(conv1, "div")) == 2**16 and int(_attr(conv1, "signed")) == 0  # c1 is uint8 (a ReLU)
    assert int(_attr(conv1, "n_levels_out")) == 256
    # Deeploy adds the rounding term 2^(d-1) itself: `add` is the IntGraph's, unchanged
    np.testing.assert_array_equal(init[conv1.input[2]], graph.nodes[0].params["add"])
    np.testing.assert_array_equal(init[conv1.input[1]], graph.nodes[0].params["mul"])

    gemm = _nodes(model, "Gemm")[0]
    assert next(a.i for a in gemm.attribute if a.name == "transB") == 1
    # written out as floats: Deeploy's Generic GEMM parser (and so its own test runner) fails without them
    assert {a.name: (a.type, a.f) for a in gemm.attribute if a.name in ("alpha", "beta")} == {
        "alpha": (onnx.AttributeProto.FLOAT, 1.0), "beta": (onnx.AttributeProto.FLOAT, 1.0)}
    pool = [n for n in _nodes(model, "Conv") if next(a.i for a in n.attribute if a.name == "group") == 8][0]
    assert list(init[pool.input[1]].shape) == [8, 1, 8, 8] and np.all(init[pool.input[1]] == 1)
    add = _nodes(model, "Add")[0]  # RequantShift(mul_a) and RequantShift(mul_b) feed it: fused to RequantizedAdd
    scales = {n.output[0]: float(init[n.input[1]][0]) for n in rqs if n.output[0] in add.input}
    assert sorted(scales.values()) == [2.0, 3.0]

    meta = read_deeploy_metadata(out.path)
    assert meta["input_dtype"] == "int8" and meta["unmapped"] == []
    assert meta["layer_outputs"]["head.fc"] == "y" and meta["node_layers"][gemm.name] == "head.fc"
    onnx.checker.check_model(model)


def _independent(path, x: np.ndarray, semantics: str = "pulpopen") -> list[np.ndarray]:
    """The exported ONNX evaluated by onnxruntime and by onnx.reference (neither is edgemtl's executor) on its
    standard-op form; the two must agree exactly before either is compared with anything."""
    model = standard_onnx(path, semantics)
    by_ort, by_reference = evaluate_standard(model, x, "onnxruntime"), evaluate_standard(model, x, "onnx.reference")
    assert len(by_ort) == len(by_reference)
    assert all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(by_ort, by_reference))
    return by_ort


def _bit_exact(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {want.size} values differ"


@pytest.mark.parametrize("build", [tiny_graph, branchy_graph, landmarks_graph])
def test_exported_onnx_under_onnxruntime_and_onnx_reference_equals_the_reference(tmp_path, build):
    """What this checks: the integer ONNX handed to Deeploy, read with the arithmetic of Deeploy's PULPOpen kernels
    and evaluated by two evaluators that are not ours, equals run_reference bit for bit. Not Deeploy's C."""
    graph = build(seed=3)
    path = export_deeploy_onnx(graph, tmp_path / "net.onnx").path
    x = np.random.default_rng(7).integers(-128, 128, (16, *graph.tensors["x"].shape))
    x[0], x[1] = -128, 127  # the input's extremes too
    (got,) = _independent(path, x)
    _bit_exact(got, run_reference(graph, x)[graph.output])


def test_the_independent_evaluation_sees_a_wrong_export(tmp_path):
    """The check is not vacuous: one channel's mul doubled in the file, or a conv weight negated, is seen."""
    graph = tiny_graph(seed=3)
    path = export_deeploy_onnx(graph, tmp_path / "net.onnx").path
    x = np.random.default_rng(7).integers(-128, 128, (16, 3, 8, 8))
    want = run_reference(graph, x)["y"]
    for name, change in (("head_fc_rqs_mul", lambda a: a * (1 + (np.arange(a.size) == 1))),
                         ("trunk_conv1_weight", lambda a: -a)):
        model = onnx.load(str(path))
        tensor = next(t for t in model.graph.initializer if t.name == name)
        tensor.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(tensor)).astype(np.float32), name))
        onnx.save(model, str(tmp_path / "wrong.onnx"))
        (got,) = _independent(tmp_path / "wrong.onnx", x)
        assert not np.array_equal(got, want), name


def test_generic_arithmetic_differs_from_the_reference_on_a_scaled_add(tmp_path):
    """Deeploy's Generic platform (deeploy-pulp 0.2.1) does not fuse RequantShift -> Add into RequantizedAdd, so
    it clips the add's scaled inputs (3 * c1, 2 * c2) to int8: its code cannot equal the reference on
    tiny_graph's residual add, while an add of unscaled inputs (branchy_graph) stays exact. This is what the
    manifest's `generic_semantics` predicts; compiled once with Deeploy v0.2.1's own Generic kernels it gave
    exactly these integers (test_generic_c_with_deeploys_kernels runs that where the kernels are on disk)."""
    x = np.random.default_rng(7).integers(-128, 128, (16, 3, 8, 8))
    tiny = export_deeploy_onnx(tiny_graph(seed=3), tmp_path / "tiny.onnx").path
    (generic,) = _independent(tiny, x, "generic")
    assert (generic != run_reference(tiny_graph(seed=3), x)["y"]).sum() > 0
    branchy = export_deeploy_onnx(branchy_graph(seed=3), tmp_path / "branchy.onnx").path
    (generic,) = _independent(branchy, x[:, :1].repeat(4, axis=1), "generic")
    _bit_exact(generic, run_reference(branchy_graph(seed=3), x[:, :1].repeat(4, axis=1))["y"])


def test_standard_form_refuses_a_placeholder_and_unknown_semantics(tmp_path):
    path = export_deeploy_onnx(_unmappable_graph(), tmp_path / "seg.onnx").path
    with pytest.raises(EdgemtlError, match=r"'up'.*resize_nearest.*no standard"):
        standard_onnx(path)
    with pytest.raises(EdgemtlError, match="unknown semantics"):
        standard_onnx(path, "siracusa")


def test_gemm_with_shift_zero_is_written_as_shift_one(tmp_path):
    graph = tiny_graph()
    fc = graph.nodes[-1]
    fc.attrs["shift"] = 0
    fc.params["mul"] = np.ones_like(fc.params["mul"])
    fc.params["add"] = np.arange(4, dtype=np.int32)
    model = onnx.load(str(export_deeploy_onnx(graph, tmp_path / "net.onnx").path))
    rqs = next(n for n in _nodes(model, "RequantShift") if n.output[0] == "y")
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert int(_attr(rqs, "div")) == 2  # Deeploy's Gemm fusion would add 2^-1 to `add` for a shift of 0
    np.testing.assert_array_equal(init[rqs.input[1]], 2 * np.ones(4))
    np.testing.assert_array_equal(init[rqs.input[2]], 2 * np.arange(4))
    x = np.random.default_rng(1).integers(-128, 128, (8, 3, 8, 8))
    (got,) = _independent(tmp_path / "net.onnx", x)
    _bit_exact(got, run_reference(graph, x)["y"])


# ---- checks that refuse an inexact export ----------------------------------------------------------------------

def test_constant_beyond_float32_exact_range_names_the_layer(tmp_path):
    graph = tiny_graph()
    conv1 = graph.nodes[0]
    conv1.params["mul"][0], conv1.params["add"][0] = 1, 2**24 + 1  # int32 is fine, float32 would round it
    with pytest.raises(EdgemtlError, match=r"trunk\.conv1.*2\^24"):
        export_deeploy_onnx(graph, tmp_path / "net.onnx")


def test_add_not_a_multiple_of_mul_names_the_layer(tmp_path):
    graph = tiny_graph()
    fc = graph.nodes[-1]
    fc.params["add"][2] = fc.params["mul"][2] * 5 + 1
    with pytest.raises(EdgemtlError, match=r"head\.fc.*not a multiple of mul.*channel 2"):
        export_deeploy_onnx(graph, tmp_path / "net.onnx")


def test_int32_overflow_names_the_layer(tmp_path):
    graph = tiny_graph()
    graph.nodes[1].params["mul"][:] = 2**20
    graph.nodes[1].params["add"][:] = 0
    with pytest.raises(EdgemtlError, match=r"trunk\.conv2.*int32"):
        export_deeploy_onnx(graph, tmp_path / "net.onnx")


# ---- layers PULPOpen cannot map ------------------------------------------------------------------------------

def _unmappable_graph() -> IntGraph:
    rng = np.random.default_rng(0)
    tensors = {n: TensorInfo(n, s, "int8", 0.1) for n, s in
               {"x": [4, 4, 4], "g": [4, 4, 4], "u": [4, 8, 8], "b": [4, 16, 16]}.items()}
    ones = {"mul": np.ones(4, np.int32), "add": np.zeros(4, np.int32)}
    nodes = [
        Node("grouped", "conv", ["x"], "g", {"stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 2, "shift": 4},
             {"weight": rng.integers(-5, 6, (4, 2, 3, 3)).astype(np.int8), **ones}),
        Node("up", "resize_nearest", ["g"], "u", {"factor": 2}),
        Node("up2", "resize_bilinear", ["u"], "b", {"factor": 2, "shift": 4}, dict(ones)),
    ]
    return IntGraph("seg", "x", "b", tensors, nodes)


def test_unmapped_layers_are_listed_not_raised(tmp_path):
    out = export_deeploy_onnx(_unmappable_graph(), tmp_path / "seg.onnx")
    assert [(u.layer, u.op) for u in out.unmapped] == [("grouped", "conv"), ("up", "resize_nearest"),
                                                       ("up2", "resize_bilinear")]
    assert "grouped conv" in out.unmapped[0].reason and "Resize" in out.unmapped[1].reason
    assert not out.mappable
    assert [u["layer"] for u in read_deeploy_metadata(out.path)["unmapped"]] == ["grouped", "up", "up2"]


def test_generate_refuses_unmapped_layers_without_running_deeploy(tmp_path):
    venv = tmp_path / "venv"
    (venv / "lib/python3.11/site-packages/Deeploy/Targets/PULPOpen").mkdir(parents=True)
    (venv / "lib/python3.11/site-packages/Deeploy/Targets/PULPOpen/Platform.py").write_text("")
    python = venv / "bin" / "python"
    python.parent.mkdir()
    python.write_text("#!/bin/bash\necho must not run >&2\nexit 7\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    path = export_deeploy_onnx(_unmappable_graph(), tmp_path / "seg.onnx").path
    out = deeploy_generate(path, tmp_path / "gen", L1, L2, 30, venv=venv)
    assert out["available"] and out["ok"] is False
    assert [u["layer"] for u in out["unmapped"]] == ["grouped", "up", "up2"]
    assert "3 layer(s)" in out["reason"] and "up2 (resize_bilinear)" in out["reason"]
    # Generic was not run either (Deeploy never started), and says so
    assert out["generic"]["ran"] is False and out["generic"]["ok"] is False
    assert out["generic"]["reason"].startswith("not run: Deeploy was not started")


def test_absent_venv_says_how_to_create_it(tmp_path):
    path = export_deeploy_onnx(tiny_graph(), tmp_path / "net.onnx").path
    out = deeploy_generate(path, tmp_path / "gen", L1, L2, 30, venv=tmp_path / "nope")
    assert out["available"] is False and out["how_to_create"] == "edgemtl toolchain install deeploy"
    assert out["reason"].startswith("Deeploy venv missing: run `edgemtl toolchain install deeploy`")
    assert deeploy_python(tmp_path / "nope") is None
    assert out["generic"]["ran"] is False and "edgemtl toolchain install deeploy" in out["generic"]["reason"]


def test_tile_summary_counts_tiles_per_level():
    layers = [{"tile_counts": {"L1": 4}}, {"tile_counts": {"L1": 1, "L2": 3}}, {"tile_counts": {}}, {}]
    assert tile_summary(layers) == {"L1": {"layers": 2, "tiles": 5, "max_tiles": 4, "layers_with_several": 1},
                                    "L2": {"layers": 1, "tiles": 3, "max_tiles": 3, "layers_with_several": 1}}


# ---- the real thing ------------------------------------------------------------------------------------------

without_deeploy = pytest.mark.skipif(deeploy_python() is None, reason="no .venv-deeploy: run `edgemtl toolchain install deeploy`")


@pytest.mark.needs_deeploy
@without_deeploy
def test_generates_tiled_code_within_gap9_l1_and_l2(tmp_path):
    path = export_deeploy_onnx(tiny_graph(), tmp_path / "net.onnx").path
    out = deeploy_generate(path, tmp_path / "gen", L1, L2, 300)
    assert out["ok"], out.get("reason")
    assert {"Network.c", "Network.h"} <= set(out["files"])
    code = (tmp_path / "gen" / "Network.c").read_text()
    assert "pulp_nn_conv" in code and "pulp_nn_add" in code and "pulp_nn_linear" in code
    memory = out["memory"]
    assert memory["L1"]["capacity"] == L1 and memory["L2"]["capacity"] == L2
    assert 0 < memory["L1"]["total"] <= L1 and 0 < memory["L2"]["total"] <= L2 and all(out["fits"].values())
    weights = sum(a.size for n in tiny_graph().nodes for k, a in n.params.items() if k == "weight")
    assert memory["L2"]["static"] >= weights  # every constant lives in L2; tiles move through L1
    by_layer = {layer for entry in out["layers"] for layer in entry["edgemtl_layers"]}
    assert by_layer == {"trunk.conv1", "trunk.conv2", "trunk.res", "head.pool", "head.fc"}
    conv1 = next(e for e in out["layers"] if e["edgemtl_layers"] == ["trunk.conv1"] and e["op"] == "RequantizedConv")
    assert any(t.get("L1", {}).get("buffers") == 2 for t in conv1["tiles"].values())  # double-buffered in L1
    # an 8x8 network fits L1 whole: one tile per layer, from the tiling solution's numTiles tables
    assert conv1["tile_counts"] == {"L1": 1}
    assert out["tile_summary"]["L1"]["max_tiles"] == 1 and "L2" not in out["tile_summary"]
    # Deeploy's Generic platform took the same ONNX, untiled, into gen/generic
    generic = out["generic"]
    assert generic["ok"] and generic["ran"] and generic["reason"] is None and generic["rejected"] == []
    assert set(generic["files"]) == {"generic/Network.h", "generic/Network.c"} and generic["seconds"] > 0
    generic_code = (tmp_path / "gen" / "generic" / "Network.c").read_text()
    assert "Conv2d_s8_s8_s32_NCHW" in generic_code and "Gemm_s8_s8_s32_s32" in generic_code
    assert "pulp_nn" not in generic_code and "whole_graph" not in generic
    # nothing claims Deeploy's numbers were checked: its C was not run
    assert out["numerics_checked"] is False and "TargetLibraries" in out["numerics_reason"]
    assert generic["numerics_checked"] is False and "no C kernel library" in generic["numerics_reason"]


@pytest.mark.needs_deeploy
@without_deeploy
def test_tile_counts_follow_the_tiling_solution_when_l1_is_small(tmp_path):
    """A 32x32 convolution pair at an L1 of 16 kB needs several L1 tiles per layer; each count is the numTiles
    table the generated loop runs."""
    rng = np.random.default_rng(3)
    tensors = {n: TensorInfo(n, s, d, 0.1) for n, s, d in [("x", [8, 32, 32], "int8"), ("a", [16, 32, 32], "uint8"),
                                                           ("y", [16, 32, 32], "int8")]}

    def conv(name: str, x: str, out: str, c: int) -> Node:
        mul = rng.integers(1, 50, 16).astype(np.int32)
        return Node(name, "conv", [x], out, {"stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 1, "shift": 12},
                    {"weight": rng.integers(-127, 128, (16, c, 3, 3)).astype(np.int8), "mul": mul,
                     "add": np.zeros(16, np.int32)})

    graph = IntGraph("big", "x", "y", tensors, [conv("c1", "x", "a", 8), conv("c2", "a", "y", 16)])
    path = export_deeploy_onnx(graph, tmp_path / "big.onnx").path
    out = deeploy_generate(path, tmp_path / "gen", 16_000, L2, 300, generic=False)
    assert out["ok"], out.get("reason")
    assert "generic" not in out
    code = (tmp_path / "gen" / "Network.c").read_text()
    convs = [e for e in out["layers"] if e["op"] == "RequantizedConv"]
    assert len(convs) == 2
    for entry in convs:
        tiles = entry["tile_counts"]["L1"]
        assert tiles > 1
        assert f"TILING_CODEGEN_L1_{entry['name']}_numTiles[2] = {{0, {tiles}}}" in code
    assert out["tile_summary"]["L1"]["layers_with_several"] >= 2


@pytest.mark.needs_deeploy
@without_deeploy
def test_maxpool_concat_requant_and_plain_add_map_too(tmp_path):
    path = export_deeploy_onnx(branchy_graph(), tmp_path / "net.onnx").path
    out = deeploy_generate(path, tmp_path / "gen", L1, L2, 300)
    assert out["ok"], out.get("reason")
    ops = {layer: entry["op"] for entry in out["layers"] for layer in entry["edgemtl_layers"]
           if entry["op"] != "Transpose"}
    assert ops["a.pool"] == "MaxPool" and ops["cat"] == "Concat" and ops["rq"] == "RequantShift"
    code = (tmp_path / "gen" / "Network.c").read_text()
    # lone RequantShifts see NCHW tensors: per-channel mul / add must be indexed channels-first
    assert "RequantShift_s8_u8_NCHW" in code and "_NHWC(" not in code
    assert out["memory"]["L1"]["total"] <= L1 and out["memory"]["L2"]["total"] <= L2


@pytest.mark.needs_deeploy
@without_deeploy
def test_fully_connected_layer_too_wide_for_l1_is_reported(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"x": TensorInfo("x", [8192], "int8", 0.1), "y": TensorInfo("y", [32], "int8", 0.1)}
    fc = Node("head.fc", "gemm", ["x"], "y", {"shift": 10},
              {"weight": rng.integers(-3, 4, (32, 8192)).astype(np.int8), "mul": np.full(32, 3, np.int32),
               "add": np.zeros(32, np.int32)})
    path = export_deeploy_onnx(IntGraph("wide", "x", "y", tensors, [fc]), tmp_path / "wide.onnx").path
    out = deeploy_generate(path, tmp_path / "gen", L1, L2, 300)
    assert out["ok"] is False and out["stage"] == "tiling" and "infeasible" in out["reason"]
    assert out["hints"] and "head.fc" in out["hints"][0] and "262,144" in out["hints"][0]


# ---- the mappable prefix of a task Deeploy cannot take whole -------------------------------------------------

def dense_head_graph(seed: int = 4, skip: bool = False) -> IntGraph:
    """conv -> conv -> bilinear resize x2 -> conv, like a dense head; with `skip`, the resize is concatenated with
    the first conv's output (an encoder skip feature) before the last conv, and a requant nobody reads hangs off
    the second conv."""
    rng = np.random.default_rng(seed)
    shapes = {"x": ([3, 8, 8], "int8"), "c1": ([8, 8, 8], "uint8"), "c2": ([8, 4, 4], "uint8"),
              "u": ([8, 8, 8], "uint8"), "cat": ([16, 8, 8], "uint8"), "dead": ([8, 4, 4], "int8"),
              "y": ([2, 8, 8], "int8")}
    tensors = {name: TensorInfo(name, shape, dtype, 0.05) for name, (shape, dtype) in shapes.items()}

    def conv(name: str, x: str, out: str, c: int, k: int, stride: int) -> Node:
        mul = rng.integers(1, 200, k).astype(np.int32)
        return Node(name, "conv", [x], out, {"stride": [stride] * 2, "pads": [1, 1, 1, 1], "groups": 1, "shift": 14},
                    {"weight": rng.integers(-127, 128, (k, c, 3, 3)).astype(np.int8), "mul": mul,
                     "add": (rng.integers(-50, 50, k) * mul).astype(np.int32)})

    resize = Node("head.up", "resize_bilinear", ["c2"], "u", {"factor": 2, "shift": 4},
                  {"mul": np.ones(8, np.int32), "add": np.zeros(8, np.int32)})
    nodes = [conv("enc.conv1", "x", "c1", 3, 8, 1), conv("enc.conv2", "c1", "c2", 8, 8, 2), resize]
    if skip:
        nodes += [Node("head.cat", "concat", ["u", "c1"], "cat"),
                  Node("enc.dead", "requant", ["c2"], "dead", {"shift": 1},
                       {"mul": np.ones(8, np.int32), "add": np.zeros(8, np.int32)}),
                  conv("head.fuse", "cat", "y", 16, 2, 1)]
    else:
        nodes += [conv("head.fuse", "u", "y", 8, 2, 1)]
    return IntGraph("seg", "x", "y", tensors, nodes)


def test_prefix_stops_before_the_resize():
    graph = dense_head_graph()
    prefix, outputs = mappable_prefix(graph)
    assert [n.name for n in prefix.nodes] == ["enc.conv1", "enc.conv2"]
    assert outputs == ["c2"] and prefix.output == "c2" and prefix.input == "x"
    assert set(prefix.tensors) == {"x", "c1", "c2"}
    split = describe_split(graph, prefix, outputs)
    assert split.layers_elsewhere == ["head.up", "head.fuse"]
    macs = {"enc.conv1": 8 * 8 * 8 * 27, "enc.conv2": 8 * 4 * 4 * 72, "head.fuse": 2 * 8 * 8 * 72}
    assert split.prefix_macs == macs["enc.conv1"] + macs["enc.conv2"] and split.task_macs == sum(macs.values())
    assert split.macs_share == pytest.approx(split.prefix_macs / split.task_macs)
    assert split.outputs == [{"deeploy_name": "output_0", "tensor": "c2", "shape": [8, 4, 4], "dtype": "uint8",
                              "scale": 0.05, "read_by": ["head.up"]}]
    assert [n.name for n in graph.nodes] == ["enc.conv1", "enc.conv2", "head.up", "head.fuse"]  # untouched


def test_prefix_outputs_every_tensor_the_rest_reads_and_drops_dead_layers():
    graph = dense_head_graph(skip=True)
    prefix, outputs = mappable_prefix(graph)
    assert [n.name for n in prefix.nodes] == ["enc.conv1", "enc.conv2"]  # enc.dead feeds nothing
    assert outputs == ["c1", "c2"] and prefix.output == "c2"
    split = describe_split(graph, prefix, outputs)
    assert split.layers_elsewhere == ["head.up", "head.cat", "enc.dead", "head.fuse"]
    assert [(o["deeploy_name"], o["read_by"]) for o in split.outputs] == [("output_0", ["head.cat"]),
                                                                          ("output_1", ["head.up", "enc.dead"])]


def test_whole_graph_is_its_own_prefix():
    graph = tiny_graph()
    prefix, outputs = mappable_prefix(graph)
    assert prefix.nodes == graph.nodes and outputs == ["y"]
    assert describe_split(graph, prefix, outputs).macs_share == 1.0


def test_nothing_mappable_gives_none():
    assert mappable_prefix(_unmappable_graph()) is None  # grouped conv first, then resizes that read it
    graph = dense_head_graph()
    graph.nodes, graph.input = graph.nodes[2:], "c2"  # resize -> conv: the conv depends on the resize
    graph.validate()
    assert mappable_prefix(graph) is None


def test_prefix_export_has_every_output_bit_exact(tmp_path):
    graph = dense_head_graph(skip=True)
    prefix, outputs = mappable_prefix(graph)
    out = export_deeploy_onnx(prefix, tmp_path / "prefix.onnx", outputs)
    assert out.mappable
    model = onnx.load(str(out.path))
    meta = read_deeploy_metadata(out.path)
    onnx_outputs = [o.name for o in model.graph.output]
    assert len(onnx_outputs) == 2 and meta["outputs"] == onnx_outputs and meta["output_dtypes"] == ["uint8", "uint8"]
    # c1 is read inside the prefix too: it leaves through a copy (RequantShift x2, div 2), c2 directly
    assert onnx_outputs[0] != "c1" and onnx_outputs[1] == "c2"
    copy = next(n for n in model.graph.node if n.output[0] == onnx_outputs[0])
    assert copy.op_type == "RequantShift" and copy.input[0] == "c1" and int(_attr(copy, "div")) == 2
    assert meta["tensor_layers"][onnx_outputs[0]] == "enc.conv1"
    x = np.random.default_rng(5).integers(-128, 128, (8, 3, 8, 8))
    reference = run_reference(graph, x, keep_all=True)
    got = _independent(out.path, x)
    assert len(got) == len(outputs) == 2
    for values, tensor in zip(got, outputs):
        _bit_exact(values, reference[tensor])
    with pytest.raises(EdgemtlError, match="outputs"):
        export_deeploy_onnx(prefix, tmp_path / "bad.onnx", ["c1", "u"])


@pytest.mark.needs_deeploy
@without_deeploy
def test_generates_code_for_the_prefix_within_gap9_l1_and_l2(tmp_path):
    graph = dense_head_graph(skip=True)
    prefix, outputs = mappable_prefix(graph)
    path = export_deeploy_onnx(prefix, tmp_path / "prefix.onnx", outputs).path
    out = deeploy_generate(path, tmp_path / "gen", L1, L2, 300)
    assert out["ok"], out.get("reason")
    header = (tmp_path / "gen" / "Network.h").read_text()
    assert "DeeployNetwork_num_outputs = 2" in header
    assert "DeeployNetwork_outputs_bytes[2] = {512, 128}" in header  # c1: 8x8x8, c2: 8x4x4 uint8
    memory = out["memory"]
    assert 0 < memory["L1"]["total"] <= L1 and 0 < memory["L2"]["total"] <= L2 and all(out["fits"].values())
    by_layer = {layer for entry in out["layers"] for layer in entry["edgemtl_layers"]}
    assert by_layer == {"enc.conv1", "enc.conv2"}


@pytest.mark.needs_deeploy
@without_deeploy
def test_generic_takes_the_prefix_and_names_what_it_rejects_in_the_whole_graph(tmp_path):
    graph = dense_head_graph(skip=True)
    prefix, outputs = mappable_prefix(graph)
    path = export_deeploy_onnx(prefix, tmp_path / "prefix.onnx", outputs).path
    whole = export_deeploy_onnx(graph, tmp_path / "whole.onnx").path
    out = deeploy_generate(path, tmp_path / "gen", L1, L2, 300, generic_whole_onnx=whole)
    assert out["ok"], out.get("reason")
    generic = out["generic"]
    assert generic["ok"] and (tmp_path / "gen" / "generic" / "Network.c").is_file()
    whole_graph = generic["whole_graph"]
    assert whole_graph["ok"] is False and whole_graph["ran"] is False and whole_graph["files"] == []
    assert [(r["layer"], r["op"]) for r in whole_graph["rejected"]] == [("head.up", "resize_bilinear")]
    assert "'Resize'" in whole_graph["rejected"][0]["reason"] and "1 node(s)" in whole_graph["reason"]
    assert not (tmp_path / "gen" / "generic" / "whole").exists()


@pytest.mark.needs_deeploy
@without_deeploy
def test_generic_names_a_layer_its_parsers_reject(tmp_path):
    """A grouped conv (2 groups, neither dense nor depthwise): the worker asked directly (deeploy_generate would
    not start Deeploy for a layer PULPOpen lacks) reports both platforms' failures, and Generic's names the layer."""
    graph = IntGraph("grp", "x", "g", {n: TensorInfo(n, [4, 4, 4], "int8", 0.1) for n in ("x", "g")}, [
        Node("grouped", "conv", ["x"], "g", {"stride": [1, 1], "pads": [1, 1, 1, 1], "groups": 2, "shift": 4},
             {"weight": np.ones((4, 2, 3, 3), np.int8), "mul": np.ones(4, np.int32), "add": np.zeros(4, np.int32)})])
    path = export_deeploy_onnx(graph, tmp_path / "grp.onnx").path
    request = {"version": 1, "onnx_path": str(path), "out_dir": str(tmp_path / "gen"), "input_dtype": "int8",
               "l1_bytes": L1, "l2_bytes": L2, "l3_bytes": 64_000_000, "n_cores": 8, "double_buffering": True,
               "seed": 0, "generic": {"enabled": True, "whole_onnx_path": None}}
    (tmp_path / "request.json").write_text(json.dumps(request))
    subprocess.run([str(deeploy_python()), "-P", str(WORKER), str(tmp_path / "request.json"),
                    str(tmp_path / "result.json")], check=True, capture_output=True, timeout=300)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] is False and result["stage"] == "frontend"
    generic = generic_record(result["generic"], read_deeploy_metadata(path), None)
    assert generic["ok"] is False and generic["ran"] and generic["stage"] == "frontend"
    assert [(r["layer"], r["op"]) for r in generic["rejected"]] == [("grouped", "Conv")]
    assert "GenericConv2DParser" in generic["rejected"][0]["reason"]


# ---- Deeploy's own Generic C, where Deeploy's kernel sources are on disk ------------------------------------

def _kernels_or_skip():
    kernels = generic_kernels_dir()
    if kernels is None:
        pytest.skip(f"{GENERIC_KERNELS_ENV} is not set: Deeploy's TargetLibraries/Generic is not on PyPI (set it to a "
                    "Deeploy v0.2.1 checkout's TargetLibraries/Generic)")
    return kernels


@pytest.mark.external  # Deeploy's C kernels are on GitHub only, not on PyPI: never in CI
@pytest.mark.needs_deeploy
@without_deeploy
def test_generic_c_with_deeploys_kernels(tmp_path):
    """Deeploy's Generic Network.c, compiled with Deeploy's own kernels and the host gcc: on an add of unscaled
    inputs and on a prefix with two uint8 outputs it equals the reference bit for bit; on tiny_graph's scaled add
    it gives exactly the integers the Generic-arithmetic prediction gives (and so not the reference's)."""
    kernels = _kernels_or_skip()
    rng = np.random.default_rng(7)
    graph = dense_head_graph(skip=True)
    prefix, outputs = mappable_prefix(graph)
    cases = [(branchy_graph(seed=3), None), (tiny_graph(seed=3), None), (prefix, outputs)]
    for index, (case, outs) in enumerate(cases):
        path = export_deeploy_onnx(case, tmp_path / f"{index}.onnx", outs).path
        out = deeploy_generate(path, tmp_path / f"gen{index}", L1, L2, 300)
        assert out["generic"]["ok"], out["generic"]["reason"]
        x = rng.integers(-128, 128, (8, *case.tensors[case.input].shape))
        got = run_generic_on_host(tmp_path / f"gen{index}" / "generic", x, read_deeploy_metadata(path),
                                  tmp_path / f"build{index}", kernels)
        reference = run_reference(case, x, keep_all=True)
        want = [reference[t] for t in (outs or [case.output])]
        predicted = _independent(path, x, "generic")
        for g, w, p in zip(got, want, predicted):
            _bit_exact(g.reshape(w.shape), p)
            if case.task != "scene":
                _bit_exact(g.reshape(w.shape), w)
            else:
                assert not np.array_equal(g.reshape(w.shape), w)


def test_generic_kernels_folder_is_checked(tmp_path, monkeypatch):
    monkeypatch.delenv(GENERIC_KERNELS_ENV, raising=False)
    assert generic_kernels_dir() is None
    monkeypatch.setenv(GENERIC_KERNELS_ENV, str(tmp_path))
    with pytest.raises(EdgemtlError, match="is not Deeploy's TargetLibraries/Generic"):
        generic_kernels_dir()


# ---- what the gap9 flow records about Deeploy's numbers ------------------------------------------------------

class _Data:
    """Stands in for a data split: `images` already normalised, `normalise` the identity."""

    name, split = "scenes", "val"

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def normalise(self, images: np.ndarray) -> np.ndarray:
        return images


def _ctx(tmp_path, graph: IntGraph, samples: int = 12):
    from types import SimpleNamespace

    from edgemtl.flow import FlowState

    rng = np.random.default_rng(11)
    scale = graph.tensors[graph.input].scale
    images = rng.uniform(-130 * scale, 130 * scale, (samples, *graph.tensors[graph.input].shape))  # real values
    return SimpleNamespace(bundle=tmp_path, state=FlowState(data=_Data(images)), options=SimpleNamespace(c_samples=samples),
                           manifest={"tasks": {graph.task: {"artifacts": {}}}})


def test_flow_records_the_onnx_check_the_test_folder_and_that_deeploys_c_was_not_run(tmp_path, monkeypatch):
    from edgemtl.flows.mcu_gap9 import _deeploy_numerics
    from edgemtl.model.intgraph import quantize_input

    monkeypatch.delenv(GENERIC_KERNELS_ENV, raising=False)
    graph = tiny_graph(seed=3)
    ctx = _ctx(tmp_path, graph)
    path = export_deeploy_onnx(graph, tmp_path / "net.onnx").path
    record = {"scope": "whole", "generic": {"ok": True}}
    _deeploy_numerics(ctx, "scene", graph, path, record)
    assert record["numerics_checked"] is False and "no C kernel library" in record["numerics_reason"]
    generic = record["generic"]
    assert generic["numerics_checked"] is False and GENERIC_KERNELS_ENV in generic["numerics_reason"]
    check = record["onnx_check"]
    assert check["ran"] and check["bit_exact"] and check["samples"] == 12
    assert check["evaluator"].startswith("onnxruntime")
    assert "not Deeploy's code" in check["what"]
    assert check["generic_semantics"]["bit_exact"] is False and check["generic_semantics"]["values_differing"] > 0
    assert check["generic_semantics"]["provenance"]["kind"] == "estimated"
    folder = tmp_path / "tasks/scene/deeploy_test"
    assert ctx.manifest["tasks"]["scene"]["artifacts"]["deeploy_test"] == "tasks/scene/deeploy_test"
    assert (folder / "network.onnx").read_bytes() == path.read_bytes()
    x = np.load(folder / "inputs.npz")["input_0"]
    q = quantize_input(graph, ctx.state.data.images[:1])
    _bit_exact(x, q)
    _bit_exact(np.load(folder / "outputs.npz")["output_0"], run_reference(graph, q)["y"])
    assert ("deeployRunner_generic.py -t $BUNDLE/tasks/scene/deeploy_test --toolchain GCC --toolchain-install-dir"
            in record["numerics_command"]["generic"])
    assert record["numerics_test_folder"]["samples"] == 1 and record["numerics_test_folder"]["runner_rounds_add"] == []


@pytest.mark.external  # Deeploy's C kernels are on GitHub only, not on PyPI: never in CI
@pytest.mark.needs_deeploy
@without_deeploy
def test_flow_runs_deeploys_generic_c_where_its_kernels_are_on_disk(tmp_path):
    """With the kernels, the flow measures Generic's C on the same samples; tiny_graph's scaled add makes it differ
    from the reference in exactly as many values as the prediction says."""
    from edgemtl.flows.mcu_gap9 import _deeploy_numerics

    _kernels_or_skip()
    graph = tiny_graph(seed=3)
    ctx = _ctx(tmp_path, graph)
    path = export_deeploy_onnx(graph, tmp_path / "net.onnx").path
    out = deeploy_generate(path, tmp_path / "tasks/scene/deeploy", L1, L2, 300)
    record = {"scope": "whole", "generic": out["generic"]}
    _deeploy_numerics(ctx, "scene", graph, path, record)
    numerics = record["generic"]["numerics"]
    assert record["generic"]["numerics_checked"] is True and record["numerics_checked"] is False  # PULPOpen: never
    assert numerics["samples"] == 12 and numerics["provenance"]["kind"] == "measured"
    assert numerics["bit_exact"] is False
    assert numerics["values_differing"] == record["onnx_check"]["generic_semantics"]["values_differing"] > 0


def test_flow_fails_on_an_export_the_evaluators_disagree_with(tmp_path):
    from edgemtl.flows.mcu_gap9 import _onnx_check

    graph = tiny_graph(seed=3)
    path = export_deeploy_onnx(graph, tmp_path / "net.onnx").path
    model = onnx.load(str(path))
    tensor = next(t for t in model.graph.initializer if t.name == "trunk_conv2_weight")
    tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), tensor.name))
    onnx.save(model, str(tmp_path / "wrong.onnx"))
    x = np.random.default_rng(2).integers(-128, 128, (6, 3, 8, 8))
    with pytest.raises(EdgemtlError, match=r"task 'scene'.*wrong\.onnx.*differs from the reference executor in \d+ "
                                           r"values under onnx\.reference"):
        _onnx_check("scene", tmp_path / "wrong.onnx", x, [run_reference(graph, x)["y"]])


def test_runner_rounding_is_named_for_a_lone_requant_whose_add_is_not_a_multiple_of_mul(tmp_path):
    from edgemtl.flows.mcu_gap9 import _runner_rounds_add

    path = export_deeploy_onnx(branchy_graph(), tmp_path / "net.onnx").path  # rq: random mul, random add
    assert _runner_rounds_add(path) == ["rq_rqs"]
    assert _runner_rounds_add(export_deeploy_onnx(tiny_graph(), tmp_path / "t.onnx").path) == []


def test_int8_metric_label_names_every_sample_count():
    from edgemtl.flows.mcu_gap9 import _label_int8_metrics

    entry = {"int8": {"ok": True, "metric_int8": {"miou": 0.5}, "metrics_data": "scenes/val, 256 samples"},
             "c": {"host": {"samples": 32, "bit_exact": True}, "qemu": {"samples": 4, "bit_exact": True}}}
    _label_int8_metrics(entry)
    assert entry["int8"]["metric_int8_source"] == (
        "edgemtl's int8 reference executor on scenes/val, 256 samples; the generated C matches it bit for bit on "
        "32 (host gcc) and 4 (qemu rv32) samples")
    entry["c"]["qemu"] = {"skipped": "no qemu"}
    _label_int8_metrics(entry)
    assert entry["int8"]["metric_int8_source"].endswith("bit for bit on 32 (host gcc) samples")
