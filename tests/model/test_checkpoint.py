from pathlib import Path

import pytest
import torch

import edgemtl
from custom_models import SPEC_YAML, unet_two_heads
from edgemtl.errors import EdgemtlError
from edgemtl.model.checkpoint import FORMAT


@pytest.mark.parametrize("arch", ["mtl-cnn", "m3vit"])
def test_round_trip_is_exact_and_needs_no_code(checkpoints, arch):
    path = checkpoints[arch]
    payload = torch.load(path, weights_only=True)  # plain data: no code runs on load
    assert payload["format"] == FORMAT and payload["arch"] == arch
    loaded = edgemtl.load(path)
    assert loaded.spec.arch == arch and loaded.source == "checkpoint" and len(loaded.sha256) == 64
    x = torch.randn(2, *loaded.spec.input.shape)
    with torch.no_grad():
        again = edgemtl.load(path).model(x)
        first = loaded.model(x)
    assert all(torch.equal(first[k], again[k]) for k in first)


def _write_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML)
    return spec


def test_factory_model_with_state_dict_and_spec(tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save(unet_two_heads().state_dict(), weights)
    loaded = edgemtl.load(weights, factory="custom_models:unet_two_heads", spec_path=_write_spec(tmp_path))
    assert loaded.source == "factory" and loaded.spec.task_names == ["seg", "depth"]
    assert loaded.spec.arch == "factory:custom_models:unet_two_heads"


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(unet_two_heads(), path)
    with pytest.raises(EdgemtlError, match="pickled Python objects.*--trust"):
        edgemtl.load(path, spec_path=_write_spec(tmp_path))
    loaded = edgemtl.load(path, spec_path=_write_spec(tmp_path), trust=True)
    assert loaded.source == "pickled-module"


def _bad_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all\n" * 10)
    state = tmp_path / "state.pt"
    torch.save(unet_two_heads().state_dict(), state)
    other = tmp_path / "other.pt"
    torch.save({"hello": 1}, other)
    version = tmp_path / "version.pt"
    payload = torch.load(good, weights_only=True)
    torch.save({**payload, "format_version": 99}, version)
    wrong_arch = tmp_path / "arch.pt"
    torch.save({**payload, "spec": {**payload["spec"], "arch": "nope"}}, wrong_arch)
    weights = tmp_path / "weights.pt"
    torch.save({**payload, "state_dict": {k: v for k, v in list(payload["state_dict"].items())[1:]}}, weights)
    return {
        "missing": (tmp_path / "nope.pt", "does not exist"),
        "truncated": (truncated, "corrupt"),
        "garbage": (garbage, "not a PyTorch checkpoint: it looks like text"),
        "state_dict": (state, "plain state_dict.*--model-factory"),
        "other": (other, "not an edgemtl checkpoint"),
        "version": (version, "format version 99"),
        "arch": (wrong_arch, "unknown architecture 'nope'"),
        "weights": (weights, "do not fit the model: missing"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "garbage", "state_dict", "other", "version", "arch", "weights"])
def test_bad_checkpoints_give_one_clear_line(tmp_path, checkpoints, case):
    path, message = _bad_files(tmp_path, checkpoints["mtl-cnn"])[case]
    with pytest.raises(EdgemtlError, match=message) as info:
        edgemtl.load(path)
    assert "\n" not in str(info.value)


def test_spec_that_does_not_match_outputs(tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save(unet_two_heads().state_dict(), weights)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC_YAML.replace("name: depth", "name: height"))
    with pytest.raises(EdgemtlError, match=r"missing: height"):
        edgemtl.load(weights, factory="custom_models:unet_two_heads", spec_path=spec)
    spec.write_text(SPEC_YAML.replace("[3, 32, 32]}", "[4, 32, 32]}"))
    with pytest.raises(EdgemtlError, match="task 'seg' outputs shape"):
        edgemtl.load(weights, factory="custom_models:unet_two_heads", spec_path=spec)


@pytest.mark.parametrize("factory, message", [
    ("custom_models", "package.module:function"),
    ("no_such_module:f", "cannot import"),
    ("custom_models:not_a_module", "not an nn.Module"),
])
def test_bad_factories(tmp_path, factory, message):
    weights = tmp_path / "weights.pt"
    torch.save(unet_two_heads().state_dict(), weights)
    with pytest.raises(EdgemtlError, match=message):
        edgemtl.load(weights, factory=factory, spec_path=_write_spec(tmp_path))


@pytest.mark.parametrize(("content", "kind"), [(b'{"weights": []}', "JSON or text"), (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
                                               (bytes(range(7, 71)), "no known format")])
def test_a_file_that_is_no_pytorch_file_says_so(tmp_path, content, kind):
    """A JSON, an image or random bytes named .pt is not 'pickled objects, pass --trust': it is not a checkpoint."""
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(EdgemtlError) as err:
        edgemtl.load(path)
    assert "is not a PyTorch checkpoint" in str(err.value) and kind in str(err.value) and "--trust" not in str(err.value)
