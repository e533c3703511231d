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


SHIPPED = sorted((Path(__file__).parents[1] / "edgemtl" / "resources" / "targets").glob("*.toml"))
LEVELS = ("on-chip", "off-chip", "storage")


def test_the_shipped_targets_are_the_ones_found():
    assert {path.stem for path in SHIPPED} == {"arm64", "gap9", "host", "zcu104"}
    found = available_targets()
    assert all(found[path.stem].resolve() == path.resolve() for path in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.stem)
def test_every_shipped_target_file_validates(path):
    """Each target file through edgemtl.targets (the Target model: typed fields, no unknown key), then what the
    model cannot say alone: a flow that exists, names that are unique, memories listed nearest first, a reachable
    device address, and an FPGA's part, logic, throughputs and precisions the quantizer knows."""
    from edgemtl.flows import FLOWS

    target = load_target(path.stem)
    assert target.name == path.stem and Path(target.source).resolve() == path.resolve()
    assert target.description.strip() and target.flow in FLOWS, target.flow
    assert len(set(target.precisions)) == len(target.precisions)
    names = [unit.name for unit in target.compute]
    assert len(set(names)) == len(names), names
    memories = [memory.name for memory in target.memory]
    assert len(set(memories)) == len(memories), memories
    levels = [LEVELS.index(memory.level) for memory in target.memory]
    assert levels == sorted(levels), "memories are listed nearest the compute first"
    if target.device.reach == "rpc":
        from edgemtl.profile.rpc import parse_device

        parse_device(f"rpc://{target.device.address}")  # HOST:PORT/KEY, as `edgemtl profile --device` takes it
    if any(unit.kind == "fpga-fabric" for unit in target.compute):
        from edgemtl.passes.brevitas_qat.config import PRECISIONS

        assert target.part and target.fabric is not None
        assert target.target_fps and all(fps > 0 for fps in target.target_fps)
        assert set(target.precisions) <= set(PRECISIONS), target.precisions
        assert all(unit.clock_mhz > 0 for unit in target.compute if unit.kind == "fpga-fabric")
    assert target.flow in target.summary()
