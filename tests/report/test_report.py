"""The bundle report: both files written, every task shown, latency provenance labelled, manifest text escaped."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from edgemtl.report import write_report
from edgemtl.report.fmt import human_bytes, human_count, human_error, human_ms
from edgemtl.report.html import render_html
from edgemtl.report.plots import cost_plot, latency_plot, memory_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
DEVICE = "host CPU (Intel Xeon Platinum 8375C, 2 threads)"


def _latency(median: float, p90: float, runtime: str, provenance: str = "measured") -> dict[str, Any]:
    return {"median": median, "p90": p90, "runs": 200, "provenance": provenance, "runtime": runtime,
            "device": DEVICE, "threads": 2, "batch": 1}


def _task(kind: str, shape: list[int], params: int, macs: int, peak: int, metrics: dict[str, float],
          primary: str, higher: bool, ort_ms: float, torch_ms: float) -> dict[str, Any]:
    return {
        "kind": kind, "output_shape": shape, "params": params, "macs": macs,
        "peak_activation_bytes": peak, "largest_tensor_bytes": peak // 4,
        "shared_params": 90_000, "shared_fraction": 90_000 / params,
        "artifacts": {"onnx": f"tasks/{kind}/model.onnx"},
        "verification": {"max_abs_error": 2.1e-6, "samples": 16, "tolerance": 1e-3, "data": "scenes/val",
                         "passed": True},
        "max_abs_error": 2.1e-6,
        "latency_ms": _latency(ort_ms, ort_ms * 1.1, "onnxruntime"),
        "latency_ms_pytorch": _latency(torch_ms, torch_ms * 1.2, "pytorch-eager"),
        "speedup_vs_pytorch": torch_ms / ort_ms,
        "metrics": metrics, "primary_metric": primary, "higher_is_better": higher,
    }


def _manifest() -> dict[str, Any]:
    tasks = {
        "segmentation": _task("segmentation", [5, 64, 64], 120_000, 30_000_000, 400_000,
                              {"miou": 0.71, "pixel_accuracy": 0.93}, "miou", True, 0.41, 1.2),
        "depth": _task("depth", [1, 64, 64], 110_000, 28_000_000, 380_000, {"rmse": 0.12}, "rmse", False, 0.38, 1.1),
        "classification": _task("classification", [10], 95_000, 12_000_000, 150_000, {"accuracy": 0.88},
                                "accuracy", True, 0.2, 0.7),
    }
    return {
        "edgemtl_version": "0.1.0",
        "created": "2026-11-23T18:00:00Z",
        "target": {"name": "host", "flow": "cpu-onnxruntime", "description": "ONNX Runtime on the build host"},
        "model": {"path": "model.pt", "sha256": "ab12cd34ef56" + "0" * 52, "arch": "mtl-cnn", "config": {"width": 16},
                  "data": "scenes", "input": {"shape": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3}},
        "host": {"platform": "Linux-6.8-x86_64", "cpu": "Intel Xeon Platinum 8375C", "cores": 2, "python": "3.11.7",
                 "torch": "2.13.0", "onnxruntime": "1.31.1", "onnx": "1.23.2"},
        "steps": [{"name": "validate", "seconds": 0.12, "status": "ok"},
                  {"name": "export_onnx", "seconds": 3.1, "status": "ok"}],
        "tasks": tasks,
        "all_tasks": {"params": 300_000, "macs": 60_000_000, "peak_activation_bytes": 800_000,
                      "artifacts": {"onnx": "all_tasks/model.onnx"}, "max_abs_error": 3e-6,
                      "latency_ms": _latency(0.9, 1.0, "onnxruntime"),
                      "latency_ms_pytorch": _latency(2.3, 2.6, "pytorch-eager"), "speedup_vs_pytorch": 2.5},
    }


@pytest.fixture
def manifest() -> dict[str, Any]:
    return _manifest()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sample manifest's report, rendered once for the tests that only read it."""
    return tuple(write_report(_manifest(), tmp_path_factory.mktemp("bundle")))


