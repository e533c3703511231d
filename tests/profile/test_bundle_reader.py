"""One bundle reader (edgemtl.bundle.read_manifest) for `edgemtl profile` and `edgemtl report`: a folder that is not
a bundle is one line saying why, the same line from both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgemtl.bundle import read_manifest
from edgemtl.errors import EdgemtlError
from edgemtl.profile.device import read_bundle
from edgemtl.report.compare import compare_bundles


def _folders(tmp_path: Path) -> dict[str, Path]:
    folders = {name: tmp_path / name for name in ("empty", "bad_json", "no_tasks", "tasks_not_a_table")}
    for folder in folders.values():
        folder.mkdir()
    (folders["bad_json"] / "manifest.json").write_text("{not json")
    (folders["no_tasks"] / "manifest.json").write_text(json.dumps({"tasks": {}}))
    (folders["tasks_not_a_table"] / "manifest.json").write_text(json.dumps({"tasks": ["scene"]}))
    folders["missing"] = tmp_path / "missing"
    return folders


@pytest.mark.parametrize(("name", "says"), [("missing", "is not an edgemtl bundle (no manifest.json)"),
                                            ("empty", "is not an edgemtl bundle (no manifest.json)"),
                                            ("bad_json", "cannot be read as JSON"),
                                            ("no_tasks", "lists no tasks"),
                                            ("tasks_not_a_table", "lists no tasks")])
def test_not_a_bundle_is_one_line_from_every_reader(tmp_path: Path, name: str, says: str) -> None:
    folder = _folders(tmp_path)[name]
    messages = []
    for read in (read_manifest, read_bundle, lambda path: compare_bundles([path])):
        with pytest.raises(EdgemtlError) as info:
            read(folder)
        messages.append(str(info.value))
    assert len(set(messages)) == 1 and says in messages[0] and "\n" not in messages[0]


def test_a_bundle_reads_the_same_everywhere(tmp_path: Path) -> None:
    manifest = {"target": {"name": "host"}, "tasks": {"scene": {"kind": "classification"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(tmp_path) == manifest
    bundle = read_bundle(tmp_path)
    assert bundle.manifest == manifest and bundle.path == tmp_path.resolve() and list(bundle.tasks) == ["scene"]
