from pathlib import Path

import pytest

from edgemtl.errors import EdgemtlError
from edgemtl.model.spec import ModelSpec, TaskSpec, read_spec_file


def test_task_defaults_follow_kind():
    task = TaskSpec(name="depth", kind="depth", output_shape=[1, 8, 8])
    assert (task.loss, task.metric, task.higher_is_better) == ("l1", "rmse", False)
    seg = TaskSpec(name="seg", kind="segmentation", output_shape=[5, 8, 8])
    assert (seg.metric, seg.higher_is_better, seg.num_classes) == ("miou", True, 5)


@pytest.mark.parametrize("kwargs", [
    {"kind": "normals", "output_shape": [2, 8, 8]},          # normals need 3 channels
    {"kind": "classification", "output_shape": [3, 4, 4]},  # classification is rank 1
    {"kind": "depth", "output_shape": [1, 8, 8], "metric": "bogus"},
    {"kind": "depth", "output_shape": [1, 8, 8], "loss": "bogus"},
])
def test_invalid_tasks_are_rejected(kwargs):
    with pytest.raises(ValueError):
        TaskSpec(name="t", **kwargs)


def test_duplicate_task_names_and_lookup():
    task = {"name": "a", "kind": "classification", "output_shape": [2]}
    with pytest.raises(ValueError):
        ModelSpec.model_validate({"input": {"shape": [1, 8, 8]}, "tasks": [task, task]})
    spec = ModelSpec.model_validate({"input": {"shape": [1, 8, 8]}, "tasks": [task]})
    assert spec.input.mean == [0.0] and spec.input.std == [1.0]
    with pytest.raises(EdgemtlError, match="unknown task 'b'.*has a"):
        spec.task("b")


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "input: {shape: [1, 8, 8]}\ntasks:\n  - {name: a, kind: classification, output_shape: [2]}\n"),
    (".toml", 'input = { shape = [1, 8, 8] }\n[[tasks]]\nname = "a"\nkind = "classification"\noutput_shape = [2]\n'),
])
def test_spec_files(tmp_path: Path, suffix: str, text: str):
    path = tmp_path / f"spec{suffix}"
    path.write_text(text)
    assert read_spec_file(path).task_names == ["a"]


@pytest.mark.parametrize("text, message", [
    ("input: [unclosed", "not valid YAML"),
    ("- just a list", "must hold a mapping"),
    ("input: {shape: [1, 8, 8]}\ntasks: []\n", "invalid model spec"),
])
def test_bad_spec_files_give_one_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(EdgemtlError, match=message) as info:
        read_spec_file(path)
    assert "\n" not in str(info.value)
