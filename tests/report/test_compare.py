"""The comparison report (`edgemtl report`): hand-made host / arm64 / gap9 manifests, and one real tiny host bundle."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from edgemtl.cli import main
from edgemtl.errors import EdgemtlError
from edgemtl.report.compare import compare_bundles, render_comparison, write_comparison

PNG_DATA_URI = re.compile(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"')
HOST_DEVICE = "host CPU (AMD EPYC, 1 thread)"
LOCAL = "this machine: AMD EPYC (x86_64, 2 cores, default threads)"
QEMU_BOARD = "emulated arm64 board (qemu-aarch64 user mode)"


def _write(folder: Path, manifest: dict[str, Any], files: dict[str, int] | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for relative, size in (files or {}).items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(b"\0" * size)
    return folder


def _model(sha: str = "ab" * 32) -> dict[str, Any]:
    return {"path": "/models/mtl.pt", "sha256": sha, "arch": "mtl-cnn", "input": {"shape": [3, 16, 16]}}


def _host(name: str = "scene") -> dict[str, Any]:
    return {
        "target": {"name": "host", "flow": "cpu-onnxruntime"}, "model": _model(),
        "host": {"platform": "Linux-6-x86_64-with-glibc2.36", "cpu": "AMD EPYC", "cores": 2},
        "tasks": {name: {
            "kind": "classification", "peak_activation_bytes": 196_608, "primary_metric": "accuracy",
            "higher_is_better": True, "metrics": {"accuracy": 0.69}, "metrics_data": "scenes/val (256 samples)",
            "artifacts": {"onnx": f"tasks/{name}/model.onnx"},
            "latency_ms": {"median": 0.43, "p90": 0.5, "runs": 100, "runtime": "onnxruntime 1.31.1",
                           "device": HOST_DEVICE, "threads": 1, "batch": 1, "provenance": "measured"},
            "latency_ms_pytorch": {"median": 10.0, "p90": 11.0, "runs": 100, "runtime": "pytorch-eager",
                                   "device": HOST_DEVICE, "threads": 1, "batch": 1, "provenance": "measured"},
        }},
    }


def _runtime_result(median: float, provenance: str, artifact: str, store_id: int) -> dict[str, Any]:
    return {"median_ms": median, "p90_ms": median * 1.1, "min_ms": median * 0.9, "runs": 50, "provenance": provenance,
            "artifact": artifact, "sha256": "cd" * 32, "max_abs_diff": 1e-4, "check_passed": True,
            "store_id": store_id, "details": {"arch": "x86_64" if provenance == "measured" else "aarch64"}}


def _arm64() -> dict[str, Any]:
    local = {"device": "local", "provenance": "measured", "timestamp": "2026-12-01T10:00:00+00:00",
             "runtimes": {"onnxruntime-float": _runtime_result(0.40, "measured", "tasks/scene/model.onnx", 1),
                          "onnxruntime-int8": _runtime_result(0.20, "measured", "tasks/scene/model.int8.onnx", 2),
                          "tvm": {"skipped": "apache-tvm is not installed here"}},
             "fastest_passed": "onnxruntime-int8"}
    emulated = {"device": "rpc://127.0.0.1:9190/arm64", "provenance": "emulated", "timestamp": "2026-12-01T11:00:00+00:00",
                "runtimes": {"onnxruntime-float": _runtime_result(40.0, "emulated", "tasks/scene/model.onnx", 3),
                             "onnxruntime-int8": _runtime_result(30.0, "emulated", "tasks/scene/model.int8.onnx", 4)},
                "fastest_passed": "onnxruntime-int8"}
    return {
        "target": {"name": "arm64", "flow": "cpu-arm64"}, "model": _model(),
        "host": {"platform": "Linux-6-x86_64-with-glibc2.36"},
        "profiles": {"local": {"device": "local", "description": LOCAL, "provenance": "measured", "file": "profile/local.json"},
                     "rpc_127.0.0.1_9190_arm64": {"device": "rpc://127.0.0.1:9190/arm64", "description": QEMU_BOARD,
                                                  "provenance": "emulated"}},
        "tasks": {"scene": {
            "kind": "classification", "peak_activation_bytes": 196_608, "primary_metric": "accuracy",
            "higher_is_better": True, "runtime": "onnxruntime-int8",
            "runtime_chosen_by": {"device": "local", "profile": "profile/local.json"},
            "artifacts": {"onnx": "tasks/scene/model.onnx", "int8_onnx": "tasks/scene/model.int8.onnx",
                          "tvm": {"aarch64": "tasks/scene/tvm/aarch64/model.so"}},
            "int8": {"ok": True, "metric": "accuracy", "higher_is_better": True, "metric_float": {"accuracy": 0.69},
                     "metric_int8": {"accuracy": 0.688}, "metrics_data": "scenes/val (256 samples)",
                     "runtime": "onnxruntime (this host, CPUExecutionProvider)"},
            "profile": {"local": local, "rpc_127.0.0.1_9190_arm64": emulated},
        }},
    }


def _gap9() -> dict[str, Any]:
    estimated = "estimated (analytical model: PULP-NN-class int8 kernels on GAP9's 8-core cluster)"
    return {
        "target": {"name": "gap9", "flow": "mcu-gap9"}, "model": _model(),
        "tasks": {"scene": {
            "kind": "classification", "primary_metric": "accuracy", "peak_activation_bytes": 196_608,
            "artifacts": {"c": "tasks/scene/c", "int8_onnx": "tasks/scene/int8.onnx"},
            "int8": {"ok": True, "metric": "accuracy", "higher_is_better": True, "metric_float": {"accuracy": 0.69},
                     "metric_int8": {"accuracy": 0.68}},
            "c": {"arena": {"arena_bytes": 40_000, "provenance": "static (liveness plan)"},
                  "qemu": {"bit_exact": True, "provenance": "simulated (qemu rv32imac)",
                           "instructions": {"totals": {"instructions": 1.7e7},
                                            "layers": [{"layer": 0, "name": "conv0", "op": "conv", "instructions": 1.5e7},
                                                       {"layer": 1, "name": "fc", "op": "linear", "instructions": 2e6}]}}},
            "memory_placement": {"provenance": estimated, "status": "fits-l2", "l2_used_bytes": 136_000,
                                 "l2_bytes": 1_500_000, "weight_bytes": 30_000},
            "cycle_estimate": {"provenance": estimated,
                               "totals": {"cycles": 370_000, "clock_mhz": 370.0, "latency_ms": 1.0, "power_mw": 50.0,
                                          "energy_mj": 0.05},
                               "layers": [{"index": 0, "name": "conv0", "op": "conv", "cycles": 300_000},
                                          {"index": 1, "name": "fc", "op": "linear", "cycles": 70_000}]},
        }},
    }


@pytest.fixture()
def bundles(tmp_path: Path) -> list[Path]:
    return [
        _write(tmp_path / "host", _host(), {"tasks/scene/model.onnx": 1000}),
        _write(tmp_path / "arm64", _arm64(), {"tasks/scene/model.onnx": 1000, "tasks/scene/model.int8.onnx": 400}),
        _write(tmp_path / "gap9", _gap9()),
    ]


def test_every_number_carries_its_provenance(bundles: list[Path]) -> None:
    doc = compare_bundles(bundles)
    assert [b["label"] for b in doc["bundles"]] == ["host", "arm64", "gap9"]
    host, arm, gap = (doc["tasks"]["scene"][label] for label in ("host", "arm64", "gap9"))

    assert host["latency"]["median"] == 0.43 and host["latency"]["on_target"] is True
    assert host["latency"]["provenance"]["kind"] == "measured"
    assert host["latency"]["provenance"]["device"] == HOST_DEVICE
    assert host["latency"]["provenance"]["source"] == "manifest.json tasks.scene.latency_ms"
    assert host["model_size"]["value"] == 1000 and host["model_size"]["provenance"]["kind"] == "static"
    assert host["memory"][0]["provenance"]["kind"] == "estimated"
    assert host["metric"]["float"]["provenance"]["kind"] == "evaluated"
    assert host["energy"] is None

    # arm64: the shipped int8 runtime's local measurement heads the column, labelled as taken off the target
    assert arm["runtime"]["value"] == "onnxruntime-int8" and "local" in arm["runtime"]["chosen_by"]
    assert arm["latency"]["runtime"] == "onnxruntime-int8" and arm["latency"]["median"] == 0.20
    assert arm["latency"]["provenance"]["kind"] == "measured" and arm["latency"]["on_target"] is False
    assert LOCAL in arm["latency"]["provenance"]["device"]
    assert "results store row 2" in arm["latency"]["provenance"]["source"]
    emulated = [lat for lat in arm["latencies"] if lat["provenance"]["kind"] == "emulated"]
    assert {lat["median"] for lat in emulated} == {40.0, 30.0}
    assert arm["model_size"]["value"] == 400 and arm["model_size"]["artifact"] == "tasks/scene/model.int8.onnx"
    assert arm["metric"]["deployed"]["value"] == 0.688 and arm["metric"]["deployed_precision"] == "int8"
    assert arm["metric"]["relative_change"] == pytest.approx(-0.002 / 0.69)

    # gap9: estimates, a static arena, simulated instructions, the per-layer estimate
    assert gap["latency"]["provenance"]["kind"] == "estimated" and gap["latency"]["median"] == 1.0
    assert gap["energy"]["value"] == 0.05 and gap["energy"]["provenance"]["kind"] == "estimated"
    assert gap["memory"][0]["value"] == 40_000 and gap["memory"][0]["provenance"]["kind"] == "static"
    assert gap["memory"][1]["provenance"]["kind"] == "estimated"
    assert gap["instructions"]["provenance"]["kind"] == "simulated"
    assert gap["model_size"]["value"] == 30_000
    assert gap["metric"]["deployed"]["value"] == 0.68 and gap["metric"]["deployed_precision"] == "int8"
    assert gap["layers"]["provenance"]["kind"] == "estimated"
    assert gap["layers"]["instructions_provenance"]["kind"] == "simulated"
    assert gap["layers"]["layers"][0]["name"] == "conv0" and gap["layers"]["layers"][0]["instructions"] == 1.5e7

    def walk(value: Any) -> None:  # every figure-like object in the document names its kind
        if isinstance(value, dict):
            if isinstance(value.get("value"), (int, float)) or "median" in value:
                assert value["provenance"]["kind"] in doc["provenance_kinds"], value
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(doc["tasks"])


def test_no_speedup_across_provenances_or_devices(bundles: list[Path]) -> None:
    doc = compare_bundles(bundles)
    for item in doc["speedups"]:
        assert item["ratio"] >= 1 and item["basis"].startswith("both measured on the same device")
        assert "gap9" not in (item["fast"]["bundle"], item["slow"]["bundle"])
    pairs = {(s["slow"]["bundle"], s["slow"]["runtime"], s["fast"]["bundle"], s["fast"]["runtime"]): s["ratio"]
             for s in doc["speedups"]}
    # int8 vs float on the same local device; PyTorch vs ONNX Runtime on the same host device
    assert pairs[("arm64", "onnxruntime-float", "arm64", "onnxruntime-int8")] == pytest.approx(2.0)
    assert pairs[("host", "pytorch-eager", "host", "onnxruntime-float")] == pytest.approx(10.0 / 0.43)
    # never: emulated timings, the host vs the local profile (other threads), anything vs the gap9 estimate
    assert len(pairs) == 2
    not_compared = {tuple(item["bundles"]): item["why"] for item in doc["not_compared"]}
    assert not_compared[("host", "gap9")] == "measured vs estimated"
    assert not_compared[("host", "arm64")] == "both measured, but on different devices"


def test_same_device_measurements_across_bundles_are_compared(tmp_path: Path) -> None:
    host = _host()
    host["tasks"]["scene"]["profile"] = {"local": {
        "device": "local", "provenance": "measured",
        "runtimes": {"onnxruntime-float": _runtime_result(0.5, "measured", "tasks/scene/model.onnx", 9)}}}
    host["profiles"] = {"local": {"device": "local", "description": LOCAL, "provenance": "measured"}}
    arm = _arm64()
    del arm["tasks"]["scene"]["profile"]["rpc_127.0.0.1_9190_arm64"]
    doc = compare_bundles([_write(tmp_path / "h", host), _write(tmp_path / "a", arm)])
    across = [s for s in doc["speedups"] if s["fast"]["bundle"] != s["slow"]["bundle"]]
    assert across and all(s["device_key"] == f"local: {LOCAL}" for s in across)
    assert {(s["slow"]["bundle"], s["fast"]["bundle"]) for s in across} == {("host", "arm64")}


def test_html_escapes_names_and_stays_self_contained(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    host = _host(name=evil)
    host["model"]["path"] = "/m/<b>x</b>.pt"
    host["tasks"][evil]["latency_ms"]["device"] = "<img src=x onerror=alert(1)>"
    folder = _write(tmp_path / "host", host)
    html = render_comparison(compare_bundles([folder]))
    assert evil not in html and "<img src=x" not in html and "<b>x</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "default-src 'none'; img-src data:" in html
    assert not re.search(r'(src|href)="(https?:|//|javascript:)', html)
    assert "prov-measured" in html and "Provenance of every number" in html


def test_write_comparison_html_json_plots_and_atomic_replace(bundles: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    html_path, json_path = write_comparison(bundles, out)
    doc = json.loads(json_path.read_text())
    assert doc["edgemtl_report"] == "comparison" and len(doc["bundles"]) == 3
    html = html_path.read_text()
    assert len(PNG_DATA_URI.findall(html)) == 3  # latency, memory, model size
    assert "Speed-ups (same device, measured)" in html and "Tasks side by side" in html
    assert "estimated" in html and "measured off the target" in html
    write_comparison(bundles[:1], out)  # an existing comparison is replaced whole
    assert len(json.loads(json_path.read_text())["bundles"]) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cmp")]  # no staging left behind
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(EdgemtlError, match="not an edgemtl comparison"):
        write_comparison(bundles, other)
    assert (other / "keep.txt").read_text() == "mine"


def test_a_path_that_is_not_a_bundle_is_an_error(tmp_path: Path, bundles: list[Path], capsys) -> None:
    with pytest.raises(EdgemtlError, match="not an edgemtl bundle"):
        compare_bundles([bundles[0], tmp_path / "missing"])
    with pytest.raises(SystemExit) as info:
        main(["report", str(bundles[0]), str(tmp_path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("edgemtl: error:")
    assert "not an edgemtl bundle" in lines[0] and not (tmp_path / "out").exists()


def test_a_real_tiny_host_bundle(tmp_path: Path, checkpoints: dict[str, Path], capsys) -> None:
    bundle = tmp_path / "bundle"
    for args in (["compile", str(checkpoints["mtl-cnn"]), "--target", "host", "-o", str(bundle), "--runs", "5",
                  "--tasks", "scene", "--threads", "1"],
                 ["report", str(bundle), "-o", str(tmp_path / "cmp")]):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert (info.value.code or 0) == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(doc["tasks"]) == set(manifest["tasks"])
    for name, by_bundle in doc["tasks"].items():
        figures = by_bundle["host"]
        assert figures["latency"]["provenance"]["kind"] == "measured" and figures["latency"]["on_target"] is True
        assert figures["model_size"]["value"] == (bundle / manifest["tasks"][name]["artifacts"]["onnx"]).stat().st_size
        layers = figures["layers"]
        assert layers["source"] == "onnxruntime profiler" and layers["layers"], layers
        assert layers["provenance"]["kind"] == "measured" and "this host" in layers["provenance"]["device"]
        assert sum(row["share"] for row in layers["layers"]) <= 1.0 + 1e-9
    assert (tmp_path / "cmp" / "comparison.html").is_file()


def test_per_layer_times_come_from_the_callers_timer(tmp_path: Path) -> None:
    """The report runs no model: `edgemtl report` hands it ONNX Runtime's profiler (edgemtl.profile.layers)."""
    folder = _write(tmp_path / "host", _host(), {"tasks/scene/model.onnx": 1000})
    assert compare_bundles([folder])["tasks"]["scene"]["host"]["layers"] == {
        "none": "not profiled (layer profiling was turned off)"}
    calls = []

    def timer(onnx: Path, x: Any, label: str) -> dict[str, Any]:
        calls.append((onnx, x.shape, label))
        return {"source": "a fake timer", "layers": [], "provenance": {"kind": "measured", "device": "here"}}

    layers = compare_bundles([folder], layer_timer=timer)["tasks"]["scene"]["host"]["layers"]
    assert layers["source"] == "a fake timer"
    assert calls == [(folder / "tasks/scene/model.onnx", (1, 3, 16, 16), "tasks/scene/model.onnx")]

    def broken(onnx: Path, x: Any, label: str) -> dict[str, Any]:
        raise RuntimeError("no kernel for op Foo\nsecond line")

    layers = compare_bundles([folder], layer_timer=broken)["tasks"]["scene"]["host"]["layers"]
    assert layers == {"none": "ONNX Runtime could not profile tasks/scene/model.onnx: RuntimeError: no kernel for op Foo"}


def test_provenance_objects_read_as_kinds_and_words(tmp_path: Path) -> None:
    """Bundles now write every provenance as {kind, source, detail, device}; older ones wrote strings: both read."""
    host = _host()
    entry = host["tasks"]["scene"]
    for key in ("latency_ms", "latency_ms_pytorch"):
        entry[key]["provenance"] = {"kind": "measured", "source": entry[key]["runtime"], "device": HOST_DEVICE}
    gap = _gap9()
    gap["tasks"]["scene"]["cycle_estimate"]["provenance"] = {"kind": "estimated", "source": "edgemtl GAP9 model",
                                                             "detail": "PULP-NN-class kernels"}
    doc = compare_bundles([_write(tmp_path / "host", host), _write(tmp_path / "gap9", gap)])
    figures = doc["tasks"]["scene"]
    assert figures["host"]["latency"]["provenance"]["kind"] == "measured"
    assert doc["speedups"] and doc["speedups"][0]["ratio"] == pytest.approx(10.0 / 0.43)
    assert figures["gap9"]["latency"]["provenance"]["detail"] == "estimated (PULP-NN-class kernels; edgemtl GAP9 model)"
    html = render_comparison(doc)
    assert "{'kind'" not in html and "{&#x27;kind&#x27;" not in html
