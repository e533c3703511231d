"""Every task path and the all-task graph export to ONNX and agree with PyTorch in ONNX Runtime."""

import numpy as np
import onnx
import pytest
import torch

from conftest import tiny_model
from custom_models import unet_two_heads
from edgemtl.backends import onnxruntime as ort_backend
from edgemtl.model.onnx_export import export_all_tasks, export_task
from edgemtl.model.contract import run_task
from edgemtl.model.spec import ModelSpec


def _check_graph(path, model, x, tasks):
    got = ort_backend.run(ort_backend.make_session(path, threads=1), x.numpy())
    assert list(got) == tasks
    with torch.no_grad():
        for task in tasks:
            np.testing.assert_allclose(got[task], run_task(model, x, task).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["mtl-cnn", "m3vit"])
def test_task_paths_and_all_tasks_match_pytorch(tmp_path, arch):
    model, spec = tiny_model(arch)
    x = torch.randn(3, *spec.input.shape)  # a batch size other than the traced one
    sizes = {}
    for task in spec.task_names:
        path = export_task(model, spec, task, tmp_path / f"{task}.onnx")
        _check_graph(path, model, x, [task])
        sizes[task] = sum(np.prod(t.dims) for t in onnx.load(path).graph.initializer)
    path = export_all_tasks(model, spec, spec.task_names, tmp_path / "all.onnx")
    _check_graph(path, model, x, spec.task_names)
    everything = sum(np.prod(t.dims) for t in onnx.load(path).graph.initializer)
    assert max(sizes.values()) < everything  # a task graph carries only its own head


def test_model_without_task_keyword_exports_only_that_head(tmp_path):
    model = unet_two_heads().eval()
    spec = ModelSpec.model_validate({"input": {"shape": [3, 32, 32]}, "tasks": [
        {"name": "seg", "kind": "segmentation", "output_shape": [3, 32, 32]},
        {"name": "depth", "kind": "depth", "output_shape": [1, 32, 32]}]})
    path = export_task(model, spec, "depth", tmp_path / "depth.onnx")
    _check_graph(path, model, torch.randn(2, 3, 32, 32), ["depth"])
    names = {t.name for t in onnx.load(path).graph.initializer}
    assert not any("seg" in n for n in names)



def test_moe_routing_stays_dynamic_in_the_exported_graph(tmp_path):
    """Tracing must not freeze the trace inputs' routing: the graph routes by NonZero at run time, so
    inputs whose tokens pick other experts than the trace's still match PyTorch."""
    model, spec = tiny_model("m3vit")
    path = export_task(model, spec, "depth", tmp_path / "depth.onnx")
    assert "NonZero" in {node.op_type for node in onnx.load(path).graph.node}
    layer, x = model.moe_layers()[0], torch.randn(2, *spec.input.shape) * 3
    routed = []

    def record(module, args):  # returns None: the forward's arguments stay as they are
        routed.append(module.gates(*args)[1] > 0)

    layer.register_forward_pre_hook(record)
    with torch.no_grad():
        run_task(model, x, "depth")
        run_task(model, torch.randn(2, *spec.input.shape), "depth")
    assert not torch.equal(routed[0], routed[1])  # the two inputs really route differently
    _check_graph(path, model, x, ["depth"])
