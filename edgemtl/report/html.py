"""The bundle's human report: one self-contained HTML page and a compact JSON summary.

Embedded and hardware engineers open report.html from a bundle copied off a build machine, often offline,
so the page carries its figures as data URIs and loads nothing external (a CSP forbids it). report.json
holds the same headline numbers for scripts and dashboards that should not parse the whole manifest.
Every string from the manifest is escaped: model and task names are user input. Every latency number
carries its provenance, because a simulated or estimated figure read as a measurement misleads a
hardware decision.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from html import escape
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from edgemtl.bundle import write_text_atomically
from edgemtl.report.expert_plots import expert_usage_heatmap
from edgemtl.report.fpga_plots import fpga_resource_plot, part_totals
from edgemtl.report.mcu_plots import mcu_layer_cycles_plot, mcu_placement_plot
from edgemtl.report.memory_plots import moe_memory_plot
from edgemtl.report.plots import (
    ALL_TASKS_LABEL,
    RUNTIME_LABELS,
    all_tasks_entry,
    cost_plot,
    latency_plot,
    memory_plot,
    number,
    task_entries,
)
from edgemtl.report.plots import pick as _pick
from edgemtl.report.plots import section as _section
from edgemtl.report.sections import profile as profile_section

SECTIONS = (profile_section,)  # report/sections/: each applies to some bundles and renders itself
REPORT_HTML = "report.html"
COUNTED = "static (counted from the traced graph)"
LIVENESS = "estimated (liveness of the traced graph's tensors, not a measured allocation)"
REPORT_JSON = "report.json"

PLOTS: tuple[tuple[str, Callable[[Mapping[str, Any]], bytes | None]], ...] = (
    ("Compute and parameters per task", cost_plot),
    ("Latency per task", latency_plot),
    ("Peak activation memory per task", memory_plot),
    ("Expert usage per task: share of each MoE layer's routing mass per expert (calibration samples)", expert_usage_heatmap),
    ("MoE layers: peak on-chip memory and weight traffic per inference, token-major vs expert-major order", moe_memory_plot),
    ("FPGA resources per task as % of the ZCU104 (XCZU7EV), estimated by FINN at each target fps and by edgemtl's "
     "roofline (not synthesised; its MAC array spans every DSP by design); dashed: fit limits LUT 70 %, "
     "BRAM18 80 %, DSP 80 %", fpga_resource_plot),
    ("GAP9 memory placement per task, estimated by edgemtl's placement model (analysis/mcu_cost.py): activation "
     "arena, weights, code allowance and L3 staging in L2 against the target's L2 size (dashed), and weights "
     "spilled to L3 where any", mcu_placement_plot),
    ("Per layer, two different quantities on a log axis: GAP9 cluster cycles estimated by edgemtl's analytical "
     "model (8 cores, PULP-NN-class int8 kernels, DMA at the target's bandwidths; not run) beside retired "
     "instructions of the portable C simulated under qemu (one rv32imac core, no SIMD; instructions, not cycles)",
     mcu_layer_cycles_plot),
)
_LATENCY_KEYS = ("median", "p90", "provenance", "runtime", "device", "threads", "runs", "batch")
_PROVENANCE_CLASSES = ("measured", "simulated", "estimated")
_MCU_ASSUMPTIONS_ID = "mcu-assumptions"
# Entries only the MCU flow writes ("int8" is not one: the arm64 flow records its int8 model under it too).
_MCU_KEYS = ("memory_placement", "cycle_estimate", "deeploy", "deeploy_mappable")
_DASH = "—"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;color:#1d1d1f;max-width:1200px;margin:2em auto;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;display:block;overflow-x:auto;max-width:100%}th,td{padding:.3em .6em;border-bottom:1px solid #e5e5e5;text-align:left;vertical-align:top}
th{background:#f5f5f7}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.ref td{background:#fafafa;font-style:italic}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em;margin:.5em 0}dt{color:#666}dd{margin:0}
code{font-size:12px;background:#f5f5f7;padding:0 .25em;border-radius:3px}
.dim{color:#777}.ok{color:#1a7f37}.fail{color:#c62828;font-weight:bold}
.prov{font-size:11px;padding:0 .3em;border-radius:3px;background:#eee;white-space:nowrap}
.prov-measured{background:#dff3e4}.prov-simulated{background:#fff1c2}.prov-estimated{background:#fde0dc}.prov-static{background:#e1ebf7}
details summary{cursor:pointer;color:#555}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#666;font-size:12px}
"""


def write_report(manifest: dict, bundle_dir: Path) -> list[Path]:
    """Write report.html and report.json into the bundle and return their paths."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = bundle_dir / REPORT_HTML, bundle_dir / REPORT_JSON
    # The summary goes first so the page's artifact list finds it in the bundle.
    write_text_atomically(json_path, json.dumps(summarize(manifest), indent=2, allow_nan=False) + "\n")
    write_text_atomically(html_path, render_html(manifest, bundle_dir))
    return [html_path, json_path]


def summarize(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The report's numbers as plain JSON: what a dashboard or a regression check needs, nothing more."""
    summary: dict[str, Any] = {
        "edgemtl_version": manifest.get("edgemtl_version"),
        "created": manifest.get("created"),
        "target": _pick(_section(manifest, "target"), ("name", "flow")),
        "model": _pick(_section(manifest, "model"), ("path", "sha256", "arch")),
        "tasks": {name: _task_summary(entry) for name, entry in task_entries(manifest).items()},
    }
    reference = all_tasks_entry(manifest)
    if reference is not None:
        summary["all_tasks"] = _task_summary(reference)
    summary["steps"] = [_pick(step, ("name", "seconds", "status")) for step in _steps(manifest)]
    if manifest.get("profiles"):
        summary["profiles"] = {slug: {**device, "tasks": {
            name: entry["profile"][slug] for name, entry in task_entries(manifest).items()
            if slug in (entry.get("profile") or {})}} for slug, device in manifest["profiles"].items()}
    return _jsonable({key: value for key, value in summary.items() if value is not None})


