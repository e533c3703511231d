"""The task-switchable artifact: one graph, task chosen by `task_id`, equal to PyTorch for every task."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import tiny_model
from edgemtl.backends.switchable import export_switchable
from edgemtl.errors import EdgemtlError


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    model, spec = tiny_model("m3vit")
    tasks = list(reversed(spec.task_names))  # ids are positions in `tasks`, not the model's task order
    path = export_switchable(model, spec, tasks, tmp_path_factory.mktemp("switchable") / "switchable.onnx")
    return model, spec, tasks, path


def _weights(graph: onnx.GraphProto) -> int:
    """Stored weight elements in a graph and its If branches (initializers and Constant tensors)."""
    total = sum(int(np.prod(t.dims)) for t in graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                total += _weights(attr.g)
            elif attr.type == onnx.AttributeProto.TENSOR:
                total += int(np.prod(attr.t.dims))
    return total


def test_every_task_matches_pytorch(artifact):
    model, spec, tasks, path = artifact
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, *spec.input.shape, generator=torch.Generator().manual_seed(1))  # not the traced batch
    for task_id, task in enumerate(tasks):
        got = session.run(["output"], {"input": x.numpy(), "task_id": np.array([task_id], dtype=np.int64)})[0]
        with torch.no_grad():
            expected = model(x, task=task)[task].numpy()
        assert got.shape == (3, expected[0].size)
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-4, atol=1e-4, err_msg=task)


def test_graph_checks_and_describes_its_tasks(artifact):
    model, spec, tasks, path = artifact
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input", "task_id"]
    assert [o.name for o in proto.graph.output] == ["output"]
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["task_ids"] == {task: i for i, task in enumerate(tasks)}
    assert meta["task_output_shapes"] == {t.name: list(t.output_shape) for t in spec.tasks}
    # the shared backbone is stored once: two copies would nearly double the weights
    assert _weights(proto.graph) <= 1.05 * sum(p.numel() for p in model.parameters())


def test_out_of_range_task_id_fails_at_run_time(artifact):
    _, spec, tasks, path = artifact
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="out of data bounds"):
        session.run(None, {"input": np.zeros((1, *spec.input.shape), np.float32),
                           "task_id": np.array([len(tasks)], dtype=np.int64)})


@pytest.mark.parametrize(("arch", "tasks", "message"), [
    ("m3vit", ["depth", "nonsense"], "unknown task"),
    ("m3vit", ["depth"], "at least two distinct tasks"),
    ("m3vit", ["depth", "depth"], "at least two distinct tasks"),
    ("mtl-cnn", None, "not task-conditioned"),
])
def test_bad_requests_are_one_line_errors(tmp_path, arch, tasks, message):
    model, spec = tiny_model(arch)
    with pytest.raises(EdgemtlError, match=message) as error:
        export_switchable(model, spec, tasks or spec.task_names, tmp_path / "switchable.onnx")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "switchable.onnx").exists()
