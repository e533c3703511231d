import pytest

from edgemtl.errors import EdgemtlError
from edgemtl.targets import available_targets, load_target


def test_host_target_loads():
    target = load_target("host")
    assert target.flow == "cpu-onnxruntime" and target.device.reach == "local"
    assert "host" in available_targets()


def test_unknown_target_lists_valid_ones():
    with pytest.raises(EdgemtlError, match="unknown target 'nope'; available: .*host"):
        load_target("nope")


@pytest.mark.parametrize("text, message", [
    ("name = \n", "not valid TOML"),
    ('name = "broken"\ndescription = "x"\nflow = "f"\nprecisions = []\n', "invalid"),
])
def test_invalid_target_files(tmp_path, monkeypatch, text, message):
    (tmp_path / "broken.toml").write_text(text)
    monkeypatch.setenv("EDGEMTL_TARGETS_PATH", str(tmp_path))
    with pytest.raises(EdgemtlError, match=message):
        load_target("broken")