def _pngs(html: str) -> list[bytes]:
    return [base64.b64decode(data) for data in DATA_URI.findall(html)]


def test_writes_html_and_json(manifest: dict[str, Any], written: tuple[Path, Path]) -> None:
    html_path, json_path = written

    assert (html_path.name, json_path.name) == ("report.html", "report.json") and html_path.parent == json_path.parent
    html = html_path.read_text(encoding="utf-8")
    for name in manifest["tasks"]:
        assert name in html
    for word in ("measured", "onnxruntime", "pytorch-eager", DEVICE, "2 threads", "200 runs", "Provenance"):
        assert word in html
    for shown in ("0.41 ms", "120 k", "391 KiB", "2.1e-6", "ab12cd34ef56", "mtl-cnn", "cpu-onnxruntime", "75%"):
        assert shown in html
    assert 'href="tasks/segmentation/model.onnx"' in html and 'href="report.json"' in html
    assert "http://" not in html and "https://" not in html


def test_plots_are_embedded_pngs(written: tuple[Path, Path]) -> None:
    html = written[0].read_text(encoding="utf-8")

    pngs = _pngs(html)
    assert len(pngs) == 3
    assert all(png.startswith(PNG_MAGIC) for png in pngs)


def test_json_summary(manifest: dict[str, Any], written: tuple[Path, Path]) -> None:
    summary = json.loads(written[1].read_text(encoding="utf-8"))

    assert summary["target"] == {"name": "host", "flow": "cpu-onnxruntime"}
    assert summary["model"]["arch"] == "mtl-cnn"
    assert set(summary["tasks"]) == set(manifest["tasks"])
    segmentation = summary["tasks"]["segmentation"]
    assert segmentation["params"] == 120_000 and segmentation["macs"] == 30_000_000
    assert segmentation["peak_activation_bytes"] == 400_000 and segmentation["max_abs_error"] == 2.1e-6
    assert segmentation["latency_ms"]["median"] == 0.41 and segmentation["latency_ms"]["p90"] == pytest.approx(0.451)
    assert segmentation["latency_ms"]["provenance"] == "measured"
    assert segmentation["metrics"] == {"miou": 0.71, "pixel_accuracy": 0.93}
    assert summary["all_tasks"]["speedup_vs_pytorch"] == 2.5
    assert [step["name"] for step in summary["steps"]] == ["validate", "export_onnx"]