def render_html(manifest: Mapping[str, Any], bundle_dir: Path | None = None) -> str:
    """The report page; `bundle_dir` lets the artifact list flag files the bundle lacks."""
    notes = _ProvenanceNotes()
    model = _section(manifest, "model")
    title = f"edgemtl report: {model.get('path') or model.get('arch') or 'model'}"
    body = "\n".join(
        (
            _header(manifest, title),
            _steps_section(manifest),
            _tasks_section(manifest, notes),
            _fpga_section(manifest),
            _mcu_section(manifest),
            _experts_section(manifest),
            *(section.render(manifest) for section in SECTIONS if section.applies(manifest)),
            _plots_section(manifest),
            _artifacts_section(manifest, bundle_dir),
            _provenance_section(notes),
        )
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta http-equiv=\"Content-Security-Policy\" "
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def human_count(value: float) -> str:
    """1234567 -> '1.23 M': counts of MACs and parameters at a glance."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale * 0.9995:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def human_bytes(value: float) -> str:
    """35328 -> '34.5 KiB': binary units, as memory maps and linker scripts use."""
    for unit, scale in (("GiB", 1024.0**3), ("MiB", 1024.0**2), ("KiB", 1024.0)):
        if abs(value) >= scale * 0.9995:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def human_ms(value: float) -> str:
    """0.41 -> '0.41 ms', sub-0.1 ms in µs and seconds past 1000 ms, three significant digits."""
    if abs(value) >= 1000:
        return f"{value / 1000:.3g} s"
    if 0 < abs(value) < 0.1:
        return f"{value * 1000:.3g} µs"
    return f"{value:.3g} ms"


def human_seconds(value: float) -> str:
    """Step durations: '0.12 s', '3.1 s', '2 min 5 s'."""
    if value >= 60:
        minutes, seconds = divmod(round(value), 60)
        return f"{minutes} min {seconds} s"
    return f"{value:.2g} s" if value < 10 else f"{value:.0f} s"


def human_error(value: float) -> str:
    """2.1e-06 -> '2.1e-6': an error's magnitude is what matters."""
    if value == 0:
        return "0"
    mantissa, _, exponent = f"{value:.2g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


class _ProvenanceNotes:
    """Numbered notes, one per distinct latency context, that every latency cell points to."""

    def __init__(self) -> None:
        self.records: list[tuple[tuple[str, str], ...]] = []

    def cite(self, latency: Mapping[str, Any]) -> int:
        record = tuple((key, _plain_text(latency.get(key))) for key in _LATENCY_KEYS[2:])
        if record not in self.records:
            self.records.append(record)
        return self.records.index(record) + 1

    def describe(self, number_: int) -> str:
        fields = dict(self.records[number_ - 1])
        parts = [
            fields["provenance"] or "unlabelled",
            fields["runtime"] or "unnamed runtime",
            fields["device"] or "unnamed device",
        ]
        for key, unit in (("threads", "threads"), ("runs", "runs"), ("batch", "batch")):
            if fields[key]:
                parts.append(f"{unit} {fields[key]}" if key == "batch" else f"{fields[key]} {unit}")
        return " · ".join(parts)


def _header(manifest: Mapping[str, Any], title: str) -> str:
    model, target, host = (_section(manifest, key) for key in ("model", "target", "host"))
    sha = _plain_text(model.get("sha256"))
    model_items = [
        ("Model", f"<code>{_e(model.get('path') or _DASH)}</code>"
                  + (f" <span class=\"dim\" title=\"{_e(sha)}\">sha256 {_e(sha[:12])}</span>" if sha else "")),
        ("Architecture", _e(model.get("arch") or _DASH)),
        ("Config", f"<code>{_e(_compact(model['config']))}</code>" if model.get("config") else None),
        ("Data", _e(model["data"]) if model.get("data") else None),
        ("Input", _e(_shape(_section(model, "input").get("shape")))),
        ("Target", _e(" · ".join(str(target[k]) for k in ("name", "flow") if target.get(k)) or _DASH)
                   + (f"<br><span class=\"dim\">{_e(target['description'])}</span>"
                      if target.get("description") else "")),
        ("edgemtl", _e(manifest.get("edgemtl_version") or _DASH)),
        ("Created", _e(manifest.get("created") or _DASH)),
    ]
    host_items = [(str(key), _e(_compact(value))) for key, value in host.items()]
    return (
        f"<header><h1>{_e(title)}</h1>\n{_definitions(model_items)}\n"
        + (f"<h2>Host</h2>\n{_definitions(host_items)}" if host_items else "")
        + "<p class=\"dim\">Side by side with the bundles of other targets: <code>edgemtl report THIS_BUNDLE "
          "OTHER_BUNDLE ... -o comparison</code> writes comparison/comparison.html.</p>"
        + "</header>"
    )


def _steps_section(manifest: Mapping[str, Any]) -> str:
    steps = _steps(manifest)
    if not steps:
        return "<h2>Steps</h2>\n<p class=\"dim\">No steps recorded.</p>"
    rows = []
    for step in steps:
        seconds = number(step.get("seconds"))
        status = _plain_text(step.get("status")) or _DASH
        css = "ok" if status == "ok" else "fail" if status in ("failed", "error") else "dim"
        rows.append(
            f"<tr><td>{_e(step.get('name') or _DASH)}</td>"
            f"<td class=\"n\">{human_seconds(seconds) if seconds is not None else _DASH}</td>"
            f"<td class=\"{css}\">{_e(status)}"
            + (f" <span class=\"dim\">{_e(_plain_text(step.get('reason')))}</span>" if step.get("reason") else "")
            + "</td></tr>"
        )
    total = sum(value for step in steps if (value := number(step.get("seconds"))) is not None)
    rows.append(f"<tr><th>total</th><th class=\"n\">{human_seconds(total)}</th><th></th></tr>")
    return _table("Steps", ("Step", "Time", "Status"), rows)


def _tasks_section(manifest: Mapping[str, Any], notes: _ProvenanceNotes) -> str:
    entries = [(name, entry, False) for name, entry in task_entries(manifest).items()]
    reference = all_tasks_entry(manifest)
    if reference is not None:
        entries.append((f"{ALL_TASKS_LABEL} (one graph)", reference, True))
    if not entries:
        return "<h2>Tasks</h2>\n<p class=\"dim\">The manifest lists no tasks.</p>"
    headers = ("Task", "Kind", "Params", "MACs", "Shared", "Peak activation", "Max abs error vs PyTorch",
               f"{RUNTIME_LABELS['latency_ms']} latency", f"{RUNTIME_LABELS['latency_ms_pytorch']} latency",
               "Speed-up", "Metrics")
    rows = []
    for name, entry, is_reference in entries:
        cells = (
            f"<td>{_e(name)}</td>",
            f"<td>{_e(entry.get('kind') or _DASH)}</td>",
            _number_cell(entry.get("params"), human_count, COUNTED),
            _number_cell(entry.get("macs"), human_count, COUNTED),
            _number_cell(_shared_fraction(entry), lambda v: f"{v:.0%}"),
            _number_cell(entry.get("peak_activation_bytes"), human_bytes, LIVENESS),
            _error_cell(entry),
            _latency_cell(entry.get("latency_ms"), notes),
            _latency_cell(entry.get("latency_ms_pytorch"), notes),
            _number_cell(_speedup(entry), lambda v: f"{v:.2g}×" if v < 10 else f"{v:.0f}×",
                         warning=_plain_text(entry.get("speedup_vs_pytorch_warning")) or None),
            f"<td>{_metrics(entry)}</td>",
        )
        row_class = ' class="ref"' if is_reference else ""
        rows.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return _table("Tasks", headers, rows)


def _fpga_section(manifest: Mapping[str, Any]) -> str:
    """The FPGA flow per task: precision, metric loss, export and C-sim checks, FINN and roofline estimates."""
    tasks = [(name, entry) for name, entry in task_entries(manifest).items()
             if isinstance(entry.get("quantization"), Mapping) or isinstance(entry.get("roofline"), Mapping)]
    if not tasks:
        return ""
    target = _section(manifest, "target").get("name")
    parts = [f"<h2>FPGA{f' ({_e(target)})' if target else ''}: quantization, HLS C simulation and estimates</h2>"]
    for name, entry in tasks:
        quant, check = _section(entry, "quantization"), _section(entry, "export_check")
        roofline = _section(entry, "roofline")
        rows = [("Precision", _e(quant.get("precision") or roofline.get("precision") or _DASH)
                 + (f" <span class=\"dim\">QAT {steps:.0f} steps</span>"
                    if (steps := number(quant.get("qat_steps"))) is not None else "")),
                ("Metric, float → quantized", _fpga_metric(entry, quant)),
                ("Exported graphs vs brevitas, max diff (QONNX / QCDQ in ONNX Runtime)",
                 _fpga_lsb_pair(check)),
                *_fpga_hls_rows(_section(entry, "hls4ml"), entry.get("hls4ml")),
                *_fpga_finn_rows(entry.get("finn"), part_totals(manifest).get("lut")),
                ("edgemtl roofline", _fpga_roofline(roofline))]
        body = "".join(f"<tr><td>{_e(label)}</td><td>{value}</td></tr>" for label, value in rows)
        parts.append(f"<h3>{_e(name)}</h3>\n<table><thead><tr><th>Quantity</th><th>Value</th></tr></thead>"
                     f"<tbody>{body}</tbody></table>")
    needs = manifest.get("needs_other_toolchain")
    for need in needs if isinstance(needs, list) else []:
        step, why = (need.get("step"), need.get("why")) if isinstance(need, Mapping) else (None, need)
        parts.append(f"<p><strong>Needs another toolchain{f': {_e(step)}' if step else ''}</strong>"
                     f"{f' — {_e(why)}' if why else ''}</p>")
    kit = _section(manifest, "board_kit")
    if isinstance(kit.get("readme"), str):
        parts.append(f"<p>Synthesis, bitstream and the board (Vitis HLS / Vivado and a ZCU104): see "
                     f"{_artifact_link(kit['readme'], None)}"
                     + (f"; next: <code>{_e(kit['next'])}</code>" if isinstance(kit.get("next"), str) else "")
                     + ".</p>")
    return "\n".join(parts)


def _fpga_prov(section: Mapping[str, Any], default: str) -> str:
    """A provenance tag: the section's own words, coloured by their first (measured / simulated / estimated)."""
    text = _plain_text(section.get("provenance")) or default
    kind = text.split(" ", 1)[0]
    return f" <span class=\"prov prov-{kind if kind in _PROVENANCE_CLASSES else 'other'}\">{_e(text)}</span>"


def _fpga_metric(entry: Mapping[str, Any], quant: Mapping[str, Any]) -> str:
    before, after = _section(quant, "metric_float"), _section(quant, "metric_quant")
    primary = entry.get("primary_metric")
    name = primary if isinstance(primary, str) and primary in before else next(iter(before), None)
    if name is None:
        return _DASH
    old, new = number(before.get(name)), number(after.get(name))
    shown = f"{_e(name)} {f'{old:.4g}' if old is not None else _DASH} → {f'{new:.4g}' if new is not None else _DASH}"
    if old is None or new is None:
        return shown
    return shown + f" <span class=\"dim\">({f'Δ {new - old:+.3g}' if new != old else 'unchanged'})</span>"


def _fpga_lsb_pair(check: Mapping[str, Any]) -> str:
    values = [number(check.get(key)) for key in ("qonnx_max_diff_lsb", "onnxruntime_max_diff_lsb")]
    if all(value is None for value in values):
        return _DASH
    samples = number(check.get("samples"))
    return (" / ".join(f"{value:.3g}" if value is not None else _DASH for value in values) + " LSB"
            + (f" <span class=\"dim\">on {samples:.0f} samples</span>" if samples is not None else ""))


def _fpga_hls_rows(hls: Mapping[str, Any], raw: Any) -> list[tuple[str, str]]:
    if not isinstance(raw, Mapping):
        return [("hls4ml", "<span class=\"dim\">not run</span>")]
    if hls.get("ok") is not True:
        return [("hls4ml", f"<span class=\"fail\">failed</span>: {_e(hls.get('error') or 'no reason recorded')}")]
    seconds = number(hls.get("seconds"))
    rows = [("hls4ml", "<span class=\"ok\">ok</span>"
             + (f" <code>{_e(hls['project'])}</code>" if isinstance(hls.get("project"), str) else "")
             + (f" <span class=\"dim\">{human_seconds(seconds)}</span>" if seconds is not None else ""))]
    csim, bench = _section(hls, "csim"), _section(hls, "testbench")
    diff, samples = number(csim.get("max_abs_diff_lsb")), number(csim.get("samples"))
    passed = csim.get("passed")
    rows.append(("C simulation vs quantized model, max diff",
                 (f"{diff:.3g} LSB" if diff is not None else _DASH)
                 + (f" <span class=\"{'ok' if passed else 'fail'}\">{'✓' if passed else '✗'}</span>"
                    if isinstance(passed, bool) else "")
                 + (f" <span class=\"dim\">on {samples:.0f} samples</span>" if samples is not None else "")
                 + (_fpga_prov(csim, "simulated") if diff is not None else "")))
    built, reason, matches = bench.get("built"), bench.get("reason"), bench.get("matches_csim")
    rows.append(("Testbench built (g++)",
                 (_DASH if not isinstance(built, bool) else
                  "<span class=\"ok\">yes</span>" if built else "<span class=\"fail\">no</span>")
                 + ("; its run matches the C simulation" if matches is True else
                    "; its run <span class=\"fail\">differs from</span> the C simulation" if matches is False else "")
                 + (f" <span class=\"dim\">{_e(reason)}</span>" if isinstance(reason, str) and reason else "")))
    return rows


def _fpga_finn_rows(raw: Any, part_lut: float | None) -> list[tuple[str, str]]:
    if not isinstance(raw, Mapping):
        return [("FINN", _DASH)]
    if raw.get("available") is False:
        how = raw.get("how_to_create")
        return [("FINN", f"<span class=\"dim\">not available: {_e(raw.get('reason') or 'no FINN environment')}"
                         f"{f'; create it with <code>{_e(how)}</code>' if how else ''}</span>")]
    by_fps = raw.get("by_target_fps")
    if raw.get("ok") is not True or not isinstance(by_fps, Mapping) or not by_fps:
        return [("FINN", f"<span class=\"fail\">no estimate</span>: {_e(raw.get('reason') or 'none recorded')}")]
    rows = []
    for key, fold in by_fps.items():
        fold = fold if isinstance(fold, Mapping) else {}
        fps, latency, lut = (number(fold.get(k)) for k in ("estimated_fps", "latency_ms", "lut"))
        share = lut / part_lut if lut is not None and part_lut else number(_section(fold, "utilisation").get("lut"))
        meets = fold.get("meets_target")
        value = ", ".join(part for part in (
            f"{fps:,.0f} fps" + (f" <span class=\"{'ok' if meets else 'fail'}\">{'meets' if meets else 'misses'} "
                                 "target</span>" if isinstance(meets, bool) else "") if fps is not None else "",
            f"latency {human_ms(latency)}" if latency is not None else "",
            f"LUT {share:.1%}" if share is not None else "") if part) or _DASH
        target = number(fold.get("target_fps"))
        rows.append((f"FINN @ {f'{target:,.0f}' if target is not None else key} fps target", value + _fpga_prov(fold, _plain_text(raw.get("provenance")) or "estimated")))
    return rows


def _fpga_roofline(roofline: Mapping[str, Any]) -> str:
    fps, latency = number(roofline.get("fps")), number(roofline.get("latency_ms"))
    if fps is None and latency is None:
        return _DASH
    fits = _section(roofline, "resources").get("fits")
    return (", ".join(part for part in (f"{fps:,.0f} fps" if fps is not None else "",
                                        f"latency {human_ms(latency)}" if latency is not None else "") if part)
            + (f" <span class=\"{'ok' if fits else 'fail'}\">{'fits' if fits else 'does not fit'}</span>"
               if isinstance(fits, bool) else "")
            + _fpga_prov(roofline, "estimated"))


def _mcu_section(manifest: Mapping[str, Any]) -> str:
    """The MCU flow per task: int8 metric, bit-exact C (host, qemu), arena, placement, Deeploy, estimates, kit."""
    mcu_flow = _section(manifest, "target").get("flow") == "mcu-gap9"
    tasks = [(name, entry) for name, entry in task_entries(manifest).items()
             if _has_mcu_data(entry) or (mcu_flow and isinstance(entry.get("int8"), Mapping))]
    if not tasks:
        return ""
    kit = _section(manifest, "board_kit")
    rows, commands = [], False
    for name, entry in tasks:
        c = _section(entry, "c")
        command = _mcu_kit_command(kit, entry)
        commands = commands or command != _DASH
        rows.append("<tr>" + "".join((
            f"<td>{_e(name)}</td>",
            f"<td>{_mcu_metric(entry.get('int8'))}</td>",
            f"<td>{_mcu_host(c.get('host'))}</td>",
            f"<td>{_mcu_qemu(c.get('qemu'))}</td>",
            f"<td class=\"n\">{_mcu_arena(c.get('arena'))}</td>",
            f"<td>{_mcu_placement(entry.get('memory_placement'))}</td>",
            f"<td>{_mcu_deeploy(entry.get('deeploy'), entry.get('deeploy_mappable'))}</td>",
            f"<td>{_mcu_estimate(entry.get('cycle_estimate'))}</td>",
            f"<td>{command}</td>",
        )) + "</tr>")
    headers = ("Task", "Metric, float → int8", "C bit-exact, host gcc", "C bit-exact, qemu rv32", "Arena",
               "L2 placement", "Deeploy (tiled cluster code)", "Latency · energy per inference",
               "Board kit, from the bundle (GVSoC; then platform=board)")
    table = _table("MCU (GAP9)", headers, rows)
    parts = [table, _mcu_assumptions(tasks), _mcu_provenance_list(tasks)]
    context = _mcu_context(tasks)
    if context:
        parts.append(context)
    if isinstance(kit.get("readme"), str):
        parts.append(f"<p>Board kit (GAP SDK Makefile + <code>main.c</code> harness, runs each task's C on GVSoC or "
                     f"the GAP9 EVK and checks it bit for bit): see {_artifact_link(kit['readme'], None)}"
                     + (f"; next: <code>{_e(kit['next'])}</code>"
                        if isinstance(kit.get("next"), str) and not commands else "")
                     + ".</p>")
    return "\n".join(part for part in parts if part)


def _has_mcu_data(entry: Mapping[str, Any]) -> bool:
    if any(isinstance(entry.get(key), Mapping) for key in _MCU_KEYS):
        return True
    c = _section(entry, "c")
    return any(isinstance(c.get(key), Mapping) for key in ("host", "qemu", "arena"))


def _prov_badge(text: Any, default: str) -> str:
    """A short provenance tag (its first word, coloured) carrying the full words in its tooltip."""
    full = _plain_text(text) or default
    kind = full.split(" ", 1)[0]
    css = kind if kind in _PROVENANCE_CLASSES + ("static",) else "other"
    return f" <span class=\"prov prov-{css}\" title=\"{_e(full)}\">{_e(kind)}</span>"


def _mcu_metric(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return _DASH
    if raw.get("ok") is False:
        return f"<span class=\"fail\">not quantized</span>: {_e(raw.get('error') or 'no reason recorded')}"
    before, after = _section(raw, "metric_float"), _section(raw, "metric_int8")
    metric = raw.get("metric")
    name = metric if isinstance(metric, str) and metric in before else next(iter(before), None)
    if name is None:
        note = raw.get("metrics")
        return f"<span class=\"dim\">int8, not scored{f': {_e(note)}' if isinstance(note, str) else ''}</span>"
    old, new = number(before.get(name)), number(after.get(name))
    others = "; ".join(f"{key} {_fmt(number(before.get(key)))} → {_fmt(number(after.get(key)))}"
                       for key in before if key != name)
    title = f" title=\"{_e(others)}\"" if others else ""
    shown = f"<span{title}>{_e(name)} {_fmt(old)} → {_fmt(new)}</span>"
    change = number(raw.get("relative_change"))
    if change is None and old and new is not None:
        change = (new - old) / abs(old)
    if change is None:
        return shown
    higher = raw.get("higher_is_better")
    direction = ("" if change == 0 or not isinstance(higher, bool)
                 else ", worse" if (change < 0) == higher else ", better")
    return shown + f" <span class=\"dim\">({change:+.2%}{direction})</span>"


def _mcu_host(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return _DASH
    samples = number(raw.get("samples"))
    compiler = raw.get("compiler")
    return (_exact_mark(raw.get("bit_exact"))
            + (f" on {samples:.0f} samples" if samples is not None else "")
            + (f"<br><span class=\"dim\">{_e(compiler)}</span>" if isinstance(compiler, str) and compiler else ""))


def _mcu_qemu(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return _DASH
    if raw.get("skipped"):
        return f"<span class=\"dim\">not run: {_e(raw['skipped'])}</span>"
    samples = number(raw.get("samples"))
    instructions = _section(raw, "instructions")
    totals = _section(instructions, "totals")
    count, per_mac = number(totals.get("instructions")), number(totals.get("instructions_per_mac"))
    return (_exact_mark(raw.get("bit_exact"))
            + (f" on {samples:.0f} samples" if samples is not None else "")
            + _prov_badge(raw.get("provenance"), "simulated (qemu)")
            + (f"<br><span class=\"dim\">{human_count(count)} instructions"
               + (f" ({per_mac:.3g} / MAC)" if per_mac is not None else "") + ", median</span>"
               if count is not None else ""))


def _exact_mark(flag: Any) -> str:
    if flag is True:
        return "<span class=\"ok\">✓ bit-exact</span>"
    if flag is False:
        return "<span class=\"fail\">✗ differs from the reference</span>"
    return _DASH


def _mcu_arena(raw: Any) -> str:
    arena = number(raw.get("arena_bytes")) if isinstance(raw, Mapping) else None
    if arena is None:
        return _DASH
    bound = number(raw.get("lower_bound"))
    title = f" title=\"liveness lower bound {bound:,.0f} B\"" if bound is not None else ""
    return f"<span{title}>{human_bytes(arena)}</span>" + _prov_badge(raw.get("provenance"), "static")


def _mcu_placement(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return _DASH
    status = _plain_text(raw.get("status"))
    css = {"fits-l2": "ok", "too-big": "fail"}.get(status, "")
    used, capacity = number(raw.get("l2_used_bytes")), number(raw.get("l2_bytes"))
    head = (f"<span class=\"{css}\">{_e(status)}</span>" if css else _e(status or _DASH))
    if used is not None and capacity:
        head += f" {human_bytes(used)} of {human_bytes(capacity)}"
    spilled = number(raw.get("l3_used_bytes"))
    if spilled:
        head += f", {human_bytes(spilled)} weights in L3"
    verdict = raw.get("verdict")
    return (head + _prov_badge(raw.get("provenance"), "estimated")
            + (f"<br><span class=\"dim\">{_e(verdict)}</span>" if isinstance(verdict, str) and verdict else ""))


def _mcu_deeploy(raw: Any, mappable: Any) -> str:
    mappable = mappable if isinstance(mappable, Mapping) else {}
    if not isinstance(raw, Mapping):
        return _mcu_unmapped(mappable.get("unmapped"), "edgemtl's check: ") if mappable.get("ok") is False else (
            "<span class=\"dim\">edgemtl's check: every layer maps</span>" if mappable.get("ok") is True else _DASH)
    if raw.get("available") is False:
        how = raw.get("how_to_create") or "make deeploy-venv"
        text = (f"<span class=\"dim\" title=\"{_e(raw.get('reason') or '')}\">Deeploy venv missing: "
                f"<code>{_e(how)}</code></span>")
        if mappable.get("ok") is False:
            text += "<br>" + _mcu_unmapped(mappable.get("unmapped"), "edgemtl's check: ")
        elif mappable.get("ok") is True:
            text += "<br><span class=\"dim\">edgemtl's check: every layer maps onto PULPOpen</span>"
        return text
    if raw.get("ok") is True:
        lines = []
        memory = _section(raw, "memory")
        fits = _section(raw, "fits")
        for level in sorted(memory, key=str):
            usage = memory[level] if isinstance(memory[level], Mapping) else {}
            total, capacity = number(usage.get("total")), number(usage.get("capacity"))
            static, dynamic = number(usage.get("static")), number(usage.get("dynamic"))
            if total is None:
                continue
            fit = fits.get(level)
            lines.append(f"{_e(level)} {human_bytes(total)}"
                         + (f" of {human_bytes(capacity)}" if capacity is not None else "")
                         + (f" <span class=\"dim\">(static {human_bytes(static)} + dynamic "
                            f"{human_bytes(dynamic)})</span>"
                            if static is not None and dynamic is not None else "")
                         + (" <span class=\"fail\">over</span>" if fit is False else ""))
        tool = raw.get("tool") or raw.get("platform")
        scope = ""  # a prefix run covers only part of the task: say which part, so its memory is not read as the whole
        if raw.get("scope") == "prefix":
            share = number(raw.get("prefix_macs_share"))
            elsewhere = raw.get("layers_elsewhere") if isinstance(raw.get("layers_elsewhere"), list) else []
            scope = (" <span class=\"dim\">prefix only" + (f", {share:.0%} of the task's MACs" if share is not None else "")
                     + (f"; in edgemtl's C: {_e(', '.join(map(str, elsewhere)))}" if elsewhere else "") + "</span>")
        text = ("<span class=\"ok\">ok</span>" + scope + (f" <span class=\"dim\">{_e(tool)}</span>" if tool else "")
                + _prov_badge(raw.get("provenance"), "static") + ("<br>" + "<br>".join(lines) if lines else ""))
    elif isinstance(raw.get("unmapped"), list) and raw["unmapped"]:
        text = _mcu_unmapped(raw["unmapped"], "")
    else:
        text = f"<span class=\"fail\">failed</span>: {_e(raw.get('reason') or 'no reason recorded')}"
    hints = raw.get("hints")
    if isinstance(hints, list) and hints:
        text += "".join(f"<br><span class=\"dim\">hint: {_e(hint)}</span>" for hint in hints)
    return text


def _mcu_unmapped(unmapped: Any, lead: str) -> str:
    layers = [u for u in unmapped if isinstance(u, Mapping)] if isinstance(unmapped, list) else []
    if not layers:
        return f"<span class=\"fail\">{_e(lead)}not mappable</span>"
    items = [f"<code>{_e(u.get('layer') or '?')}</code> ({_e(u.get('op') or '?')})"
             + (f": {_e(u['reason'])}" if u.get("reason") else "") for u in layers]
    plural = "s" if len(layers) != 1 else ""
    head = f"<span class=\"fail\">{_e(lead)}{len(layers)} layer{plural} PULPOpen cannot map</span>"
    if len(items) <= 3:
        return head + "<br>" + "<br>".join(items)
    return f"<details><summary>{head}</summary>{'<br>'.join(items)}</details>"


def _mcu_estimate(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        return _DASH
    totals = _section(raw, "totals")
    latency, energy, clock = (number(totals.get(k)) for k in ("latency_ms", "energy_mj", "clock_mhz"))
    if latency is None and energy is None:
        return _DASH
    head = " · ".join(part for part in (human_ms(latency) if latency is not None else "",
                                        f"{energy:.3g} mJ" if energy is not None else "") if part)
    head += f" @ {clock:g} MHz" if clock is not None else ""
    cycles, per_cycle, power = (number(totals.get(k)) for k in ("cycles", "macs_per_cycle", "power_mw"))
    facts = ", ".join(part for part in (
        f"{human_count(cycles)} cluster cycles" if cycles is not None else "",
        f"{per_cycle:.3g} MAC/cycle" if per_cycle is not None else "",
        f"{power:g} mW" if power is not None else "") if part)
    return (head + _prov_badge(raw.get("provenance"), "estimated")
            + (f"<br><span class=\"dim\">{facts}</span>" if facts else "")
            + (f"<br><a href=\"#{_MCU_ASSUMPTIONS_ID}\">assumptions</a>" if _strings(raw.get("assumptions")) else ""))


def _mcu_assumptions(tasks: list[tuple[str, Mapping[str, Any]]]) -> str:
    """One <details> under the table: the estimate's assumptions every task shares, then each task's own, and
    the kernel throughputs with their sources."""
    lists = [(name, _strings(_section(entry, "cycle_estimate").get("assumptions"))
              or _strings(_section(entry, "memory_placement").get("assumptions"))) for name, entry in tasks]
    lists = [(name, items) for name, items in lists if items]
    if not lists:
        return ""
    common = [item for item in lists[0][1] if all(item in items for _, items in lists)]
    own = [(name, [item for item in items if item not in common]) for name, items in lists]
    kernels: dict[str, Mapping[str, Any]] = {}
    for _, entry in tasks:
        for name, kernel in _section(_section(entry, "cycle_estimate"), "kernels").items():
            if isinstance(kernel, Mapping) and number(kernel.get("throughput")) is not None:
                kernels.setdefault(str(name), kernel)
    body = ("<p>Every task:</p><ul>" + "".join(f"<li>{_e(item)}</li>" for item in common) + "</ul>"
            if common else "")
    body += "".join(f"<p>{_e(name)}:</p><ul>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>"
                    for name, items in own if items)
    if kernels:
        rows = [f"<tr><td>{_e(name)}</td><td class=\"n\">{number(kernel['throughput']):g}</td>"
                f"<td>{_e(kernel.get('unit') or _DASH)}</td><td>{_e(kernel.get('source') or _DASH)}</td></tr>"
                for name, kernel in kernels.items()]
        body += ("<table><thead><tr><th>Kernel class</th><th>Work per cycle</th><th>Unit</th><th>Source</th></tr>"
                 f"</thead><tbody>{''.join(rows)}</tbody></table>")
    return (f"<details id=\"{_MCU_ASSUMPTIONS_ID}\"><summary>Assumptions behind the estimated latency, energy "
            f"and placement</summary>{body}</details>")


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _mcu_kit_command(kit: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """The harness's make line for this task, run from the bundle: its C folder and prefix from the manifest."""
    folder, c_dir = kit.get("folder"), _section(entry, "artifacts").get("c")
    if not isinstance(folder, str) or not isinstance(c_dir, str):
        return _DASH
    files = _section(entry, "c").get("files")
    prefixes = [f[:-len("_weights.c")] for f in files if isinstance(f, str) and f.endswith("_weights.c")] \
        if isinstance(files, list) else []
    prefix = prefixes[0] if len(prefixes) == 1 else "network"
    command = (f"make -f {folder.rstrip('/')}/Makefile clean all run platform=gvsoc NETWORK_DIR={c_dir}"
               + (f" PREFIX={prefix}" if prefix != "network" else ""))
    return f"<code>{_e(command)}</code>"


def _mcu_provenance_list(tasks: list[tuple[str, Mapping[str, Any]]]) -> str:
    """Every provenance this section's badges stand for, in full, once."""
    found: dict[str, list[str]] = {}
    for _, entry in tasks:
        c = _section(entry, "c")
        for label, section in (("C under qemu", _section(c, "qemu")), ("arena", _section(c, "arena")),
                               ("L2 placement", _section(entry, "memory_placement")),
                               ("Deeploy", _section(entry, "deeploy")),
                               ("latency · energy", _section(entry, "cycle_estimate"))):
            text = section.get("provenance")
            if isinstance(text, str) and text:
                labels = found.setdefault(text, [])
                if label not in labels:
                    labels.append(label)
    if not found:
        return ""
    items = "".join(f"<li>{_prov_badge(text, '')} {_e(', '.join(labels))}: {_e(text)}</li>"
                    for text, labels in found.items())
    return f"<ul class=\"dim\">{items}</ul>"


def _mcu_context(tasks: list[tuple[str, Mapping[str, Any]]]) -> str:
    """Published GAP9 figures the estimate ships with, labelled as someone else's measurement of another model."""
    for _, entry in tasks:
        for ref in _section(_section(entry, "cycle_estimate"), "context").values():
            if not isinstance(ref, Mapping):
                continue
            latency, energy, power = (number(ref.get(k)) for k in ("latency_s", "energy_mj", "power_mw"))
            if latency is None and energy is None:
                continue
            facts = ", ".join(part for part in (
                human_ms(latency * 1e3) if latency is not None else "",
                f"{energy:.4g} mJ" if energy is not None else "",
                f"{power:.4g} mW" if power is not None else "") if part)
            params = number(ref.get("parameters"))
            return (f"<p class=\"dim\">For scale, not this model: {_e(ref.get('model') or 'a published model')}"
                    + (f" ({human_count(params)} parameters)" if params is not None else "")
                    + f" on {_e(ref.get('device') or 'GAP9')}: {facts}"
                    + _prov_badge(ref.get("provenance"), "measured") + "</p>")
    return ""


def _fmt(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else _DASH


def _experts_section(manifest: Mapping[str, Any]) -> str:
    """Per task: experts kept, MACs against all tasks, metric before/after partition, memory of both orders."""
    moe = _section(manifest, "moe")
    partition = _section(_section(manifest, "passes"), "partition_experts")
    if not moe and not partition:
        return ""
    if partition.get("skipped"):
        return f"<h2>Expert paths</h2>\n<p class=\"dim\">{_e(partition['skipped'])}</p>"
    macs, plans = _section(moe, "macs"), _section(moe, "memory_plan")
    rows = []
    for name, entry in _section(partition, "tasks").items():
        if not isinstance(entry, Mapping):
            continue
        kept = entry.get("experts_kept_count")
        task_macs = _section(_section(macs, "tasks"), name)
        totals = _section(_section(plans, name), "totals")
        rows.append("<tr>" + "".join((
            f"<td>{_e(name)}</td>",
            f"<td>{_e(' / '.join(str(k) for k in kept)) if isinstance(kept, list) else _DASH}</td>",
            _number_cell(entry.get("params_after"), human_count),
            _number_cell(entry.get("macs_after"), human_count),
            _number_cell(task_macs.get("share_of_all_tasks"), lambda v: f"{v:.1%}"),
            _number_cell(task_macs.get("dense_vit_single_task_macs"), human_count),
            f"<td>{_e(entry.get('metric') or _DASH)}</td>",
            _number_cell(entry.get("metric_before"), lambda v: f"{v:.4g}"),
            _number_cell(entry.get("metric_after"), lambda v: f"{v:.4g}"),
            _number_cell(_section(totals, "token_major").get("peak_on_chip_bytes"), human_bytes),
            _number_cell(_section(totals, "expert_major").get("peak_on_chip_bytes"), human_bytes),
        )) + "</tr>")
    coverage = number(partition.get("coverage"))
    title = "Expert paths" + (f" (coverage {coverage:.0%} of each task's routing mass)" if coverage is not None else "")
    table = _table(title, ("Task", "Experts kept per MoE layer", "Params", "MACs", "Share of all tasks' MACs",
                           "Dense ViT MACs (derived)", "Metric", "Before", "After", "Peak on-chip, token-major",
                           "Peak on-chip, expert-major"), rows)
    switching = _section(moe, "switching")
    memory, latency = _section(switching, "resident_memory"), _section(switching, "switch_latency")
    all_same, all_dense = number(macs.get("all_tasks_same_model_macs")), number(macs.get("dense_vit_all_tasks_macs"))
    items = [("MACs of all tasks: this model / dense ViT with one shared encoder",
              f"{human_count(all_same)} / {human_count(all_dense)}" if all_same is not None and all_dense is not None else None),
             ("switchable artifact", _e(switching.get("artifact")) if switching.get("artifact") else None),
             ("resident memory (one artifact / per-task artifacts)",
              f"{human_bytes(memory['switchable_bytes'])} / {human_bytes(memory['per_task_artifacts_bytes'])}"
              if number(memory.get("switchable_bytes")) is not None and number(memory.get("per_task_artifacts_bytes")) is not None else None),
             ("first inference after a task switch / steady state",
              f"{human_ms(latency['first_after_switch_ms'])} / {human_ms(latency['steady_ms'])} "
              f"<span class=\"prov prov-measured\">{_e(latency.get('provenance', 'measured'))}</span>"
              if number(latency.get("first_after_switch_ms")) is not None and number(latency.get("steady_ms")) is not None else None)]
    return table + ("\n" + _definitions(items) if any(v for _, v in items) else "")


def _plots_section(manifest: Mapping[str, Any]) -> str:
    figures = []
    for caption, plot in PLOTS:
        png = plot(manifest)
        if png is not None:
            data = base64.b64encode(png).decode("ascii")
            figures.append(
                f"<figure><img alt=\"{_e(caption)}\" src=\"data:image/png;base64,{data}\">"
                f"<figcaption>{_e(caption)}</figcaption></figure>"
            )
    return "<h2>Plots</h2>\n" + ("\n".join(figures) or "<p class=\"dim\">The manifest has no data to plot.</p>")


def _artifacts_section(manifest: Mapping[str, Any], bundle_dir: Path | None) -> str:
    items = [("bundle", "manifest", "manifest.json"), ("bundle", "summary", REPORT_JSON)]
    owners = [(name, entry) for name, entry in task_entries(manifest).items()]
    if (reference := all_tasks_entry(manifest)) is not None:
        owners.append((ALL_TASKS_LABEL, reference))
    owners.append(("bundle", manifest))
    for owner, entry in owners:
        artifacts = entry.get("artifacts")
        if isinstance(artifacts, Mapping):
            items += [(owner, kind, path) for kind, path in _artifact_paths(artifacts)]
    rows = [
        f"<tr><td>{_e(owner)}</td><td>{_e(kind)}</td><td>{_artifact_link(path, bundle_dir)}</td></tr>"
        for owner, kind, path in items
    ]
    shipped = [f"<tr><td>{_e(name)}</td><td>shipped runtime</td><td>{_e(entry['runtime'])}"
               + (f" <span class=\"dim\">({_e(_plain_text(entry.get('runtime_reason')))})</span>"
                  if entry.get("runtime_reason") else "") + "</td></tr>"
               for name, entry in task_entries(manifest).items() if isinstance(entry.get("runtime"), str)]
    return _table("Artifacts", ("Owner", "Kind", "Path"), rows + shipped)


def _artifact_paths(artifacts: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """(kind, path) of every artifact, nested ones too (TVM builds per architecture: `tvm/aarch64`)."""
    found = []
    for kind, value in artifacts.items():
        if isinstance(value, str):
            found.append((f"{prefix}{kind}", value))
        elif isinstance(value, Mapping):
            found += _artifact_paths(value, f"{prefix}{kind}/")
    return found


def _provenance_section(notes: _ProvenanceNotes) -> str:
    intro = (
        "<p>Every latency number is labelled with its provenance: <strong>measured</strong> (timed on the "
        "device named), <strong>simulated</strong> (from a cycle or instruction simulator) or "
        "<strong>estimated</strong> (from an analytic model, not run at all), with the runtime, device, "
        "threads and number of runs behind it. Medians and p90 are over those runs. Memory sizes fixed by a "
        "compiler's static allocation are labelled <strong>static</strong>.</p>"
    )
    if not notes.records:
        return f"<h2>Provenance</h2>\n{intro}\n<p class=\"dim\">The tasks table has no latency numbers.</p>"
    items = "".join(f"<li>{_e(notes.describe(index))}</li>" for index in range(1, len(notes.records) + 1))
    return f"<h2>Provenance</h2>\n{intro}\n<ol>{items}</ol>"


def _latency_cell(latency: Any, notes: _ProvenanceNotes) -> str:
    median = number(latency.get("median")) if isinstance(latency, Mapping) else None
    if median is None:
        return f"<td class=\"n\">{_DASH}</td>"
    p90 = number(latency.get("p90"))
    note = notes.cite(latency)
    provenance = _plain_text(latency.get("provenance")) or "unlabelled"
    css = provenance if provenance in _PROVENANCE_CLASSES else "other"
    spread = f" <span class=\"dim\">p90 {human_ms(p90)}</span>" if p90 is not None else ""
    warnings = [str(w) for w in latency.get("warnings", []) if w] if isinstance(latency.get("warnings"), list) else []
    flag = (f" <span class=\"fail\" title=\"{_e('; '.join(warnings))}\">⚠ {_e(warnings[0].split(':')[0])}</span>"
            if warnings else "")
    return (
        f"<td class=\"n\">{human_ms(median)}{spread} <span class=\"prov prov-{css}\" "
        f"title=\"{_e(notes.describe(note))}\">{_e(provenance)} [{note}]</span>{flag}</td>"
    )


def _error_cell(entry: Mapping[str, Any]) -> str:
    verification = _section(entry, "verification")
    error = number(entry.get("max_abs_error"))
    if error is None:
        error = number(verification.get("max_abs_error"))
    if error is None:
        return f"<td class=\"n\">{_DASH}</td>"
    passed = verification.get("passed")
    mark = ""
    if isinstance(passed, bool):
        detail = ", ".join(
            f"{label} {_plain_text(verification[key])}"
            for key, label in (("tolerance", "tolerance"), ("samples", "samples"), ("data", "data"))
            if verification.get(key) is not None
        )
        mark = (f" <span class=\"{'ok' if passed else 'fail'}\" title=\"{_e(detail)}\">"
                f"{'✓' if passed else '✗ over tolerance'}</span>")
    return f"<td class=\"n\">{human_error(error)}{mark}</td>"


def _metrics(entry: Mapping[str, Any]) -> str:
    metrics = entry.get("metrics")
    if not isinstance(metrics, Mapping) or not metrics:
        return _DASH
    primary = entry.get("primary_metric")
    higher = entry.get("higher_is_better")
    parts = []
    for name, value in metrics.items():
        shown = f"{_e(name)} {_e(f'{v:.3g}' if (v := number(value)) is not None else _plain_text(value))}"
        if name == primary:
            arrow = " ↑" if higher is True else " ↓" if higher is False else ""
            shown = f"<strong title=\"primary metric\">{shown}{arrow}</strong>"
        parts.append(shown)
    return "<br>".join(parts)


def _artifact_link(path: str, bundle_dir: Path | None) -> str:
    """A link relative to the report, percent-quoted so no manifest path can become a `javascript:` URL."""
    posix = PurePosixPath(path.replace("\\", "/"))
    relative: PurePosixPath | None = posix
    if posix.is_absolute():
        relative = None
        if bundle_dir is not None:
            try:
                relative = PurePosixPath(Path(path).resolve().relative_to(Path(bundle_dir).resolve()).as_posix())
            except ValueError:
                relative = None
    if relative is None:
        return f"<code>{_e(path)}</code> <span class=\"dim\">(outside the bundle)</span>"
    missing = bundle_dir is not None and not (Path(bundle_dir) / relative).exists()
    flag = " <span class=\"fail\">(missing)</span>" if missing else ""
    return f"<a href=\"{_e(quote(str(relative), safe='/'))}\"><code>{_e(relative)}</code></a>{flag}"


def _task_summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    error = number(entry.get("max_abs_error"))
    if error is None:
        error = number(_section(entry, "verification").get("max_abs_error"))
    summary = {
        "kind": entry.get("kind"),
        "params": entry.get("params"),
        "macs": entry.get("macs"),
        "shared_fraction": _shared_fraction(entry),
        "peak_activation_bytes": entry.get("peak_activation_bytes"),
        "max_abs_error": error,
        "latency_ms": _pick(entry.get("latency_ms"), _LATENCY_KEYS),
        "latency_ms_pytorch": _pick(entry.get("latency_ms_pytorch"), _LATENCY_KEYS),
        "speedup_vs_pytorch": _speedup(entry),
        "metrics": entry.get("metrics") if isinstance(entry.get("metrics"), Mapping) else None,
        "primary_metric": entry.get("primary_metric"),
        "higher_is_better": entry.get("higher_is_better"),
        **_mcu_summary(entry),
    }
    return {key: value for key, value in summary.items() if value not in (None, {})}


def _mcu_summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The MCU flow's headline per task: int8 metric, bit-exact flags, the estimate (each with its provenance)."""
    summary: dict[str, Any] = {}
    int8 = _section(entry, "int8")
    metric = int8.get("metric")
    if isinstance(metric, str):
        summary["int8"] = {"metric": metric, "float": number(_section(int8, "metric_float").get(metric)),
                           "int8": number(_section(int8, "metric_int8").get(metric)),
                           "relative_change": number(int8.get("relative_change"))}
    elif int8.get("ok") is False:
        summary["int8"] = {"ok": False, "error": _plain_text(int8.get("error"))}
    c = _section(entry, "c")
    exact = {}
    for where in ("host", "qemu"):
        check = _section(c, where)
        if isinstance(check.get("bit_exact"), bool):
            exact[where] = {"bit_exact": check["bit_exact"], "samples": check.get("samples")}
            if where == "qemu":
                exact[where]["provenance"] = check.get("provenance")
        elif check.get("skipped"):
            exact[where] = {"skipped": _plain_text(check["skipped"])}
    if exact:
        summary["c_bit_exact"] = exact
    totals = _section(_section(entry, "cycle_estimate"), "totals")
    if number(totals.get("latency_ms")) is not None:
        summary["mcu_estimate"] = {**(_pick(totals, ("latency_ms", "energy_mj", "cycles", "clock_mhz", "placement"))
                                      or {}),
                                   "provenance": _section(entry, "cycle_estimate").get("provenance")}
    return summary


def _shared_fraction(entry: Mapping[str, Any]) -> float | None:
    fraction = number(entry.get("shared_fraction"))
    if fraction is not None:
        return fraction
    shared, params = number(entry.get("shared_params")), number(entry.get("params"))
    return shared / params if shared is not None and params else None


def _speedup(entry: Mapping[str, Any]) -> float | None:
    """The manifest's speed-up, else the ratio of medians when both share a provenance (never across kinds)."""
    given = number(entry.get("speedup_vs_pytorch"))
    if given is not None:
        return given
    ort, torch = entry.get("latency_ms"), entry.get("latency_ms_pytorch")
    if not (isinstance(ort, Mapping) and isinstance(torch, Mapping)):
        return None
    if ort.get("provenance") != torch.get("provenance"):
        return None
    fast, slow = number(ort.get("median")), number(torch.get("median"))
    return slow / fast if fast and slow is not None else None


def _steps(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    steps = manifest.get("steps")
    return [step for step in steps if isinstance(step, Mapping)] if isinstance(steps, list) else []


def _jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats become null and unknown types their text, so report.json always parses."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _table(title: str, headers: tuple[str, ...], rows: list[str]) -> str:
    head = "".join(f"<th>{_e(header)}</th>" for header in headers)
    body = "\n".join(rows)
    return f"<h2>{_e(title)}</h2>\n<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _definitions(items: list[tuple[str, str | None]]) -> str:
    pairs = "".join(f"<dt>{_e(label)}</dt><dd>{value}</dd>" for label, value in items if value is not None)
    return f"<dl>{pairs}</dl>"


def _number_cell(value: Any, fmt: Callable[[float], str], provenance: str | None = None, warning: str | None = None) -> str:
    """A right-aligned number; with `provenance`, its badge (the full words in the tooltip); with `warning`, a mark."""
    parsed = number(value)
    if parsed is None:
        return f"<td class=\"n\">{_DASH}</td>"
    badge = _prov_badge(provenance, provenance) if provenance else ""
    flag = f" <span class=\"fail\" title=\"{_e(warning)}\">⚠</span>" if warning else ""
    return f"<td class=\"n\">{_e(fmt(parsed))}{badge}{flag}</td>"


def _shape(shape: Any) -> str:
    return "×".join(str(dim) for dim in shape) if isinstance(shape, list) and shape else _DASH


def _compact(value: Any) -> str:
    if isinstance(value, (Mapping, list)):
        return json.dumps(_jsonable(value), sort_keys=True, separators=(", ", ": "))
    return _plain_text(value) or _DASH


def _plain_text(value: Any) -> str:
    """Text for the page: a provenance object ({kind, source, detail}) or any mapping as words, never a dict repr."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        lead = " ".join(str(value[key]) for key in ("kind", "source") if value.get(key))
        rest = "; ".join(f"{key} {_plain_text(item)}" for key, item in value.items() if key not in ("kind", "source"))
        return ", ".join(part for part in (lead, rest) if part)
    if isinstance(value, (list, tuple)):
        return "; ".join(_plain_text(item) for item in value)
    return str(value)


def _e(value: Any) -> str:
    return escape(str(value), quote=True)
