"""ONNX Runtime static int8 quantization (QDQ, the `quantize_int8_qdq` pass): a tiny task graph quantized on real
samples stays close to float; the pass without data is skipped, saying why."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgemtl.data import load_data
from edgemtl.errors import EdgemtlError
from edgemtl.model import ort_session
from edgemtl.model.onnx_export import export_task
from edgemtl.passes.base import PassInput
from edgemtl.passes.quantize_int8_qdq import (OrtQuantConfig, QdqConfig, SampleReader, last_compute_nodes, quantize_qdq,
                                              run)

from conftest import tiny_model


@pytest.fixture(scope="module")
def depth_graph(tmp_path_factory):
    model, spec = tiny_model("mtl-cnn")
    folder = tmp_path_factory.mktemp("ortq")
    path = export_task(model, spec, "depth", folder / "depth.onnx")
    data = load_data("scenes", "train", n=32)
    return path, data.normalise(data.images)


def _outputs(path, images):
    return ort_session.run(ort_session.make_session(path, 1), images)["depth"]


def test_quantize_qdq_gives_a_qdq_graph_close_to_float(depth_graph, tmp_path):
    path, samples = depth_graph
    result = quantize_qdq(path, tmp_path / "depth.int8.onnx", samples, OrtQuantConfig(calibration_samples=16))
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "QLinearConv" not in ops  # QDQ, not QOperator
    assert result.samples == 16 and result.quantized_nodes > 0 and result.excluded_nodes == []
    record = result.to_dict()
    assert record["format"] == "QDQ" and record["weights"] == "int8 symmetric, per output channel"
    reference, got = _outputs(path, samples[16:]), _outputs(result.path, samples[16:])
    relative_rms = np.sqrt(np.mean((got - reference) ** 2)) / np.sqrt(np.mean(reference ** 2))
    assert relative_rms < 0.1, relative_rms


def test_excluding_the_last_layer_keeps_it_float(depth_graph, tmp_path):
    path, samples = depth_graph
    last = last_compute_nodes(onnx.load(str(path)), 1)
    assert len(last) == 1 and last[0].endswith("Conv")
    result = quantize_qdq(path, tmp_path / "q.onnx", samples, OrtQuantConfig(calibration_samples=8, exclude_last=1,
                                                                             method="percentile", percentile=99.9))
    assert len(result.excluded_nodes) == 1 and "last layer float" in result.config.describe()
    graph = onnx.load(str(result.path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    (last_conv,) = [n for n in graph.node if n.name == result.excluded_nodes[0]]
    assert last_conv.input[1] not in producer  # its weights stay a float initializer, no DequantizeLinear
    assert any(n.op_type == "Conv" and n.input[1] in producer for n in graph.node)  # the other Convs are int8


def test_calibration_reader_batches_and_rewinds():
    reader = SampleReader(np.zeros((5, 3, 8, 8), np.float32), batch_size=2)
    sizes = [len(b["input"]) for b in iter(reader.get_next, None)]
    assert sizes == [2, 2, 1]
    reader.rewind()
    assert len(reader.get_next()["input"]) == 2


@pytest.mark.parametrize("kwargs", [{"method": "kl"}, {"method": "entropy"}, {"activations": "int4"}, {"calibration_samples": 0},
                                    {"percentile": 10.0}])
def test_bad_configs_are_one_line_errors(kwargs):
    with pytest.raises(EdgemtlError):
        OrtQuantConfig(**kwargs)


def test_a_graph_onnxruntime_cannot_read_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(EdgemtlError, match=r"int8 pre-processing of bad.onnx failed"):
        quantize_qdq(bad, tmp_path / "out.onnx", np.zeros((2, 3, 8, 8), np.float32))


# The bound: int8 output error, as RMS relative to the float output's RMS, at most 10%: the same number the CNN
# path's test uses, not a tolerance the flow itself writes; and the int8 graph picks the float graph's class on at
# least 90% of held-out samples.
RELATIVE_RMS_BOUND = 0.10
ARGMAX_AGREEMENT = 0.90


def test_a_transformer_graph_in_int8_stays_close_to_pytorch_float_and_is_repeatable(tmp_path):
    model, spec = tiny_model("m3vit")
    path = export_task(model, spec, "scene", tmp_path / "scene.onnx")
    calibration = load_data("scenes", "train", n=8)
    result = quantize_qdq(path, tmp_path / "scene.int8.onnx", calibration.normalise(calibration.images),
                          OrtQuantConfig(calibration_samples=8))
    # ONNX Runtime 1.31 fails per-channel on MatMul + bias; the fallback says so (or, once fixed, none is needed)
    assert result.per_channel or result.per_channel_fallback.startswith("per-channel weights failed")

    held_out = load_data("scenes", "val", n=32)
    images = held_out.normalise(held_out.images)
    with torch.no_grad():
        reference = model(torch.from_numpy(images), task="scene")["scene"].numpy().astype(np.float64)
    got = ort_session.run(ort_session.make_session(result.path, 1), images)["scene"].astype(np.float64)
    assert got.shape == reference.shape == (32, *spec.task("scene").output_shape)
    relative_rms = np.sqrt(np.mean((got - reference) ** 2)) / np.sqrt(np.mean(reference ** 2))
    assert relative_rms < RELATIVE_RMS_BOUND, relative_rms
    assert (got.argmax(axis=1) == reference.argmax(axis=1)).mean() >= ARGMAX_AGREEMENT
    assert relative_rms > 1e-4  # the int8 graph is not plain float: its error is well above float32 rounding
    # a second, fresh session on the same samples gives the same numbers bit for bit
    again = ort_session.run(ort_session.make_session(result.path, 1), images)["scene"].astype(np.float64)
    assert np.array_equal(again, got)


def test_a_failed_symbolic_shape_inference_leaves_nothing_in_the_working_folder(depth_graph, tmp_path, monkeypatch):
    """ONNX Runtime's symbolic shape inference, when it cannot infer every shape (CenterFace), saves
    `sym_shape_infer_temp.onnx` and its external data into the current folder: none of it may land there."""
    from onnxruntime.tools import symbolic_shape_infer

    original = symbolic_shape_infer.SymbolicShapeInference.infer_shapes

    def leaves_temp_files(model, *args, **kwargs):
        saved = onnx.ModelProto()
        saved.CopyFrom(model)
        onnx.save_model(saved, "sym_shape_infer_temp.onnx", save_as_external_data=True)  # what ORT does on failure
        return original(model, *args, **kwargs)

    monkeypatch.setattr(symbolic_shape_infer.SymbolicShapeInference, "infer_shapes", staticmethod(leaves_temp_files))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path, samples = depth_graph
    quantize_qdq(path, tmp_path / "depth.int8.onnx", samples, OrtQuantConfig(calibration_samples=4))
    assert sorted(p.name for p in work.iterdir()) == []


def test_the_pass_without_data_is_skipped_and_says_why():
    model, spec = tiny_model("mtl-cnn")
    result = run(PassInput(model, spec, ["depth"]), QdqConfig())
    assert result.skipped.startswith("int8 calibration needs real images: pass --data") and result.paths == {}
    with pytest.raises(EdgemtlError, match="at least one remedy"):
        QdqConfig(remedies=())