def test_manifest_text_is_escaped(manifest: dict[str, Any], tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    manifest["tasks"][evil] = manifest["tasks"].pop("depth")
    manifest["tasks"][evil]["artifacts"] = {"onnx": "javascript:alert(1)"}
    manifest["model"]["path"] = '"><img src=x onerror=alert(1)>$x$.pt'
    manifest["tasks"]["segmentation"]["metrics"] = {"<b>miou</b>": 0.7}

    html = write_report(manifest, tmp_path)[0].read_text(encoding="utf-8")

    assert "<script>" not in html and "<img src=x" not in html and "<b>miou" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="javascript:' not in html
    assert all(png.startswith(PNG_MAGIC) for png in _pngs(html))


def test_missing_latency_and_metrics_still_render(manifest: dict[str, Any], tmp_path: Path) -> None:
    for entry in [*manifest["tasks"].values(), manifest["all_tasks"]]:
        for key in ("latency_ms", "latency_ms_pytorch", "speedup_vs_pytorch", "metrics", "primary_metric"):
            entry.pop(key, None)

    html_path, json_path = write_report(manifest, tmp_path)

    html = html_path.read_text(encoding="utf-8")
    assert latency_plot(manifest) is None
    assert len(_pngs(html)) == 2
    assert "no latency numbers" in html and "measured" in html
    assert "latency_ms" not in json.loads(json_path.read_text(encoding="utf-8"))["tasks"]["depth"]


def test_bare_manifest_renders(tmp_path: Path) -> None:
    html_path, json_path = write_report({"tasks": {"x": {"kind": "depth", "params": float("nan")}}}, tmp_path)

    assert "x" in html_path.read_text(encoding="utf-8")
    assert json.loads(json_path.read_text(encoding="utf-8"))["tasks"]["x"]["params"] is None
    assert cost_plot({}) is None and latency_plot({}) is None and memory_plot({}) is None
    assert "<h2>Tasks</h2>" in render_html({})


def test_mixed_provenance_is_kept_apart(manifest: dict[str, Any]) -> None:
    manifest["tasks"]["depth"]["latency_ms"]["provenance"] = "simulated"

    html = render_html(manifest)

    assert "simulated" in html and "prov-simulated" in html and "prov-measured" in html


def test_human_formats() -> None:
    assert human_count(1_234_567) == "1.23 M" and human_count(950) == "950" and human_count(1_200_000) == "1.2 M"
    assert human_bytes(35_328) == "34.5 KiB" and human_bytes(512) == "512 B"
    assert human_ms(0.41) == "0.41 ms" and human_ms(0.05) == "50 µs" and human_ms(2500) == "2.5 s"
    assert human_error(2.1e-6) == "2.1e-6" and human_error(0.0) == "0"


def test_every_bundle_report_points_to_the_comparison_page(manifest: dict[str, Any]) -> None:
    """The comparison page (`edgemtl report`) was reachable from neither the README nor a bundle's report."""
    assert "edgemtl report THIS_BUNDLE" in render_html(manifest)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "edgemtl report BUNDLE" in readme


def test_the_artifact_table_lists_nested_builds_and_the_shipped_runtime() -> None:
    """An arm64 bundle's TVM builds (one per architecture) and the runtime each task ships were missing."""
    manifest = {"target": {"name": "arm64", "flow": "cpu-arm64"},
                "tasks": {"scene": {"artifacts": {"onnx": "tasks/scene/model.onnx",
                                                  "tvm": {"aarch64": "tasks/scene/tvm/aarch64.so",
                                                          "x86_64": "tasks/scene/tvm/x86_64.so"}},
                                    "runtime": "onnxruntime-int8", "runtime_reason": "int8 within 1% of float"}}}
    html = render_html(manifest)
    assert "tvm/aarch64" in html and "tasks/scene/tvm/aarch64.so" in html and "tvm/x86_64" in html
    assert "shipped runtime" in html and "onnxruntime-int8" in html and "int8 within 1% of float" in html


def test_wide_tables_scroll_instead_of_overflowing_the_page(manifest: dict[str, Any]) -> None:
    """A table wider than the page (many tasks, long runtime names) scrolls on its own, in every report page."""
    from edgemtl.report.compare_page import PAGE_CSS

    for css in (render_html(manifest), PAGE_CSS):
        assert "table{border-collapse:collapse;font-size:13px;display:block;overflow-x:auto;max-width:100%}" in css


def test_a_provenance_object_reads_as_words_not_a_dict_repr() -> None:
    """Tooltips and badges showed "{'kind': 'estimated', ...}" where a provenance came as an object."""
    provenance = {"kind": "estimated", "source": "edgemtl roofline", "detail": "200 MHz, 8 lanes"}
    html = render_html({"target": {"name": "zcu104", "flow": "fpga-hls4ml"},
                        "tasks": {"scene": {"roofline": {"fps": 120.0, "provenance": provenance}}}})
    assert "estimated (200 MHz, 8 lanes; edgemtl roofline)" in html  # edgemtl.manifest's provenance_text
    assert "{&#x27;kind&#x27;" not in html and "{'kind'" not in html


def test_counts_and_memory_carry_their_provenance_and_a_flagged_speedup_is_marked(manifest: dict[str, Any]) -> None:
    entry = next(iter(manifest["tasks"].values()))
    entry.update(params=1000, macs=2_000_000, peak_activation_bytes=4096,
                 speedup_vs_pytorch_warning="from a flagged timing: busy machine")
    html = render_html(manifest)
    assert 'prov-static" title="static (counted from the traced graph)"' in html
    assert 'prov-estimated" title="estimated (liveness of the traced graph' in html
    assert 'title="from a flagged timing: busy machine">⚠' in html
