"""The pass contract: every registered pass has a typed config and returns a PassResult whose record writes a
JSON-ready manifest entry; a compile's pass requests are checked before any work."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import tiny_model

from edgemtl.data import TaskData, load_data
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import Provenance
from edgemtl.model.widths import WidthConfig
from edgemtl.model.zoo import slimmable_spec
from edgemtl.passes.base import PassInput, PassRequest, PassResult
from edgemtl.passes.brevitas_qat.config import QuantConfig
from edgemtl.passes.int8.config import Int8Config
from edgemtl.passes.ort_qdq.config import OrtQuantConfig, QdqConfig
from edgemtl.passes.partition_experts import PartitionConfig
from edgemtl.passes.prune_pagcp import PAGCPConfig
from edgemtl.passes.registry import PASSES, check_request, pass_info
from edgemtl.passes.slice_widths import SliceConfig


class SmallSource:
    """A data source of a few samples per split: the passes' real data path, in seconds."""

    def __init__(self, reference: str) -> None:
        self.reference = reference

    def load(self, split: str, n: int | None = None) -> TaskData:
        return load_data(self.reference, split, n=min(n or 16, 16))


# per registered pass: the zoo model and data it runs on, a quick config, the tasks, and the tasks the held-out split
# labels (pruning keeps every task: the digits' four small ones)
CASES = {
    "prune_pagcp": ("mtl-cnn", "digits", PAGCPConfig(flops_target=0.9, default_max_drop=5.0, finetune_steps=1,
                                           final_finetune_steps=0, batch_size=8, oracle_samples=8, max_rounds=1,
                                           bn_recalibration_samples=8, ratio_step=0.5, max_ratio=0.5, sparsity_steps=0), None, None),
    "slice_widths": ("mtl-cnn", "scenes", SliceConfig(WidthConfig(  # on the model made slimmable (SLIMMABLE)
        encoder={"stage0": 0.5, "stage1": 0.75, "stage2": 0.5},
        decoders={"segmentation": 0.5, "depth": 0.25, "normals": 0.5, "edges": 0.5, "scene": 1.0})), None, None),
    "partition_experts": ("m3vit", "scenes", PartitionConfig(calibration_samples=8), ["depth", "scene"], None),
    "quantize_brevitas": ("mtl-cnn", "scenes", QuantConfig(qat_steps=1, batch_size=8, calibration_samples=8), ["depth"], None),
    "quantize_int8": ("mtl-cnn", "scenes", Int8Config(calibration_samples=8, values_per_tensor=20_000), ["depth", "scene"],
                      ["depth"]),  # "scene" is judged by its agreement with float, as a task without labels
    "quantize_int8_qdq": ("mtl-cnn", "scenes", QdqConfig(remedies=(("default", OrtQuantConfig(calibration_samples=8)),),
                                                         threads=1), ["depth", "scene"], ["depth"]),
}
SLIMMABLE = {"slice_widths"}                   # passes run on the model with its width space (zoo.slimmable_spec)
WHOLE_MODEL = {"prune_pagcp", "slice_widths"}  # passes that return a new model, whose checkpoint joins the bundle


def test_every_registered_pass_has_a_case_here_and_a_frozen_typed_config():
    assert set(CASES) == set(PASSES)
    for name, info in PASSES.items():
        assert info.name == name and info.description and "\n" not in info.description
        assert dataclasses.is_dataclass(info.config) and info.config.__dataclass_params__.frozen
        assert isinstance(CASES[name][2], info.config) and callable(info.config().check)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_pass_returns_a_pass_result_with_a_json_manifest_entry(name, tmp_path):
    arch, data, config, tasks, labelled = CASES[name]
    model, spec = tiny_model(arch, data)
    spec = slimmable_spec(spec) if name in SLIMMABLE else spec
    source = SmallSource(data)
    tasks = tasks or spec.task_names
    inputs = PassInput(model, spec, tasks, source=source, held_out=source.load("val"),
                       labelled=labelled if labelled is not None else tasks, bundle=tmp_path)
    result = PASSES[name].run(inputs, config)
    assert isinstance(result, PassResult) and result.skipped is None
    entry = result.record.to_manifest()
    json.dumps(entry)
    assert all(Provenance.model_validate(value) for key, value in entry.items() if key.endswith("provenance"))
    assert set(result.paths) <= set(tasks)
    if name in WHOLE_MODEL:  # a whole-model pass: a new model and spec, its checkpoint in the bundle
        assert result.model is not model and (tmp_path / entry["artifacts"]["checkpoint"]).is_file()
    else:  # a per-task pass: the model stays, each task gets what the pass built for it
        assert result.model is model and result.spec is spec and set(result.paths) == set(tasks)


def test_a_pass_with_nothing_to_do_returns_a_skip_record():
    model, spec = tiny_model("mtl-cnn")
    result = PASSES["partition_experts"].run(PassInput(model, spec, spec.task_names), PartitionConfig())
    assert "nothing to partition" in result.skipped and result.record.to_manifest() == {"skipped": result.skipped}
    assert result.model is model and result.paths == {}


def test_a_pass_that_needs_data_says_so_in_one_line():
    model, spec = tiny_model("mtl-cnn")
    with pytest.raises(EdgemtlError, match="quantize_int8 .* needs real images: pass --data"):
        PASSES["quantize_int8"].run(PassInput(model, spec, ["depth"]), Int8Config())
    with pytest.raises(TypeError, match="takes a Int8Config"):
        PASSES["quantize_int8"].run(PassInput(model, spec, ["depth"]), PartitionConfig())


def test_pass_requests_are_checked_before_any_work():
    _, spec = tiny_model("mtl-cnn")
    check_request(PassRequest("prune_pagcp", PAGCPConfig()), spec, has_data=True)
    with pytest.raises(EdgemtlError, match="no pass called 'nope' in this edgemtl; available: prune_pagcp, "):
        pass_info("nope")
    with pytest.raises(EdgemtlError, match="pass 'prune_pagcp' takes a PAGCPConfig, not a Int8Config"):
        check_request(PassRequest("prune_pagcp", Int8Config()), spec, has_data=True)
    with pytest.raises(EdgemtlError, match="pruning needs real images for its loss oracle and fine-tuning: pass --data"):
        check_request(PassRequest("prune_pagcp", PAGCPConfig()), spec, has_data=False)
    with pytest.raises(EdgemtlError, match="--max-drop names unknown task"):
        check_request(PassRequest("prune_pagcp", PAGCPConfig(max_drop={"nope": 0.1})), spec, has_data=True)
