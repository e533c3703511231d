"""Per-layer widths as data: what a bundle writes reads back for the same model, and nothing else does."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_model
from edgemtl.errors import EdgemtlError
from edgemtl.passes.layer_bits import compute_layers, read_layer_bits, write_layer_bits


def test_widths_written_for_a_model_read_back_for_it(tmp_path):
    model, spec = tiny_model("mtl-cnn")
    layer = next(iter(compute_layers(model)))
    widths = {"depth": {"precision": "w4a4", "layers": {layer: (8, 8)}}, "scene": {"precision": "w8a8", "layers": {}}}
    write_layer_bits(tmp_path / "bits.json", model, spec, widths)
    assert read_layer_bits(tmp_path / "bits.json", model, spec) == widths


def _edited(tmp_path, model, spec, edit) -> object:
    layer = next(iter(compute_layers(model)))
    write_layer_bits(tmp_path / "bits.json", model, spec, {"depth": {"precision": "w4a4", "layers": {layer: (8, 8)}}})
    data = json.loads((tmp_path / "bits.json").read_text())
    edit(data, layer)
    (tmp_path / "bits.json").write_text(json.dumps(data))
    return tmp_path / "bits.json"


@pytest.mark.parametrize("edit, pattern", [
    (lambda d, layer: d["tasks"].update(colour=d["tasks"]["depth"]), "unknown task 'colour'"),
    (lambda d, layer: d["tasks"]["depth"]["layers"].update({"encoder.nope": [8, 8]}), "unknown layer 'encoder.nope'"),
    (lambda d, layer: d["tasks"]["depth"]["layers"].update({layer: [8, 32]}), "takes \\[weight bits, act bits\\] in 2..16"),
    (lambda d, layer: d["tasks"]["depth"].update(precision="w3a3"), "precision 'w3a3'"),
    (lambda d, layer: d.update(format="other"), "not an edgemtl layer_bits.json"),
])
def test_a_file_naming_what_the_model_lacks_is_refused(tmp_path, edit, pattern):
    model, spec = tiny_model("mtl-cnn")
    with pytest.raises(EdgemtlError, match=pattern):
        read_layer_bits(_edited(tmp_path, model, spec, edit), model, spec)


def test_a_file_for_another_model_is_refused(tmp_path):
    model, spec = tiny_model("mtl-cnn")
    write_layer_bits(tmp_path / "bits.json", model, spec, {"depth": {"precision": "w4a4", "layers": {}}})
    other, other_spec = tiny_model("m3vit")
    with pytest.raises(EdgemtlError, match="written for another model"):
        read_layer_bits(tmp_path / "bits.json", other, other_spec)
    narrower = tiny_model("mtl-cnn")[0]  # same names, one layer with other shapes (a pruned copy)
    conv = next(m for m in narrower.modules() if isinstance(m, torch.nn.Conv2d))
    conv.weight = torch.nn.Parameter(conv.weight[:-1].clone())
    with pytest.raises(EdgemtlError, match="written for another model"):
        read_layer_bits(tmp_path / "bits.json", narrower, spec)
