from pathlib import Path

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


def test_an_fpga_target_without_its_parts_logic_is_refused(tmp_path, monkeypatch):
    """The part's LUT / FF / DSP / BRAM / URAM totals live in the target file and nowhere else: a file without them
    is one line naming the missing table."""
    text = (Path(__file__).parents[1] / "targets" / "zcu104.toml").read_text()
    start, end = text.index("[fabric]"), text.index("[device]")
    (tmp_path / "myfpga.toml").write_text(text[:start].replace('name = "zcu104"', 'name = "myfpga"') + text[end:])
    monkeypatch.setenv("EDGEMTL_TARGETS_PATH", str(tmp_path))
    with pytest.raises(EdgemtlError, match=r"\[fabric\] table"):
        load_target("myfpga")
